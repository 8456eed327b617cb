# Sourced by scripts/test.sh and scripts/demo.sh: everything a fresh Debian machine with Python 3.11 needs.
# - redis-server from Debian's packages when missing (tests and the demo start private servers from it)
# - one virtualenv under ~/.cache, keyed by a hash of setup.cfg, created when missing (torch stack, ~6 GB)
# - this checkout installed into it (editable, no dependency resolution: seconds)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (Debian package)" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  # the package starts a system service on 6379; our tests never use it
fi

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
KEY=$(sha256sum setup.cfg | cut -c1-16)
VENV="${INSPECTOR_VENV:-$HOME/.cache/steel-inspector/venv-$KEY}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV (torch, torchvision, segmentation-models-pytorch, onnxruntime, ...: a few minutes)" >&2
  rm -rf "$VENV.partial"
  "$PYTHON" -m venv "$VENV.partial"
  "$VENV.partial/bin/python" -m pip install -q --upgrade pip
  "$VENV.partial/bin/python" -m pip install -q -e ".[test,bench]"
  mv "$VENV.partial" "$VENV"  # only a complete environment gets the real name
fi
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
export PATH="$VENV/bin:$PATH"

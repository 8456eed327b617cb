# Sourced by scripts/test.sh and scripts/demo.sh: everything a fresh Debian machine with Python 3.11 needs.
# - Debian packages when missing: redis-server, redis-sentinel, bubblewrap, chromium, chromium-driver
# - one virtualenv under ~/.cache, keyed by a hash of setup.cfg, created when missing (torch stack, ~6 GB)
# - this checkout installed into it (editable, no dependency resolution: seconds)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# Debian packages, each installed only when its command is missing:
#   redis-server, redis-sentinel: tests and the demo start private servers (standalone, cluster, sentinel)
#   bubblewrap: tests run the systemd units' sandbox settings without systemd (tests/unit_sandbox.py)
#   chromium, chromium-driver: the operator screen's browser tests
MISSING=""
for pair in redis-server:redis-server redis-sentinel:redis-sentinel bwrap:bubblewrap chromium:chromium \
            chromedriver:chromium-driver; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || MISSING="$MISSING ${pair#*:}"
done
if [ -n "$MISSING" ]; then
  echo "installing Debian packages:$MISSING" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  # shellcheck disable=SC2086
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $MISSING >/dev/null
  # redis-server's package starts a system service on 6379; our tests never use it
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

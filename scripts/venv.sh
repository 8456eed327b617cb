#!/usr/bin/env bash
# The set-up work behind scripts/env.sh, run as its own bash process (so `set -e` holds whatever the caller's
# shell is doing: bash ignores errexit inside an `if` or `&&`, subshells included). Prints one line on stdout:
# this checkout's .venv/bin; everything else goes to stderr. See scripts/env.sh for what it sets up and why.
set -euo pipefail
exec 3>&1 1>&2  # everything said goes to stderr; stdout carries only the bin folder, for the caller
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

# Debian packages, each installed only when its command is missing:
#   redis-server, redis-sentinel: tests and the demo start private servers (standalone, cluster, sentinel)
#   bubblewrap: tests run the systemd units' sandbox settings without systemd (tests/unit_sandbox.py)
#   chromium, chromium-driver: the operator screen's browser tests
#   systemd (systemd-analyze; brings libseccomp2, which tests/unit_sandbox.py loads): the units' verify and score
MISSING=""
for pair in redis-server:redis-server redis-sentinel:redis-sentinel bwrap:bubblewrap chromium:chromium \
            chromedriver:chromium-driver flock:util-linux systemd-analyze:systemd; do
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
SPEC=${INSPECTOR_VENV_SPEC-.[test,bench]}
if [ ! -e "$VENV/.complete" ]; then
  mkdir -p "$(dirname "$VENV")"
  exec 9>"$VENV.lock"
  flock 9  # two checkouts setting up at once: the second waits here, then finds it complete
  if [ -e "$VENV/.complete" ]; then
    :
  elif [ -x "$VENV/bin/python" ] && [ ! -e "$VENV/.building" ]; then
    echo "repairing $VENV (made by a former env.sh: #! lines naming $VENV.partial)" >&2
    for f in "$VENV"/bin/*; do
      if [ -f "$f" ] && [ ! -L "$f" ] && grep -qIF "$VENV.partial" "$f"; then
        sed -i "s|$VENV.partial|$VENV|g" "$f"
      fi
    done
    touch "$VENV/.complete"
  else
    echo "creating $VENV (torch, torchvision, segmentation-models-pytorch, onnxruntime, ...: a few minutes)" >&2
    rm -rf "$VENV" "$VENV.partial"
    "$PYTHON" -m venv "$VENV"
    touch "$VENV/.building"  # an interrupted build is recognised and rebuilt
    if [ -n "$SPEC" ]; then
      "$VENV/bin/python" -m pip install -q --upgrade pip
      "$VENV/bin/python" -m pip install -q "$SPEC"
      # dependencies only: each checkout installs itself into its own .venv
      "$VENV/bin/python" -m pip uninstall -q -y steel-inspector
    fi
    rm "$VENV/.building"
    touch "$VENV/.complete"  # only a complete environment is ever used
  fi
  exec 9>&-
fi

THIN="$ROOT/.venv"
STAMP="$KEY $VENV"  # what the thin venv was made against: a new setup.cfg or shared venv remakes it
if [ -e "$THIN" ] && [ ! -e "$THIN/.inspector-stamp" ]; then
  echo "$THIN exists and was not made by scripts/env.sh: move it away (the checkout's own venv lives there)" >&2
  exit 1
fi
if [ "$(cat "$THIN/.inspector-stamp" 2>/dev/null)" != "$STAMP" ] || [ ! -x "$THIN/bin/inspector" ]; then
  exec 9>"$VENV.lock"
  flock 9  # two shells of one checkout setting up at once: one builds, the other waits (seconds)
fi
if [ "$(cat "$THIN/.inspector-stamp" 2>/dev/null)" != "$STAMP" ] || [ ! -x "$THIN/bin/inspector" ]; then
  echo "setting up $THIN (this checkout, editable, over $VENV)" >&2
  rm -rf "$THIN"
  "$VENV/bin/python" -m venv "$THIN"
  SHARED_SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  THIN_SITE=$("$THIN/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  # a plain path line: the shared site-packages come after the checkout's own, and their .pth files (another
  # checkout's editable hook, in a venv made before this scheme) are not run
  printf '%s\n' "$SHARED_SITE" >"$THIN_SITE/_steel_inspector_shared.pth"
  # the shared venv's setuptools builds the editable install (the one ensurepip bundles has no bdist_wheel)
  "$THIN/bin/python" -m pip uninstall -q -y setuptools
  "$THIN/bin/python" -m pip install -qq --no-deps --no-build-isolation -e "$ROOT" >/dev/null
  printf '%s\n' "$STAMP" >"$THIN/.inspector-stamp"
fi
printf '%s\n' "$THIN/bin" >&3

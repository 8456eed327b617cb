# Sourced by scripts/test.sh, scripts/demo.sh and scripts/activate: everything a fresh Debian machine with Python
# 3.11 needs, and safe to source into an interactive shell: the work runs in its own process (scripts/venv.sh,
# `set -euo pipefail` there); all this file changes in the caller is PATH, and a failure returns, never exits.
# - Debian packages when missing: redis-server, redis-sentinel, bubblewrap, chromium, chromium-driver, util-linux
#   (flock), systemd (systemd-analyze, libseccomp2)
# - one shared virtualenv of the dependencies under ~/.cache, keyed by a hash of setup.cfg (torch stack, ~6 GB),
#   built in place under a lock and marked complete last (`.complete`). A virtualenv cannot be moved: its scripts'
#   #! lines and `activate` name its path, so the former "build as .partial, then rename" left bin/pip pointing at
#   a .partial interpreter that no longer exists. A venv left by that scheme is repaired once (its #! lines).
#   It holds no checkout: it is only read, by every checkout.
# - a thin virtualenv per checkout, `.venv` in the checkout: a .pth path line makes the shared site-packages
#   importable (after its own), and this checkout is installed into it alone (editable, no dependency
#   resolution: seconds), so two checkouts never re-point each other's `inspector`, `trainer` or imports.
# Settings (environment): PYTHON (the interpreter to build with), INSPECTOR_VENV (the shared venv's path),
# INSPECTOR_VENV_SPEC (what pip installs into the shared venv, default ".[test,bench]"; the set-up tests build a
# throwaway one with "").

_inspector_bin=$(bash "$(dirname "${BASH_SOURCE[0]}")/venv.sh")
_inspector_rc=$?
if [ "$_inspector_rc" = 0 ]; then
  case ":$PATH:" in
    *":$_inspector_bin:"*) ;;
    *) export PATH="$_inspector_bin:$PATH" ;;
  esac
  unset _inspector_bin _inspector_rc
else
  unset _inspector_bin
  echo "scripts/env.sh: set-up failed (exit $_inspector_rc), see above; this shell is unchanged" >&2
  # sourced: return (the shell stays); run as a script: exit
  eval "unset _inspector_rc; return $_inspector_rc 2>/dev/null || exit $_inspector_rc"
fi

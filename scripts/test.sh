#!/usr/bin/env bash
# The test command: set up (first run: a few minutes), lint, then the whole suite. GPU tests skip without CUDA.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$(dirname "$0")/.."
python -m ruff check .
python -m pytest -q "$@"

#!/usr/bin/env bash
# The test command: set up (first run: a few minutes), lint, then the whole suite. GPU tests skip without CUDA.
source "$(dirname "$0")/env.sh"
ruff check .
python -m pytest -q "$@"

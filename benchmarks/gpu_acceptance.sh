#!/usr/bin/env bash
# The GPU acceptance run on a machine with CUDA: bash benchmarks/gpu_acceptance.sh --out DIR
# (how to prepare what travels to the device machine, and the one command: see benchmarks/gpu_acceptance.py).
# PYTHONPATH is extended, never replaced: the carried wheels (installed to /tmp/site by the install line) stay
# importable in every step and in the pytest step's child.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || echo "warning: no redis-server on PATH: the bench steps will fail (see the header)" >&2
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA: this is the GPU run (--cpu-check runs on the CPU)')"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu_acceptance.py "$@"

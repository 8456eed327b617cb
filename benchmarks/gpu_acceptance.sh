#!/usr/bin/env bash
# The GPU acceptance run: one command, under 10 minutes on one H100 / H200, writes
# benchmarks/results/gpu_acceptance_<gpu>.json (see benchmarks/gpu_acceptance.py for the steps).
#
# On this workplace's device machine (Python 3.12, torch, no network), prepare once here, from the project root:
#   bash ../shared/device/prepare-carry.sh prometheus-client==0.26.0 hiredis==3.5.0
# and run with the device tool:  run(command="<the line prepare-carry.sh prints> bash benchmarks/gpu_acceptance.sh",
#   carry=[".whl", ".deb"], timeout_s=600)
# cvcuda-cu13 (128 MB) does not fit that tool's 64 MiB carry: there the post-processing is measured on the gated
# path and the CV-CUDA tests skip; on a plant machine `pip install -e '.[gpu]'` installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA: this is the GPU run')"
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
timeout 590 python3 benchmarks/gpu_acceptance.py "$@"

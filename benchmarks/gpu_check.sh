#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, in about 6 minutes: trials/s with K = 1, 2, 4, 8 trials at
# once on the GPU (a worker pool) for digits-MLP and for the 100k-row synthetic set, and the
# worker's training loop against a hand-written one and a DataLoader one on the GPU.
#
#   bash benchmarks/gpu_check.sh          (PYTHON=... to pick the interpreter)
#
# It installs Sweep itself without touching torch: from wheels carried in shared/wheels when
# there are any, else against the packages already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
if ! "$py" -c "import service.app, worker.loop" 2>/dev/null; then
  "$py" -m pip install -q --no-index --find-links shared/wheels -e . \
    || "$py" -m pip install -q --no-deps -e .
fi
"$py" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device"
free, total = torch.cuda.mem_get_info()
print(f"{torch.cuda.get_device_name(0)}, {total / 2**30:.0f} GiB, torch {torch.__version__}")
PY
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv || true
timeout 150 "$py" benchmarks/pool_throughput.py --device cuda:0 --ks 1 2 4 8 --trials 32 --epochs 5
timeout 150 "$py" benchmarks/pool_throughput.py --device cuda:0 --ks 1 2 4 8 --trials 16 \
  --epochs 2 --dataset synthetic
timeout 90 "$py" benchmarks/training_loop.py --device cuda:0 --threads 4 --repeats 3

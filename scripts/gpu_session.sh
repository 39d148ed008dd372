#!/usr/bin/env bash
# On a lent GPU machine (the device tool), after `gpu-bundle unpack` has put ffcv and DALI on PYTHONPATH:
# install fastcifar without touching the network, run every CUDA-marked test, then the benchmark.
#   bash scripts/gpu_session.sh tests        # CUDA tests only (~1-2 min)
#   bash scripts/gpu_session.sh bench OUT    # full bench (all loaders, 32-224 px, compile + bf16) into OUT
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "${TMPDIR:-/tmp}/gpu-site/env.sh" ] && . "${TMPDIR:-/tmp}/gpu-site/env.sh"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device here'; print(torch.cuda.get_device_name())"
case "${1:-tests}" in
  tests) PYTHONUNBUFFERED=1 python3 -m pytest -q -rs -k "cuda or gpu" tests ;;
  bench) PYTHONUNBUFFERED=1 python3 -m fastcifar bench --out "${2:?bench OUT dir}" --tag "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-')" ;;
  *) echo "usage: $0 tests | bench OUT" >&2; exit 2 ;;
esac

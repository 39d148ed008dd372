#!/usr/bin/env bash
# On a lent GPU machine (the device tool): install fastcifar without the network (ffcv + DALI from the GPU bundle
# when its parts are here), then run a time-boxed plan that writes one JSON with provenance.
#   bash scripts/gpu_session.sh check [OUT]   # <= 5 min: CUDA tests, host-sync tests, recompile log of a 2-epoch
#                                             # compiled run, DALI epoch-boundary time, 224 px e2e per loader -> OUT/check.json
#   bash scripts/gpu_session.sh bench [OUT]   # <= 8 min: the README's GPU table -> OUT/gpu-<GPU>-<date>.{json,md,png}
#   bash scripts/gpu_session.sh tests         # only the CUDA-marked tests, no time box
#   add --dry-run to run the same plan on the CPU at tiny sizes (what tests/test_session.py does, in part)
# OUT defaults to $OUT (the device tool's folder that comes back), else ./gpu-session-out.
# The GPU bundle (the project's gpu-bundle tool, kept outside this repository): parts in $GPU_BUNDLE_DIR (default .gpu-bundle), the tool itself at
# $GPU_BUNDLE_TOOL, shared/tools/gpu-bundle, $GPU_BUNDLE_DIR/gpu-bundle or on PATH. Without it, the plan records the
# ffcv / dali cells as skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
plan=${1:-check}; shift || true
out=${OUT:-gpu-session-out}; dry=""; is_dry=False
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry="--dry-run"; is_dry=True ;;
    *) out=$arg ;;
  esac
done
case "$plan" in
  check|bench|tests) ;;
  *) echo "usage: $0 check|bench [OUT] [--dry-run] | tests" >&2; exit 2 ;;
esac
SECONDS=0
site="${TMPDIR:-/tmp}/gpu-site"
bundle_dir=${GPU_BUNDLE_DIR:-.gpu-bundle}
if [ -z "$dry" ] && [ ! -f "$site/env.sh" ] && ls "$bundle_dir"/part-* >/dev/null 2>&1; then
  tool=""
  for candidate in "${GPU_BUNDLE_TOOL:-}" shared/tools/gpu-bundle "$bundle_dir/gpu-bundle" "$(command -v gpu-bundle || true)"; do
    if [ -n "$candidate" ] && [ -f "$candidate" ]; then tool=$candidate; break; fi
  done
  if [ -n "$tool" ]; then
    echo "installing ffcv + DALI from $bundle_dir with $tool"
    bash "$tool" unpack "$bundle_dir" || echo "the GPU bundle did not install: ffcv / dali cells will be skipped with the reason"
  else
    echo "GPU bundle parts in $bundle_dir but no gpu-bundle tool (set GPU_BUNDLE_TOOL): ffcv / dali cells will be skipped"
  fi
fi
[ -f "$site/env.sh" ] && . "$site/env.sh"
if [ -n "$dry" ] && [ -x .venv/bin/python ]; then
  py=.venv/bin/python  # the dry-run runs where the project's venv is
else
  py=${PYTHON:-python3}
  "$py" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
  "$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device here (use --dry-run on a CPU)'; print(torch.cuda.get_device_name())"
fi
if [ "$plan" = tests ]; then  # only the CUDA-marked tests (the check plan's first step), no time box
  exec env PYTHONUNBUFFERED=1 "$py" -m pytest -q -rs -k "cuda or gpu" tests
fi
budget=$("$py" -c "from fastcifar.bench.session import plan_budget; print(int(plan_budget('$plan', $is_dry)))")
echo "setup took ${SECONDS} s; running the $plan plan in what is left of its ${budget} s"
# the plan stops itself at its budget (setup counts: --spent); this outer limit only guards against a hung interpreter
status=0
timeout --signal=KILL $((budget - SECONDS + 30)) env PYTHONUNBUFFERED=1 "$py" -m fastcifar.bench.session "$plan" \
  --out "$out" --spent "$SECONDS" $dry || status=$?
echo "gpu_session.sh $plan: ${SECONDS} s in all (exit $status)"
exit $status

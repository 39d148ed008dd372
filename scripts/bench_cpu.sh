#!/usr/bin/env bash
# The committed CPU result set in one command (~15 min on an idle 2-core machine). Run it on a clean tree, with
# nothing else running, and commit OUT: every figure the README quotes comes from these files.
#   bash scripts/bench_cpu.sh [OUT] [--tiny] [--no-policy]
#     OUT          default bench/results/cpu-<hostname>-<date>
#     --tiny       the same sections at tiny sizes (a few minutes; to check the script, never to commit)
#     --no-policy  leave out the `--set augment.policy=randaugment` section (needs the augment.policy key)
# Sections, each a `fastcifar bench` run on one prepared synthetic root (content does not affect throughput):
#   loader-rep{1,2,3}  default loader view, all four loaders, 32/64/128/224 px, paired (--paired: the loaders of
#                      each size timed in alternating segments of one run, so a slow spell of this VM slows all of
#                      them alike and "vs torch" compares like with like), three repeats
#   loader-median3     their median with the range over repeats, and the machine's load per repeat
#   config-resnet18_arcface_224  that config's own policy, model and head at its 224 px, SHRUNK for a CPU:
#                      batch 32, no compile, amp none (the config asks for bf16 + compile and batch 250)
#   run                one real run: a 2-epoch `fastcifar train` (evaluation + checkpoints) vs the ceiling, 32 px
#   dali-boundary-rep{1,2,3}, -median3   DALI loader-only at 32 and 224 px over whole epochs (boundaries included
#                      and counted), three repeats and their median (overall / window median per repeat)
#   randaugment-rep{1,2,3}, -median3     `--set augment.policy=randaugment`, loader-only gpu vs torch at 32 and
#                      224 px, paired, three repeats and their median
#   trivialaugment, autoaugment          the same, paired, one run each (what each policy costs per batch)
set -euo pipefail
cd "$(dirname "$0")/.."
out="" tiny=0 policy=1
for arg in "$@"; do
  case "$arg" in
    --tiny) tiny=1 ;;
    --no-policy) policy=0 ;;
    -*) echo "unknown option $arg; usage: $0 [OUT] [--tiny] [--no-policy]" >&2; exit 2 ;;
    *) out=$arg ;;
  esac
done
out=${out:-bench/results/cpu-$(hostname)-$(date +%F)}
fc=".venv/bin/fastcifar"; py=".venv/bin/python"
[ -x "$fc" ] || { fc=fastcifar; py=python3; }
if [ "$tiny" = 1 ]; then
  images=256; common=(--batch-size 16 --iters 2 --warmup 1 --workers 1 --min-seconds 0); model=(--model resnet10t)
  sizes=32,64
  loader=("${common[@]}"); epochs=2
  big=64; cfg_shrink=(--batch-size 8 --image-sizes 64 --model resnet10t); run_images=(--run-epochs 2)
else
  images=10000; common=(--iters 10); model=(); sizes=32,64,128,224
  # loader-only cells: 30 windows, at least 3 s (fastcifar bench's --min-seconds), and 6 whole epochs. With 10
  # windows a 32 px cell timed 0.05-0.3 s, shorter than this VM's own slow spells (a window at a third of the
  # median, loader or not), so repeats differed up to 2x
  loader=(--iters 30 --min-seconds 3); epochs=6
  big=224; cfg_shrink=(--batch-size 32); run_images=(--run-epochs 2)
fi
mkdir -p "$out"
root=$(mktemp -d "${TMPDIR:-/tmp}/fastcifar-bench-cpu-XXXXXX")
trap 'rm -rf "$root"' EXIT
SECONDS=0
stamp() { echo "[$(printf '%5d' "$SECONDS") s] $*"; }

stamp "data: SYNTHETIC cifar100, $images train images, all formats, under $root"
"$fc" data synth cifar100 --root "$root" --train "$images" --test 1000 >/dev/null
"$fc" data prepare cifar100 --root "$root" --formats npy,ffcv,dali >/dev/null
bench() { "$fc" bench --root "$root" --device cpu "$@"; }

for rep in 1 2 3; do
  stamp "loader view (paired), repeat $rep"
  bench --views loader --loaders gpu,torch,ffcv,dali --image-sizes "$sizes" "${loader[@]}" --paired \
    --json "$out/loader-rep$rep.json" --markdown "$out/loader-rep$rep.md" >/dev/null
done
"$py" -m fastcifar.bench.aggregate "$out/loader-median3" "$out"/loader-rep{1,2,3}.json

stamp "config resnet18_arcface_224 (shrunk for a CPU: batch ${cfg_shrink[1]}, no compile, amp none)"
bench --config resnet18_arcface_224 --views loader,model,e2e --loaders gpu,torch,ffcv,dali "${common[@]}" \
  "${cfg_shrink[@]}" --no-compile --amp none --out "$out" --tag config-resnet18_arcface_224 >/dev/null

stamp "real run: 2-epoch fastcifar train, gpu loader, 32 px"
bench --views run --loaders gpu --image-sizes 32 "${common[@]}" "${model[@]}" "${run_images[@]}" \
  --json "$out/run.json" --markdown "$out/run.md" >/dev/null

for rep in 1 2 3; do
  stamp "DALI over $epochs whole epochs at 32 and $big px, repeat $rep"
  bench --views loader --loaders dali --image-sizes "32,$big" --timed-epochs "$epochs" "${loader[@]}" \
    --json "$out/dali-boundary-rep$rep.json" --markdown "$out/dali-boundary-rep$rep.md" >/dev/null
done
"$py" -m fastcifar.bench.aggregate "$out/dali-boundary-median3" "$out"/dali-boundary-rep{1,2,3}.json

if [ "$policy" = 1 ]; then
  for rep in 1 2 3; do
    stamp "--set augment.policy=randaugment: loader-only gpu vs torch paired at 32 and $big px, repeat $rep"
    if ! bench --set augment.policy=randaugment --views loader --loaders gpu,torch --image-sizes "32,$big" \
        "${loader[@]}" --paired --json "$out/randaugment-rep$rep.json" --markdown "$out/randaugment-rep$rep.md" \
        > "$out/randaugment.log" 2>&1; then
      echo "  the randaugment section did not run (is augment.policy in this tree's config schema?):"
      tail -3 "$out/randaugment.log" | sed 's/^/    /'
      break
    fi
  done
  rm -f "$out/randaugment.log"
  [ -f "$out/randaugment-rep3.json" ] &&
    "$py" -m fastcifar.bench.aggregate "$out/randaugment-median3" "$out"/randaugment-rep{1,2,3}.json
  for policy_name in trivialaugment autoaugment; do
    stamp "--set augment.policy=$policy_name: loader-only gpu vs torch paired at 32 and $big px"
    bench --set augment.policy=$policy_name --views loader --loaders gpu,torch --image-sizes "32,$big" "${loader[@]}" \
      --paired --json "$out/$policy_name.json" --markdown "$out/$policy_name.md" >/dev/null
  done
fi
stamp "done: $out"
ls "$out"

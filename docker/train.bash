#!/usr/bin/env bash
# Train a config in the container: bash docker/train.bash CONFIG [fastcifar train args...]
#   DATA (default ./data) is mounted at /data (the container's FASTCIFAR_ROOT); runs are written to ./runs.
#   HF_CACHE (default $HF_HOME, else ~/.cache/huggingface) is mounted as the container's Hugging Face cache, so
#     pretrained weights downloaded once are reused, and HF_HUB_OFFLINE=1 works from it; HF_TOKEN is passed on.
#   GPUS=N (default 1) launches `torchrun --nproc_per_node N` (DDP, one process per GPU).
#   Example: GPUS=8 bash docker/train.bash resnet50_arcface_224 --loader dali
# The image runs the base image's torch build, not the tested torch==2.14.1: its versions are printed first.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: [GPUS=N] bash docker/train.bash CONFIG [fastcifar train args...]" >&2; exit 2; }
cd "$(dirname "$0")/.."
data=$(realpath -m "${DATA:-./data}"); mkdir -p "$data" runs
hf=$(realpath -m "${HF_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}}"); mkdir -p "$hf"
gpus=${GPUS:-1}
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || { echo "GPUS must be a positive integer, got '$gpus'" >&2; exit 2; }
if [ "$gpus" -gt 1 ]; then
  launch=(--entrypoint torchrun "${IMAGE:-fastcifar:latest}" --standalone --nproc_per_node "$gpus" -m fastcifar train)
else
  launch=("${IMAGE:-fastcifar:latest}" train)
fi
docker run --rm --entrypoint cat "${IMAGE:-fastcifar:latest}" /opt/fastcifar/VERSIONS
docker run --rm --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
  -v "$data":/data -v "$PWD/runs":/opt/fastcifar/runs -v "$hf":/root/.cache/huggingface \
  -e HF_HUB_OFFLINE -e HF_TOKEN \
  "${launch[@]}" "$@"

#!/usr/bin/env bash
# Train a config in the container: bash docker/train.bash CONFIG [fastcifar train args...]
#   DATA (default ./data) is mounted at /data (the container's FASTCIFAR_ROOT); runs are written to ./runs.
#   Example: bash docker/train.bash resnet18_arcface_224 --loader dali
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bash docker/train.bash CONFIG [fastcifar train args...]" >&2; exit 2; }
cd "$(dirname "$0")/.."
data=$(realpath -m "${DATA:-./data}"); mkdir -p "$data" runs
docker run --rm --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
  -v "$data":/data -v "$PWD/runs":/opt/fastcifar/runs \
  "${IMAGE:-fastcifar:latest}" train "$@"

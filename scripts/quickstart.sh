#!/usr/bin/env bash
# The main job, end to end: install, make data, prepare every format, train, then a short loader benchmark.
# With no GPU and no internet (this project's CI machines) it runs on a small SYNTHETIC stand-in for
# CIFAR-100 in the official pickle layout, clearly labelled as such, and finishes in a few minutes.
# On a GPU machine with the real data:  fastcifar data download cifar100 && fastcifar data prepare cifar100
#                                       fastcifar train resnet18_arcface_224
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source .venv/bin/activate
export FASTCIFAR_ROOT=${FASTCIFAR_ROOT:-$PWD/data}

fastcifar data synth cifar100 --train 5000 --test 1000 --seed 0
fastcifar data prepare cifar100
fastcifar data info
fastcifar train synthetic_demo
fastcifar results runs
# what bounds a run on this machine: device-side augment (gpu) vs the per-sample DataLoader baseline (torch)
fastcifar bench --views loader --loaders gpu,torch --image-sizes 32,224 --root "$FASTCIFAR_ROOT" --out runs/bench

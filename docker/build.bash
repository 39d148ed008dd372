#!/usr/bin/env bash
# Build the fastcifar image: bash docker/build.bash [TAG]   (default tag: fastcifar:latest)
set -euo pipefail
cd "$(dirname "$0")/.."
docker build -f docker/Dockerfile -t "${1:-fastcifar:latest}" .

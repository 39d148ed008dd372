#!/usr/bin/env bash
# Install fastcifar and everything it needs into ./.venv. Idempotent: a second run only checks.
#   1. FFCV's system libraries (OpenCV, libjpeg-turbo, pkg-config) through apt, when root or sudo is available.
#   2. A venv, then fastcifar editable with the ffcv, dali and dev extras; torch pinned by constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! pkg-config --exists opencv4 libturbojpeg 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo"; else sudo="none"; fi
  if [ "$sudo" = none ]; then
    echo "setup: FFCV needs libopencv-dev libturbojpeg0-dev pkg-config and this user cannot apt-get install them;" \
         "ask an admin, or the ffcv extra will fail to build." >&2
  else
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends libopencv-dev libturbojpeg0-dev pkg-config
  fi
fi

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
stamp=.venv/.fastcifar-install
want=$(cat setup.py constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -c constraints.txt -e '.[ffcv,dali,dev]'
  echo "$want" > "$stamp"
fi
.venv/bin/fastcifar --version

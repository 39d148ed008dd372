#!/usr/bin/env bash
# Install fastcifar and everything it needs into ./.venv. Idempotent: a second run only checks.
#   1. FFCV's system libraries (OpenCV, libjpeg-turbo, pkg-config) through apt, when root or sudo is available.
#   2. A venv, then fastcifar editable with the ffcv, dali and dev extras; torch pinned by constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

# FFCV builds a C extension (compiler, Python headers) against OpenCV and libjpeg-turbo; venv needs python3-venv.
if ! pkg-config --exists opencv4 libturbojpeg 2>/dev/null || ! command -v gcc >/dev/null || ! python3 -m venv --help >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo"; else sudo="none"; fi
  if [ "$sudo" = none ]; then
    echo "setup: FFCV needs libopencv-dev libturbojpeg0-dev pkg-config and this user cannot apt-get install them;" \
         "ask an admin; installing without the ffcv extra." >&2
  else
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
      libopencv-dev libturbojpeg0-dev pkg-config build-essential python3-dev python3-venv
  fi
fi

# a venv whose creation failed half-way (no python3-venv) has a python but no pip: make it again
.venv/bin/python -m pip --version >/dev/null 2>&1 || { rm -rf .venv; "${PYTHON:-python3}" -m venv .venv; }
stamp=.venv/.fastcifar-install
want=$(cat setup.py constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  extras="ffcv,dali,dev"
  pkg-config --exists opencv4 libturbojpeg 2>/dev/null || { extras="dali,dev"; echo "setup: skipping the ffcv extra (system libraries missing)" >&2; }
  .venv/bin/python -m pip install -c constraints.txt -e ".[$extras]"
  echo "$want" > "$stamp"
fi
.venv/bin/fastcifar --version

#!/usr/bin/env bash
# Install (idempotent), lint, and run the test suite. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .  # ruff.toml: pyflakes, pycodestyle (lines <= 120), isort, bugbear; fails before any test runs
exec .venv/bin/python -m pytest -q "$@" tests

#!/usr/bin/env bash
# Create .venv with the pinned runtime and test dependencies. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch is pinned here rather than in requirements.txt: the Cog image takes a CUDA build of the same version.
.venv/bin/python -m pip install --quiet torch==2.13.0 -r requirements-dev.txt

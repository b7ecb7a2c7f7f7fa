#!/usr/bin/env bash
# Create .venv with the pinned runtime and test dependencies. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch is pinned in requirements-torch.txt rather than requirements.txt: the Cog image takes its own CUDA build.
.venv/bin/python -m pip install --quiet -r requirements-torch.txt -r requirements-dev.txt

#!/usr/bin/env bash
# The main job: set up .venv (if needed) and run the quick start.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet -e .
.venv/bin/python examples/quickstart.py

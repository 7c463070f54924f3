#!/usr/bin/env bash
# The digits case study (max-norm with dropout and high learning rates, on scikit-learn's 8x8
# digits): set up .venv (first run only, as examples/run.sh does) and run the study at its full
# settings: 20 seeds per configuration, the max-norm grid, the learning-rate sweep, and the
# Keras and JAX check. Writes out/digits/report.md, results.json and the figures. Not part of
# the main job (examples/run.sh): it takes longer than the whole main job on 2 cores.
# Extra arguments go to the study, e.g. `bash examples/digits.sh --quick`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=examples/venv.sh
source examples/venv.sh
.venv/bin/python examples/digits_study.py --out out/digits "$@"

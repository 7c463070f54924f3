#!/usr/bin/env bash
# The main job: set up .venv (first run only) and run the moons case study at the tutorial's
# settings: the PyTorch study (30 repeats, 4000 epochs, 8 constraints, the value grid) and the
# Keras and JAX (Flax + optax) examples. Writes out/study/report.md, out/study/*.png,
# out/moons_keras.png and out/moons_jax.png. The digits study has its own command,
# examples/digits.sh (see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=examples/venv.sh
source examples/venv.sh
.venv/bin/python examples/moons_study.py --backend torch --repeats 30 --epochs 4000 \
    --constraints none,unit_norm,max_norm:1,min_max_norm:1:1,clip:-0.1:0.1,box_max_norm:-0.5:0.5:1,simplex:1,max_l1_norm:1 \
    --grid 0.3,0.6,0.9,1.0,1.3,1.6 --out out/study
.venv/bin/python examples/moons_keras.py --out out
.venv/bin/python examples/moons_jax.py --out out

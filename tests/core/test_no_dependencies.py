"""``import weight_constraints`` imports NumPy and nothing heavier."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = [
    "torch",
    "tensorflow",
    "keras",
    "jax",
    "optax",
    "flax",
    "lightning",
    "transformers",
    "array_api_compat",
    "ml_dtypes",
    "scipy",
]

SCRIPT = f"""
HEAVY = {HEAVY!r}
import json, sys
import numpy as np
import weight_constraints as wc
import weight_constraints.adapters
w = np.ones((3, 2), np.float32)
wc.max_norm(w, 1.0, out=w); wc.unit_norm(w); wc.min_max_norm(w); wc.non_neg(w); wc.node_norms(w)
wc.get("max_norm")(w)
wc.clip(w, -1.0, 1.0); wc.box_max_norm(w, -1.0, 1.0, 1.0); wc.simplex(w); wc.max_l1_norm(w, 1.0)
print(json.dumps(sorted(m for m in sys.modules if m.partition(".")[0] in HEAVY)))
"""


def test_import_pulls_in_no_framework():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []

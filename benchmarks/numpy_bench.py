"""The NumPy core against the Keras formula (written in NumPy) and the floor: the scaling pass
alone, ``np.multiply(w, factor, out=w)`` with precomputed factors."""

from __future__ import annotations

import numpy as np
from _timing import Row, interleaved

import weight_constraints as wc

KERAS_EPSILON = 1e-7


def keras_formula(name: str, w: np.ndarray, axis: int) -> np.ndarray:
    """keras.constraints' formulas written in NumPy."""
    if name == "non_neg":
        return np.maximum(w, 0)
    n = np.sqrt(np.sum(np.square(w), axis=axis, keepdims=True))
    if name == "max_norm":
        return w * (np.clip(n, 0, 2.0) / (KERAS_EPSILON + n))
    if name == "unit_norm":
        return w / (KERAS_EPSILON + n)
    desired = 1.0 * np.clip(n, 0.5, 2.0) + 0.0 * n
    return w * (desired / (KERAS_EPSILON + n))


def ours(name: str, w: np.ndarray, axis: int, out: np.ndarray | None) -> np.ndarray:
    """Our projection ``name`` with the parameters of :func:`keras_formula`."""
    if name == "max_norm":
        return wc.max_norm(w, 2.0, axis, out=out)
    if name == "unit_norm":
        return wc.unit_norm(w, axis, out=out)
    if name == "min_max_norm":
        return wc.min_max_norm(w, 0.5, 2.0, 1.0, axis, out=out)
    return wc.non_neg(w, out=out)


def numpy_section(size: int, repeats: int) -> list[Row]:
    """Every projection on a ``size`` x ``size`` float32 array, both axes, in place and copying.

    Goals: in place, ours <= 2.0x the floor and >= 3x faster than the Keras formula.
    """
    rng = np.random.default_rng(0)
    pristine = rng.standard_normal((size, size), dtype=np.float32)
    w = pristine.copy()
    rows = []
    for axis in (0, 1):
        factors = np.full((1, size) if axis == 0 else (size, 1), 0.5, np.float32)
        for name in ("max_norm", "unit_norm", "min_max_norm", "non_neg"):
            for mode in ("in place", "copy"):
                out = w if mode == "in place" else None
                floor = (
                    (lambda f=factors: np.multiply(w, f, out=w))
                    if mode == "in place"
                    else (lambda f=factors: np.multiply(w, f))
                )
                medians = interleaved(
                    {
                        "ours": lambda name=name, out=out, axis=axis: ours(name, w, axis, out),
                        "keras formula": lambda name=name, axis=axis: keras_formula(name, w, axis),
                        "floor": floor,
                    },
                    repeats,
                    setup=lambda: np.copyto(w, pristine),
                )
                ratio = medians["ours"] / medians["floor"]
                speedup = medians["keras formula"] / medians["ours"]
                row = Row(
                    "numpy",
                    f"{name}, axis {axis}, {mode}",
                    medians,
                    "ours / floor",
                    ratio,
                    extra={"keras formula / ours": speedup},
                )
                goals = []
                if mode == "in place":
                    goals.append(("ours ≤ 2.0× floor", ratio <= 2.0))
                    if name != "non_neg":  # Keras's NonNeg is np.maximum, as ours
                        goals.append(("≥ 3× faster than the Keras formula", speedup >= 3.0))
                row.goal = "; ".join(g for g, _ in goals)
                row.met = all(ok for _, ok in goals) if goals else None
                rows.append(row)
    return rows

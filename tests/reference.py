"""A naive per-node reference written independently of the library: a Python loop over nodes,
norms from ``math.hypot`` (float64, no overflow or underflow of the squares)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

EPS = {np.dtype(t): float(np.finfo(t).eps) for t in (np.float16, np.float32, np.float64)}


def accumulation_eps(dtype: np.dtype) -> float:
    """Machine epsilon of the dtype the library accumulates norms in."""
    return EPS[np.dtype(np.float64)] if np.dtype(dtype) == np.float64 else EPS[np.dtype(np.float32)]


def axes_of(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    given = axis if isinstance(axis, (tuple, list)) else (axis,)
    return tuple(sorted(a % ndim for a in given))


def nodes(w: np.ndarray, axis) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Return the nodes of ``w`` as the columns of a 2-d float64 array, and the inverse map."""
    axes = axes_of(axis, w.ndim)
    kept = [i for i in range(w.ndim) if i not in axes]
    moved = np.transpose(w.astype(np.float64), list(axes) + kept)
    reduced_shape = moved.shape[: len(axes)]
    kept_shape = moved.shape[len(axes) :]
    columns = moved.reshape(math.prod(reduced_shape), math.prod(kept_shape))

    def back(cols: np.ndarray) -> np.ndarray:
        restored = cols.reshape(reduced_shape + kept_shape)
        return np.transpose(restored, np.argsort(list(axes) + kept))

    return columns, back


def norm(node: np.ndarray) -> float:
    return math.hypot(*(float(x) for x in node))


def reference(w: np.ndarray, axis, target: Callable[[float], float]) -> np.ndarray:
    """Scale each node from its norm n to target(n); zero nodes stay as they are."""
    columns, back = nodes(w, axis)
    out = columns.copy()
    for j in range(columns.shape[1]):
        n = norm(columns[:, j])
        if n > 0:
            out[:, j] = columns[:, j] * (target(n) / n)
    return back(out)


def node_norms_reference(w: np.ndarray, axis) -> np.ndarray:
    columns, _ = nodes(w, axis)
    return np.array([norm(columns[:, j]) for j in range(columns.shape[1])])

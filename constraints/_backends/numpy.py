"""The NumPy backend: NumPy arrays, and array-likes converted with ``numpy.asarray``."""

from __future__ import annotations

import math
import string
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from ._common import check_like


def _norms(w: np.ndarray, axes: tuple[int, ...], acc: str) -> np.ndarray:
    # One pass over w, with no temporary of its size: a BLAS dot product per node when each
    # node is a contiguous run of memory, einsum's sum of products otherwise.
    shape = tuple(1 if i in axes else size for i, size in enumerate(w.shape))
    trailing = axes == tuple(range(w.ndim - len(axes), w.ndim))
    if trailing and w.size and w.flags.c_contiguous and w.dtype == acc and hasattr(np, "vecdot"):
        rows = w.reshape(-1, math.prod(w.shape[w.ndim - len(axes) :]))
        return np.sqrt(np.vecdot(rows, rows)).reshape(shape)
    letters = string.ascii_letters[: w.ndim]
    kept = "".join(letter for i, letter in enumerate(letters) if i not in axes)
    squares = np.einsum(f"{letters},{letters}->{kept}", w, w, dtype=np.dtype(acc))
    return np.sqrt(squares).reshape(shape)


class NumPyBackend:
    """NumPy arrays; ``out=`` supported. See ``weight_constraints._backends`` for the methods.

    Example:
        >>> import numpy as np
        >>> backend = NumPyBackend()
        >>> w = np.array([[3.0, -1.0], [4.0, 0.0]])
        >>> n = backend.norms(w, (0,), "float64")
        >>> backend.multiply(w, 1 / n, out=w)
        array([[ 0.6, -1. ],
               [ 0.8,  0. ]])
    """

    name = "numpy"
    xp = np

    def accurate_cumsum(self, name: str) -> bool:
        return False  # one entry at a time, in the array's dtype

    def prepare(self, w: Any) -> np.ndarray:
        return np.asarray(w)

    def astype(self, x: Any, name: str) -> Any:
        return x.astype(name, copy=False)

    def norms(self, w: np.ndarray, axes: tuple[int, ...], acc: str) -> np.ndarray:
        if not axes:  # every entry is its own node
            return np.abs(w.astype(acc, copy=False))
        return _norms(w, axes, acc)

    def multiply(self, w: np.ndarray, factor: Any, out: Any) -> np.ndarray:
        # A half-precision w times a float32 factor: the product is formed in float32 and
        # rounded once (on the way into out, or by the cast).
        if out is None:
            return (w * factor).astype(w.dtype, copy=False)
        return np.multiply(w, factor, out=out)

    def zero_negatives(self, w: np.ndarray, out: Any) -> np.ndarray:
        return np.maximum(w, 0.0, out=out)

    def check_out(self, out: Any, w: np.ndarray) -> None:
        if out is not None and out is not w:
            check_like(out, w, np.ndarray)

    def copy_into(self, w: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.copyto(out, w)
        return out

    # -- per-node projections on rows (``_polyhedral.py``) -----------------------------------

    def permute(self, x: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
        return np.transpose(x, order)

    def sort_last(self, x: np.ndarray) -> np.ndarray:
        return np.sort(x, axis=-1)

    def argsort_last(self, x: np.ndarray) -> np.ndarray:
        return np.argsort(x, axis=-1)

    def take_last(self, x: np.ndarray, indices: np.ndarray) -> np.ndarray:
        return np.take_along_axis(x, indices, axis=-1)

    def cumsum_last(self, x: np.ndarray) -> np.ndarray:
        return np.cumsum(x, axis=-1)

    def flip_last(self, x: np.ndarray) -> np.ndarray:
        return np.flip(x, axis=-1)

    def max_last(self, x: np.ndarray) -> np.ndarray:
        return np.max(x, axis=-1, keepdims=True)

    def sum_last(self, x: np.ndarray) -> np.ndarray:
        # NumPy adds pairwise (rounding as log2(m), not m) only along a contiguous axis; a
        # transposed node would be added one entry at a time.
        if x.ndim and x.strides[-1] != x.itemsize:
            x = np.ascontiguousarray(x)
        return np.sum(x, axis=-1, keepdims=True)

    def quiet(self) -> AbstractContextManager:
        return np.errstate(over="ignore", invalid="ignore", divide="ignore")

    def counts(self, m: int, like: np.ndarray) -> np.ndarray:
        return np.arange(1, m + 1, dtype=like.dtype)

    def clip(self, x: np.ndarray, lower: float, upper: float, out: Any = None) -> np.ndarray:
        return np.clip(x, lower, upper, out=out)

    def write(self, result: np.ndarray, out: Any) -> np.ndarray:
        if out is None:
            return result
        np.copyto(out, result)
        return out

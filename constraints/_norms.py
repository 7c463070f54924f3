"""Per-node L2 norms: one pass over the weights, accumulated in float32 or wider."""

from __future__ import annotations

import string
from typing import Any

import numpy as np

from ._checks import Axis, normalize_axes
from ._namespace import accumulation_dtype, astype, float_dtype, kind, namespace


def _numpy_norms(w: np.ndarray, axes: tuple[int, ...], acc: str) -> np.ndarray:
    # einsum forms the sum of squares in one pass, with no temporary the size of w.
    letters = string.ascii_letters[: w.ndim]
    kept = "".join(letter for i, letter in enumerate(letters) if i not in axes)
    squares = np.einsum(f"{letters},{letters}->{kept}", w, w, dtype=acc)
    shape = tuple(1 if i in axes else size for i, size in enumerate(w.shape))
    return np.sqrt(squares).reshape(shape)


def _torch_norms(w: Any, axes: tuple[int, ...], acc: str, torch: Any) -> Any:
    # A fused reduction (no squared temporary); dtype= makes half precision accumulate in float32.
    return torch.linalg.vector_norm(w, dim=axes, keepdim=True, dtype=getattr(torch, acc))


def norms(w: Any, axes: tuple[int, ...], acc: str, xp: Any) -> Any:
    """Per-node L2 norms of a checked ``w`` over normalised ``axes``, keeping dims, in ``acc``."""
    if not axes:  # every entry is its own node
        return xp.abs(astype(w, acc, xp))
    family = kind(xp)
    if family == "numpy":
        return _numpy_norms(w, axes, acc)
    if family == "torch":
        return _torch_norms(w, axes, acc, xp)
    wide = astype(w, acc, xp)
    return xp.sqrt(xp.sum(wide * wide, axis=axes, keepdims=True))


def node_norms(w: Any, axis: Axis = 0, keepdims: bool = False, *, xp: Any = None) -> Any:
    """Per-node L2 norms: ``n_j = sqrt(sum_i w[i, j]²)``, the sum running over ``axis``.

    A node is one index of the axes that are not summed over: with the default ``axis=0`` and a
    Keras ``Dense`` kernel of shape ``(in, out)``, one norm per output unit.

    Args:
        w: The weights, an array of a floating dtype.
        axis: The axis or axes the norm is taken over (negative values count from the end);
            ``None`` takes one norm over the whole array.
        keepdims: Keep the summed axes with size 1, so the result broadcasts against ``w``.
        xp: The array namespace; inferred from ``w`` when omitted.

    Returns:
        The norms, in float32 for half-precision ``w`` (their squares may exceed the float16
        range) and in the dtype of ``w`` otherwise.

    Raises:
        TypeError: ``w`` does not have a floating dtype.
        ValueError: ``axis`` is out of range or repeats an axis.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import node_norms
        >>> node_norms(np.array([[3.0, 0.0], [4.0, 1.0]]))
        array([5., 1.])
        >>> node_norms(np.array([[3.0, 0.0], [4.0, 1.0]]), axis=1, keepdims=True)
        array([[3.        ],
               [4.12310563]])
    """
    w, xp = namespace(w, xp)
    acc = accumulation_dtype(float_dtype(w))
    axes = normalize_axes(axis, tuple(w.shape))
    result = norms(w, axes, acc, xp)
    if keepdims:
        return result
    kept_shape = tuple(size for i, size in enumerate(w.shape) if i not in axes)
    return xp.reshape(result, kept_shape)

"""Per-node L2 norms, accumulated in float32 or wider (the kernels live in ``_backends``)."""

from __future__ import annotations

from typing import Any

from ._backends import prepare
from ._checks import Axis, normalize_axes
from ._dtypes import accumulation_dtype, float_dtype


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
    w, backend = prepare(w, xp)
    acc = accumulation_dtype(float_dtype(w))
    axes = normalize_axes(axis, tuple(w.shape))
    result = backend.norms(w, axes, acc)
    if keepdims:
        return result
    kept_shape = tuple(size for i, size in enumerate(w.shape) if i not in axes)
    return backend.xp.reshape(result, kept_shape)

"""The per-node projections, written once against an array namespace ``xp``.

Each node (one index of the axes the norm is *not* taken over) is rescaled by a factor
``d(n) / n`` computed from its norm ``n``; nodes are independent of each other. The factors are
formed on the small array of norms with ``where``/``clip`` only (no Python branching on array
values), so the same code runs on NumPy arrays, torch tensors and, through ``keras.ops``, inside a
compiled Keras train step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._checks import Axis, check_bounds, check_rate, check_value, normalize_axes
from ._namespace import (
    accumulation_dtype,
    check_out,
    copy,
    float_dtype,
    multiply,
    namespace,
    zero_negatives,
)
from ._norms import norms

# The smallest norm whose square is a normal number in the accumulation dtype (sqrt of the
# smallest normal). Below it the squared norm is subnormal or zero: too imprecise to normalise.
_SMALLEST_SCALABLE_NORM = {"float32": 2.0**-63, "float64": 2.0**-511}

Factor = Callable[[Any, str, Any], Any]
"""Maps the per-node norms ``n`` (accumulation dtype ``acc``, namespace ``xp``) to the factor
each node is multiplied by."""


def _rescale(w: Any, axis: Axis, factor: Factor, out: Any, xp: Any) -> Any:
    """Multiply every node of ``w`` by ``factor(n, acc, xp)``, ``n`` being the node norms."""
    w, xp = namespace(w, xp)
    acc = accumulation_dtype(float_dtype(w))
    axes = normalize_axes(axis, tuple(w.shape))
    check_out(out, w, xp)
    n = norms(w, axes, acc, xp)
    return multiply(w, factor(n, acc, xp), out, xp)


def _to_norm(target: Callable[[Any, Any], Any]) -> Factor:
    """The factor ``target(n) / n`` that gives each node the norm ``target(n)``.

    Nodes whose norm is below ``_SMALLEST_SCALABLE_NORM`` (all-zero nodes included) or NaN keep
    their values, so a zero node never becomes NaN and ``target(n) / n`` stays finite. Where
    ``target(n) == n`` the factor is exactly 1 and the node comes back bit for bit.
    """

    def factor(n: Any, acc: str, xp: Any) -> Any:
        scalable = n >= _SMALLEST_SCALABLE_NORM[acc]
        return xp.where(scalable, target(n, xp) / xp.where(scalable, n, 1.0), 1.0)

    return factor


def max_norm(
    w: Any, max_value: float = 2.0, axis: Axis = 0, *, out: Any = None, xp: Any = None
) -> Any:
    """Project every node onto the L2 ball of radius ``max_value``.

    For each node ``x``: ``argmin_y ‖x − y‖ s.t. ‖y‖ ≤ max_value``, that is
    ``x · c / max(‖x‖, c)`` with ``c = max_value``. Nodes inside the ball come back unchanged bit
    for bit; nodes outside are scaled onto its boundary. This is the max-norm regulariser of
    Srivastava et al. (2014), usually with ``max_value`` between 1 and 4.

    ``keras.constraints.MaxNorm`` computes ``x · clip(‖x‖, 0, c) / (ε + ‖x‖)`` with
    ``ε = 1e-7``: it slightly shrinks nodes it should leave alone and is not idempotent. The
    results agree with it to about 1e-6 relative in float32 for nodes whose norm is not tiny.

    Args:
        w: The weights, an array of a floating dtype (float16, bfloat16, float32, float64).
        max_value: The largest norm a node may have, ``>= 0``.
        axis: The axis or axes each norm is taken over; ``0`` gives one norm per column of a
            Keras ``Dense`` kernel ``(in, out)``; ``None`` treats the array as a single node.
        out: An array of the shape and dtype of ``w`` to write into (NumPy and torch only);
            ``out=w`` projects in place without a copy of ``w``.
        xp: The array namespace (``numpy``, ``torch``, ``keras.ops``, ...); inferred from ``w``
            when omitted.

    Returns:
        The projected weights, with the dtype of ``w`` (``out`` when it is given). Norms of
        half-precision weights are accumulated in float32.

    Raises:
        TypeError: ``w`` does not have a floating dtype.
        ValueError: ``max_value`` is negative or not finite, or ``axis`` does not fit ``w``.
            Nothing is modified when an error is raised.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import max_norm
        >>> w = np.array([[3.0, 0.3], [4.0, 0.4]])  # column norms 5 and 0.5
        >>> max_norm(w, max_value=1.0)
        array([[0.6, 0.3],
               [0.8, 0.4]])
        >>> _ = max_norm(w, 1.0, out=w)  # in place
        >>> w[:, 0]
        array([0.6, 0.8])
    """
    c = check_value("max_value", max_value)
    if c == 0:  # the ball is the origin: every node goes to zero, however small, but a node
        # whose norm is NaN keeps its values, as with any other max_value.
        return _rescale(
            w, axis, lambda n, acc, xp: xp.where(xp.isnan(n), 1.0, xp.zeros_like(n)), out, xp
        )

    def factor(n: Any, acc: str, xp: Any) -> Any:
        # Exactly 1 inside the ball (and for a NaN norm); c / n outside, where n > c > 0.
        outside = n > c
        return xp.where(outside, xp.divide(c, xp.where(outside, n, 1.0)), 1.0)

    return _rescale(w, axis, factor, out, xp)


def unit_norm(w: Any, axis: Axis = 0, *, out: Any = None, xp: Any = None) -> Any:
    """Scale every node to unit L2 norm: ``x / ‖x‖``.

    An all-zero node has no direction and stays zero (never NaN). ``keras.constraints.UnitNorm``
    divides by ``ε + ‖x‖`` with ``ε = 1e-7``, so its nodes fall short of norm 1 by about 1e-7;
    the results agree with it to about 1e-6 relative in float32 for nodes whose norm is not tiny.

    Args:
        w: The weights, an array of a floating dtype.
        axis: The axis or axes each norm is taken over (see :func:`max_norm`).
        out: An array of the shape and dtype of ``w`` to write into (NumPy and torch only).
        xp: The array namespace; inferred from ``w`` when omitted.

    Returns:
        The normalised weights, with the dtype of ``w``.

    Raises:
        TypeError: ``w`` does not have a floating dtype.
        ValueError: ``axis`` does not fit ``w``. Nothing is modified when an error is raised.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import unit_norm
        >>> unit_norm(np.array([[3.0, 0.0], [4.0, 0.0]]))
        array([[0.6, 0. ],
               [0.8, 0. ]])
    """
    return _rescale(w, axis, _to_norm(lambda n, xp: 1.0), out, xp)


def min_max_norm(
    w: Any,
    min_value: float = 0.0,
    max_value: float = 1.0,
    rate: float = 1.0,
    axis: Axis = 0,
    *,
    out: Any = None,
    xp: Any = None,
) -> Any:
    """Move every node's L2 norm into ``[min_value, max_value]``, fully or by a fraction ``rate``.

    With ``n = ‖x‖`` the node becomes ``x · d / n`` where
    ``d = rate · clip(n, min_value, max_value) + (1 − rate) · n``. With ``rate=1`` this is the
    projection ``argmin_y ‖x − y‖ s.t. min_value ≤ ‖y‖ ≤ max_value`` for non-zero nodes; a
    smaller rate moves the norm part of the way at each call. Nodes already inside the interval
    come back unchanged bit for bit; an all-zero node stays zero (never NaN).

    ``keras.constraints.MinMaxNorm`` divides by ``ε + n`` with ``ε = 1e-7``; the results agree
    with it to about 1e-6 relative in float32 for nodes whose norm is not tiny.

    Args:
        w: The weights, an array of a floating dtype.
        min_value: The smallest norm a non-zero node may have, ``>= 0``.
        max_value: The largest norm a node may have, ``>= min_value``.
        rate: The fraction of the way to the interval moved per call, in ``[0, 1]``.
        axis: The axis or axes each norm is taken over (see :func:`max_norm`).
        out: An array of the shape and dtype of ``w`` to write into (NumPy and torch only).
        xp: The array namespace; inferred from ``w`` when omitted.

    Returns:
        The rescaled weights, with the dtype of ``w``.

    Raises:
        TypeError: ``w`` does not have a floating dtype.
        ValueError: A bound is negative or not finite, ``min_value > max_value``, ``rate`` is
            outside ``[0, 1]``, or ``axis`` does not fit ``w``. Nothing is modified then.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import min_max_norm
        >>> w = np.array([[0.3, 3.0, 1.2], [0.4, 4.0, 0.0]])  # column norms 0.5, 5 and 1.2
        >>> min_max_norm(w, min_value=1.0, max_value=2.0)
        array([[0.6, 1.2, 1.2],
               [0.8, 1.6, 0. ]])
        >>> min_max_norm(w, 1.0, 2.0, rate=0.5)[:, 0]  # norm 0.5 -> 0.75
        array([0.45, 0.6 ])
    """
    low, high = check_bounds(min_value, max_value)
    r = check_rate(rate)
    if r == 1.0:
        return _rescale(w, axis, _to_norm(lambda n, xp: xp.clip(n, low, high)), out, xp)
    # n + r·(clip(n) − n) equals the convex combination and is exactly n inside the interval.
    partial = _to_norm(lambda n, xp: n + r * (xp.clip(n, low, high) - n))
    return _rescale(w, axis, partial, out, xp)


def non_neg(w: Any, *, out: Any = None, xp: Any = None) -> Any:
    """Set negative entries to zero: ``argmin_y ‖x − y‖ s.t. y ≥ 0``, entry by entry.

    Positive entries and NaN come back unchanged; a ``-0.0`` may come back as ``+0.0`` (the two
    compare equal). This is ``maximum(w, 0)``, as in ``keras.constraints.NonNeg``.

    Args:
        w: The weights, an array of a floating dtype.
        out: An array of the shape and dtype of ``w`` to write into (NumPy and torch only).
        xp: The array namespace; inferred from ``w`` when omitted.

    Returns:
        The weights with negative entries replaced by ``0.0``, with the dtype of ``w``.

    Raises:
        TypeError: ``w`` does not have a floating dtype. Nothing is modified then.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import non_neg
        >>> non_neg(np.array([-1.5, 0.0, 2.0]))
        array([0., 0., 2.])
    """
    w, xp = namespace(w, xp)
    float_dtype(w)
    check_out(out, w, xp)
    return zero_negatives(w, out, xp)


def copy_into(w: Any, out: Any, xp: Any = None) -> Any:
    """Copy ``w`` into ``out`` (NumPy and torch), after the checks of the projections' ``out``."""
    w, xp = namespace(w, xp)
    check_out(out, w, xp)
    return copy(w, out, xp)

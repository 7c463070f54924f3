"""The per-node projections, written once against an array namespace ``xp``.

Each node (one index of the axes the norm is *not* taken over) is rescaled by a factor
``d(n) / n`` computed from its norm ``n``; nodes are independent of each other. The factors are
formed on the small array of norms with ``where``/``clip`` only (no Python branching on array
values), so the same code runs on NumPy arrays, torch tensors and, through ``keras.ops``, inside a
compiled Keras train step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._backends import prepare
from ._checks import Axis, check_bounds, check_fits, check_rate, normalize_axes
from ._dtypes import accumulation_dtype, float_dtype
from ._shapes import for_weights

# The smallest norm whose square is a normal number in the accumulation dtype (sqrt of the
# smallest normal). Below it the squared norm is subnormal or zero: too imprecise to normalise.
SMALLEST_SCALABLE_NORM = {"float32": 2.0**-63, "float64": 2.0**-511}

Factor = Callable[..., Any]
"""``factor(n, acc, xp, *parameters)``: maps the per-node norms ``n`` (in the accumulation dtype
called ``acc``, namespace ``xp``) to the factor each node is multiplied by."""


def rescale(
    w: Any,
    axis: Axis,
    out: Any,
    xp: Any,
    bounds: Mapping[str, float],
    factor: Factor,
    *parameters: Any,
) -> Any:
    """Multiply every node of ``w`` by ``factor(n, acc, xp, *parameters)``, ``n`` being the
    node norms: the one computation behind every norm projection. The parameters are checked
    already; ``w``, ``axis``, ``out`` and ``xp`` are checked here, and that the ``bounds`` (the
    parameters by name) fit the dtype of ``w``, before anything is written."""
    w, backend = prepare(w, xp)
    name = float_dtype(w)
    check_fits(name, **bounds)
    acc = accumulation_dtype(name)
    axes = normalize_axes(axis, tuple(w.shape))
    backend.check_out(out, w)
    n = backend.norms(w, axes, acc)
    return backend.multiply(w, factor(n, acc, backend.xp, *parameters), out)


# -- the per-node factors: where/clip on the small array of norms, no branching on values ------


def max_norm_factor(n: Any, acc: str, xp: Any, max_value: float) -> Any:
    """The factor of :func:`max_norm`: ``c / n`` outside the ball, exactly 1 inside it (and for
    a NaN norm); with ``c == 0`` every node goes to zero, however small, except NaN nodes."""
    if max_value == 0:  # the ball is the origin
        return xp.where(xp.isnan(n), 1.0, xp.zeros_like(n))
    outside = n > max_value
    return xp.where(outside, xp.divide(max_value, xp.where(outside, n, 1.0)), 1.0)


def _to_norm(target: Any, n: Any, acc: str, xp: Any) -> Any:
    """The factor ``target / n`` that gives each node the norm ``target`` (an array like ``n``
    or a number).

    Nodes whose norm is below ``SMALLEST_SCALABLE_NORM`` (all-zero nodes included) or NaN keep
    their values, so a zero node never becomes NaN and ``target / n`` stays finite. Where
    ``target == n`` the factor is exactly 1, without a division (on GPUs, float32 division is
    not always correctly rounded: ``n / n`` can be ``1 - 2**-24``), and the node comes back bit
    for bit.
    """
    divide = (n >= SMALLEST_SCALABLE_NORM[acc]) & (target != n)
    return xp.where(divide, target / xp.where(divide, n, 1.0), 1.0)


def unit_norm_factor(n: Any, acc: str, xp: Any) -> Any:
    """The factor of :func:`unit_norm`: ``1 / n``; zero, tiny and NaN nodes keep their values."""
    return _to_norm(1.0, n, acc, xp)


def min_max_norm_factor(
    n: Any, acc: str, xp: Any, min_value: float, max_value: float, rate: float
) -> Any:
    """The factor of :func:`min_max_norm`: ``d / n`` with ``d`` the norm moved ``rate`` of the
    way into ``[min_value, max_value]``; exactly 1 inside the interval."""
    if rate == 1.0:
        return _to_norm(xp.clip(n, min_value, max_value), n, acc, xp)
    # n + r·(clip(n) − n) equals the convex combination and is exactly n inside the interval.
    return _to_norm(n + rate * (xp.clip(n, min_value, max_value) - n), n, acc, xp)


def max_norm(
    w: Any, max_value: float = 2.0, axis: Axis = 0, *, out: Any = None, xp: Any = None
) -> Any:
    """Project every node onto the L2 ball of radius ``max_value``.

    For each node ``x``: ``argmin_y ‖x − y‖ s.t. ‖y‖ ≤ max_value``, that is
    ``x · c / max(‖x‖, c)`` with ``c = max_value``. Nodes inside the ball come back unchanged bit
    for bit; nodes outside are scaled onto its boundary. With ``max_value=0`` every node becomes
    zero. A node whose norm is NaN is left as it is, whatever ``max_value``. This is the
    max-norm regulariser of Srivastava et al. (2014), usually with ``max_value`` between 1 and 4.

    ``keras.constraints.MaxNorm`` computes ``x · clip(‖x‖, 0, c) / (ε + ‖x‖)`` with
    ``ε = 1e-7``: it slightly shrinks nodes it should leave alone and is not idempotent. The
    results agree with it to about 1e-6 relative in float32 for nodes whose norm is not tiny.

    Args:
        w: The weights, an array of a floating dtype (float16, bfloat16, float32, float64).
        max_value: The largest norm a node may have, ``>= 0`` (a number or a 0-d array), or a
            rule of the weights' shape such as ``"sqrt(fan_in)"`` (``fan_in`` the entries of
            a node).
        axis: The axis or axes each norm is taken over; ``0`` gives one norm per column of a
            Keras ``Dense`` kernel ``(in, out)``; ``None`` treats the array as a single node.
        out: An array of the shape and dtype of ``w`` to write into (NumPy and torch only);
            ``out=w`` projects in place without a copy of ``w``. A torch ``out`` must be a
            dense tensor on the device of ``w`` that can be written in place, and share no
            memory with ``w`` unless it is ``w`` (or the same memory in the same layout).
        xp: The array namespace (``numpy``, ``torch``, ``keras.ops``, ``jax.numpy``, an
            array-API namespace); inferred from ``w`` when omitted. ``numpy`` and ``keras.ops``
            convert ``w``; the others need an array of their own.

    Returns:
        The projected weights, with the dtype of ``w`` (``out`` when it is given). Norms of
        half-precision weights are accumulated in float32.

    Raises:
        TypeError: ``w`` does not have a floating dtype, ``xp`` is not an array namespace or
            ``w`` is not one of its arrays, or ``out`` is not an array like ``w``.
        ValueError: ``max_value`` is negative, not finite or beyond the range of the dtype of
            ``w``, ``axis`` does not fit ``w``, or ``out`` cannot take the result. Nothing is
            modified when an error is raised.

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
    c = for_weights("max_value", max_value, w, axis)
    return rescale(w, axis, out, xp, {"max_value": c}, max_norm_factor, c)


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
    return rescale(w, axis, out, xp, {}, unit_norm_factor)


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
        min_value: The smallest norm a non-zero node may have, ``>= 0``, or a rule such as
            ``"sqrt(fan_in)"`` (see :func:`max_norm`).
        max_value: The largest norm a node may have, ``>= min_value``, or a rule.
        rate: The fraction of the way to the interval moved per call, in ``[0, 1]``.
        axis: The axis or axes each norm is taken over (see :func:`max_norm`).
        out: An array of the shape and dtype of ``w`` to write into (NumPy and torch only).
        xp: The array namespace; inferred from ``w`` when omitted.

    Returns:
        The rescaled weights, with the dtype of ``w``.

    Raises:
        TypeError: ``w`` does not have a floating dtype.
        ValueError: A bound is negative, not finite or beyond the range of the dtype of ``w``,
            ``min_value > max_value``, ``rate`` is outside ``[0, 1]``, or ``axis`` does not fit
            ``w``. Nothing is modified then.

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
    if isinstance(min_value, str) or isinstance(max_value, str):  # rules of the weights' shape
        min_value = for_weights("min_value", min_value, w, axis)
        max_value = for_weights("max_value", max_value, w, axis)
    low, high = check_bounds(min_value, max_value)
    bounds = {"min_value": low, "max_value": high}
    return rescale(w, axis, out, xp, bounds, min_max_norm_factor, low, high, check_rate(rate))


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
    w, backend = prepare(w, xp)
    float_dtype(w)
    backend.check_out(out, w)
    return backend.zero_negatives(w, out)


def copy_into(w: Any, out: Any, xp: Any = None) -> Any:
    """Copy ``w`` into ``out`` (NumPy and torch), after the checks of the projections' ``out``."""
    w, backend = prepare(w, xp)
    backend.check_out(out, w)
    return backend.copy_into(w, out)

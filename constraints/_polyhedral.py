"""Box, simplex and L1 constraints: entry-wise clipping and exact per-node projections onto
polyhedra (and one box-ball intersection), written once against an array namespace ``xp``.

``clip`` works entry by entry. The other three move each node (one index of the axes the
reduction does *not* run over) to the nearest point of a convex set; they sort each node, so the
node's entries are first moved to one trailing axis ("rows"). Thresholds are found in closed form
from the sorted node with ``max``/``where`` only: no Python branching on array values, no host
synchronisation on torch, and the same code runs inside compiled Keras/TensorFlow and JAX
functions.

Written once, like ``_projections.py``: the operations that each array family spells its own way
(sorting along the last axis, cumulative sums, moving axes, clipping, writing into ``out``) are
methods of the family's backend (``weight_constraints._backends``), chosen once per call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ._backends import Backend, prepare
from ._checks import Axis, check_box, check_clip_bounds, check_fits, normalize_axes
from ._dtypes import accumulation_dtype, dtype_name, eps, float_dtype, in_range
from ._shapes import for_weights

SUM_ROUNDINGS = 4
"""How far the sum (simplex) or L1 norm (L1 ball) of a node may lie from the radius for the node
to count as on its set: ``SUM_ROUNDINGS · eps · radius``, ``eps`` the spacing at 1 of the
weights' dtype. A projected node's sum is the radius to within the rounding of its entries
(``eps / 2 · radius`` when they are stored, plus the float32 or float64 rounding of the
computation), whatever the node's size; the projections keep such a node as it is (so projecting
twice changes nothing) and the audits accept it (``Simplex.roundings``). Entries below the
dtype's smallest normal number round to an absolute ``2**-25`` (float16): a float16 node of
``m`` such entries sums to the radius only within ``m · 2**-25`` (3% at ``2**20``), while its
distance to the set, at most ``sqrt(m) · 2**-25``, stays within ``4 · eps · radius``."""


# -- per node, on rows -----------------------------------------------------------------------------

Project = Callable[[Any, Backend, str], tuple[Any, Any]]
"""Maps rows ``y`` (shape ``(*nodes, m)``, accumulation dtype), the backend of their family and
the name of the weights' own dtype to the projected rows and a ``(*nodes, 1)`` boolean: the nodes
that come back exactly as they are."""


def _per_node(w: Any, axis: Axis, out: Any, xp: Any, project: Project, **bounds: float) -> Any:
    """Apply ``project`` to every node of ``w``: its entries are moved to one trailing axis,
    projected in the accumulation dtype, and moved back. Nodes that ``project`` keeps, and nodes
    holding NaN or ±inf, come back bit for bit. ``bounds`` are the constraint's parameters, each
    checked to fit the dtype of ``w`` before anything is computed."""
    w, backend = prepare(w, xp)
    xp = backend.xp
    name = float_dtype(w)
    check_fits(name, **bounds)
    acc = accumulation_dtype(name)
    shape = tuple(w.shape)
    axes = normalize_axes(axis, shape)
    backend.check_out(out, w)
    if math.prod(shape) == 0:  # no entries, nothing to project
        return backend.write(w, out)
    kept = tuple(i for i in range(len(shape)) if i not in axes)
    order = kept + axes
    moved = w if order == tuple(range(len(shape))) else backend.permute(w, order)
    node_shape = tuple(shape[i] for i in kept)
    reduced_shape = tuple(shape[i] for i in axes)
    rows = xp.reshape(moved, (*node_shape, math.prod(reduced_shape)))
    with backend.quiet():  # ±inf and huge entries: their nodes are kept, the warnings moot
        y = backend.astype(rows, acc)
        projected, keep = project(y, backend, name)
        keep = keep | ~xp.all(xp.isfinite(y), axis=-1, keepdims=True)
        result = xp.where(keep, rows, backend.astype(projected, name))
    result = xp.reshape(result, node_shape + reduced_shape)
    if moved is not w:
        result = backend.permute(result, tuple(sorted(range(len(order)), key=order.__getitem__)))
    return backend.write(result, out)


def sum_slack(name: str, radius: float) -> float:
    """How far from ``radius`` the sum of a node stored in the dtype called ``name`` may lie
    for the node to count as on the simplex (or inside the L1 ball): ``SUM_ROUNDINGS · eps ·
    radius``, whatever the node's size.

    Example:
        >>> sum_slack("bfloat16", 1.0) == 4 * 2.0**-7
        True
    """
    return SUM_ROUNDINGS * eps(name) * radius


def _threshold(u: Any, radius: float, backend: Backend) -> tuple[Any, Any]:
    """The simplex threshold of rows ``u`` sorted in descending order, ``max_k (S_k − r) / k``,
    with ``S_k`` the sum of the ``k`` largest entries (Condat 2016): the ``k`` that maximises it
    is the number of entries left positive, so no gather is needed.

    Returned as ``(top, t)``, the threshold being ``top + t`` with ``top = u_1`` the largest
    entry: subtract ``top`` from an entry, then ``t``. The sums run over ``u − top``, whose
    entries that stay positive lie within ``r`` of 0, so their rounding is relative to ``r``,
    not to the entries' magnitude (``[1000, 1000.5]`` onto the unit simplex in float32 sums to 1
    within ``eps``, not within ``1000 eps``). Where the family's running sum rounds at every
    entry (NumPy's and TensorFlow's, torch's in float64: some ``100 eps`` over ``2**20``
    entries; see ``Backend.accurate_cumsum``), ``t`` is then corrected by one Newton step on
    ``Σ max(u − top − t, 0) = r``, whose sum is the backend's accurate (pairwise or tree) one:
    the projected node sums to ``r`` within a few roundings, however long it is."""
    top = u[..., :1]
    shifted = u - top
    sums = backend.cumsum_last(shifted)
    t = backend.max_last((sums - radius) / backend.counts(u.shape[-1], u))
    if backend.accurate_cumsum(dtype_name(u)):
        return top, t
    above = shifted - t
    positive = above > 0
    excess = backend.sum_last(backend.xp.where(positive, above, 0.0)) - radius
    count = backend.sum_last(backend.astype(positive, dtype_name(u)))
    step = backend.xp.where(count > 0, excess / backend.xp.where(count > 0, count, 1.0), 0.0)
    return top, t + step


# -- the constraints -------------------------------------------------------------------------------


def clip(w: Any, lower: float, upper: float, *, out: Any = None, xp: Any = None) -> Any:
    """Clip every entry to ``[lower, upper]``: ``min(max(w, lower), upper)``, entry by entry.

    This is the projection ``argmin_y ‖x − y‖ s.t. lower ≤ y ≤ upper`` (weight clipping, as in
    the critic of a Wasserstein GAN). Entries inside come back unchanged bit for bit and NaN stays
    NaN. ``clip(w, 0, inf)`` is :func:`non_neg`.

    Args:
        w: The weights, an array of a floating dtype.
        lower: The smallest value an entry may have; may be ``-inf``.
        upper: The largest value an entry may have, ``>= lower``; may be ``inf`` (not both
            the same infinity).
        out: An array of the shape and dtype of ``w`` to write into (NumPy and torch only).
        xp: The array namespace; inferred from ``w`` when omitted.

    Returns:
        The clipped weights, with the dtype of ``w``.

    Raises:
        TypeError: ``w`` does not have a floating dtype.
        ValueError: A bound is NaN or not a number, ``lower > upper``, both bounds are the same
            infinity, or a finite bound lies beyond the range of the dtype of ``w``. Nothing is
            modified when an error is raised.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import clip
        >>> clip(np.array([-0.5, 0.005, 2.0]), -0.01, 0.01)
        array([-0.01 ,  0.005,  0.01 ])
        >>> clip(np.array([-1.5, 2.0]), 0.0, float("inf"))  # non_neg
        array([0., 2.])
    """
    low, high = check_clip_bounds(lower, upper)
    w, backend = prepare(w, xp)
    name = float_dtype(w)
    check_fits(name, lower=low, upper=high)
    backend.check_out(out, w)
    result = backend.clip(w, low, high, out)
    return result if out is not None else backend.astype(result, name)


def box_max_norm(
    w: Any,
    lower: float,
    upper: float,
    max_value: float,
    axis: Axis = 0,
    *,
    out: Any = None,
    xp: Any = None,
) -> Any:
    """Project every node onto the box ``[lower, upper]`` intersected with the L2 ball of radius
    ``max_value``: ``argmin_y ‖x − y‖ s.t. lower ≤ y_i ≤ upper, ‖y‖ ≤ max_value``.

    The box must contain 0. The projection is ``clip(x / (1 + λ), lower, upper)`` with the
    smallest ``λ ≥ 0`` that meets the norm bound: clipping alone when ``clip(x)`` is inside the
    ball. With ``lower = 0, upper = inf`` it is clamp-then-scale,
    ``max_norm(non_neg(x), max_value)``; with an infinite box it is :func:`max_norm`. ``λ`` is
    found exactly: the norm of ``clip(s·x)`` is piecewise quadratic in ``s = 1 / (1 + λ)``,
    with a knee where an entry reaches its bound; sorting the knees gives, for each piece, the
    ``s`` where the norm reaches ``max_value``, and the largest of these is the solution.

    Nodes inside the set come back unchanged bit for bit. Nodes holding NaN or ±inf come back
    unchanged (NaN never leaks into other nodes). Computed in float32 for half precision.

    Args:
        w: The weights, an array of a floating dtype.
        lower: The smallest value an entry may have, ``<= 0``; may be ``-inf``.
        upper: The largest value an entry may have, ``>= 0``; may be ``inf``.
        max_value: The largest L2 norm a node may have, ``>= 0``, or a rule such as
            ``"sqrt(fan_in)"`` (see :func:`max_norm`).
        axis: The axis or axes each node spans (see :func:`max_norm`); ``None`` for one node.
        out: An array of the shape and dtype of ``w`` to write into (NumPy and torch only).
        xp: The array namespace; inferred from ``w`` when omitted.

    Returns:
        The projected weights, with the dtype of ``w``.

    Raises:
        TypeError: ``w`` does not have a floating dtype.
        ValueError: A bound is NaN, ``lower > 0`` or ``upper < 0``, ``max_value`` is negative
            or not finite, a finite bound lies beyond the range of the dtype of ``w``, or
            ``axis`` does not fit ``w``. Nothing is modified then.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import box_max_norm
        >>> w = np.array([[3.0, -0.5, 0.3], [4.0, 2.0, 0.4]])  # one node per column
        >>> box_max_norm(w, lower=0.0, upper=np.inf, max_value=1.0)
        array([[0.6, 0. , 0.3],
               [0.8, 1. , 0.4]])
        >>> box_max_norm(np.array([3.0, 1.0]), -1.0, 1.0, max_value=1.25)  # λ = 1
        array([1. , 0.75])
    """
    low, high = check_box(lower, upper)
    c = for_weights("max_value", max_value, w, axis)

    def project(y: Any, backend: Backend, name: str) -> tuple[Any, Any]:
        xp = backend.xp
        lo, hi = low, high
        c2 = in_range(c * c, dtype_name(y))  # c fits the weights' dtype, c * c may not
        clipped = backend.clip(y, lo, hi)
        inside = xp.all(clipped == y, axis=-1, keepdims=True)
        # Knee of each entry: the s where s·|x_i| reaches its bound (1 if it never does for s ≤
        # 1). Sorted by knee, the first k entries are the ones clipped on the k-th piece.
        size, bound = xp.abs(y), xp.abs(clipped)
        moving = size > 0
        knee = xp.where(moving, bound / xp.where(moving, size, 1.0), 1.0)
        ys = backend.take_last(y, backend.argsort_last(knee))
        size, bound = xp.abs(ys), xp.abs(backend.clip(ys, lo, hi))
        held = backend.cumsum_last(bound * bound)  # squared norm of the first k, clipped
        free = backend.flip_last(backend.cumsum_last(backend.flip_last(size * size)))  # the rest
        total = held[..., -1:]  # ‖clip(x)‖²
        # Piece k = 0 (nothing clipped): s = c / ‖x‖; pieces k ≥ 1: s² = (c² − held) / free.
        whole = free[..., :1]
        best = xp.sqrt(c2 / xp.where(whole > 0, whole, 1.0))
        if y.shape[-1] > 1:
            room, rest = c2 - held[..., :-1], free[..., 1:]
            ok = (room >= 0) & (rest > 0)
            pieces = xp.sqrt(xp.where(ok, room, 1.0) / xp.where(ok, rest, 1.0))
            best = xp.maximum(best, backend.max_last(xp.where(ok, pieces, 0.0)))
        s = xp.where((total <= c2) | (best > 1), 1.0, best)
        return backend.clip(s * y, lo, hi), inside & (total <= c2)

    return _per_node(w, axis, out, xp, project, lower=low, upper=high, max_value=c)


def simplex(w: Any, radius: float = 1.0, axis: Axis = 0, *, out: Any = None, xp: Any = None) -> Any:
    """Project every node onto the simplex ``{y : y_i ≥ 0, Σ y_i = radius}``.

    ``argmin_y ‖x − y‖`` over the simplex is ``max(x − τ, 0)`` with the threshold
    ``τ = max_k (S_k − radius) / k``, ``S_k`` the sum of the ``k`` largest entries of the node
    (Duchi et al. 2008; the ``max`` form is Condat 2016): one sort per node, no iteration.
    Use it for mixture weights that must stay non-negative and sum to a fixed total.

    Every node is moved onto the simplex: an all-zero node becomes ``radius / m`` in each of its
    ``m`` entries. Nodes already on it come back unchanged bit for bit, and so does every
    projected node, so ``simplex(simplex(w)) == simplex(w)`` bit for bit: a node counts as on
    the simplex when its entries are ``≥ 0`` and their sum (in the accumulation dtype) is within
    ``4 · eps · radius`` of ``radius`` (:data:`SUM_ROUNDINGS`), ``eps`` the spacing of the dtype
    of ``w`` at 1, whatever the node's size: a projected node's sum carries the rounding of its
    stored entries, at most ``eps / 2 · radius``. Such a node lies within ``4 · eps · radius``
    of the exact projection. The threshold is summed over the entries minus the node's largest
    and corrected with an accurate sum, so its rounding is relative to ``radius``, not to the
    entries' magnitude nor to the node's size. Nodes holding NaN or ±inf come back unchanged.
    Computed in float32 for half precision.

    Args:
        w: The weights, an array of a floating dtype.
        radius: The sum of every node, ``>= 0``, or a rule such as ``"fan_in"`` (see
            :func:`max_norm`).
        axis: The axis or axes each node spans (see :func:`max_norm`); ``None`` for one node.
        out: An array of the shape and dtype of ``w`` to write into (NumPy and torch only).
        xp: The array namespace; inferred from ``w`` when omitted.

    Returns:
        The projected weights, with the dtype of ``w``.

    Raises:
        TypeError: ``w`` does not have a floating dtype.
        ValueError: ``radius`` is negative or not finite, beyond the range of the dtype of
            ``w``, or ``axis`` does not fit ``w``. Nothing is modified then.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import simplex
        >>> w = np.array([[0.5, 2.0, 0.0], [1.5, 0.0, 0.0]])  # one node per column
        >>> simplex(w)
        array([[0. , 1. , 0.5],
               [1. , 0. , 0.5]])
    """
    r = for_weights("radius", radius, w, axis)

    def project(y: Any, backend: Backend, name: str) -> tuple[Any, Any]:
        xp = backend.xp
        u = -backend.sort_last(-y)
        top, t = _threshold(u, r, backend)
        shifted = (y - top) - t
        gap = backend.sum_last(y) - r
        on = (u[..., -1:] >= 0) & (xp.abs(gap) <= sum_slack(name, r))
        return xp.where(shifted > 0, shifted, 0.0), on

    return _per_node(w, axis, out, xp, project, radius=r)


def max_l1_norm(
    w: Any, max_value: float, axis: Axis = 0, *, out: Any = None, xp: Any = None
) -> Any:
    """Project every node onto the L1 ball: ``argmin_y ‖x − y‖₂ s.t. Σ |y_i| ≤ max_value``.

    Nodes outside are soft-thresholded, ``sign(x) · max(|x| − τ, 0)``, with the simplex
    threshold of ``|x|`` (see :func:`simplex`): small entries become exactly zero, which makes
    the nodes sparse. Nodes inside the ball come back unchanged bit for bit (an all-zero node
    stays zero), and so does every projected node (``max_l1_norm(max_l1_norm(w)) ==
    max_l1_norm(w)`` bit for bit): a node counts as inside when its L1 norm (in the accumulation
    dtype) is at most ``max_value · (1 + 4 · eps)`` (:data:`SUM_ROUNDINGS`), ``eps`` the
    spacing of the dtype of ``w`` at 1, whatever the node's size: the rounding a projected
    node's norm carries. Nodes holding NaN or ±inf come back unchanged. Computed in float32 for
    half precision.

    Args:
        w: The weights, an array of a floating dtype.
        max_value: The largest L1 norm a node may have, ``>= 0``, or a rule such as
            ``"sqrt(fan_in)"`` (see :func:`max_norm`).
        axis: The axis or axes each node spans (see :func:`max_norm`); ``None`` for one node.
        out: An array of the shape and dtype of ``w`` to write into (NumPy and torch only).
        xp: The array namespace; inferred from ``w`` when omitted.

    Returns:
        The projected weights, with the dtype of ``w``.

    Raises:
        TypeError: ``w`` does not have a floating dtype.
        ValueError: ``max_value`` is negative or not finite, beyond the range of the dtype of
            ``w``, or ``axis`` does not fit ``w``. Nothing is modified then.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import max_l1_norm
        >>> w = np.array([[3.0, 0.25], [-2.0, 0.5]])  # L1 norms 5 and 0.75
        >>> max_l1_norm(w, max_value=2.0)  # the first node: τ = 1.5
        array([[ 1.5 ,  0.25],
               [-0.5 ,  0.5 ]])
    """
    c = for_weights("max_value", max_value, w, axis)

    def project(y: Any, backend: Backend, name: str) -> tuple[Any, Any]:
        xp = backend.xp
        size = xp.abs(y)
        u = -backend.sort_last(-size)
        top, t = _threshold(u, c, backend)
        # A threshold <= 0 (top + t <= 0) only for nodes inside: no entry is moved up.
        shrunk = xp.where(t > -top, (size - top) - t, size)
        inside = backend.sum_last(size) - c <= sum_slack(name, c)
        return xp.where(shrunk > 0, xp.sign(y) * shrunk, 0.0), inside

    return _per_node(w, axis, out, xp, project, max_value=c)

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
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ._backends import Backend, prepare
from ._checks import DEFAULT_AXIS, Axis, check_axis, check_value, normalize_axes
from ._dtypes import accumulation_dtype, dtype_name, float_dtype
from ._objects import Constraint, saved_name

# -- scalars in the dtype they are compared with ---------------------------------------------------


# The largest finite value of each dtype (plain floats: no NumPy call in traced code).
_LARGEST = {
    "float16": 65504.0,
    "bfloat16": 3.3895313892515355e38,
    "float32": 3.4028234663852886e38,
    "float64": 1.7976931348623157e308,
}


def _in_range(value: float, name: str) -> float:
    """A finite ``value`` clamped into the finite range of the dtype called ``name`` (infinite
    values stay infinite): frameworks refuse (torch) or warn (NumPy) when a scalar overflows
    the dtype, and a bound beyond the range holds every finite entry alike."""
    if math.isinf(value):
        return value
    return min(max(value, -_LARGEST[name]), _LARGEST[name])


# -- validation ------------------------------------------------------------------------------------


def _check_real(name: str, value: object) -> float:
    """``value`` as a float: a real number, infinite allowed, NaN not."""
    if type(value) is not float and (
        isinstance(value, bool) or not isinstance(value, numbers.Real)
    ):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{name} must not be NaN, got {value!r}")
    return number


def check_clip_bounds(lower: object, upper: object) -> tuple[float, float]:
    """Validate the bounds of :func:`clip`: ``lower <= upper``, not both the same infinity."""
    low, high = _check_real("lower", lower), _check_real("upper", upper)
    if low > high:
        raise ValueError(f"lower must be <= upper, got lower={lower!r}, upper={upper!r}")
    if low == high and math.isinf(low):
        raise ValueError(
            f"lower and upper cannot both be {low}: no number lies between them, got "
            f"lower={lower!r}, upper={upper!r}"
        )
    return low, high


def check_box(lower: object, upper: object) -> tuple[float, float]:
    """Validate the box of :func:`box_max_norm`: ``lower <= 0 <= upper``."""
    low, high = check_clip_bounds(lower, upper)
    if low > 0:
        raise ValueError(f"lower must be <= 0 (the box must contain 0), got lower={lower!r}")
    if high < 0:
        raise ValueError(f"upper must be >= 0 (the box must contain 0), got upper={upper!r}")
    return low, high


# -- per node, on rows -----------------------------------------------------------------------------

Project = Callable[[Any, Backend, str], tuple[Any, Any]]
"""Maps rows ``y`` (shape ``(*nodes, m)``, accumulation dtype), the backend of their family and
the name of the weights' own dtype to the projected rows and a ``(*nodes, 1)`` boolean: the nodes
that come back exactly as they are."""

# The spacing of each dtype at 1: the rounding of a value stored in it, relative to the value.
_EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}


def _per_node(w: Any, axis: Axis, project: Project, out: Any, xp: Any) -> Any:
    """Apply ``project`` to every node of ``w``: its entries are moved to one trailing axis,
    projected in the accumulation dtype, and moved back. Nodes that ``project`` keeps, and nodes
    holding NaN or ±inf, come back bit for bit."""
    w, backend = prepare(w, xp)
    xp = backend.xp
    name = float_dtype(w)
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
    y = backend.astype(rows, acc)
    projected, keep = project(y, backend, name)
    keep = keep | ~xp.all(xp.isfinite(y), axis=-1, keepdims=True)
    result = xp.where(keep, rows, backend.astype(projected, name))
    result = xp.reshape(result, node_shape + reduced_shape)
    if moved is not w:
        result = backend.permute(result, tuple(sorted(range(len(order)), key=order.__getitem__)))
    return backend.write(result, out)


def _threshold(u: Any, radius: float, backend: Backend) -> tuple[Any, Any]:
    """The simplex threshold of rows ``u`` sorted in descending order, ``max_k (S_k − r) / k``,
    with ``S_k`` the sum of the ``k`` largest entries (Condat 2016): the ``k`` that maximises it
    is the number of entries left positive, so no gather is needed.

    Returned as ``(top, t)``, the threshold being ``top + t`` with ``top = u_1`` the largest
    entry: subtract ``top`` from an entry, then ``t``. The sums run over ``u − top``, whose
    entries that stay positive lie within ``r`` of 0, so their rounding is relative to ``r``,
    not to the entries' magnitude (``[1000, 1000.5]`` onto the unit simplex in float32 sums to 1
    within ``eps``, not within ``1000 eps``)."""
    top = u[..., :1]
    sums = backend.cumsum_last(u - top)
    return top, backend.max_last((sums - radius) / backend.counts(u.shape[-1], u))


# -- the constraints -------------------------------------------------------------------------------


def clip(w: Any, lower: float, upper: float, *, out: Any = None, xp: Any = None) -> Any:
    """Clip every entry to ``[lower, upper]``: ``min(max(w, lower), upper)``, entry by entry.

    This is the projection ``argmin_y ‖x − y‖ s.t. lower ≤ y ≤ upper`` (weight clipping, as in
    the critic of a Wasserstein GAN). Entries inside come back unchanged bit for bit and NaN stays
    NaN. A finite bound beyond the range of the dtype of ``w`` acts as its largest finite value.
    ``clip(w, 0, inf)`` is :func:`non_neg`.

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
        ValueError: A bound is NaN or not a number, ``lower > upper``, or both bounds are the same
            infinity. Nothing is modified when an error is raised.

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
    backend.check_out(out, w)
    result = backend.clip(w, _in_range(low, name), _in_range(high, name), out)
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
        max_value: The largest L2 norm a node may have, ``>= 0``.
        axis: The axis or axes each node spans (see :func:`max_norm`); ``None`` for one node.
        out: An array of the shape and dtype of ``w`` to write into (NumPy and torch only).
        xp: The array namespace; inferred from ``w`` when omitted.

    Returns:
        The projected weights, with the dtype of ``w``.

    Raises:
        TypeError: ``w`` does not have a floating dtype.
        ValueError: A bound is NaN, ``lower > 0`` or ``upper < 0``, ``max_value`` is negative
            or not finite, or ``axis`` does not fit ``w``. Nothing is modified then.

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
    c = check_value("max_value", max_value)

    def project(y: Any, backend: Backend, name: str) -> tuple[Any, Any]:
        xp = backend.xp
        acc = dtype_name(y)
        lo, hi = _in_range(low, acc), _in_range(high, acc)
        c2 = _in_range(c * c, acc)
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

    return _per_node(w, axis, project, out, xp)


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
    ``m · eps · radius`` of ``radius``, ``eps`` the spacing of the dtype of ``w`` at 1 — the
    rounding a projected node's sum carries. Such a node is the exact projection to within
    ``eps · radius`` per entry, the rounding of the output itself. The threshold is summed over
    the entries minus the node's largest, so its rounding is relative to ``radius``, not to the
    entries' magnitude. Nodes holding NaN or ±inf come back unchanged. Computed in float32 for
    half precision.

    Args:
        w: The weights, an array of a floating dtype.
        radius: The sum of every node, ``>= 0``.
        axis: The axis or axes each node spans (see :func:`max_norm`); ``None`` for one node.
        out: An array of the shape and dtype of ``w`` to write into (NumPy and torch only).
        xp: The array namespace; inferred from ``w`` when omitted.

    Returns:
        The projected weights, with the dtype of ``w``.

    Raises:
        TypeError: ``w`` does not have a floating dtype.
        ValueError: ``radius`` is negative or not finite, or ``axis`` does not fit ``w``.
            Nothing is modified then.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import simplex
        >>> w = np.array([[0.5, 2.0, 0.0], [1.5, 0.0, 0.0]])  # one node per column
        >>> simplex(w)
        array([[0. , 1. , 0.5],
               [1. , 0. , 0.5]])
    """
    r = check_value("radius", radius)

    def project(y: Any, backend: Backend, name: str) -> tuple[Any, Any]:
        xp = backend.xp
        rr = _in_range(r, dtype_name(y))
        u = -backend.sort_last(-y)
        top, t = _threshold(u, rr, backend)
        shifted = (y - top) - t
        slack = _in_range(y.shape[-1] * _EPS[name] * r, dtype_name(y))
        gap = backend.cumsum_last(u)[..., -1:] - rr
        on = (u[..., -1:] >= 0) & (xp.abs(gap) <= slack)
        return xp.where(shifted > 0, shifted, 0.0), on

    return _per_node(w, axis, project, out, xp)


def max_l1_norm(
    w: Any, max_value: float, axis: Axis = 0, *, out: Any = None, xp: Any = None
) -> Any:
    """Project every node onto the L1 ball: ``argmin_y ‖x − y‖₂ s.t. Σ |y_i| ≤ max_value``.

    Nodes outside are soft-thresholded, ``sign(x) · max(|x| − τ, 0)``, with the simplex
    threshold of ``|x|`` (see :func:`simplex`): small entries become exactly zero, which makes
    the nodes sparse. Nodes inside the ball come back unchanged bit for bit (an all-zero node
    stays zero), and so does every projected node (``max_l1_norm(max_l1_norm(w)) ==
    max_l1_norm(w)`` bit for bit): a node counts as inside when its L1 norm (in the accumulation
    dtype) is at most ``max_value · (1 + m · eps)``, ``eps`` the spacing of the dtype of ``w`` at
    1 — the rounding a projected node's norm carries. Nodes holding NaN or ±inf come back
    unchanged. Computed in float32 for half precision.

    Args:
        w: The weights, an array of a floating dtype.
        max_value: The largest L1 norm a node may have, ``>= 0``.
        axis: The axis or axes each node spans (see :func:`max_norm`); ``None`` for one node.
        out: An array of the shape and dtype of ``w`` to write into (NumPy and torch only).
        xp: The array namespace; inferred from ``w`` when omitted.

    Returns:
        The projected weights, with the dtype of ``w``.

    Raises:
        TypeError: ``w`` does not have a floating dtype.
        ValueError: ``max_value`` is negative or not finite, or ``axis`` does not fit ``w``.
            Nothing is modified then.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import max_l1_norm
        >>> w = np.array([[3.0, 0.25], [-2.0, 0.5]])  # L1 norms 5 and 0.75
        >>> max_l1_norm(w, max_value=2.0)  # the first node: τ = 1.5
        array([[ 1.5 ,  0.25],
               [-0.5 ,  0.5 ]])
    """
    c = check_value("max_value", max_value)

    def project(y: Any, backend: Backend, name: str) -> tuple[Any, Any]:
        xp = backend.xp
        rr = _in_range(c, dtype_name(y))
        size = xp.abs(y)
        u = -backend.sort_last(-size)
        top, t = _threshold(u, rr, backend)
        # A threshold <= 0 (top + t <= 0) only for nodes inside: no entry is moved up.
        shrunk = xp.where(t > -top, (size - top) - t, size)
        bound = _in_range(c * (1 + y.shape[-1] * _EPS[name]), dtype_name(y))
        inside = backend.cumsum_last(u)[..., -1:] <= bound
        return xp.where(shrunk > 0, xp.sign(y) * shrunk, 0.0), inside

    return _per_node(w, axis, project, out, xp)


# -- objects ---------------------------------------------------------------------------------------


@saved_name
@dataclass(frozen=True)
class Clip(Constraint):
    """Entries clipped to ``[lower, upper]``; see :func:`clip`. ``Clip(0, inf)`` is ``NonNeg()``.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import Clip
        >>> constraint = Clip(-0.01, 0.01)
        >>> constraint
        Clip(lower=-0.01, upper=0.01)
        >>> constraint(np.array([0.5, -0.002]))
        array([ 0.01 , -0.002])
        >>> Clip.from_config(constraint.get_config()) == constraint
        True
    """

    lower: float
    upper: float

    name: ClassVar[str] = "clip"

    def __post_init__(self) -> None:
        low, high = check_clip_bounds(self.lower, self.upper)
        object.__setattr__(self, "lower", low)
        object.__setattr__(self, "upper", high)

    def __call__(self, w: Any, *, out: Any = None, xp: Any = None) -> Any:
        return clip(w, self.lower, self.upper, out=out, xp=xp)


@saved_name
@dataclass(frozen=True)
class BoxMaxNorm(Constraint):
    """Per-node projection onto a box (containing 0) within an L2 ball; see :func:`box_max_norm`.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import BoxMaxNorm
        >>> constraint = BoxMaxNorm(0.0, float("inf"), max_value=1.0)
        >>> constraint
        BoxMaxNorm(lower=0.0, upper=inf, max_value=1.0, axis=0)
        >>> constraint(np.array([[3.0], [-1.0], [4.0]]))
        array([[0.6],
               [0. ],
               [0.8]])
    """

    lower: float
    upper: float
    max_value: float
    axis: Axis = DEFAULT_AXIS

    name: ClassVar[str] = "box_max_norm"

    def __post_init__(self) -> None:
        low, high = check_box(self.lower, self.upper)
        object.__setattr__(self, "lower", low)
        object.__setattr__(self, "upper", high)
        object.__setattr__(self, "max_value", check_value("max_value", self.max_value))
        object.__setattr__(self, "axis", check_axis(self.axis))

    def __call__(self, w: Any, *, out: Any = None, xp: Any = None) -> Any:
        return box_max_norm(w, self.lower, self.upper, self.max_value, self.axis, out=out, xp=xp)


@saved_name
@dataclass(frozen=True)
class Simplex(Constraint):
    """Per-node projection onto the simplex of the given radius; see :func:`simplex`.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import Simplex
        >>> Simplex(axis=-1)(np.array([[2.0, 0.0, 1.0]]))
        array([[1., 0., 0.]])
    """

    radius: float = 1.0
    axis: Axis = DEFAULT_AXIS

    name: ClassVar[str] = "simplex"

    def __post_init__(self) -> None:
        object.__setattr__(self, "radius", check_value("radius", self.radius))
        object.__setattr__(self, "axis", check_axis(self.axis))

    def __call__(self, w: Any, *, out: Any = None, xp: Any = None) -> Any:
        return simplex(w, self.radius, self.axis, out=out, xp=xp)


@saved_name
@dataclass(frozen=True)
class MaxL1Norm(Constraint):
    """Per-node projection onto the L1 ball of radius ``max_value``; see :func:`max_l1_norm`.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import MaxL1Norm
        >>> MaxL1Norm(2.0, axis=None)(np.array([[3.0, -1.0], [0.5, 0.0]]))
        array([[2., 0.],
               [0., 0.]])
    """

    max_value: float
    axis: Axis = DEFAULT_AXIS

    name: ClassVar[str] = "max_l1_norm"

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_value", check_value("max_value", self.max_value))
        object.__setattr__(self, "axis", check_axis(self.axis))

    def __call__(self, w: Any, *, out: Any = None, xp: Any = None) -> Any:
        return max_l1_norm(w, self.max_value, self.axis, out=out, xp=xp)

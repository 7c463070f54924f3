"""The eight constraint kinds as immutable objects, with the parameters of ``keras.constraints``.

Each is a frozen dataclass: validated at construction, hashable, saved by its fields. Calling one
runs its projection (``_projections.py``, ``_polyhedral.py``) without validating again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ._base import Constraint, saved_name
from ._checks import (
    DEFAULT_AXIS,
    Axis,
    check_axis,
    check_bounds,
    check_box,
    check_clip_bounds,
    check_rate,
)
from ._polyhedral import SUM_ROUNDINGS, box_max_norm, clip, max_l1_norm, simplex
from ._projections import (
    max_norm_factor,
    min_max_norm_factor,
    non_neg,
    rescale,
    unit_norm_factor,
)
from ._shapes import Bound, check_bound, is_rule


@saved_name
@dataclass(frozen=True)
class MaxNorm(Constraint):
    """Per-node max-norm: every node's L2 norm at most ``max_value``; see :func:`max_norm`.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import MaxNorm
        >>> constraint = MaxNorm(max_value=1.0)
        >>> constraint
        MaxNorm(max_value=1.0, axis=0)
        >>> constraint(np.array([[3.0], [4.0]]))
        array([[0.6],
               [0.8]])
        >>> MaxNorm.from_config(constraint.get_config()) == constraint
        True
    """

    max_value: Bound = 2
    axis: Axis = DEFAULT_AXIS

    name: ClassVar[str] = "max_norm"
    rule_fields: ClassVar[tuple[str, ...]] = ("max_value",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_value", check_bound("max_value", self.max_value))
        object.__setattr__(self, "axis", check_axis(self.axis))

    def __call__(self, w: Any, *, out: Any = None, xp: Any = None) -> Any:
        if self.rules():
            return self.resolved(np.shape(w))(w, out=out, xp=xp)
        return rescale(w, self.axis, out, xp, self.bounds(), max_norm_factor, self.max_value)

    def bounds(self) -> dict[str, float]:
        return _numbers(max_value=self.max_value)

    def factor(self, n: Any, acc: str, xp: Any) -> Any:
        """The factor each node is multiplied by, from the node norms ``n`` (accumulated in the
        dtype called ``acc``, namespace ``xp``): the math of :func:`max_norm`, for callers that
        compute the norms themselves (the adapters' batched paths).

        Example:
            >>> import numpy as np
            >>> from weight_constraints import MaxNorm
            >>> MaxNorm(2.0).factor(np.array([1.0, 4.0, np.nan]), "float64", np)
            array([1. , 0.5, 1. ])
        """
        return max_norm_factor(n, acc, xp, _number(self, self.max_value))


@saved_name
@dataclass(frozen=True)
class UnitNorm(Constraint):
    """Per-node unit norm; see :func:`unit_norm`.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import UnitNorm
        >>> UnitNorm(axis=1)(np.array([[3.0, 4.0]]))
        array([[0.6, 0.8]])
    """

    axis: Axis = DEFAULT_AXIS

    name: ClassVar[str] = "unit_norm"

    def __post_init__(self) -> None:
        object.__setattr__(self, "axis", check_axis(self.axis))

    def __call__(self, w: Any, *, out: Any = None, xp: Any = None) -> Any:
        return rescale(w, self.axis, out, xp, {}, unit_norm_factor)

    def factor(self, n: Any, acc: str, xp: Any) -> Any:
        """The per-node factor of :func:`unit_norm` (see :meth:`MaxNorm.factor`).

        Example:
            >>> import numpy as np
            >>> from weight_constraints import UnitNorm
            >>> UnitNorm().factor(np.array([4.0, 0.0]), "float64", np)
            array([0.25, 1.  ])
        """
        return unit_norm_factor(n, acc, xp)


@saved_name
@dataclass(frozen=True)
class MinMaxNorm(Constraint):
    """Per-node norm kept in ``[min_value, max_value]``; see :func:`min_max_norm`.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import MinMaxNorm
        >>> MinMaxNorm(min_value=1.0, max_value=1.0)(np.array([[0.3], [0.4]]))
        array([[0.6],
               [0.8]])
    """

    min_value: Bound = 0.0
    max_value: Bound = 1.0
    rate: float = 1.0
    axis: Axis = DEFAULT_AXIS

    name: ClassVar[str] = "min_max_norm"
    rule_fields: ClassVar[tuple[str, ...]] = ("min_value", "max_value")

    def __post_init__(self) -> None:
        if is_rule(self.min_value) or is_rule(self.max_value):
            low = check_bound("min_value", self.min_value)
            high = check_bound("max_value", self.max_value)
        else:
            low, high = check_bounds(self.min_value, self.max_value)
        object.__setattr__(self, "min_value", low)
        object.__setattr__(self, "max_value", high)
        object.__setattr__(self, "rate", check_rate(self.rate))
        object.__setattr__(self, "axis", check_axis(self.axis))

    def __call__(self, w: Any, *, out: Any = None, xp: Any = None) -> Any:
        if self.rules():
            return self.resolved(np.shape(w))(w, out=out, xp=xp)
        parameters = self._parameters()
        return rescale(w, self.axis, out, xp, self.bounds(), min_max_norm_factor, *parameters)

    def bounds(self) -> dict[str, float]:
        return _numbers(min_value=self.min_value, max_value=self.max_value)

    def factor(self, n: Any, acc: str, xp: Any) -> Any:
        """The per-node factor of :func:`min_max_norm` (see :meth:`MaxNorm.factor`).

        Example:
            >>> import numpy as np
            >>> from weight_constraints import MinMaxNorm
            >>> MinMaxNorm(1.0, 2.0).factor(np.array([0.5, 1.5, 4.0]), "float64", np)
            array([2. , 1. , 0.5])
        """
        return min_max_norm_factor(n, acc, xp, *self._parameters())

    def _parameters(self) -> tuple[float, float, float]:
        return _number(self, self.min_value), _number(self, self.max_value), self.rate


@saved_name
@dataclass(frozen=True)
class NonNeg(Constraint):
    """Non-negative weights; see :func:`non_neg`.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import NonNeg
        >>> NonNeg()(np.array([-1.0, 2.0]))
        array([0., 2.])
    """

    name: ClassVar[str] = "non_neg"

    def __call__(self, w: Any, *, out: Any = None, xp: Any = None) -> Any:
        return non_neg(w, out=out, xp=xp)


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

    def bounds(self) -> dict[str, float]:
        return {"lower": self.lower, "upper": self.upper}


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
    max_value: Bound
    axis: Axis = DEFAULT_AXIS

    name: ClassVar[str] = "box_max_norm"
    rule_fields: ClassVar[tuple[str, ...]] = ("max_value",)

    def __post_init__(self) -> None:
        low, high = check_box(self.lower, self.upper)
        object.__setattr__(self, "lower", low)
        object.__setattr__(self, "upper", high)
        object.__setattr__(self, "max_value", check_bound("max_value", self.max_value))
        object.__setattr__(self, "axis", check_axis(self.axis))

    def __call__(self, w: Any, *, out: Any = None, xp: Any = None) -> Any:
        if self.rules():
            return self.resolved(np.shape(w))(w, out=out, xp=xp)
        c = _number(self, self.max_value)
        return box_max_norm(w, self.lower, self.upper, c, self.axis, out=out, xp=xp)

    def bounds(self) -> dict[str, float]:
        return _numbers(lower=self.lower, upper=self.upper, max_value=self.max_value)


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

    radius: Bound = 1.0
    axis: Axis = DEFAULT_AXIS

    name: ClassVar[str] = "simplex"
    roundings: ClassVar[float] = SUM_ROUNDINGS
    rule_fields: ClassVar[tuple[str, ...]] = ("radius",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "radius", check_bound("radius", self.radius))
        object.__setattr__(self, "axis", check_axis(self.axis))

    def __call__(self, w: Any, *, out: Any = None, xp: Any = None) -> Any:
        if self.rules():
            return self.resolved(np.shape(w))(w, out=out, xp=xp)
        return simplex(w, _number(self, self.radius), self.axis, out=out, xp=xp)

    def bounds(self) -> dict[str, float]:
        return _numbers(radius=self.radius)


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

    max_value: Bound
    axis: Axis = DEFAULT_AXIS

    name: ClassVar[str] = "max_l1_norm"
    roundings: ClassVar[float] = SUM_ROUNDINGS
    rule_fields: ClassVar[tuple[str, ...]] = ("max_value",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_value", check_bound("max_value", self.max_value))
        object.__setattr__(self, "axis", check_axis(self.axis))

    def __call__(self, w: Any, *, out: Any = None, xp: Any = None) -> Any:
        if self.rules():
            return self.resolved(np.shape(w))(w, out=out, xp=xp)
        return max_l1_norm(w, _number(self, self.max_value), self.axis, out=out, xp=xp)

    def bounds(self) -> dict[str, float]:
        return _numbers(max_value=self.max_value)


def _numbers(**bounds: Bound) -> dict[str, float]:
    """The bounds given as numbers (rules are checked once resolved)."""
    return {name: value for name, value in bounds.items() if not isinstance(value, str)}


def _number(constraint: Constraint, bound: Bound) -> float:
    """``bound`` as the number it is; a TypeError for a rule not resolved yet."""
    if isinstance(bound, str):
        raise TypeError(
            f"{constraint!r} has a bound given as a rule ({bound!r}): resolve it for a weight's "
            "shape first (constraint.resolved(shape)), or call the constraint on the weights"
        )
    return bound


KINDS: tuple[type[Constraint], ...] = (
    MaxNorm,
    UnitNorm,
    MinMaxNorm,
    NonNeg,
    Clip,
    BoxMaxNorm,
    Simplex,
    MaxL1Norm,
)
"""The built-in kinds, as ``get()`` and the adapters know them."""

"""Immutable constraint objects with the parameters and defaults of ``keras.constraints``."""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from ._checks import DEFAULT_AXIS, Axis, check_axis, check_bounds, check_rate, check_value
from ._projections import max_norm, min_max_norm, non_neg, unit_norm


class Constraint:
    """Base class: a validated, immutable, callable per-node constraint.

    Subclasses are frozen dataclasses; ``get_config()`` returns their fields and
    ``from_config(config)`` rebuilds an equal object, as in Keras.
    """

    name: ClassVar[str]

    def __call__(self, w: Any, *, out: Any = None, xp: Any = None) -> Any:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable (axis tuples become lists)."""
        return {key: _plain(value) for key, value in asdict(self).items()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Constraint:
        """Rebuild the constraint from the output of :meth:`get_config`."""
        return cls(**config)


def _plain(value: Any) -> Any:
    """A config value as plain JSON data: axis tuples become lists, the default axis a plain 0."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return value


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

    max_value: float = 2
    axis: Axis = DEFAULT_AXIS

    name: ClassVar[str] = "max_norm"

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_value", check_value("max_value", self.max_value))
        object.__setattr__(self, "axis", check_axis(self.axis))

    def __call__(self, w: Any, *, out: Any = None, xp: Any = None) -> Any:
        return max_norm(w, self.max_value, self.axis, out=out, xp=xp)


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
        return unit_norm(w, self.axis, out=out, xp=xp)


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

    min_value: float = 0.0
    max_value: float = 1.0
    rate: float = 1.0
    axis: Axis = DEFAULT_AXIS

    name: ClassVar[str] = "min_max_norm"

    def __post_init__(self) -> None:
        low, high = check_bounds(self.min_value, self.max_value)
        object.__setattr__(self, "min_value", low)
        object.__setattr__(self, "max_value", high)
        object.__setattr__(self, "rate", check_rate(self.rate))
        object.__setattr__(self, "axis", check_axis(self.axis))

    def __call__(self, w: Any, *, out: Any = None, xp: Any = None) -> Any:
        return min_max_norm(w, self.min_value, self.max_value, self.rate, self.axis, out=out, xp=xp)


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


_CLASSES: dict[str, type[Constraint]] = {
    cls.__name__: cls for cls in (MaxNorm, UnitNorm, MinMaxNorm, NonNeg)
}
_NAMES: dict[str, type[Constraint]] = {
    **_CLASSES,
    **{cls.name: cls for cls in _CLASSES.values()},
}


def get(identifier: Any) -> Constraint | None:
    """Resolve a constraint from a name, a config dict, a class, an instance or ``None``.

    Args:
        identifier: ``"max_norm"`` or ``"MaxNorm"`` (default parameters), a config dict
            ``{"class_name": "MaxNorm", "config": {"max_value": 3}}`` as Keras writes it, a
            constraint class or instance, or ``None``.

    Returns:
        A constraint object, or ``None`` for ``None``.

    Raises:
        ValueError: The name is unknown (the message lists the known names) or the config is
            malformed.

    Example:
        >>> from weight_constraints import get
        >>> get("max_norm")
        MaxNorm(max_value=2.0, axis=0)
        >>> get({"class_name": "MinMaxNorm", "config": {"max_value": 2, "axis": [0, 1]}})
        MinMaxNorm(min_value=0.0, max_value=2.0, rate=1.0, axis=(0, 1))
    """
    if identifier is None or isinstance(identifier, Constraint):
        return identifier
    if inspect.isclass(identifier) and issubclass(identifier, Constraint):
        return identifier()
    if isinstance(identifier, str):
        return _lookup(identifier)()
    if isinstance(identifier, dict):
        if "class_name" not in identifier:
            raise ValueError(f"a constraint config needs a 'class_name' key, got {identifier!r}")
        return _lookup(identifier["class_name"]).from_config(identifier.get("config") or {})
    raise ValueError(f"cannot interpret {identifier!r} as a constraint")


def _lookup(name: str) -> type[Constraint]:
    try:
        return _NAMES[name]
    except KeyError:
        known = ", ".join(repr(key) for key in _NAMES)
        raise ValueError(f"unknown constraint {name!r}; known names: {known}") from None

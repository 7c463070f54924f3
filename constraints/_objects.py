"""Immutable constraint objects with the parameters and defaults of ``keras.constraints``."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, ClassVar

from ._checks import DEFAULT_AXIS, Axis, check_axis, check_bounds, check_rate, check_value
from ._projections import (
    copy_into,
    max_norm_factor,
    min_max_norm_factor,
    non_neg,
    rescale,
    unit_norm_factor,
)


class Constraint:
    """Base class of the constraints, with the interface of ``keras.constraints.Constraint``.

    The base class itself is the identity: ``Constraint()(w)`` returns ``w`` and its config is
    ``{}``. The built-in constraints are frozen dataclasses: validated, immutable, hashable, and
    ``get_config()`` returns their fields. A plain subclass overrides ``__call__`` (and
    ``get_config`` when its constructor takes arguments); ``from_config(config)`` calls
    ``cls(**config)``, as in Keras.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import Constraint
        >>> class Clip(Constraint):
        ...     def __init__(self, limit=1.0):
        ...         self.limit = limit
        ...
        ...     def __call__(self, w, *, out=None, xp=None):
        ...         return np.clip(w, -self.limit, self.limit, out=out)
        ...
        ...     def get_config(self):
        ...         return {"limit": self.limit}
        >>> Clip.from_config(Clip(0.5).get_config())(np.array([-2.0, 0.25]))
        array([-0.5 ,  0.25])
    """

    name: ClassVar[str]

    def __call__(self, w: Any, *, out: Any = None, xp: Any = None) -> Any:
        """Return ``w`` unchanged (written into ``out`` when it is given and is not ``w``)."""
        if out is None or out is w:
            return w
        return copy_into(w, out, xp)

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable (axis tuples become lists)."""
        if not is_dataclass(self):
            return {}
        return {field.name: _plain(getattr(self, field.name)) for field in fields(self)}

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
        return rescale(w, self.axis, out, xp, max_norm_factor, self.max_value)

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
        return max_norm_factor(n, acc, xp, self.max_value)


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
        return rescale(w, self.axis, out, xp, unit_norm_factor)

    def factor(self, n: Any, acc: str, xp: Any) -> Any:
        """The per-node factor of :func:`unit_norm` (see :meth:`MaxNorm.factor`).

        Example:
            >>> import numpy as np
            >>> from weight_constraints import UnitNorm
            >>> UnitNorm().factor(np.array([4.0, 0.0]), "float64", np)
            array([0.25, 1.  ])
        """
        return unit_norm_factor(n, acc, xp)


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
        return rescale(w, self.axis, out, xp, min_max_norm_factor, *self._parameters())

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
        return self.min_value, self.max_value, self.rate


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
            constraint class or instance, one of the Keras constraints of
            ``weight_constraints.adapters.keras`` (its core object), or ``None``.

    Returns:
        A constraint object, or ``None`` for ``None``.

    Raises:
        ValueError: The name is unknown (the message lists the known names), or the config is
            malformed: not a dict, an unknown key, a ``class_name`` that is not a string, or a
            parameter the constraint rejects.

    Example:
        >>> from weight_constraints import get
        >>> get("max_norm")
        MaxNorm(max_value=2.0, axis=0)
        >>> get({"class_name": "MinMaxNorm", "config": {"max_value": 2, "axis": [0, 1]}})
        MinMaxNorm(min_value=0.0, max_value=2.0, rate=1.0, axis=(0, 1))
    """
    if identifier is None or isinstance(identifier, Constraint):
        return identifier
    if isinstance(getattr(identifier, "core", None), Constraint):  # our Keras constraints
        return identifier.core
    if inspect.isclass(identifier) and issubclass(identifier, Constraint):
        return identifier()
    if isinstance(identifier, str):
        return _lookup(identifier)()
    if isinstance(identifier, dict):
        cls, config = _parse_config(identifier)
        return cls.from_config(config)
    raise ValueError(f"cannot interpret {identifier!r} as a constraint")


# The keys of the dicts keras.saving.serialize_keras_object writes.
_CONFIG_KEYS = ("module", "class_name", "config", "registered_name")


def _parse_config(identifier: dict) -> tuple[type[Constraint], dict[str, Any]]:
    """The class and constructor arguments of a config dict; ValueError if it is malformed."""
    unknown = [key for key in identifier if key not in _CONFIG_KEYS]
    if unknown:
        raise ValueError(
            f"a constraint config has the keys {', '.join(map(repr, _CONFIG_KEYS))}; "
            f"got unknown key(s) {', '.join(map(repr, unknown))} in {identifier!r}"
        )
    if "class_name" not in identifier:
        raise ValueError(f"a constraint config needs a 'class_name' key, got {identifier!r}")
    name = identifier["class_name"]
    if not isinstance(name, str):
        raise ValueError(f"a constraint config's 'class_name' must be a string, got {name!r}")
    cls = _lookup(name)
    config = identifier.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ValueError(f"the 'config' of a {name} must be a dict, got {config!r}")
    allowed = [field.name for field in fields(cls)]  # type: ignore[arg-type]
    unknown = [key for key in config if key not in allowed]
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in the config of a {name}; "
            f"it takes {', '.join(map(repr, allowed)) or 'no arguments'}"
        )
    return cls, config


def register(*classes: type[Constraint]) -> None:
    """Make constraint dataclasses known to :func:`get` by class name and by ``name``."""
    for cls in classes:
        _NAMES[cls.__name__] = cls
        _NAMES[cls.name] = cls


def _lookup(name: str) -> type[Constraint]:
    try:
        return _NAMES[name]
    except KeyError:
        known = ", ".join(repr(key) for key in _NAMES)
        raise ValueError(f"unknown constraint {name!r}; known names: {known}") from None

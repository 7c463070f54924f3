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


SAVED_PREFIX = "weight_constraints."
"""The prefix of the built-in classes' ``__name__`` (see :func:`saved_name`)."""


def saved_name(cls: type[Constraint]) -> type[Constraint]:
    """Give a built-in constraint class the ``__name__`` ``weight_constraints.<Name>``.

    Keras saves an object's ``type(obj).__name__`` as its ``class_name`` and, in a process
    where the registered name is unknown, looks that name up among its own classes: a core
    ``MaxNorm`` used directly as a layer constraint would load silently as
    ``keras.constraints.MaxNorm``. No Keras class is called ``weight_constraints.MaxNorm``, so
    such a file loads as ours (``weight_constraints.adapters.keras`` registers the name) or
    fails with an error. ``__qualname__`` stays ``MaxNorm``, so ``repr``, pickling and
    :func:`get` by class name are unchanged; :func:`get` also takes the saved name.

    Example:
        >>> from weight_constraints import MaxNorm
        >>> MaxNorm.__name__, MaxNorm.__qualname__
        ('weight_constraints.MaxNorm', 'MaxNorm')
    """
    cls.__name__ = SAVED_PREFIX + cls.__qualname__
    return cls


def _plain(value: Any) -> Any:
    """A config value as plain JSON data: axis tuples become lists, the default axis a plain 0."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return value


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


_NAMES: dict[str, type[Constraint]] = {}  # class names, snake_case names and saved names


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
        return with_defaults(identifier)
    if isinstance(identifier, str):
        return with_defaults(_lookup(identifier))
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
    missing = [key for key in _required(cls) if key not in config]
    if missing:
        raise ValueError(
            f"the config of a {cls.__qualname__} needs {_listing(missing)}, got {identifier!r}"
        )
    return cls, config


def _required(cls: type) -> list[str]:
    """The constructor parameters of ``cls`` that have no default."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the call tell
        return []
    plain = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in plain and p.default is p.empty]


def _listing(names: list[str]) -> str:
    return ("the parameter " if len(names) == 1 else "the parameters ") + ", ".join(names)


def with_defaults(cls: type) -> Any:
    """``cls()``, or a ValueError naming the parameters it cannot do without (for :func:`get`
    and the adapters' ``get``)."""
    missing = _required(cls)
    if missing:
        name = cls.__qualname__
        example = ", ".join(f"{key}=..." for key in missing)
        raise ValueError(
            f"{name} has no default for {_listing(missing)}: pass an object such as "
            f"{name}({example}) or a config dict such as "
            f"{{'class_name': {name!r}, 'config': {{{', '.join(f'{k!r}: ...' for k in missing)}}}}}"
        )
    return cls()


def register(*classes: type[Constraint]) -> None:
    """Make constraint dataclasses known to :func:`get` by class name, by ``name`` and by the
    name Keras saves them under (their ``__name__``, see :func:`saved_name`)."""
    for cls in classes:
        _NAMES[cls.__qualname__] = cls
        _NAMES[cls.name] = cls
        _NAMES[cls.__name__] = cls


register(MaxNorm, UnitNorm, MinMaxNorm, NonNeg)


def _lookup(name: str) -> type[Constraint]:
    try:
        return _NAMES[name]
    except KeyError:
        known = ", ".join(repr(key) for key in _NAMES if not key.startswith(SAVED_PREFIX))
        raise ValueError(f"unknown constraint {name!r}; known names: {known}") from None

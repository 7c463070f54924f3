"""Constraints by name: ``get()`` resolves names, configs and classes; the kinds register here."""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import Any

from ._base import SAVED_PREFIX, Constraint
from ._objects import KINDS

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


register(*KINDS)


def _lookup(name: str) -> type[Constraint]:
    try:
        return _NAMES[name]
    except KeyError:
        known = ", ".join(repr(key) for key in _NAMES if not key.startswith(SAVED_PREFIX))
        raise ValueError(f"unknown constraint {name!r}; known names: {known}") from None

"""Constraints by name, config or object: ``get``, ``serialize``, ``deserialize`` and ``to_keras``,
with the tables of names they read (as ``keras.constraints`` has them).

Example:
    >>> import weight_constraints as wc
    >>> from weight_constraints.adapters.keras import get, to_keras
    >>> get("simplex"), to_keras(wc.MaxNorm(3))
    (Simplex(radius=1.0, axis=0), MaxNorm(max_value=3.0, axis=0))
"""

from __future__ import annotations

import inspect
from typing import Any

import keras

import weight_constraints as wc
from weight_constraints._registry import with_defaults

from ._twins import TWINS, Constraint, _CoreBacked, twin_of

KERAS_BUILTINS: dict[type, type[wc.Constraint]] = {
    keras.constraints.MaxNorm: wc.MaxNorm,
    keras.constraints.UnitNorm: wc.UnitNorm,
    keras.constraints.MinMaxNorm: wc.MinMaxNorm,
    keras.constraints.NonNeg: wc.NonNeg,
}
"""Keras's own classes and their core counterparts (Keras's are not exact)."""

OBJECTS: dict[str, type] = {
    **{cls.__qualname__: cls for cls in (*TWINS.values(), Constraint)},
    **{core.name: twin for core, twin in TWINS.items()},  # max_norm, ..., simplex, clip
    "constraint": Constraint,
}
"""The names :func:`get` and :func:`deserialize` know, as in ``keras.constraints``: class names
and snake_case names."""

_KINDS = ", ".join(core.__qualname__ for core in TWINS)


def serialize(constraint: Any) -> Any:
    """The config of a constraint, as ``keras.constraints.serialize`` writes it.

    Example:
        >>> from weight_constraints.adapters.keras import MaxNorm, serialize
        >>> serialize(MaxNorm(3))["registered_name"]
        'weight_constraints>MaxNorm'
    """
    return keras.saving.serialize_keras_object(constraint)


def deserialize(config: Any, custom_objects: dict[str, Any] | None = None) -> Any:
    """A constraint from its config, as ``keras.constraints.deserialize``; the names ``MaxNorm``,
    ``max_norm``, ... give the classes of this module.

    Example:
        >>> from weight_constraints.adapters.keras import deserialize
        >>> deserialize({"class_name": "MaxNorm", "config": {"max_value": 3, "axis": 1}})
        MaxNorm(max_value=3.0, axis=1)
    """
    return keras.saving.deserialize_keras_object(
        config, module_objects=OBJECTS, custom_objects=custom_objects
    )


def get(identifier: Any) -> Any:
    """A constraint from an identifier, as ``keras.constraints.get``: ``None``, a name
    (``"max_norm"``, ``"MaxNorm"``), a config dict, a class (instantiated with its defaults) or a
    callable (returned as it is). A core constraint becomes its Keras twin.

    Raises:
        ValueError: The identifier is not a known name, config or callable, or names a class
            with required parameters (``"clip"``: pass ``Clip(lower, upper)`` or a config).

    Example:
        >>> import weight_constraints as wc
        >>> from weight_constraints.adapters.keras import get
        >>> get("unit_norm"), get(None), get(wc.MaxNorm(3))
        (UnitNorm(axis=0), None, MaxNorm(max_value=3.0, axis=0))
    """
    if identifier is None:
        return None
    if isinstance(identifier, dict):
        obj = deserialize(identifier)
    elif isinstance(identifier, str):
        obj = OBJECTS.get(identifier)
    else:
        obj = identifier
    if inspect.isclass(obj):
        obj = with_defaults(obj)  # ValueError naming what a class cannot do without
    if isinstance(obj, wc.Constraint):
        return to_keras(obj)
    if callable(obj) and not isinstance(obj, str):
        return obj
    raise ValueError(f"Could not interpret constraint identifier: {identifier!r}")


def core_of(constraint: Any) -> wc.Constraint | None:
    """The core constraint behind ``constraint`` (ours, a core one, or Keras's own), else None.

    Example:
        >>> import keras
        >>> core_of(keras.constraints.MaxNorm(3)), core_of(len)
        (MaxNorm(max_value=3.0, axis=0), None)
    """
    if isinstance(constraint, _CoreBacked):
        return constraint.core
    if isinstance(constraint, wc.Constraint):
        return constraint
    builtin = KERAS_BUILTINS.get(type(constraint))
    if builtin is not None:
        return builtin.from_config(constraint.get_config())
    return None


def is_builtin_kind(core: Any) -> bool:
    """Whether ``core`` is one of the eight built-in kinds (which have Keras twins)."""
    return type(core) in TWINS


def to_keras(constraint: Any) -> _CoreBacked:
    """The Keras twin of a constraint: a core object (any of the eight kinds), a name, a config,
    a ``keras.constraints`` ``MaxNorm``/``UnitNorm``/``MinMaxNorm``/``NonNeg``, or one of ours
    (returned as is).

    A default axis stays the default; the axis of a ``keras.constraints`` object counts as given
    (Keras cannot tell its default from an explicit 0).

    Raises:
        ValueError: Any other constraint, a core ``Constraint`` subclass of your own among them:
            the message says how to use such a constraint with Keras.

    Example:
        >>> import weight_constraints as wc
        >>> from weight_constraints.adapters.keras import to_keras
        >>> to_keras(wc.MaxNorm(3, axis=[0, 1, 2]))
        MaxNorm(max_value=3.0, axis=(0, 1, 2))
        >>> import keras
        >>> to_keras(keras.constraints.UnitNorm(axis=1))
        UnitNorm(axis=1)
    """
    if isinstance(constraint, _CoreBacked):
        return constraint
    if isinstance(constraint, (str, dict)) or inspect.isclass(constraint):
        constraint = get(constraint)
    core = core_of(constraint)
    if core is None or not is_builtin_kind(core):
        raise ValueError(
            f"cannot convert {constraint!r} to a weight_constraints constraint: the Keras "
            f"adapter attaches the built-in kinds ({_KINDS}) and keras.constraints' MaxNorm, "
            "UnitNorm, MinMaxNorm and NonNeg, whose Keras classes save and load with the model. "
            "For a constraint of your own, subclass keras.constraints.Constraint, register it "
            "with keras.saving.register_keras_serializable so that saved models load it, and "
            "set it as the layers' *_constraint arguments yourself (per_node_axes(layer, "
            "weight) gives each weight's per-node axes)"
        )
    return twin_of(core)

"""Keras 3 adapter: drop-in replacements for ``keras.constraints``, backed by the exact core.

``MaxNorm``, ``UnitNorm``, ``MinMaxNorm`` and ``NonNeg`` (and the snake_case aliases Keras has)
take exactly the arguments of their ``keras.constraints`` namesakes, so changing the import line
is enough (``Clip``, ``BoxMaxNorm``, ``Simplex`` and ``MaxL1Norm``, the core's box, simplex and
L1 kinds, have no Keras namesake and take the core's arguments)::

    from weight_constraints.adapters.keras import max_norm   # was: from keras.constraints ...
    Dense(32, kernel_constraint=max_norm(3), bias_constraint=max_norm(3))

Their ``__call__`` runs the core projection with ``xp=keras.ops``, so it works inside the compiled
train step on every backend; on the torch backend it runs the core's torch backend instead
(Keras 3.15's ``keras.ops`` on torch computes some float64 results, ``cumsum`` and ``maximum``
among them, in float32; the core's torch backend is exact in float64). They are registered
for saving (package ``weight_constraints``).

:func:`constrain` adds constraints to an existing (built or loaded) model, choosing for every
layer the axes that give one norm per output unit (:func:`per_node_axis`) by the rule all adapters
share: a constraint with its axis left at the default is applied over the per-node axes; an
explicit axis is honoured only where it *is* the per-node axes, and any other axis raises a
ValueError saying what to do. An axis is never silently replaced, and neither is a constraint a
weight already has (``replace=True`` replaces it). :func:`audit` lists every weight with its
constraint, whether the next step projects it and how far it is from its set;
:class:`ConstraintStats` logs node-norm statistics during ``fit``.

``get``, ``serialize``, ``deserialize`` and ``Constraint`` complete the ``keras.constraints``
interface, so the module can replace it wholesale.

Example:
    >>> import keras
    >>> from weight_constraints.adapters.keras import MaxNorm, constrain
    >>> model = keras.Sequential([
    ...     keras.Input((10,), dtype="int32"),
    ...     keras.layers.Embedding(50, 4, name="embed"),
    ...     keras.layers.Conv1D(8, 3, name="conv"),
    ... ])
    >>> for attached in constrain(model, kernel=MaxNorm(3)):
    ...     print(attached)
    embed.embeddings: MaxNorm(max_value=3.0, axis=1)
    conv.kernel: MaxNorm(max_value=3.0, axis=(0, 1))
"""

from __future__ import annotations

import inspect
import string
import warnings
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import layers as L
from keras import ops

import weight_constraints as wc
from weight_constraints._checks import DEFAULT_AXIS, normalize_axes
from weight_constraints._objects import with_defaults

from ._rules import (
    Audit,
    AuditRow,
    bind_axes,
    check_strict,
    explicit_roles,
    resolve_roles,
    worst_violation,
)

__all__ = [
    "ApplyConstraints",
    "Attached",
    "BoxMaxNorm",
    "Clip",
    "Constraint",
    "ConstraintStats",
    "MaxL1Norm",
    "MaxNorm",
    "MinMaxNorm",
    "NonNeg",
    "Simplex",
    "UnitNorm",
    "apply_constraints",
    "audit",
    "box_max_norm",
    "clip",
    "constrain",
    "constraint_stats",
    "deserialize",
    "get",
    "max_l1_norm",
    "max_norm",
    "min_max_norm",
    "non_neg",
    "per_node_axis",
    "serialize",
    "simplex",
    "to_keras",
    "unit_norm",
]

_PACKAGE = "weight_constraints"

Constraint = keras.constraints.Constraint
"""The base class of Keras constraints (``keras.constraints.Constraint`` itself): subclass it for
a constraint of your own, as with ``keras.constraints``."""


class _CoreBacked(Constraint):
    """A Keras constraint that holds a core constraint and projects with ``xp=keras.ops``."""

    _core: wc.Constraint

    def __call__(self, w: Any) -> Any:
        if keras.backend.backend() == "torch":
            # keras.ops on torch computes some 64-bit results in 32 bits (cumsum, maximum...,
            # Keras 3.15): the core's own torch backend is exact in float64, and the same
            # projection in every other dtype.
            return self._core(ops.convert_to_tensor(w))
        return self._core(w, xp=ops)

    def get_config(self) -> dict[str, Any]:
        return self._core.get_config()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> _CoreBacked:
        """The constraint of a config, checked as the core's :func:`weight_constraints.get`
        checks it: a ValueError naming an unknown or a missing parameter."""
        core_class = next(_CORE_CLASSES[c] for c in cls.__mro__ if c in _CORE_CLASSES)
        return cls._from_core(wc.get({"class_name": core_class.__qualname__, "config": config}))

    @classmethod
    def _from_core(cls, core: wc.Constraint) -> _CoreBacked:
        """The twin of ``core`` as it is: a default axis stays the default (``from_config`` would
        make it an explicit 0)."""
        twin = cls.__new__(cls)
        twin._core = core
        return twin

    @property
    def core(self) -> wc.Constraint:
        """The core constraint this object projects with."""
        return self._core

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._core == self._core

    def __hash__(self) -> int:
        return hash((type(self), self._core))

    def __repr__(self) -> str:
        return repr(self._core)

    def __getattr__(self, name: str) -> Any:
        # max_value, axis, ... read through to the core object
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._core, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            raise AttributeError(
                f"{type(self).__name__} is immutable; create a new constraint instead of "
                f"setting {name}"
            )
        super().__setattr__(name, value)


def _register(cls: type[_CoreBacked]) -> type[_CoreBacked]:
    """Register ``cls`` for saving as ``weight_constraints>Name`` and give it a class name that
    does not collide with Keras's own.

    Keras writes ``type(obj).__name__`` as a saved object's ``class_name`` and, where the
    registered name is unknown (a process that has not imported this module),
    ``keras.constraints.get`` looks the ``class_name`` up among its own classes: a saved
    ``MaxNorm`` would silently load as ``keras.constraints.MaxNorm``. With the class name
    ``weight_constraints.MaxNorm`` Keras finds no such class and the loading fails with an error
    naming this module instead. ``__qualname__`` stays ``MaxNorm`` (``repr`` of the class, pickle).
    """
    keras.saving.register_keras_serializable(package=_PACKAGE, name=cls.__qualname__)(cls)
    cls.__name__ = f"{_PACKAGE}.{cls.__qualname__}"
    return cls


@_register
class MaxNorm(_CoreBacked):
    """Per-node max-norm, as ``keras.constraints.MaxNorm`` but exact (see
    :func:`weight_constraints.max_norm`).

    Args:
        max_value (float): The largest norm of the incoming weights of a unit.
        axis (int | tuple[int, ...] | None): The axis or axes each norm is taken over: 0 for
            a ``Dense`` kernel ``(in, out)``; for a ``Conv2D`` kernel ``(rows, cols, in, out)``
            use ``[0, 1, 2]``, for a ``Conv2DTranspose`` kernel ``(rows, cols, out, in)`` use
            ``[0, 1, 3]`` (:func:`per_node_axis` gives them for any layer). Left at its default,
            :func:`constrain` applies it over each layer's per-node axes.
    """

    def __init__(self, max_value=2, axis=DEFAULT_AXIS):
        self._core = wc.MaxNorm(max_value, axis)


@_register
class UnitNorm(_CoreBacked):
    """Per-node unit norm, as ``keras.constraints.UnitNorm`` but exact (see
    :func:`weight_constraints.unit_norm`).

    Args:
        axis (int | tuple[int, ...] | None): The axis or axes each norm is taken over (see
            :class:`MaxNorm`).
    """

    def __init__(self, axis=DEFAULT_AXIS):
        self._core = wc.UnitNorm(axis)


@_register
class MinMaxNorm(_CoreBacked):
    """Per-node norm in ``[min_value, max_value]``, as ``keras.constraints.MinMaxNorm`` but exact
    (see :func:`weight_constraints.min_max_norm`).

    Args:
        min_value (float): The smallest norm of the incoming weights of a unit.
        max_value (float): The largest norm of the incoming weights of a unit.
        rate (float): The fraction of the way to the interval moved at each step, in ``[0, 1]``.
        axis (int | tuple[int, ...] | None): The axis or axes each norm is taken over (see
            :class:`MaxNorm`).
    """

    def __init__(self, min_value=0.0, max_value=1.0, rate=1.0, axis=DEFAULT_AXIS):
        self._core = wc.MinMaxNorm(min_value, max_value, rate, axis)


@_register
class NonNeg(_CoreBacked):
    """Non-negative weights, as ``keras.constraints.NonNeg``."""

    def __init__(self):
        self._core = wc.NonNeg()


@_register
class Clip(_CoreBacked):
    """Every entry clipped to ``[lower, upper]`` (see :func:`weight_constraints.clip`);
    ``Clip(0, inf)`` is :class:`NonNeg`. No Keras namesake.

    Args:
        lower (float): The smallest value an entry may have; may be ``-inf``.
        upper (float): The largest value an entry may have, ``>= lower``; may be ``inf``.

    Example:
        >>> import keras
        >>> from weight_constraints.adapters.keras import Clip
        >>> keras.ops.convert_to_numpy(Clip(-0.1, 0.1)(keras.ops.array([0.5, -0.05, -2.0])))
        array([ 0.1 , -0.05, -0.1 ], dtype=float32)
    """

    def __init__(self, lower, upper):
        self._core = wc.Clip(lower, upper)


@_register
class BoxMaxNorm(_CoreBacked):
    """Every node projected onto the box ``[lower, upper]`` (containing 0) within the L2 ball of
    radius ``max_value`` (see :func:`weight_constraints.box_max_norm`). No Keras namesake.

    Args:
        lower (float): The smallest value an entry may have, ``<= 0``; may be ``-inf``.
        upper (float): The largest value an entry may have, ``>= 0``; may be ``inf``.
        max_value (float): The largest norm of the incoming weights of a unit.
        axis (int | tuple[int, ...] | None): The axis or axes each node spans (see
            :class:`MaxNorm`).

    Example:
        >>> import keras
        >>> from weight_constraints.adapters.keras import BoxMaxNorm
        >>> w = keras.ops.array([[3.0], [-1.0], [4.0]])  # one node: clipped at 0, then scaled
        >>> keras.ops.convert_to_numpy(BoxMaxNorm(0.0, float("inf"), max_value=1.0)(w))
        array([[0.6],
               [0. ],
               [0.8]], dtype=float32)
    """

    def __init__(self, lower, upper, max_value, axis=DEFAULT_AXIS):
        self._core = wc.BoxMaxNorm(lower, upper, max_value, axis)


@_register
class Simplex(_CoreBacked):
    """Every node projected onto the simplex: entries ``>= 0`` summing to ``radius`` (see
    :func:`weight_constraints.simplex`). No Keras namesake.

    Args:
        radius (float): The sum of the incoming weights of a unit.
        axis (int | tuple[int, ...] | None): The axis or axes each node spans (see
            :class:`MaxNorm`).

    Example:
        >>> import keras
        >>> from weight_constraints.adapters.keras import Simplex
        >>> w = keras.ops.array([[0.5, 2.0], [1.5, 0.0]])  # one node per column
        >>> keras.ops.convert_to_numpy(Simplex()(w))
        array([[0., 1.],
               [1., 0.]], dtype=float32)
    """

    def __init__(self, radius=1.0, axis=DEFAULT_AXIS):
        self._core = wc.Simplex(radius, axis)


@_register
class MaxL1Norm(_CoreBacked):
    """Every node projected onto the L1 ball of radius ``max_value`` (see
    :func:`weight_constraints.max_l1_norm`). No Keras namesake.

    Args:
        max_value (float): The largest L1 norm of the incoming weights of a unit.
        axis (int | tuple[int, ...] | None): The axis or axes each node spans (see
            :class:`MaxNorm`).

    Example:
        >>> import keras
        >>> from weight_constraints.adapters.keras import MaxL1Norm
        >>> w = keras.ops.array([[3.0, 0.25], [-2.0, 0.5]])  # L1 norms 5 and 0.75
        >>> keras.ops.convert_to_numpy(MaxL1Norm(2.0)(w))
        array([[ 1.5 ,  0.25],
               [-0.5 ,  0.5 ]], dtype=float32)
    """

    def __init__(self, max_value, axis=DEFAULT_AXIS):
        self._core = wc.MaxL1Norm(max_value, axis)


max_norm = MaxNorm
unit_norm = UnitNorm
min_max_norm = MinMaxNorm
non_neg = NonNeg
clip = Clip
box_max_norm = BoxMaxNorm
simplex = Simplex
max_l1_norm = MaxL1Norm

_TWINS: dict[type[wc.Constraint], type[_CoreBacked]] = {
    wc.MaxNorm: MaxNorm,
    wc.UnitNorm: UnitNorm,
    wc.MinMaxNorm: MinMaxNorm,
    wc.NonNeg: NonNeg,
    wc.Clip: Clip,
    wc.BoxMaxNorm: BoxMaxNorm,
    wc.Simplex: Simplex,
    wc.MaxL1Norm: MaxL1Norm,
}
_CORE_CLASSES = {twin: core for core, twin in _TWINS.items()}

# Keras's own classes and their core counterparts.
_KERAS_BUILTINS: dict[type, type[wc.Constraint]] = {
    keras.constraints.MaxNorm: wc.MaxNorm,
    keras.constraints.UnitNorm: wc.UnitNorm,
    keras.constraints.MinMaxNorm: wc.MinMaxNorm,
    keras.constraints.NonNeg: wc.NonNeg,
}

# Core objects used directly as layer constraints save and load too. They are saved under the
# registered name weight_constraints.core>MaxNorm and the class name weight_constraints.MaxNorm
# (the core's __name__, which no Keras class has: a process without this module gets an error,
# never keras.constraints.MaxNorm). A process that saved them without this module wrote the
# class name as the registered name too: it is registered as well, so such files load as ours.
for _core_class in _TWINS:
    keras.saving.register_keras_serializable(
        package=f"{_PACKAGE}.core", name=_core_class.__qualname__
    )(_core_class)
    keras.saving.get_custom_objects()[_core_class.__name__] = _core_class

# The names get() and deserialize() know, as in keras.constraints: class and snake_case names.
_OBJECTS: dict[str, type] = {
    **{cls.__qualname__: cls for cls in (*_TWINS.values(), Constraint)},
    **{core.name: twin for core, twin in _TWINS.items()},  # max_norm, ..., simplex, clip
    "constraint": Constraint,
}


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
        config, module_objects=_OBJECTS, custom_objects=custom_objects
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
        obj = _OBJECTS.get(identifier)
    else:
        obj = identifier
    if inspect.isclass(obj):
        obj = with_defaults(obj)  # ValueError naming what a class cannot do without
    if isinstance(obj, wc.Constraint):
        return to_keras(obj)
    if callable(obj) and not isinstance(obj, str):
        return obj
    raise ValueError(f"Could not interpret constraint identifier: {identifier!r}")


def _core_of(constraint: Any) -> wc.Constraint | None:
    """The core constraint behind ``constraint`` (ours, a core one, or Keras's own), else None."""
    if isinstance(constraint, _CoreBacked):
        return constraint.core
    if isinstance(constraint, wc.Constraint):
        return constraint
    builtin = _KERAS_BUILTINS.get(type(constraint))
    if builtin is not None:
        return builtin.from_config(constraint.get_config())
    return None


def to_keras(constraint: Any) -> _CoreBacked:
    """The Keras twin of a constraint: a core object (any of the eight kinds), a name, a config,
    a ``keras.constraints`` ``MaxNorm``/``UnitNorm``/``MinMaxNorm``/``NonNeg``, or one of ours
    (returned as is).

    A default axis stays the default; the axis of a ``keras.constraints`` object counts as given
    (Keras cannot tell its default from an explicit 0).

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
    core = _core_of(constraint)
    if core is None or type(core) not in _TWINS:
        raise ValueError(f"cannot convert {constraint!r} to a weight_constraints constraint")
    return _TWINS[type(core)]._from_core(core)


# -- per-node axes of Keras layers --------------------------------------------------------------

_NO_ROLE_TYPES = tuple(
    getattr(L, name)
    for name in (
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "RMSNormalization",
        "UnitNormalization",
        "PReLU",
        "Normalization",
    )
    if hasattr(L, name)
)


_CONV = (L.Conv1D, L.Conv2D, L.Conv3D)
_CONV_TRANSPOSE = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_DEPTHWISE_CONV = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_SEPARABLE_CONV = (L.SeparableConv1D, L.SeparableConv2D)


# The layer types whose weights _layout knows (it reads their shapes: they must be built).
_KNOWN_TYPES = (
    L.Dense,
    L.EinsumDense,
    L.Embedding,
    *_CONV,
    *_CONV_TRANSPOSE,
    *_DEPTHWISE_CONV,
    *_SEPARABLE_CONV,
    L.SimpleRNNCell,
    L.LSTMCell,
    L.GRUCell,
)


class _Weight(NamedTuple):
    attribute: str  # the layer attribute holding the variable
    role: str  # one of ROLES: kernel, recurrent, bias or embedding
    constraint_attribute: str  # the layer attribute holding its constraint
    axes: tuple[int, ...]


def _einsum_axes(layer: Any) -> tuple[int, ...]:
    """The kernel axes an EinsumDense contracts (its fan-in): one norm per output unit."""
    inputs, output = layer.equation.replace(" ", "").split("->")
    kernel = inputs.split(",")[1]
    if "." in kernel or not set(kernel) <= set(string.ascii_letters):
        raise ValueError(f"EinsumDense {layer.name}: cannot read equation {layer.equation!r}")
    axes = tuple(i for i, letter in enumerate(kernel) if letter not in output)
    if not axes:
        raise ValueError(
            f"EinsumDense {layer.name} ({layer.equation!r}) contracts no kernel axis: "
            "its kernel has no per-node norm"
        )
    return axes


def _rank(layer: Any, attribute: str) -> int:
    return len(getattr(layer, attribute).shape)


def _layout(layer: Any) -> list[_Weight] | None:
    """The constrainable weights of a built layer, or None when its type is not known."""
    bias = [_Weight("bias", "bias", "bias_constraint", None)] if _has(layer, "bias") else []
    if isinstance(layer, L.Dense):
        return [_Weight("kernel", "kernel", "kernel_constraint", (0,)), *bias]
    if isinstance(layer, L.EinsumDense):
        return [_Weight("kernel", "kernel", "kernel_constraint", _einsum_axes(layer)), *bias]
    if isinstance(layer, L.Embedding):
        return [_Weight("embeddings", "embedding", "embeddings_constraint", (1,))]
    if isinstance(layer, _CONV_TRANSPOSE):
        rank = _rank(layer, "kernel")  # kernel_size + (filters, in)
        axes = (*range(rank - 2), rank - 1)
        return [_Weight("kernel", "kernel", "kernel_constraint", axes), *bias]
    if isinstance(layer, _DEPTHWISE_CONV):
        rank = _rank(layer, "kernel")  # kernel_size + (in, depth_multiplier)
        return [_Weight("kernel", "kernel", "depthwise_constraint", tuple(range(rank - 2))), *bias]
    if isinstance(layer, _SEPARABLE_CONV):
        depthwise = tuple(range(_rank(layer, "depthwise_kernel") - 2))
        pointwise = tuple(range(_rank(layer, "pointwise_kernel") - 1))
        return [
            _Weight("depthwise_kernel", "kernel", "depthwise_constraint", depthwise),
            _Weight("pointwise_kernel", "kernel", "pointwise_constraint", pointwise),
            *bias,
        ]
    if isinstance(layer, _CONV):
        rank = _rank(layer, "kernel")  # kernel_size + (in/groups, filters)
        return [_Weight("kernel", "kernel", "kernel_constraint", tuple(range(rank - 1))), *bias]
    if isinstance(layer, (L.SimpleRNNCell, L.LSTMCell, L.GRUCell)):
        return [
            _Weight("kernel", "kernel", "kernel_constraint", (0,)),
            _Weight("recurrent_kernel", "recurrent", "recurrent_constraint", (0,)),
            *bias,
        ]
    return None


def _has(layer: Any, attribute: str) -> bool:
    return getattr(layer, attribute, None) is not None


def _variable(layer: Any, attribute: str) -> keras.Variable:
    value = getattr(layer, attribute)
    if not isinstance(value, keras.Variable):  # e.g. a LoRA-enabled Dense: kernel is computed
        value = getattr(layer, f"_{attribute}")
    return value


def _axes(layer: Any, weight: _Weight) -> tuple[int, ...]:
    if weight.axes is None:  # a bias: one norm over all of it
        return tuple(range(_rank(layer, weight.attribute)))
    return weight.axes


def per_node_axis(layer: Any, weight_name: str) -> tuple[int, ...]:
    """The axes that give one norm per output unit for a weight of a built layer.

    ``weight_name`` is the layer attribute: ``"kernel"``, ``"recurrent_kernel"``, ``"bias"``,
    ``"depthwise_kernel"``, ``"pointwise_kernel"`` or ``"embeddings"``. RNN layers are looked up
    through their cell.

    Example:
        >>> import keras
        >>> from weight_constraints.adapters.keras import per_node_axis
        >>> conv = keras.layers.Conv2DTranspose(8, 3)
        >>> conv.build((None, 16, 16, 4))
        >>> tuple(conv.kernel.shape)  # (rows, cols, filters, in)
        (3, 3, 8, 4)
        >>> per_node_axis(conv, "kernel")  # not Keras's docstring advice [0, 1, 2]
        (0, 1, 3)
    """
    target = layer.cell if isinstance(layer, L.RNN) else layer
    if not target.built:
        raise ValueError(f"layer {layer.name} is not built yet: build or call the model first")
    layout = _layout(target)
    if layout is None:
        raise ValueError(f"{type(layer).__name__} {layer.name}: unknown weight layout")
    for weight in layout:
        if weight.attribute == weight_name:
            return _axes(target, weight)
    names = [w.attribute for w in layout]
    raise ValueError(f"{type(layer).__name__} {layer.name} has no weight {weight_name!r}: {names}")


# -- constrain an existing model ----------------------------------------------------------------


class Attached(NamedTuple):
    """A constraint that :func:`constrain` attached: the layer path, weight and constraint, and
    whether the weight is frozen (not trainable: no optimizer step projects it until it is
    trainable again)."""

    layer: str
    weight: str
    constraint: _CoreBacked
    frozen: bool = False

    def __str__(self) -> str:
        frozen = " (frozen: not projected while trainable=False)" if self.frozen else ""
        return f"{self.layer}.{self.weight}: {self.constraint!r}{frozen}"


def _walk(layer: Any, path: str) -> Any:
    """Yield ``(path, layer)`` for known layers (built or not) and for unknown layers with
    weights of their own; descend into everything else (models, Bidirectional,
    TimeDistributed, RNN, attention...)."""
    if isinstance(layer, _KNOWN_TYPES):
        yield path, layer
        return
    if layer._trainable_variables and not isinstance(layer, _NO_ROLE_TYPES):
        yield path, layer
    for child in layer._layers:
        yield from _walk(child, f"{path}/{child.name}" if path else child.name)


def _for_weight(constraint: _CoreBacked, layer: Any, weight: _Weight, where: str) -> _CoreBacked:
    """Bind ``constraint`` to the per-node axes of ``weight`` by the shared rule
    (:func:`weight_constraints.adapters._rules.bind_axes`)."""
    shape = tuple(_variable(layer, weight.attribute).shape)
    axes = bind_axes(constraint.core, _axes(layer, weight), shape, where)
    if axes is None:  # entry-wise
        return constraint
    core = type(constraint.core).from_config({**constraint.get_config(), "axis": axes})
    return to_keras(core)


def _same(existing: Any, bound: _CoreBacked, shape: tuple[int, ...]) -> bool:
    """Whether the constraint already on a weight is ``bound`` (the same projection, axes
    compared on ``shape``): Keras's own classes are not, they are not exact."""
    core = existing.core if isinstance(existing, _CoreBacked) else existing
    if not isinstance(core, wc.Constraint) or type(core) is not type(bound.core):
        return False
    mine, theirs = core.get_config(), bound.core.get_config()
    if "axis" in mine:
        if normalize_axes(mine.pop("axis"), shape) != normalize_axes(theirs.pop("axis"), shape):
            return False
    return mine == theirs


def _existing(layer: Any, weight: _Weight) -> Any:
    """The constraint a weight already has: on its variable, else in its layer attribute."""
    variable = _variable(layer, weight.attribute).constraint
    return variable if variable is not None else getattr(layer, weight.constraint_attribute, None)


_LORA_WEIGHTS = ("kernel", "embeddings")


def _unconstrainable(layer: Any, weight: _Weight) -> str:
    """Why a constraint on ``weight`` would not constrain what ``layer`` uses ("" when it would):
    LoRA (the layer uses the base weight plus the LoRA product) or quantized storage (the stored
    values are not the weights)."""
    if getattr(layer, "lora_enabled", False) and weight.attribute in _LORA_WEIGHTS:
        return (
            f"LoRA is enabled: the layer uses {weight.attribute} + the LoRA product, which a "
            "constraint on the base weight does not reach"
        )
    mode = getattr(layer, "quantization_mode", None)
    dtype = keras.backend.standardize_dtype(_variable(layer, weight.attribute).dtype)
    if (mode is not None and weight.attribute != "bias") or "float" not in dtype:
        return (
            f"quantized ({mode or dtype}, stored as {dtype}): the stored values are not the weights"
        )
    return ""


_ADVICE = {
    "LoRA": " (Keras itself refuses constraints on LoRA layers: 'Lora is incompatible with "
    "kernel constraints'). Leave this role out, or constrain the model without LoRA",
    "quantized": ". Constrain and train the float model, then quantize it",
}


def constrain(
    model: Any,
    *positional: Any,
    kernel: Any = None,
    recurrent: Any = None,
    bias: Any = None,
    embedding: Any = None,
    skip_unknown: bool = False,
    replace: bool = False,
) -> list[Attached]:
    """Attach constraints to an already built (or loaded) model, with per-node axes per layer.

    Every Dense, EinsumDense, Conv, ConvTranspose, DepthwiseConv, SeparableConv and Embedding
    layer and every SimpleRNN/LSTM/GRU cell gets its constraints on the variables and in its
    config (so ``model.save`` keeps them). Bidirectional, TimeDistributed, RNN wrappers and
    nested models are recursed into. Normalisation layers and layers without weights are
    passed over; a layer with weights of its own whose layout is unknown raises a ValueError
    naming it, unless ``skip_unknown=True``.

    The axis rule is the one every adapter shares (``weight_constraints.adapters._rules``): a
    constraint with its axis left at the default is applied over each weight's per-node axes;
    an explicit axis is honoured where it names the per-node axes and refused otherwise. The
    axis of a ``keras.constraints`` object counts as given.

    A frozen weight (``trainable=False``) gets its constraint like any other, but no optimizer
    step projects it while it is frozen: its :class:`Attached` entry has ``frozen=True`` and a
    ``UserWarning`` names it (the constraint takes effect when the weight is made trainable
    again; :func:`apply_constraints` projects it now). Refused, with nothing attached: the base
    weight of a LoRA-enabled layer (the layer uses base + LoRA, which the constraint would not
    reach; Keras refuses this too) and quantized weights (their stored values are not the
    weights).

    Args:
        model: A built Keras model or layer.
        kernel: The constraint of the input weights (kernels, depthwise and pointwise kernels,
            and embedding tables unless ``embedding`` is given): one of our constraints, a core
            one, a name, or a ``keras.constraints`` MaxNorm/UnitNorm/MinMaxNorm/NonNeg.
        recurrent: The constraint of the recurrent kernels of RNN cells.
        bias: The constraint of the biases: one norm over each whole bias.
        embedding: The constraint of the embedding tables (one norm per embedding vector);
            defaults to ``kernel``.
        skip_unknown: Pass over layers whose layout is unknown instead of raising.
        replace: Replace a different constraint a weight already has (otherwise an error).

    Returns:
        What was attached, one entry per variable (``frozen=True`` for frozen weights).

    Raises:
        TypeError: A role was passed by position (the roles are keyword-only; unlike the
            PyTorch adapter's, this ``constrain`` takes no optimizer).
        ValueError: The model or one of its layers is not built, a layer's layout is unknown,
            a constraint has an explicit axis that is not the per-node one, a weight already has
            a different constraint (without ``replace=True``), a weight is the base of a LoRA
            layer or quantized, or no layer has a requested role. Nothing is attached when it
            raises.
    """
    if positional:
        given = ", ".join(type(p).__qualname__ for p in positional)
        hint = (
            " Keras optimizers apply the variables' constraints themselves: pass no optimizer."
            if any(isinstance(p, keras.optimizers.Optimizer) for p in positional)
            else ""
        )
        raise TypeError(
            "constrain(model, *, kernel=..., recurrent=..., bias=..., embedding=...) takes the "
            f"roles by keyword; got {len(positional)} more positional argument(s): {given}.{hint}"
        )
    wanted = {
        role: to_keras(c)
        for role, c in resolve_roles(kernel, recurrent, bias, embedding).items()
        if c is not None
    }
    if not model.built:
        raise ValueError(f"{model.name} is not built yet: build or call the model first")
    plan = []
    for path, layer in _walk(model, ""):
        if not layer.built:
            raise ValueError(
                f"layer {path or layer.name} ({type(layer).__name__}) is not built: the model's "
                "call() never used it, so it has no weights yet. Call it (or build it) first, or "
                "remove it from the model"
            )
        layout = _layout(layer)
        if layout is None:
            if skip_unknown:
                continue
            raise ValueError(
                f"layer {path or layer.name} ({type(layer).__name__}) has weights of its own "
                "and an unknown layout; set its *_constraint arguments yourself or pass "
                "skip_unknown=True"
            )
        for weight in layout:
            if weight.role not in wanted:
                continue
            where = f"{path or layer.name}.{weight.attribute}"
            unusable = _unconstrainable(layer, weight)
            if unusable:
                advice = _ADVICE[unusable.split()[0].rstrip(":")]
                raise ValueError(f"{where} cannot be constrained: {unusable}{advice}")
            bound = _for_weight(wanted[weight.role], layer, weight, where)
            existing = _existing(layer, weight)
            shape = tuple(_variable(layer, weight.attribute).shape)
            if existing is not None and not replace and not _same(existing, bound, shape):
                raise ValueError(
                    f"{where} already has the constraint {existing!r}; constrain() would "
                    f"replace it with {bound!r}. Pass replace=True to replace it, or leave this "
                    "role out and set the constraints you want yourself."
                )
            plan.append((where, layer, weight, bound))
    found = {weight.role for _, _, weight, _ in plan}
    if embedding is None and "embedding" in found:
        found.add("kernel")  # embedding tables took the kernel constraint
    asked = explicit_roles(
        {"kernel": kernel, "recurrent": recurrent, "bias": bias, "embedding": embedding}
    )
    missing = [role for role in asked if role not in found]
    if missing:
        raise ValueError(f"no layer of {model.name} has {' or '.join(missing)} weights")
    trainable = {id(v) for v in model.trainable_variables}
    attached = []
    for where, layer, weight, bound in plan:
        variable = _variable(layer, weight.attribute)
        setattr(layer, weight.constraint_attribute, bound)
        variable.constraint = bound
        frozen = id(variable) not in trainable
        attached.append(Attached(where.rpartition(".")[0], weight.attribute, bound, frozen))
    frozen = [f"{a.layer}.{a.weight}" for a in attached if a.frozen]
    if frozen:
        warnings.warn(
            f"constrain(): {', '.join(frozen)} {'is' if len(frozen) == 1 else 'are'} frozen "
            "(trainable=False): the constraint is attached, but no optimizer step projects a "
            "frozen weight, so it holds only once the weight is trainable again (or after "
            "apply_constraints(model), which projects every constrained weight now)",
            UserWarning,
            stacklevel=2,
        )
    return attached


# -- projecting now, and after EMA -------------------------------------------------------------


def apply_constraints(model: Any) -> None:
    """Project every constrained variable of ``model`` now (after ``load_weights``, after
    swapping in averaged weights, after an optimizer with ``use_ema=True`` finished)."""
    for variable in model.variables:
        if variable.constraint is not None:
            variable.assign(variable.constraint(variable))


class ApplyConstraints(keras.callbacks.Callback):
    """Re-project the model's constrained variables when training ends (and, optionally, when it
    begins).

    With ``use_ema=True`` Keras copies the moving averages into the model at the end of ``fit``
    without applying the constraints, so the final weights can violate them (an average of
    unit-norm vectors is shorter than 1). Add this callback to ``fit`` to end with weights that
    satisfy every constraint.
    """

    def __init__(self, on_begin: bool = False) -> None:
        super().__init__()
        self.on_begin = on_begin

    def on_train_begin(self, logs: Any = None) -> None:
        if self.on_begin:
            apply_constraints(self.model)

    def on_train_end(self, logs: Any = None) -> None:
        apply_constraints(self.model)


# -- audit and statistics -----------------------------------------------------------------------


def _owners(model: Any) -> dict[int, tuple[Any, _Weight]]:
    """The layer and layout entry of every variable of a known layer, by ``id``."""
    owners = {}
    for _, layer in _walk(model, ""):
        if not layer.built:  # no weights yet
            continue
        for weight in _layout(layer) or []:
            owners[id(_variable(layer, weight.attribute))] = (layer, weight)
    return owners


def _row(variable: Any, owner: Any, trainable: set[int], use_ema: bool) -> AuditRow:
    name, shape = variable.path, tuple(variable.shape)
    attribute = None
    if owner is not None:
        layer, weight = owner
        attribute = getattr(layer, weight.constraint_attribute, None)
    constraint = variable.constraint if variable.constraint is not None else attribute
    dtype = keras.backend.standardize_dtype(variable.dtype)
    if constraint is None:
        return AuditRow(name, shape, None, None, False, None, "", dtype)
    notes = []
    if variable.constraint is None:
        notes.append(f"only in {owner[1].constraint_attribute}, not on the variable: not applied")
    elif owner is not None and attribute is None:
        notes.append(f"not in {owner[1].constraint_attribute}: model.save() drops it")
    elif owner is not None and attribute is not variable.constraint and attribute != constraint:
        notes.append(f"{owner[1].constraint_attribute} differs: model.save() keeps that one")
    if id(variable) not in trainable:
        notes.append("not trainable: no optimizer step projects it")
    elif use_ema and variable.constraint is not None:
        notes.append("use_ema: the averages fit() copies in are not projected (ApplyConstraints)")
    if owner is not None:
        unusable = _unconstrainable(*owner)
        if unusable:
            notes.append(unusable)
            if "float" not in dtype:  # stored integers: no distance to the set to measure
                active = variable.constraint is not None and id(variable) in trainable
                note = "; ".join(notes)
                return AuditRow(name, shape, constraint, None, active, None, note, dtype)
    weights = ops.convert_to_numpy(variable)
    core = _core_of(constraint)
    if core is not None:
        axes = None if "axis" not in core.get_config() else normalize_axes(core.axis, shape)
        violation = worst_violation(core, weights, axes)
        if type(constraint) in _KERAS_BUILTINS:
            notes.append("Keras's own class (not exact)")
        if owner is not None and axes is not None:
            per_node = normalize_axes(_axes(*owner), shape)
            if axes != per_node:
                notes.append(
                    f"{_spell(axes)} is not the per-node axes {per_node} of this "
                    f"{type(owner[0]).__name__} {owner[1].attribute}"
                )
    else:  # a constraint of the user's own: how far it would move an entry
        axes = None
        projected = ops.convert_to_numpy(constraint(variable)).astype(np.float64)
        violation = float(np.max(np.abs(weights.astype(np.float64) - projected), initial=0.0))
        notes.append("custom constraint: largest entry change")
    active = variable.constraint is not None and id(variable) in trainable
    return AuditRow(name, shape, constraint, axes, active, violation, "; ".join(notes), dtype)


def _spell(axes: tuple[int, ...]) -> str:
    return f"axis {axes[0]}" if len(axes) == 1 else f"axes {axes}"


def audit(model: Any, *, strict: bool = False, tol: float = 1e-5) -> Audit:
    """One row per weight of ``model``: its constraint, axes, whether the next optimizer step
    projects it, and how far it is from its constraint now.

    A constrained weight is *active* when it is trainable and its variable carries the
    constraint (Keras's optimizers apply ``variable.constraint`` after each step). The note
    says what else to know: a constraint only in the layer attribute (not applied) or only on
    the variable (not saved), a frozen weight, ``use_ema``, Keras's own inexact classes. The
    violation is the largest distance of a node from its set (host NumPy, float64): for audits,
    not for the training step.

    Args:
        model: A built Keras model or layer.
        strict: Raise when a constrained weight is not active or is violated by more than
            ``tol`` (relative to the constraint's bound, ``max_value``, ``radius``...).
        tol: The tolerance of ``strict``; at least the rounding of the weight's dtype (2 eps:
            ``2**-6`` for bfloat16), since a projected weight is rounded to its dtype.

    Returns:
        The rows, a list that prints as a table.

    Raises:
        ValueError: The model is not built.
        RuntimeError: ``strict=True`` and a constrained weight is inactive or violated.

    Example:
        >>> import keras
        >>> from weight_constraints.adapters.keras import MaxNorm, audit
        >>> model = keras.Sequential([
        ...     keras.Input((3,)),
        ...     keras.layers.Dense(2, kernel_constraint=MaxNorm(1e3), name="fc"),
        ... ], name="mlp")
        >>> print(audit(model))
        weight         shape  constraint                        axes  active  violation  note
        mlp/fc/kernel  3x2    MaxNorm(max_value=1000.0, axis=0)  0     yes     0
        mlp/fc/bias    2      -                                 -     -       -
    """
    if not model.built:
        raise ValueError(f"{model.name} is not built yet: build or call the model first")
    owners = _owners(model)
    trainable = {id(v) for v in model.trainable_variables}
    use_ema = bool(getattr(getattr(model, "optimizer", None), "use_ema", False))
    rows = Audit(_row(v, owners.get(id(v)), trainable, use_ema) for v in model.weights)
    if strict:
        check_strict(rows, tol)
    return rows


def constraint_stats(model: Any, prefix: str = "constraints/") -> dict[str, float]:
    """Per-weight statistics of the constrained weights of ``model``: the smallest and largest
    node norm (``norm_min``, ``norm_max``; not for entry-wise constraints) and the
    ``violation`` of :func:`audit`, keyed ``f"{prefix}{variable.path}/{statistic}"``.

    Example:
        >>> import keras
        >>> from weight_constraints.adapters.keras import UnitNorm, constraint_stats
        >>> model = keras.Sequential([
        ...     keras.Input((3,)),
        ...     keras.layers.Dense(2, kernel_constraint=UnitNorm(), name="fc"),
        ... ], name="mlp")
        >>> for key in sorted(constraint_stats(model)):
        ...     print(key)
        constraints/mlp/fc/kernel/norm_max
        constraints/mlp/fc/kernel/norm_min
        constraints/mlp/fc/kernel/violation
    """
    stats = {}
    for row, variable in zip(audit(model), model.weights, strict=True):
        if row.constraint is None:
            continue
        key = f"{prefix}{row.name}/"
        if row.axes is not None:
            weights = ops.convert_to_numpy(variable).astype(np.float64)
            norms = np.atleast_1d(wc.node_norms(weights, row.axes))
            stats[key + "norm_min"] = float(norms.min(initial=np.inf))
            stats[key + "norm_max"] = float(norms.max(initial=0.0))
        stats[key + "violation"] = row.violation
    return stats


class ConstraintStats(keras.callbacks.Callback):
    """Add :func:`constraint_stats` to ``logs`` at the end of every epoch, so ``History``,
    ``CSVLogger`` and ``TensorBoard`` record them. List it before ``CSVLogger`` and
    ``TensorBoard`` in ``callbacks`` (callbacks see ``logs`` in their order).

    Args:
        prefix: The start of every key.
    """

    def __init__(self, prefix: str = "constraints/") -> None:
        super().__init__()
        self.prefix = prefix

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs.update(constraint_stats(self.model, self.prefix))

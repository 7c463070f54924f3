"""Keras 3 adapter: drop-in replacements for ``keras.constraints``, backed by the exact core.

``MaxNorm``, ``UnitNorm``, ``MinMaxNorm`` and ``NonNeg`` (and the snake_case aliases Keras has)
take exactly the arguments of their ``keras.constraints`` namesakes, so changing the import line
is enough::

    from weight_constraints.adapters.keras import max_norm   # was: from keras.constraints ...
    Dense(32, kernel_constraint=max_norm(3), bias_constraint=max_norm(3))

Their ``__call__`` runs the core projection with ``xp=keras.ops``, so it works inside the compiled
train step on every backend. They are registered for saving (package ``weight_constraints``).

:func:`constrain` adds constraints to an existing (built or loaded) model, choosing for every
layer the axes that give one norm per output unit (:func:`per_node_axis`). A constraint given to
:func:`constrain` must leave ``axis`` at its default (``0``), which is replaced by the layer's
per-node axes; an explicit axis is honoured only where it *is* the per-node axes, and any other
axis raises a ValueError saying what to do. An axis is never silently replaced.

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

import string
from typing import Any, NamedTuple

import keras
from keras import layers as L
from keras import ops

import weight_constraints as wc
from weight_constraints._checks import normalize_axes

__all__ = [
    "ApplyConstraints",
    "Attached",
    "MaxNorm",
    "MinMaxNorm",
    "NonNeg",
    "UnitNorm",
    "apply_constraints",
    "constrain",
    "max_norm",
    "min_max_norm",
    "non_neg",
    "per_node_axis",
    "to_keras",
    "unit_norm",
]

_PACKAGE = "weight_constraints"


class _CoreBacked(keras.constraints.Constraint):
    """A Keras constraint that holds a core constraint and projects with ``xp=keras.ops``."""

    _core: wc.Constraint

    def __call__(self, w: Any) -> Any:
        return self._core(w, xp=ops)

    def get_config(self) -> dict[str, Any]:
        return self._core.get_config()

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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaxNorm(_CoreBacked):
    """Per-node max-norm, as ``keras.constraints.MaxNorm`` but exact (see
    :func:`weight_constraints.max_norm`).

    Args:
        max_value (float): The largest norm of the incoming weights of a unit.
        axis (int | tuple[int, ...] | None): The axis or axes each norm is taken over: 0 for
            a ``Dense`` kernel ``(in, out)``; for a ``Conv2D`` kernel ``(rows, cols, in, out)``
            use ``[0, 1, 2]``, for a ``Conv2DTranspose`` kernel ``(rows, cols, out, in)`` use
            ``[0, 1, 3]`` (:func:`per_node_axis` gives them for any layer).
    """

    def __init__(self, max_value=2, axis=0):
        self._core = wc.MaxNorm(max_value, axis)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class UnitNorm(_CoreBacked):
    """Per-node unit norm, as ``keras.constraints.UnitNorm`` but exact (see
    :func:`weight_constraints.unit_norm`).

    Args:
        axis (int | tuple[int, ...] | None): The axis or axes each norm is taken over (see
            :class:`MaxNorm`).
    """

    def __init__(self, axis=0):
        self._core = wc.UnitNorm(axis)


@keras.saving.register_keras_serializable(package=_PACKAGE)
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

    def __init__(self, min_value=0.0, max_value=1.0, rate=1.0, axis=0):
        self._core = wc.MinMaxNorm(min_value, max_value, rate, axis)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NonNeg(_CoreBacked):
    """Non-negative weights, as ``keras.constraints.NonNeg``."""

    def __init__(self):
        self._core = wc.NonNeg()


max_norm = MaxNorm
unit_norm = UnitNorm
min_max_norm = MinMaxNorm
non_neg = NonNeg

_TWINS: dict[type[wc.Constraint], type[_CoreBacked]] = {
    wc.MaxNorm: MaxNorm,
    wc.UnitNorm: UnitNorm,
    wc.MinMaxNorm: MinMaxNorm,
    wc.NonNeg: NonNeg,
}

# Core objects used directly as layer constraints save and load too.
for _core_class in _TWINS:
    keras.saving.register_keras_serializable(package=f"{_PACKAGE}.core")(_core_class)


def to_keras(constraint: Any) -> _CoreBacked:
    """The Keras twin of a constraint: a core object, a name, a config, a ``keras.constraints``
    ``MaxNorm``/``UnitNorm``/``MinMaxNorm``/``NonNeg``, or one of ours (returned as is).

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
    builtin = {
        keras.constraints.MaxNorm: wc.MaxNorm,
        keras.constraints.UnitNorm: wc.UnitNorm,
        keras.constraints.MinMaxNorm: wc.MinMaxNorm,
        keras.constraints.NonNeg: wc.NonNeg,
    }.get(type(constraint))
    if builtin is not None:
        constraint = builtin.from_config(constraint.get_config())
    core = wc.get(constraint)
    if core is None or type(core) not in _TWINS:
        raise ValueError(f"cannot convert {constraint!r} to a weight_constraints constraint")
    return _TWINS[type(core)].from_config(core.get_config())


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


class _Weight(NamedTuple):
    attribute: str  # the layer attribute holding the variable
    role: str  # kernel, recurrent or bias
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
        return [_Weight("embeddings", "kernel", "embeddings_constraint", (1,))]
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
    """A constraint that :func:`constrain` attached: the layer path, weight and constraint."""

    layer: str
    weight: str
    constraint: _CoreBacked

    def __str__(self) -> str:
        return f"{self.layer}.{self.weight}: {self.constraint!r}"


def _walk(layer: Any, path: str) -> Any:
    """Yield ``(path, layer)`` for known layers and for unknown layers with weights of their own;
    descend into everything else (models, Bidirectional, TimeDistributed, RNN, attention...)."""
    if _layout(layer) is not None:
        yield path, layer
        return
    if layer._trainable_variables and not isinstance(layer, _NO_ROLE_TYPES):
        yield path, layer
    for child in layer._layers:
        yield from _walk(child, f"{path}/{child.name}" if path else child.name)


def _for_weight(constraint: _CoreBacked, layer: Any, weight: _Weight, path: str) -> _CoreBacked:
    """Bind ``constraint`` to the per-node axes of ``weight``; refuse an axis that differs."""
    if isinstance(constraint, NonNeg):
        return constraint
    axes = _axes(layer, weight)
    shape = tuple(_variable(layer, weight.attribute).shape)
    if constraint.axis != 0 and normalize_axes(constraint.axis, shape) != axes:
        raise ValueError(
            f"{constraint!r} has axis={constraint.axis!r}, but one norm per output unit of "
            f"{path}.{weight.attribute} (shape {shape}) needs axis={axes}. constrain() sets the "
            "per-node axes itself: leave axis at its default, or set this layer's "
            f"{weight.constraint_attribute} yourself to use another axis"
        )
    return to_keras(type(constraint.core).from_config({**constraint.get_config(), "axis": axes}))


def constrain(
    model: Any,
    kernel: Any = None,
    recurrent: Any = None,
    bias: Any = None,
    *,
    skip_unknown: bool = False,
) -> list[Attached]:
    """Attach constraints to an already built (or loaded) model, with per-node axes per layer.

    Every Dense, EinsumDense, Conv, ConvTranspose, DepthwiseConv, SeparableConv and Embedding
    layer and every SimpleRNN/LSTM/GRU cell gets its constraints on the variables and in its
    config (so ``model.save`` keeps them). Bidirectional, TimeDistributed, RNN wrappers and
    nested models are recursed into. Normalisation layers and layers without weights are
    passed over; a layer with weights of its own whose layout is unknown raises a ValueError
    naming it, unless ``skip_unknown=True``.

    Args:
        model: A built Keras model or layer.
        kernel: The constraint of the input weights (kernels, depthwise and pointwise kernels,
            embeddings): one of our constraints, a core one, a name, or a ``keras.constraints``
            MaxNorm/UnitNorm/MinMaxNorm/NonNeg. Leave its axis at the default.
        recurrent: The constraint of the recurrent kernels of RNN cells.
        bias: The constraint of the biases: one norm over each whole bias.
        skip_unknown: Pass over layers whose layout is unknown instead of raising.

    Returns:
        What was attached, one entry per variable.

    Raises:
        ValueError: The model is not built, a layer's layout is unknown, a constraint has an
            axis that is not the per-node one, or no layer has a requested role. Nothing is
            attached when it raises.
    """
    wanted = {
        role: to_keras(c)
        for role, c in (("kernel", kernel), ("recurrent", recurrent), ("bias", bias))
        if c is not None
    }
    if not model.built:
        raise ValueError(f"{model.name} is not built yet: build or call the model first")
    plan = []
    for path, layer in _walk(model, ""):
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
            if weight.role in wanted:
                bound = _for_weight(wanted[weight.role], layer, weight, path)
                plan.append((path, layer, weight, bound))
    missing = set(wanted) - {weight.role for _, _, weight, _ in plan}
    if missing:
        raise ValueError(f"no layer of {model.name} has {' or '.join(sorted(missing))} weights")
    for _, layer, weight, bound in plan:
        setattr(layer, weight.constraint_attribute, bound)
        _variable(layer, weight.attribute).constraint = bound
    return [Attached(path, weight.attribute, bound) for path, _, weight, bound in plan]


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

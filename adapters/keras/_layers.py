"""The Keras layer tables: which layer types are known, where their weights are, their roles and
per-node axes, which weights cannot be constrained, and the catalogue the shared walk reads.

A layer of a known type (``Dense``, convolutions, ``Embedding``, the RNN cells...) is laid out by
:func:`layout`; one norm per output unit is taken over its weight's per-node axes
(:func:`per_node_axes`). A subclass of a known type that adds trainable weights of its own has
weights beyond the known ones (:func:`unknown_weights`): their layout is not proven, so the
adapter refuses the layer or, told to skip it, says what it skipped.

Example:
    >>> import keras
    >>> dense = keras.layers.Dense(4)
    >>> dense.build((None, 3))
    >>> [(w.attribute, w.role, w.axes) for w in layout(dense)]
    [('kernel', 'kernel', (0,)), ('bias', 'bias', None)]
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from typing import Any, NamedTuple

import keras
from keras import layers as L

from .._walk import normalises

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
"""Layer types whose weights have no role in the sense of a weight constraint."""

_CONV = (L.Conv1D, L.Conv2D, L.Conv3D)
_CONV_TRANSPOSE = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_DEPTHWISE_CONV = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_SEPARABLE_CONV = (L.SeparableConv1D, L.SeparableConv2D)
_RNN_CELLS = (L.SimpleRNNCell, L.LSTMCell, L.GRUCell)
_REVERSIBLE = (L.ReversibleEmbedding,) if hasattr(L, "ReversibleEmbedding") else ()

KNOWN_TYPES = (
    L.Dense,
    L.EinsumDense,
    L.Embedding,
    *_CONV,
    *_CONV_TRANSPOSE,
    *_DEPTHWISE_CONV,
    *_SEPARABLE_CONV,
    *_RNN_CELLS,
)
"""The layer types whose weights :func:`layout` knows (it reads their shapes: they must be
built). ``ReversibleEmbedding`` is an ``Embedding``."""


class Weight(NamedTuple):
    """A constrainable weight of a known layer type.

    Attributes:
        attribute: The layer attribute holding the variable (``"kernel"``).
        role: One of the roles (``kernel``, ``recurrent``, ``bias``, ``embedding``).
        constraint_attribute: The layer attribute holding its constraint, which the layer's
            config saves (``"kernel_constraint"``); ``None`` when Keras has none for it (the
            constraint is then only on the variable, and ``model.save()`` drops it).
        axes: Its per-node axes; ``None`` for a bias (one norm over all of it).
    """

    attribute: str
    role: str
    constraint_attribute: str | None
    axes: tuple[int, ...] | None


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


def _has(layer: Any, attribute: str) -> bool:
    return getattr(layer, attribute, None) is not None


def _embedding_layout(layer: Any) -> list[Weight]:
    """An ``Embedding``'s table (one norm per row), and a ``ReversibleEmbedding``'s untied output
    head ``reverse_embeddings`` ``(output_dim, input_dim)``, used as ``inputs @ head``: one norm
    per column, per logit, as the tied head's norms are the table's rows. The head takes the
    embedding constraint, as the tied one does; Keras keeps no constraint for it in the config."""
    table = [Weight("embeddings", "embedding", "embeddings_constraint", (1,))]
    if isinstance(layer, _REVERSIBLE) and _has(layer, "reverse_embeddings"):
        return [*table, Weight("reverse_embeddings", "embedding", None, (0,))]
    return table


def layout(layer: Any) -> list[Weight] | None:
    """The constrainable weights of a built layer, or None when its type is not known."""
    bias = [Weight("bias", "bias", "bias_constraint", None)] if _has(layer, "bias") else []
    if isinstance(layer, L.Dense):
        return [Weight("kernel", "kernel", "kernel_constraint", (0,)), *bias]
    if isinstance(layer, L.EinsumDense):
        return [Weight("kernel", "kernel", "kernel_constraint", _einsum_axes(layer)), *bias]
    if isinstance(layer, L.Embedding):
        return _embedding_layout(layer)
    if isinstance(layer, _CONV_TRANSPOSE):
        rank = _rank(layer, "kernel")  # kernel_size + (filters, in)
        axes = (*range(rank - 2), rank - 1)
        return [Weight("kernel", "kernel", "kernel_constraint", axes), *bias]
    if isinstance(layer, _DEPTHWISE_CONV):
        rank = _rank(layer, "kernel")  # kernel_size + (in, depth_multiplier)
        return [Weight("kernel", "kernel", "depthwise_constraint", tuple(range(rank - 2))), *bias]
    if isinstance(layer, _SEPARABLE_CONV):
        depthwise = tuple(range(_rank(layer, "depthwise_kernel") - 2))
        pointwise = tuple(range(_rank(layer, "pointwise_kernel") - 1))
        return [
            Weight("depthwise_kernel", "kernel", "depthwise_constraint", depthwise),
            Weight("pointwise_kernel", "kernel", "pointwise_constraint", pointwise),
            *bias,
        ]
    if isinstance(layer, _CONV):
        rank = _rank(layer, "kernel")  # kernel_size + (in/groups, filters)
        return [Weight("kernel", "kernel", "kernel_constraint", tuple(range(rank - 1))), *bias]
    if isinstance(layer, _RNN_CELLS):
        return [
            Weight("kernel", "kernel", "kernel_constraint", (0,)),
            Weight("recurrent_kernel", "recurrent", "recurrent_constraint", (0,)),
            *bias,
        ]
    return None


def variable(layer: Any, attribute: str) -> Any:
    """The variable behind a layer attribute (the base variable of a LoRA layer's computed
    ``kernel``)."""
    value = getattr(layer, attribute)
    if not isinstance(value, keras.Variable):  # e.g. a LoRA-enabled Dense: kernel is computed
        value = getattr(layer, f"_{attribute}")
    return value


def node_axes(layer: Any, weight: Weight) -> tuple[int, ...]:
    """The per-node axes of ``weight`` of ``layer``: all axes of a bias."""
    if weight.axes is None:  # a bias: one norm over all of it
        return tuple(range(_rank(layer, weight.attribute)))
    return weight.axes


def per_node_axes(layer: Any, weight_name: str) -> tuple[int, ...]:
    """The axes that give one norm per output unit for a weight of a built layer.

    ``weight_name`` is the layer attribute: ``"kernel"``, ``"recurrent_kernel"``, ``"bias"``,
    ``"depthwise_kernel"``, ``"pointwise_kernel"``, ``"embeddings"`` or ``"reverse_embeddings"``.
    RNN layers are looked up through their cell.

    Example:
        >>> import keras
        >>> from weight_constraints.adapters.keras import per_node_axes
        >>> conv = keras.layers.Conv2DTranspose(8, 3)
        >>> conv.build((None, 16, 16, 4))
        >>> tuple(conv.kernel.shape)  # (rows, cols, filters, in)
        (3, 3, 8, 4)
        >>> per_node_axes(conv, "kernel")  # not Keras's docstring advice [0, 1, 2]
        (0, 1, 3)
    """
    target = layer.cell if isinstance(layer, L.RNN) else layer
    if not target.built:
        raise ValueError(f"layer {layer.name} is not built yet: build or call the model first")
    weights = layout(target)
    if weights is None:
        raise ValueError(f"{type(layer).__name__} {layer.name}: unknown weight layout")
    for weight in weights:
        if weight.attribute == weight_name:
            return node_axes(target, weight)
    names = [w.attribute for w in weights]
    raise ValueError(f"{type(layer).__name__} {layer.name} has no weight {weight_name!r}: {names}")


per_node_axis = per_node_axes
"""The former name of :func:`per_node_axes` (it returns a tuple of axes), kept as an alias."""


# -- what cannot be constrained ----------------------------------------------------------------


class Refusal(NamedTuple):
    """Why a constraint on a weight would not constrain what its layer uses.

    Attributes:
        code: ``"lora"`` or ``"quantized"``.
        reason: What an audit row notes (``"LoRA is enabled: ..."``).
        advice: What :func:`~weight_constraints.adapters.keras.constrain` adds to its error.
    """

    code: str
    reason: str
    advice: str


_LORA_WEIGHTS = ("kernel", "embeddings")


def refusal(layer: Any, weight: Weight) -> Refusal | None:
    """Why a constraint on ``weight`` would not constrain what ``layer`` uses (None when it
    would): LoRA (the layer uses the base weight plus the LoRA product) or quantized storage (the
    stored values are not the weights)."""
    if getattr(layer, "lora_enabled", False) and weight.attribute in _LORA_WEIGHTS:
        return Refusal(
            "lora",
            f"LoRA is enabled: the layer uses {weight.attribute} + the LoRA product, which a "
            "constraint on the base weight does not reach",
            " (Keras itself refuses constraints on LoRA layers: 'Lora is incompatible with "
            "kernel constraints'). Leave this role out, or constrain the model without LoRA",
        )
    mode = getattr(layer, "quantization_mode", None)
    dtype = keras.backend.standardize_dtype(variable(layer, weight.attribute).dtype)
    if (mode is not None and weight.attribute != "bias") or "float" not in dtype:
        return Refusal(
            "quantized",
            f"quantized ({mode or dtype}, stored as {dtype}): the stored values are not the "
            "weights",
            ". Constrain and train the float model, then quantize it",
        )
    return None


def unknown_weights(layer: Any) -> list[Any]:
    """The trainable floating weights a built layer of a known type holds beyond its layout
    (weights a subclass adds, such as keras-hub's former ``ReversibleEmbedding``'s untied
    ``reverse_embeddings``), without a constraint on their variable: their layout is not proven.

    Keras's own LoRA weights are not among them, and a quantized layer has none (its stored
    weights are not constrainable anyway).

    Example:
        >>> import keras
        >>> class Scaled(keras.layers.Dense):
        ...     def build(self, input_shape):
        ...         super().build(input_shape)
        ...         self.gain = self.add_weight(shape=(2, self.units), name="gain")
        >>> layer = Scaled(3)
        >>> layer.build((None, 4))
        >>> [v.name for v in unknown_weights(layer)]
        ['gain']
    """
    if getattr(layer, "quantization_mode", None) is not None:
        return []
    known = {id(variable(layer, w.attribute)) for w in layout(layer) or []}
    known |= {id(v) for k, v in vars(layer).items() if k.startswith("lora_")}
    return [
        v
        for v in layer._trainable_variables
        if id(v) not in known
        and v.constraint is None
        and "float" in keras.backend.standardize_dtype(v.dtype)
    ]


def ranks(weights: Iterable[Any]) -> list[int]:
    """The number of dimensions of each weight."""
    return [len(v.shape) for v in weights]


def known_base(layer: Any) -> str:
    """The name of the known Keras type a layer is an instance of (its own type's when it is
    one)."""
    return next(cls.__name__ for cls in type(layer).__mro__ if cls in KNOWN_TYPES)


# -- the catalogue the shared walk reads ---------------------------------------------------------


class _Catalogue:
    """The Keras tables as the shared walk reads them: children from ``layer._layers`` named by
    ``child.name``; normalisation layers (by type, or by structure) and ``PReLU`` have no role."""

    def children(self, node: Any) -> Iterable[tuple[str, Any]]:
        return [(child.name, child) for child in node._layers]

    def is_known(self, node: Any) -> bool:
        return isinstance(node, KNOWN_TYPES)

    def owned(self, node: Any) -> tuple[str, ...]:
        return ()  # no known Keras layer covers a sublayer's weights

    def has_own_weights(self, node: Any) -> bool:
        return bool(node._trainable_variables)

    def has_no_role(self, node: Any) -> bool:
        return isinstance(node, _NO_ROLE_TYPES) or normalises(
            node, ranks(node._trainable_variables)
        )


CATALOGUE = _Catalogue()
"""The catalogue of Keras layers for :func:`weight_constraints.adapters._walk.walk` (paths
joined with ``"/"``)."""

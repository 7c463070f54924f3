"""Constraints attached to an existing model (:func:`constrain`), and projecting them now
(:func:`apply_constraints`, :class:`ApplyConstraints`).

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

import warnings
from collections.abc import Iterable
from typing import Any, NamedTuple

import keras

from weight_constraints._checks import normalize_axes

from .._binding import PerInput, bind, is_per_node
from .._errors import WeightValueError
from .._roles import PER_INPUT_ROLES, Request
from .._walk import walk
from ._layers import (
    CATALOGUE,
    Weight,
    known_base,
    layout,
    node_axes,
    refusal,
    unknown_weights,
    variable,
)
from ._names import to_keras
from ._twins import _CoreBacked, twin_of


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


class _Entry(NamedTuple):
    """A weight :func:`constrain` is about to constrain."""

    where: str
    layer: Any
    weight: Weight
    bound: _CoreBacked


def _refuse_positional(positional: tuple[Any, ...]) -> None:
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


def _describe(weights: list[Any]) -> str:
    return ", ".join(f"{v.path} ({'x'.join(map(str, v.shape))})" for v in weights)


def _check_layer(path: str, layer: Any, skip_unknown: bool, skipped: list[Any]) -> bool:
    """Whether the weights of ``layer`` are laid out; raise (or note in ``skipped`` under
    ``skip_unknown``) for an unbuilt layer, a layer of unknown layout, or a known layer with
    weights beyond the known ones."""
    name = path or layer.name
    if not layer.built:
        raise ValueError(
            f"layer {name} ({type(layer).__name__}) is not built: the model's "
            "call() never used it, so it has no weights yet. Call it (or build it) first, or "
            "remove it from the model"
        )
    if layout(layer) is None:
        if not skip_unknown:
            raise ValueError(
                f"layer {name} ({type(layer).__name__}) has weights of its own "
                "and an unknown layout; set its *_constraint arguments yourself or pass "
                "skip_unknown=True"
            )
        skipped.extend(v for v in layer._trainable_variables if len(v.shape) >= 2)
        return False
    extra = unknown_weights(layer)
    if extra and not skip_unknown:
        raise ValueError(
            f"layer {name} ({type(layer).__name__}, a subclass of {known_base(layer)}) has "
            f"weights beyond the known ones: {_describe(extra)}. Their layout is unknown, so "
            "constrain() would leave them unconstrained; set their variables' constraints "
            "yourself (variable.constraint = ...), or pass skip_unknown=True"
        )
    skipped.extend(extra)
    return True


def _entry(
    request: Request, label: str, layer: Any, weight: Weight, replace: bool, per_input: bool
) -> _Entry:
    """The constraint ``weight`` gets, bound to its per-node axes (one norm per input unit with
    ``per_input``, for a kernel or recurrent kernel) and checked against its dtype; raise where
    it cannot hold or would replace another one."""
    where = f"{label}.{weight.attribute}"
    refused = refusal(layer, weight)
    if refused is not None:
        raise WeightValueError(
            f"{where} cannot be constrained", refused.reason + refused.advice, code=refused.code
        )
    held = variable(layer, weight.attribute)
    shape = tuple(held.shape)
    dtype = keras.backend.standardize_dtype(held.dtype)
    twin = request.constraint_for(weight.role)
    by_input = per_input and weight.role in PER_INPUT_ROLES
    axes = node_axes(layer, weight)
    core, _ = bind(twin.core, axes, shape, where, dtype=dtype, per_input=by_input)
    bound = twin_of(core)
    existing = _existing(layer, weight)
    if existing is not None and not replace and not _same(existing, bound, shape):
        raise ValueError(
            f"{where} already has the constraint {existing!r}; constrain() would "
            f"replace it with {bound!r}. Pass replace=True to replace it, or leave this "
            "role out and set the constraints you want yourself."
        )
    return _Entry(where, layer, weight, bound)


def _same(existing: Any, bound: _CoreBacked, shape: tuple[int, ...]) -> bool:
    """Whether the constraint already on a weight is ``bound`` (the same projection, axes
    compared on ``shape``): Keras's own classes are not, they are not exact."""
    core: Any = existing.core if isinstance(existing, _CoreBacked) else existing
    theirs: Any = bound.core
    if type(core) is not type(theirs):
        return False
    if not is_per_node(core):
        return bool(core == theirs)
    axes = normalize_axes(core.axis, shape)
    if axes != normalize_axes(theirs.axis, shape):
        return False
    return bool(core.with_axis(axes) == theirs.with_axis(axes))


def _existing(layer: Any, weight: Weight) -> Any:
    """The constraint a weight already has: on its variable, else in its layer attribute."""
    held = variable(layer, weight.attribute).constraint
    if held is not None or weight.constraint_attribute is None:
        return held
    return getattr(layer, weight.constraint_attribute, None)


def _entries(
    model: Any, request: Request, skip_unknown: bool, replace: bool, per_input: PerInput
) -> list[_Entry]:
    """Every weight to constrain, checked; nothing is attached yet. The kernels of the layers
    ``per_input`` chooses take one norm per input unit; a pattern that chose none raises."""
    wanted = request.wanted()
    entries: list[_Entry] = []
    skipped: list[Any] = []
    labels = []
    for path, layer in walk(model, CATALOGUE, sep="/"):
        if not _check_layer(path, layer, skip_unknown, skipped):
            continue
        label = path or layer.name
        labels.append(label)
        by_input = per_input(label)
        for weight in layout(layer) or []:
            if wanted[weight.role] is not None:
                entries.append(_entry(request, label, layer, weight, replace, by_input))
    per_input.check(labels, "layer")
    missing = request.missing(entry.weight.role for entry in entries)
    if missing:
        raise ValueError(f"no layer of {model.name} has {' or '.join(missing)} weights")
    if skipped:
        warnings.warn(
            f"constrain(skip_unknown=True) left weights of unknown layout unconstrained: "
            f"{_describe(skipped)}",
            UserWarning,
            stacklevel=3,
        )
    return entries


def _warn(attached: list[Attached], unsaved: list[str]) -> None:
    frozen = [f"{a.layer}.{a.weight}" for a in attached if a.frozen]
    if frozen:
        warnings.warn(
            f"constrain(): {', '.join(frozen)} {'is' if len(frozen) == 1 else 'are'} frozen "
            "(trainable=False): the constraint is attached, but no optimizer step projects a "
            "frozen weight, so it holds only once the weight is trainable again (or after "
            "apply_constraints(model), which projects every constrained weight now)",
            UserWarning,
            stacklevel=3,
        )
    if unsaved:
        warnings.warn(
            f"constrain(): Keras saves no constraint for {', '.join(unsaved)} (the layer's "
            "config has no argument for it): the constraint is attached to the variable, but a "
            "model loaded from a file has none there; call constrain() again after loading",
            UserWarning,
            stacklevel=3,
        )


def constrain(
    model: Any,
    *positional: Any,
    kernel: Any = None,
    recurrent: Any = None,
    bias: Any = None,
    embedding: Any = None,
    skip_unknown: bool = False,
    replace: bool = False,
    per_input: str | Iterable[str] | None = None,
) -> list[Attached]:
    r"""Attach constraints to an already built (or loaded) model, with per-node axes per layer.

    Every Dense, EinsumDense, Conv, ConvTranspose, DepthwiseConv, SeparableConv and Embedding
    layer and every SimpleRNN/LSTM/GRU cell gets its constraints on the variables and in its
    config (so ``model.save`` keeps them). Bidirectional, TimeDistributed, RNN wrappers and
    nested models are recursed into. Normalisation layers (the Keras ones, and layers of other
    types recognised by their structure: only 1-D weights and a small ``epsilon``-like float
    attribute, as keras-hub's ``LlamaLayerNorm``) and layers without weights are passed over;
    a layer with weights of its own whose layout is unknown raises a ValueError naming it, and
    so does a subclass of a known layer that adds trainable weights of its own (their layout is
    unknown), unless ``skip_unknown=True``, which warns naming what it left unconstrained.

    ``ReversibleEmbedding``'s untied output head ``reverse_embeddings`` takes the embedding
    constraint (one norm per logit, as the tied head's norms are the table's rows). Keras's
    config has no argument for its constraint, so ``model.save()`` does not keep it: a
    ``UserWarning`` says so, and ``audit`` flags it unconstrained after loading.

    The axis rule is the one every adapter shares (``weight_constraints.adapters._binding``): a
    constraint with its axis left at the default is applied over each weight's per-node axes;
    an explicit axis is honoured where it names the per-node axes and refused otherwise. The
    axis of a ``keras.constraints`` object counts as given. A bound the weight's dtype cannot
    represent (``Simplex(1e5)`` on float16 weights) raises, naming weight, parameter and dtype.

    Bounds may be rules of each weight's shape: ``MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)")``
    (EDM2's forced weight normalization) keeps every node of every kernel at the norm
    ``sqrt(fan_in)`` of its own layer, ``fan_in`` being the entries of a node (``in`` for a
    ``Dense`` kernel, ``rows * cols * in`` for a ``Conv2D`` one). The attached constraint keeps
    the rule (its config says ``"sqrt(fan_in)"``, so ``model.save()`` keeps it) and resolves it
    from the variable's static shape when it projects.

    One norm per *input* unit instead of one per output unit (nGPT's attention-output and MLP
    down-projections, which map into the embedding space) is a separate, named choice:
    ``per_input`` names the layers, by regular expressions fullmatched against the paths
    :class:`Attached` reports (``"block/down"``; an RNN's cell is ``"lstm/lstm_cell"``). Their
    2-D kernels and recurrent kernels take the axis that is not the per-node one (axis 1 of a
    ``Dense`` kernel ``(in, out)``); the attached constraint has that axis explicitly, so
    ``model.save()`` keeps it. Embedding tables and biases keep their per-node axes.

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
        skip_unknown: Pass over layers whose layout is unknown, and the weights a subclass
            adds to a known layer, instead of raising (a ``UserWarning`` lists the skipped
            weights of two or more dimensions, and every skipped weight a subclass adds).
        replace: Replace a different constraint a weight already has (otherwise an error).
        per_input: The layers whose kernels (and recurrent kernels) take one norm per *input*
            unit: a regular expression or several, each matched against whole layer paths
            (``r"block_\d+/(attn_out|down)"``). 2-D kernels only; a pattern that matches no
            layer raises.

    Returns:
        What was attached, one entry per variable (``frozen=True`` for frozen weights).

    Raises:
        TypeError: A role was passed by position (the roles are keyword-only; unlike the
            PyTorch adapter's, this ``constrain`` takes no optimizer).
        ValueError: The model or one of its layers is not built, a layer's layout is unknown,
            a known layer has weights beyond the known ones, a constraint is not one this
            adapter can attach (a core constraint of your own: the message says what to do),
            has an explicit axis that is not the per-node one or a bound the weight's dtype
            cannot represent, a weight already has a different constraint (without
            ``replace=True``), a weight is the base of a LoRA layer or quantized, no layer
            has a requested role, a ``per_input`` pattern matches no layer or a layer it
            matches has a kernel that is not 2-D (a convolution). Nothing is attached when it
            raises.

    Example:
        EDM2's forced weight normalization (every node at the norm ``sqrt(fan_in)`` of its
        layer) and nGPT's unit norms with one norm per input unit for ``down``:

        >>> import keras
        >>> from weight_constraints.adapters.keras import MinMaxNorm, UnitNorm, constrain
        >>> net = keras.Sequential([
        ...     keras.Input((8, 8, 3)),
        ...     keras.layers.Conv2D(4, 3, name="conv"),
        ...     keras.layers.Flatten(),
        ...     keras.layers.Dense(2, name="fc"),
        ... ])
        >>> for attached in constrain(net, kernel=MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)")):
        ...     print(attached.layer, attached.constraint.axis)  # norms sqrt(27), sqrt(144)
        conv (0, 1, 2)
        fc 0
        >>> block = keras.Sequential([
        ...     keras.Input((6,)),
        ...     keras.layers.Dense(12, use_bias=False, name="up"),
        ...     keras.layers.Dense(6, use_bias=False, name="down"),
        ... ])
        >>> for attached in constrain(block, kernel=UnitNorm(), per_input="down"):
        ...     print(attached)
        up.kernel: UnitNorm(axis=0)
        down.kernel: UnitNorm(axis=1)
    """
    _refuse_positional(positional)
    request = Request.of(
        to_keras, kernel=kernel, recurrent=recurrent, bias=bias, embedding=embedding
    )
    if not model.built:
        raise ValueError(f"{model.name} is not built yet: build or call the model first")
    entries = _entries(model, request, skip_unknown, replace, PerInput(per_input))
    trainable = {id(v) for v in model.trainable_variables}
    attached, unsaved = [], []
    for entry in entries:
        held = variable(entry.layer, entry.weight.attribute)
        if entry.weight.constraint_attribute is None:
            unsaved.append(entry.where)
        else:
            setattr(entry.layer, entry.weight.constraint_attribute, entry.bound)
        held.constraint = entry.bound
        frozen = id(held) not in trainable
        layer_path = entry.where.rpartition(".")[0]
        attached.append(Attached(layer_path, entry.weight.attribute, entry.bound, frozen))
    _warn(attached, unsaved)
    return attached


# -- projecting now, and after EMA -------------------------------------------------------------


def apply_constraints(model: Any) -> None:
    """Project every constrained variable of ``model`` now (after ``load_weights``, after
    swapping in averaged weights, after an optimizer with ``use_ema=True`` finished)."""
    for held in model.variables:
        if held.constraint is not None:
            held.assign(held.constraint(held))


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

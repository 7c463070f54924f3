"""The audit of a Keras model (one row per weight: its constraint, whether the next step projects
it, how far it is from its set) and node-norm statistics, in the schema every adapter shares.

Example:
    >>> import keras
    >>> from weight_constraints.adapters.keras import MaxNorm, norm_stats
    >>> model = keras.Sequential([
    ...     keras.Input((3,)),
    ...     keras.layers.Dense(2, kernel_constraint=MaxNorm(1e3), name="fc"),
    ... ], name="mlp")
    >>> sorted(norm_stats(model))  # doctest: +NORMALIZE_WHITESPACE
    ['mlp/fc/bias/norm_max', 'mlp/fc/bias/norm_mean', 'mlp/fc/bias/norm_min',
     'mlp/fc/kernel/norm_max', 'mlp/fc/kernel/norm_mean', 'mlp/fc/kernel/norm_min',
     'mlp/fc/kernel/violation']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

from weight_constraints._checks import normalize_axes

from .. import _audit as shared
from .._binding import is_per_node, with_axes
from .._walk import walk
from ._layers import CATALOGUE, Weight, layout, node_axes, refusal, unknown_weights, variable
from ._names import KERAS_BUILTINS, core_of


class _Owner(NamedTuple):
    """The known layer a variable belongs to, and its layout entry (``None`` for a weight
    beyond the layout)."""

    layer: Any
    weight: Weight | None


class Audit(shared.Audit):
    """The rows of a Keras audit: a :class:`weight_constraints.adapters._audit.Audit` whose
    :meth:`problems` also lists the *uncovered* weights, unconstrained weights that Keras's
    config holds no constraint for (a weight a subclass adds to a known layer,
    ``ReversibleEmbedding``'s ``reverse_embeddings``) in a layer whose other weights are
    constrained."""

    def __init__(self, rows: Iterable[shared.AuditRow], uncovered: Iterable[str] = ()) -> None:
        super().__init__(rows)
        self.uncovered = frozenset(uncovered)

    def problems(self, tol: float = 1e-5) -> list[shared.AuditRow]:
        bad = {id(row) for row in super().problems(tol)}
        return [row for row in self if id(row) in bad or row.name in self.uncovered]


def _owners(model: Any) -> dict[int, _Owner]:
    """The known layer (and layout entry) of every variable of a known layer, by ``id``."""
    owners = {}
    for _, layer in walk(model, CATALOGUE, sep="/"):
        weights = layout(layer) if layer.built else None
        if weights is None:  # no weights yet, or an unknown layer
            continue
        for weight in weights:
            owners[id(variable(layer, weight.attribute))] = _Owner(layer, weight)
        for extra in unknown_weights(layer):
            owners[id(extra)] = _Owner(layer, None)
    return owners


def _uncovered(model: Any, owners: dict[int, _Owner]) -> dict[int, str]:
    """The note of every uncovered weight (see :class:`Audit`), by ``id`` of its variable."""
    notes = {}
    constrained = {
        id(owner.layer)
        for owner in owners.values()
        if owner.weight is not None and _held(owner).constraint is not None
    }
    for held in model.weights:
        owner = owners.get(id(held))
        if owner is None or held.constraint is not None or id(owner.layer) not in constrained:
            continue
        if owner.weight is None:
            notes[id(held)] = (
                f"not constrained: a weight {type(owner.layer).__name__} adds to a known layer "
                "(layout unknown), while the layer's other weights are constrained"
            )
        elif owner.weight.constraint_attribute is None:
            notes[id(held)] = (
                "not constrained, while the layer's other weights are: the layer's config "
                "keeps no constraint for it (constrain() sets one on the variable; call it "
                "again after loading)"
            )
    return notes


def _held(owner: _Owner) -> Any:
    assert owner.weight is not None
    return variable(owner.layer, owner.weight.attribute)


def _notes(
    held: Any, owner: _Owner | None, attribute: Any, trainable: set[int], use_ema: bool
) -> list[str]:
    """The notes on a constrained weight: where its constraint is, whether a step projects it."""
    notes = []
    name = None if owner is None or owner.weight is None else owner.weight.constraint_attribute
    if held.constraint is None:
        notes.append(f"only in {name}, not on the variable: not applied")
    elif owner is not None and owner.weight is not None and name is None:
        notes.append("Keras saves no constraint for this weight: model.save() drops it")
    elif name is not None and attribute is None:
        notes.append(f"not in {name}: model.save() drops it")
    elif name is not None and attribute is not held.constraint and attribute != held.constraint:
        notes.append(f"{name} differs: model.save() keeps that one")
    if id(held) not in trainable:
        notes.append("not trainable: no optimizer step projects it")
    elif use_ema and held.constraint is not None:
        notes.append("use_ema: the averages fit() copies in are not projected (ApplyConstraints)")
    return notes


def _spell(axes: tuple[int, ...]) -> str:
    return f"axis {axes[0]}" if len(axes) == 1 else f"axes {axes}"


def _rebindable(core: Any, axes: tuple[int, ...] | None) -> bool:
    """Whether ``core`` can be taken over ``axes`` (a core constraint of the user's own may have
    an axis and no way to copy itself over another one)."""
    try:
        with_axes(core, axes)
    except TypeError:
        return False
    return True


def _measure(
    constraint: Any, held: Any, owner: _Owner | None, notes: list[str]
) -> tuple[tuple[int, ...] | None, float]:
    """``(axes, violation)`` of a constrained weight, adding what to know to ``notes``."""
    weights = ops.convert_to_numpy(held)
    shape = tuple(held.shape)
    core: Any = core_of(constraint)
    axes = normalize_axes(core.axis, shape) if is_per_node(core) else None
    if core is None or not _rebindable(core, axes):  # the user's own: largest entry change
        projected = ops.convert_to_numpy(constraint(held)).astype(np.float64)
        notes.append("custom constraint: largest entry change")
        return None, float(np.max(np.abs(weights.astype(np.float64) - projected), initial=0.0))
    if type(constraint) in KERAS_BUILTINS:
        notes.append("Keras's own class (not exact)")
    if owner is not None and owner.weight is not None and axes is not None:
        per_node = normalize_axes(node_axes(owner.layer, owner.weight), shape)
        if axes != per_node:
            notes.append(
                f"{_spell(axes)} is not the per-node axes {per_node} of this "
                f"{type(owner.layer).__name__} {owner.weight.attribute}"
            )
    return axes, shared.worst_violation(core, weights, axes)


def _row(held: Any, owner: _Owner | None, trainable: set[int], use_ema: bool) -> shared.AuditRow:
    name, shape = held.path, tuple(held.shape)
    layer = None if owner is None else owner.layer
    weight = None if owner is None else owner.weight
    attribute = None
    if weight is not None and weight.constraint_attribute is not None:
        attribute = getattr(layer, weight.constraint_attribute, None)
    constraint = held.constraint if held.constraint is not None else attribute
    dtype = keras.backend.standardize_dtype(held.dtype)
    if constraint is None:
        return shared.AuditRow(name, shape, None, None, False, None, "", dtype)
    notes = _notes(held, owner, attribute, trainable, use_ema)
    active = held.constraint is not None and id(held) in trainable
    refused = None if weight is None else refusal(layer, weight)
    if refused is not None:
        notes.append(refused.reason)
        if "float" not in dtype:  # stored integers: no distance to the set to measure
            note = "; ".join(notes)
            return shared.AuditRow(name, shape, constraint, None, active, None, note, dtype)
    axes, violation = _measure(constraint, held, owner, notes)
    note = "; ".join(notes)
    return shared.AuditRow(name, shape, constraint, axes, active, violation, note, dtype)


def audit(model: Any, *, strict: bool = False, tol: float = 1e-5) -> Audit:
    """One row per weight of ``model``: its constraint, axes, whether the next optimizer step
    projects it, and how far it is from its constraint now.

    A constrained weight is *active* when it is trainable and its variable carries the
    constraint (Keras's optimizers apply ``variable.constraint`` after each step). The note
    says what else to know: a constraint only in the layer attribute (not applied) or only on
    the variable (not saved), a frozen weight, ``use_ema``, Keras's own inexact classes. The
    violation is the largest distance of a node from its set (host NumPy, float64): for audits,
    not for the training step.

    An unconstrained weight that Keras's config holds no constraint for (a trainable weight a
    subclass adds to a known layer, whose layout is unknown; ``ReversibleEmbedding``'s
    ``reverse_embeddings`` after loading) in a layer whose other weights are constrained is
    *uncovered*: its note says so, and it counts among :meth:`Audit.problems`.

    Args:
        model: A built Keras model or layer.
        strict: Raise when a constrained weight is not active or is violated by more than its
            tolerance, or a weight is uncovered.
        tol: The tolerance of ``strict``, relative to the constraint's bound (``max_value``,
            ``radius``...); at least the kind's own rounding allowance in the weight's dtype
            (:func:`weight_constraints.adapters._audit.tolerance`: 2 roundings for the norm
            kinds, 4 for ``Simplex`` and ``MaxL1Norm``; ``2**-6`` and ``2**-5`` for bfloat16),
            since a projected weight is rounded to its dtype.

    Returns:
        The rows, a list that prints as a table.

    Raises:
        ValueError: The model is not built.
        RuntimeError: ``strict=True`` and a constrained weight is inactive or violated, or a
            weight is uncovered.

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
    uncovered = _uncovered(model, owners)
    trainable = {id(v) for v in model.trainable_variables}
    use_ema = bool(getattr(getattr(model, "optimizer", None), "use_ema", False))
    rows, names = [], []
    for held in model.weights:
        row = _row(held, owners.get(id(held)), trainable, use_ema)
        if id(held) in uncovered:
            row = row._replace(note=uncovered[id(held)])
            names.append(row.name)
        rows.append(row)
    result = Audit(rows, names)
    if strict and names:
        raise RuntimeError(
            f"{len(names)} weight(s) are not constrained while the rest of their layer is "
            "(Keras's config holds no constraint for them):\n"
            + shared.format_table(result.problems(tol))
        )
    shared.finish(result, strict, tol)
    return result


def _statistics(model: Any, constrained_only: bool) -> dict[str, float]:
    """The norm statistics (:func:`weight_constraints.adapters._audit.norm_statistics`) of the
    constrained weights, and unless ``constrained_only`` of every weight of a known layer."""
    owners = _owners(model)
    stats: dict[str, float] = {}
    for row, held in zip(audit(model), model.weights, strict=True):
        axes, violation = row.axes, row.violation
        if row.constraint is None:
            owner = owners.get(id(held))
            if constrained_only or owner is None or owner.weight is None:
                continue
            if "float" not in row.dtype:  # quantized storage: not the weights
                continue
            axes = normalize_axes(node_axes(owner.layer, owner.weight), row.shape)
        elif axes is None and violation is None:
            continue
        weights = ops.convert_to_numpy(held)
        stats.update(shared.norm_statistics(row.name, weights, axes, violation))
    return stats


def norm_stats(model: Any) -> dict[str, float]:
    """Per-weight node-norm statistics as a flat dict, for any logger, in the schema every
    adapter shares: ``"<path>/norm_min"``, ``"/norm_max"`` and ``"/norm_mean"`` (per-node L2
    norms) for every weight of a known layer (over its constraint's axes, or its per-node axes
    when it has none; none for entry-wise constraints) and ``"<path>/violation"`` (as in
    :func:`audit`) for every constrained weight. Host values: call it when you log.
    """
    return _statistics(model, constrained_only=False)


def constraint_stats(model: Any, prefix: str = "constraints/") -> dict[str, float]:
    """The :func:`norm_stats` of the constrained weights of ``model``, keyed
    ``f"{prefix}{variable.path}/{statistic}"``: the smallest, largest and mean node norm
    (``norm_min``, ``norm_max``, ``norm_mean``; not for entry-wise constraints) and the
    ``violation`` of :func:`audit`.

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
        constraints/mlp/fc/kernel/norm_mean
        constraints/mlp/fc/kernel/norm_min
        constraints/mlp/fc/kernel/violation
    """
    return {prefix + key: value for key, value in _statistics(model, True).items()}


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

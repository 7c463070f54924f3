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
for saving (package ``weight_constraints``) when this package is imported.

:func:`constrain` adds constraints to an existing (built or loaded) model, choosing for every
layer the axes that give one norm per output unit (:func:`per_node_axes`) by the rule all adapters
share: a constraint with its axis left at the default is applied over the per-node axes; an
explicit axis is honoured only where it *is* the per-node axes, and any other axis raises a
ValueError saying what to do. An axis is never silently replaced, and neither is a constraint a
weight already has (``replace=True`` replaces it). One norm per *input* unit is a separate,
named choice (``per_input=`` the layers, by path), and a bound may be a rule of each weight's
shape: ``constrain(model, kernel=MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)"))`` is EDM2's forced
weight normalization, ``constrain(block, kernel=UnitNorm(), per_input=r".*/down")`` nGPT's.
Rules and per-input axes are in the constraints' configs, so saved models keep them.
:func:`audit` lists every weight with its constraint, whether the next step projects it and how
far it is from its set; :func:`norm_stats` and :class:`ConstraintStats` give node-norm
statistics for logging.

``get``, ``serialize``, ``deserialize`` and ``Constraint`` complete the ``keras.constraints``
interface, so the module can replace it wholesale.

The modules: ``_twins`` (the constraint classes and their registration for saving), ``_names``
(``get``, ``serialize``, ``deserialize``, ``to_keras``), ``_layers`` (the layer tables and the
catalogue the shared walk reads), ``_constrain`` (``constrain``, ``apply_constraints``) and
``_audit`` (``audit`` and the statistics).

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

from ._audit import ConstraintStats, audit, constraint_stats, norm_stats
from ._constrain import ApplyConstraints, Attached, apply_constraints, constrain
from ._layers import per_node_axes, per_node_axis
from ._names import deserialize, get, serialize, to_keras
from ._twins import (
    BoxMaxNorm,
    Clip,
    Constraint,
    MaxL1Norm,
    MaxNorm,
    MinMaxNorm,
    NonNeg,
    Simplex,
    UnitNorm,
    box_max_norm,
    clip,
    max_l1_norm,
    max_norm,
    min_max_norm,
    non_neg,
    simplex,
    unit_norm,
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
    "norm_stats",
    "per_node_axes",
    "per_node_axis",
    "serialize",
    "simplex",
    "to_keras",
    "unit_norm",
]

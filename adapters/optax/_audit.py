"""The audit of a parameter tree: :func:`audit` (every leaf, its constraint and axes, how far it
is from its set) and :func:`norm_stats` (the per-node norms of the constrained leaves, in the
schema every adapter shares). Both read values on the host: for checking and logging, not for
the training step.

Example:
    >>> import jax.numpy as jnp
    >>> from weight_constraints import MaxNorm
    >>> params = {"Dense_0": {"kernel": jnp.full((4, 2), 0.25)}}
    >>> stats = norm_stats(params, kernel=MaxNorm(1.0))
    >>> stats["Dense_0/kernel/norm_max"], stats["Dense_0/kernel/violation"]
    (0.5, 0.0)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from weight_constraints.adapters._audit import (
    Audit,
    AuditRow,
    finish,
    norm_statistics,
    worst_violation,
)

from ._patterns import Rules
from ._projection import Leaf, TreeReader, parts

__all__ = ["audit", "norm_stats"]


def _rows(tree: Any, reader: TreeReader) -> Iterator[tuple[Leaf, Any, AuditRow]]:
    """For every leaf of ``tree`` (of both halves of ``optax.LookaheadParams``, their paths
    prefixed ``fast/`` and ``slow/``): how it is projected, its value, its audit row."""
    reading = reader.read(tree)
    for prefix, part in parts(tree):
        leaves = reading.treedef.flatten_up_to(part)
        for leaf, decision in zip(leaves, reading.decisions, strict=True):
            decision = decision._replace(path=prefix + decision.path)
            violation = None
            if decision.constraint is not None:
                violation = worst_violation(decision.constraint, np.asarray(leaf), decision.axes)
            row = AuditRow(
                decision.path,
                decision.shape,
                decision.constraint,
                decision.axes,
                decision.constraint is not None,
                violation,
                decision.note,
                getattr(leaf, "dtype", None),
            )
            yield decision, leaf, row


def audit(
    params: Any,
    *,
    kernel: Any = None,
    recurrent: Any = None,
    bias: Any = None,
    embedding: Any = None,
    rules: Rules | None = None,
    stacked: Mapping[str, int] | None = None,
    skip_unknown: bool = False,
    per_input: str | Iterable[str] | None = None,
    strict: bool = False,
    tol: float = 1e-5,
) -> Audit:
    """Every leaf of ``params``: the constraint and axes :func:`projection` would use (same
    arguments), and how far the leaf is from its set now. Reads the values on the host: for
    checking and logging, not for the training step.

    Give it the full variables (``model.init(...)``, ``nnx.state(model)``) now and then, not
    only the ``params`` collection: a linen ``SpectralNorm`` keeps all it adds in
    ``batch_stats``, so only the full variables show that a kernel is normalised by it (the
    audit then raises, naming it).

    ``kernel``, ``recurrent``, ``bias``, ``embedding``, ``rules``, ``stacked``,
    ``skip_unknown`` and ``per_input`` are as in :func:`projection`. A bound given as a rule
    (``"sqrt(fan_in)"``) shows as the rule and is measured as resolved for each leaf.

    Args:
        params: The parameter tree (as :func:`projection` takes it).
        strict: Raise a RuntimeError listing every constrained leaf that is violated by more
            than its tolerance.
        tol: The tolerance of ``strict``, relative to the constraint's scale; at least the
            rounding of the leaf's dtype (``Audit.problems``).

    Returns:
        The rows (a list that prints as a table; ``.problems(tol)`` lists what ``strict``
        raises for).

    Raises:
        RuntimeError: ``strict=True`` and a constrained leaf is violated.
        ValueError, TypeError: As :func:`projection`'s projection raises for this tree.

    Example:
        >>> import jax.numpy as jnp
        >>> from weight_constraints import MaxNorm
        >>> from weight_constraints.adapters.optax import audit
        >>> params = {"Dense_0": {"kernel": jnp.full((4, 2), 1.0), "bias": jnp.zeros(2)},
        ...           "LayerNorm_0": {"scale": jnp.ones(2), "bias": jnp.zeros(2)}}
        >>> print(audit(params, kernel=MaxNorm(1.0)))
        weight             shape  constraint                      axes  active  violation  note
        Dense_0/bias       2      -                               -     -       -          bias
        Dense_0/kernel     4x2    MaxNorm(max_value=1.0, axis=0)  0     yes     1          kernel
        LayerNorm_0/bias   2      -                               -     -       -          no role
        LayerNorm_0/scale  2      -                               -     -       -          no role
    """
    reader = TreeReader.of(
        kernel=kernel,
        recurrent=recurrent,
        bias=bias,
        embedding=embedding,
        rules=rules,
        stacked=stacked,
        skip_unknown=skip_unknown,
        per_input=per_input,
    )
    rows = Audit(row for _, _, row in _rows(params, reader))
    return finish(rows, strict, tol)


def norm_stats(
    params: Any,
    *,
    kernel: Any = None,
    recurrent: Any = None,
    bias: Any = None,
    embedding: Any = None,
    rules: Rules | None = None,
    stacked: Mapping[str, int] | None = None,
    skip_unknown: bool = False,
    per_input: str | Iterable[str] | None = None,
) -> dict[str, float]:
    """The norm statistics of every constrained leaf of ``params`` (same arguments as
    :func:`audit`), in the schema every adapter's ``norm_stats`` gives: for each leaf ``path``,
    ``path/norm_min``, ``path/norm_max`` and ``path/norm_mean`` (its per-node L2 norms; not
    given for constraints that apply entry by entry) and ``path/violation`` (as in the audit).
    Host values, for logging.

    Example:
        >>> import jax.numpy as jnp
        >>> from weight_constraints import MaxNorm, NonNeg
        >>> from weight_constraints.adapters.optax import norm_stats
        >>> params = {"Dense_0": {"kernel": jnp.full((4, 2), 1.0), "bias": jnp.full(2, -1.0)}}
        >>> stats = norm_stats(params, kernel=MaxNorm(1.0), bias=NonNeg())
        >>> for key, value in stats.items():
        ...     print(key, value)
        Dense_0/bias/violation 1.0
        Dense_0/kernel/norm_min 2.0
        Dense_0/kernel/norm_max 2.0
        Dense_0/kernel/norm_mean 2.0
        Dense_0/kernel/violation 1.0
    """
    reader = TreeReader.of(
        kernel=kernel,
        recurrent=recurrent,
        bias=bias,
        embedding=embedding,
        rules=rules,
        stacked=stacked,
        skip_unknown=skip_unknown,
        per_input=per_input,
    )
    stats: dict[str, float] = {}
    for decision, leaf, row in _rows(params, reader):
        if decision.constraint is not None:
            stats |= norm_statistics(decision.path, leaf, decision.axes, row.violation)
    return stats

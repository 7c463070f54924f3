"""Audit rows and norm statistics, one schema for every adapter: is each constraint active and
satisfied, and how large are the node norms.

A row's tolerance is the projections' own definition of "on the set": a projected weight lies
within ``roundings`` roundings of its dtype (spacings at 1, relative to the set's size) of its
set, ``roundings`` being the constraint kind's (``Constraint.roundings``: 2 for the norm kinds,
4 for the sum kinds, whose projections keep a node within that distance as it is).

Example:
    >>> import numpy as np
    >>> import weight_constraints as wc
    >>> w = np.array([[3.0, 0.3], [4.0, 0.4]])
    >>> worst_violation(wc.MaxNorm(1.0), w, (0,))  # the first node is 4 away from the ball
    4.0
    >>> for key, value in norm_statistics("fc/kernel", w, (0,), 4.0).items():
    ...     print(key, value)
    fc/kernel/norm_min 0.5
    fc/kernel/norm_max 5.0
    fc/kernel/norm_mean 2.75
    fc/kernel/violation 4.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

import weight_constraints as wc
from weight_constraints._dtypes import as_name, rounding

from ._binding import with_axes

__all__ = [
    "STATISTICS",
    "Audit",
    "AuditRow",
    "finish",
    "format_table",
    "norm_statistics",
    "scale",
    "tolerance",
    "worst_violation",
]


class AuditRow(NamedTuple):
    """One weight of a model, as an adapter's ``audit`` sees it.

    Attributes:
        name: Where the weight is (``"0.weight"``, ``"dense/kernel"``).
        shape: Its shape.
        constraint: The constraint attached to it, or ``None``.
        axes: The axes each norm is taken over (``None`` for entry-wise constraints or none).
        active: Whether the next optimizer step will project it (``False`` without a
            constraint).
        violation: The largest distance of a node from its set (``0.0`` when every node is
            inside; ``nan`` when a node holds NaN; ``None`` without a constraint).
        note: Why a constraint is not active, or what else to know; ``""`` when nothing.
        dtype: The weight's dtype, by name (``"bfloat16"``; a dtype object such as
            ``torch.bfloat16`` is read by its name), or ``None`` when not known. Weights are
            projected in their dtype, so :meth:`Audit.problems` allows its rounding.
    """

    name: str
    shape: tuple[int, ...]
    constraint: Any
    axes: tuple[int, ...] | None
    active: bool
    violation: float | None
    note: str = ""
    dtype: Any = None


class Audit(list[AuditRow]):
    """The rows of an audit (a ``list`` of :class:`AuditRow`); prints as a table."""

    def __str__(self) -> str:
        return format_table(self)

    def problems(self, tol: float = 1e-5) -> list[AuditRow]:
        """Rows with a constraint that is not active or is violated by more than the row's
        tolerance (:func:`tolerance`; a NaN node counting as violated)."""
        return [row for row in self if row.constraint is not None and not _satisfied(row, tol)]


def _satisfied(row: AuditRow, tol: float) -> bool:
    if not row.active or row.violation is None:
        return False
    return row.violation <= tolerance(row.constraint, row.dtype, tol, shape=row.shape)


def tolerance(
    constraint: Any, dtype: Any, tol: float = 0.0, *, shape: tuple[int, ...] | None = None
) -> float:
    """The largest distance from its set of a node that counts as on it:
    ``max(tol, roundings · eps) · max(1, scale)``, with ``eps`` the spacing at 1 of the
    weight's ``dtype`` (0 when not known), ``roundings`` the constraint kind's
    (``Constraint.roundings``, 2 when it has none) and ``scale`` the size of its set
    (:func:`scale`; bounds given as rules, ``"sqrt(fan_in)"``, resolved for weights of
    ``shape``).

    Example:
        >>> import weight_constraints as wc
        >>> tolerance(wc.Simplex(2.0), "bfloat16") == 4 * 2.0**-7 * 2.0
        True
        >>> tolerance(wc.MaxNorm(0.5), "float32", tol=1e-5)
        1e-05
    """
    roundings = getattr(constraint, "roundings", 2)
    if not isinstance(roundings, (int, float)):
        roundings = 2
    return max(tol, rounding(as_name(dtype), roundings)) * max(1.0, scale(constraint, shape))


def scale(constraint: Any, shape: tuple[int, ...] | None = None) -> float:
    """The size of a constraint's set, the unit its violation is measured in: the largest of
    its finite bounds ``max_value``, ``radius``, ``|lower|`` and ``|upper|`` (1.0 when it has
    none, as ``UnitNorm`` and ``NonNeg``). Bounds given as rules (``"sqrt(fan_in)"``) count
    once resolved for weights of ``shape`` (when the constraint's axes fit it).

    Example:
        >>> import weight_constraints as wc
        >>> scale(wc.MaxNorm(3)), scale(wc.Simplex(2.0)), scale(wc.Clip(-4, float("inf")))
        (3.0, 2.0, 4.0)
        >>> scale(wc.BoxMaxNorm(-0.5, 0.5, 1.5)), scale(wc.UnitNorm())
        (1.5, 1.0)
    """
    rules = getattr(constraint, "rules", None)
    if shape is not None and callable(rules) and rules() and _fits(constraint, shape):
        constraint = constraint.resolved(shape)
    bounds = []
    for attribute in ("max_value", "radius", "lower", "upper"):
        value = getattr(constraint, attribute, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                bounds.append(abs(float(value)))
    return max(bounds, default=1.0) or 1.0


def _fits(constraint: Any, shape: tuple[int, ...]) -> bool:
    """Whether the constraint's axes name axes of ``shape`` (a weight projected in another
    shape, a grouped view, is measured in that shape by its adapter)."""
    axis = getattr(constraint, "axis", None)
    axes = axis if isinstance(axis, tuple) else () if axis is None else (axis,)
    return all(-len(shape) <= a < len(shape) for a in axes)


def format_table(rows: Iterable[AuditRow]) -> str:
    """The rows as a plain-text table, one line per weight."""
    header = ("weight", "shape", "constraint", "axes", "active", "violation", "note")
    body = [
        (
            row.name,
            "x".join(map(str, row.shape)) or "()",
            "-" if row.constraint is None else repr(row.constraint),
            "-" if row.axes is None else ",".join(map(str, row.axes)),
            "-" if row.constraint is None else ("yes" if row.active else "NO"),
            "-" if row.violation is None else f"{row.violation:.3g}",
            row.note,
        )
        for row in rows
    ]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (header, *body)
    ]
    return "\n".join(lines)


def finish(rows: Audit, strict: bool, tol: float) -> Audit:
    """``rows``, after raising with ``strict`` a RuntimeError listing every constrained weight
    that is inactive or violated (the ``strict=``/``tol=`` of every adapter's ``audit``)."""
    bad = rows.problems(tol) if strict else []
    if bad:
        raise RuntimeError(
            f"{len(bad)} constrained weight(s) are not active or not satisfied "
            f"(tolerance {tol:g}):\n" + format_table(bad)
        )
    return rows


def worst_violation(constraint: Any, weight: Any, axes: tuple[int, ...] | None) -> float:
    """The largest distance of a node of ``weight`` from the set of ``constraint`` (0.0 inside,
    ``nan`` when a node holds NaN), computed with the core's own projection in float64 on the
    host: meant for audits and logging, not for the training step."""
    w = np.asarray(weight, dtype=np.float64)
    if w.size == 0:
        return 0.0
    diff = w - with_axes(constraint, axes)(w)
    if axes is None:
        return float(np.max(np.abs(diff)))
    return float(np.max(np.sqrt(np.sum(diff * diff, axis=axes))))


STATISTICS = ("norm_min", "norm_max", "norm_mean", "violation")
"""The statistics every adapter's ``norm_stats`` gives per weight, keyed ``<name>/<statistic>``:
the smallest, largest and mean per-node L2 norm, and the violation of the audit."""


def norm_statistics(
    name: str, weight: Any, axes: tuple[int, ...] | None, violation: float | None
) -> dict[str, float]:
    """The statistics of one weight (host values, float64): its per-node norms over ``axes``
    (none when ``axes`` is None; 0.0 for a weight with no entries) and ``violation`` (when it
    is not None), keyed ``f"{name}/{statistic}"`` (see :data:`STATISTICS`)."""
    stats: dict[str, float] = {}
    if axes is not None:
        w = np.asarray(weight, dtype=np.float64)
        norms = np.atleast_1d(wc.node_norms(w, axes)) if w.size else np.zeros(0)
        stats[f"{name}/norm_min"] = float(norms.min()) if norms.size else 0.0
        stats[f"{name}/norm_max"] = float(norms.max()) if norms.size else 0.0
        stats[f"{name}/norm_mean"] = float(norms.mean()) if norms.size else 0.0
    if violation is not None:
        stats[f"{name}/violation"] = violation
    return stats

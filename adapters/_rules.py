"""Rules every adapter shares: the roles a weight can have, and how an attached constraint's axis
relates to a layer's per-node axes. Written once; the Keras, PyTorch and optax adapters only
supply their layer tables (which weight has which role and per-node axes).

The axis rule. A constraint attached *by role* (``kernel=``, ``recurrent=``, ``bias=``,
``embedding=``) to a weight whose per-node axes the adapter knows:

- with its axis left at the default (``MaxNorm(3)``), is applied over the weight's per-node axes;
- with an explicit axis (``MaxNorm(3, axis=0)``, ``axis=[0, 1]``...), is applied over that axis
  when it names the per-node axes, and is rejected with a ValueError otherwise. An explicit axis
  is never replaced, and never read in another framework's layout;
- without an axis (entry-wise constraints such as ``NonNeg``) applies entry by entry.

Example:
    >>> import weight_constraints as wc
    >>> from weight_constraints.adapters._rules import bind_axes
    >>> bind_axes(wc.MaxNorm(3), (1,), (4, 8), "fc.weight")  # default axis: the per-node axes
    (1,)
    >>> bind_axes(wc.MaxNorm(3, axis=-1), (1,), (4, 8), "fc.weight")  # the same axes, explicit
    (1,)
    >>> bind_axes(wc.MaxNorm(3, axis=0), (1,), (4, 8), "fc.weight")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: MaxNorm(max_value=3.0, axis=0) has the explicit axis=0, but one norm per ...
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from weight_constraints._checks import is_default_axis, normalize_axes

ROLES = ("kernel", "recurrent", "bias", "embedding")
"""The roles a weight can be constrained by: input weights (``kernel``), recurrent weights
(``recurrent``), bias vectors (``bias``, one norm over each whole vector) and embedding tables
(``embedding``, one norm per embedding vector)."""


def resolve_roles(
    kernel: Any = None, recurrent: Any = None, bias: Any = None, embedding: Any = None
) -> dict[str, Any]:
    """The constraint asked for each role, ``None`` where none was asked.

    Embedding tables are input weights too: they take the ``kernel`` constraint unless
    ``embedding`` is given (as in ``keras.layers.Embedding``, whose constraint is its kernel's
    counterpart, and as a tied input embedding / output head pair needs).
    """
    return {
        "kernel": kernel,
        "recurrent": recurrent,
        "bias": bias,
        "embedding": kernel if embedding is None else embedding,
    }


def explicit_roles(wanted: Mapping[str, Any]) -> list[str]:
    """The roles a user asked for, in ``ROLES`` order (an embedding falling back to the kernel
    constraint is not asked for by itself)."""
    return [role for role in ROLES if wanted.get(role) is not None]


def bind_axes(
    constraint: Any, per_node: Iterable[int], shape: tuple[int, ...], where: str
) -> tuple[int, ...] | None:
    """The axes ``constraint`` is applied over on the weight ``where`` of ``shape``.

    Args:
        constraint: A core constraint (or anything with the core's ``axis`` attribute).
        per_node: The weight's per-node axes (one norm per output unit).
        shape: The weight's shape, to normalise negative and sequence axes.
        where: The weight's name, for the error message.

    Returns:
        The sorted, non-negative axes, or ``None`` for a constraint without an axis (entry-wise).

    Raises:
        ValueError: The constraint has an explicit axis that is not the per-node one.
    """
    per_node = normalize_axes(tuple(per_node), tuple(shape))
    if not hasattr(constraint, "axis"):
        return None
    axis = constraint.axis
    if is_default_axis(axis):
        return per_node
    if normalize_axes(axis, tuple(shape)) == per_node:
        return per_node
    raise ValueError(
        f"{constraint!r} has the explicit axis={axis!r}, but one norm per output unit of "
        f"{where} (shape {tuple(shape)}) is taken over axes {per_node}. Leave the axis at its "
        "default to use the per-node axes, or constrain this weight with the axes you want "
        "directly."
    )


# -- the audit: one row per weight, shared by the adapters ---------------------------------------


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


class Audit(list):
    """The rows of an audit (a ``list`` of :class:`AuditRow`); prints as a table."""

    def __str__(self) -> str:
        return format_table(self)

    def problems(self, tol: float = 1e-5) -> list[AuditRow]:
        """Rows with a constraint that is not active or is violated by more than the row's
        tolerance (a NaN node counting as violated).

        A row's tolerance is ``max(tol, rounding) * max(1, scale)``: ``rounding`` is twice the
        machine epsilon of the row's ``dtype`` (``2**-7`` for bfloat16; 0 when the dtype is not
        known), since a weight projected onto its set is rounded to its dtype; ``scale`` is the
        constraint's own bound (``max_value``, ``radius``, or the largest finite ``|lower|``,
        ``|upper|``: see :func:`scale`).
        """
        return [row for row in self if row.constraint is not None and not _satisfied(row, tol)]


def _satisfied(row: AuditRow, tol: float) -> bool:
    if not row.active or row.violation is None:
        return False
    return row.violation <= max(tol, rounding(row.dtype)) * max(1.0, scale(row.constraint))


# Twice the machine epsilon of each floating dtype: the rounding of a projected weight.
_ROUNDING = {"float16": 2.0**-9, "bfloat16": 2.0**-6, "float32": 2.0**-22, "float64": 2.0**-51}


def rounding(dtype: Any) -> float:
    """Twice the machine epsilon of ``dtype`` (a name such as ``"bfloat16"`` or a dtype object of
    NumPy, torch, JAX or Keras), 0.0 for ``None`` or a dtype that is not a floating one.

    Example:
        >>> rounding("bfloat16"), rounding("float32") == 2 * 2.0**-23, rounding(None)
        (0.015625, True, 0.0)
    """
    if dtype is None:
        return 0.0
    name = getattr(dtype, "name", None)
    if not isinstance(name, str):  # a scalar type (numpy.float32, jax.numpy.bfloat16) or torch
        name = dtype.__name__ if isinstance(dtype, type) else str(dtype)
    return _ROUNDING.get(name.removeprefix("torch."), 0.0)


def scale(constraint: Any) -> float:
    """The size of a constraint's set, the unit its violation is measured in: the largest of
    its finite bounds ``max_value``, ``radius``, ``|lower|`` and ``|upper|`` (1.0 when it has
    none, as ``UnitNorm`` and ``NonNeg``).

    Example:
        >>> import weight_constraints as wc
        >>> scale(wc.MaxNorm(3)), scale(wc.Simplex(2.0)), scale(wc.Clip(-4, float("inf")))
        (3.0, 2.0, 4.0)
        >>> scale(wc.BoxMaxNorm(-0.5, 0.5, 1.5)), scale(wc.UnitNorm())
        (1.5, 1.0)
    """
    bounds = []
    for attribute in ("max_value", "radius", "lower", "upper"):
        value = getattr(constraint, attribute, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                bounds.append(abs(float(value)))
    return max(bounds, default=1.0) or 1.0


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


def check_strict(rows: Audit, tol: float) -> None:
    """Raise a RuntimeError listing every constrained weight that is inactive or violated."""
    bad = rows.problems(tol)
    if bad:
        raise RuntimeError(
            f"{len(bad)} constrained weight(s) are not active or not satisfied "
            f"(tolerance {tol:g}):\n" + format_table(bad)
        )


def worst_violation(constraint: Any, weight: Any, axes: tuple[int, ...] | None) -> float:
    """The largest distance of a node of ``weight`` from the set of ``constraint`` (0.0 inside,
    ``nan`` when a node holds NaN), computed with the core's own projection in float64 on the
    host: meant for audits and logging, not for the training step."""
    import numpy as np

    w = np.asarray(weight, dtype=np.float64)
    if w.size == 0:
        return 0.0
    projected = constraint(w) if axes is None else _rebind(constraint, axes)(w)
    diff = w - projected
    if axes is None:
        return float(np.max(np.abs(diff)))
    return float(np.max(np.sqrt(np.sum(diff * diff, axis=axes))))


def _rebind(constraint: Any, axes: tuple[int, ...]) -> Any:
    import dataclasses

    return dataclasses.replace(constraint, axis=axes)

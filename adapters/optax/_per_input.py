"""The ``per_input=`` choice of the JAX adapter: which kernels take one norm per *input* unit
(nGPT's attention-output and MLP down-projections, which map into the embedding space), and
over which axes.

The patterns are matched, as ``rules=`` are, against whole leaf paths
(``r".*/(out|down)/kernel"``). A leaf they match must be a 2-D kernel a constraint is asked for
(``kernel=``, ``recurrent=``); a stacked layer's kernel is read without its stacked axes, which
never count. Anything else raises, naming the leaf: the choice is never guessed nor dropped.

Example:
    >>> import weight_constraints as wc
    >>> input_axes(wc.UnitNorm(), (0,), (64, 16), 0, "down/kernel")  # Dense (in, out)
    (1,)
    >>> input_axes(wc.UnitNorm(), (0,), (6, 64, 16), 1, "blocks/down/kernel")  # 6 layers
    (2,)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from weight_constraints._checks import is_default_axis, normalize_axes
from weight_constraints.adapters._binding import PerInput, is_per_node, per_input_axes
from weight_constraints.adapters._roles import PER_INPUT_ROLES

__all__ = [
    "PER_INPUT_ROLES",
    "check_per_input_role",
    "input_axes",
    "not_per_input",
    "per_input_patterns",
]


def per_input_patterns(per_input: str | Iterable[str] | None) -> tuple[str, ...]:
    """The ``per_input=`` patterns as a tuple, checked (each reading matches them with a
    :class:`PerInput` of its own, which notes what matched).

    Raises:
        TypeError: ``per_input`` is not a pattern or several (``per_input=True``).
        ValueError: A pattern is not a regular expression.
    """
    if per_input is None:
        return ()
    if not isinstance(per_input, (str, Iterable)):
        raise TypeError(
            "per_input= takes the paths of the kernels that take one norm per input unit, a "
            f"regular expression or several (r'.*/(out|down)/kernel'), got {per_input!r}"
        )
    patterns = (per_input,) if isinstance(per_input, str) else tuple(per_input)
    PerInput(patterns)  # raises for a pattern that is not a regular expression
    return patterns


def not_per_input(where: str, why: str) -> ValueError:
    """The error for a leaf ``where`` that ``per_input=`` matches but that cannot take one norm
    per input unit, ``why`` saying what it is instead."""
    return ValueError(
        f"{where} is matched by per_input but {why}: one norm per input unit is a choice for "
        "the 2-D kernels a constraint is asked for (kernel=, recurrent=); narrow the pattern "
        r"(r'.*/down/kernel')"
    )


def check_per_input_role(where: str, role: str | None, constraint: Any) -> None:
    """Raise when ``per_input=`` matches the leaf ``where`` of ``role`` that takes no norm per
    input unit: another role, or a kernel no constraint is asked for."""
    if role not in PER_INPUT_ROLES:
        raise not_per_input(where, "has no role" if role is None else f"has the role {role}")
    if constraint is None:
        raise not_per_input(where, f"no constraint is asked for its role ({role}=)")


def _per_input_axes(
    per_node: tuple[int, ...], shape: tuple[int, ...], n: int, where: str
) -> tuple[int, ...]:
    """The axes of one layer's kernel (``shape`` without its ``n`` stacked axes) that give one
    norm per input unit; the stacked axes are never counted.

    Raises:
        ValueError: The (unstacked) kernel is not 2-D.
    """
    try:
        return per_input_axes(per_node, shape[n:], where)
    except ValueError as error:
        if not n:
            raise
        stacked = "axis is" if n == 1 else f"{n} axes are"
        raise ValueError(
            f"{error}, each layer's kernel once the stacked {stacked} removed "
            f"from the leaf's shape {shape}"
        ) from None


def _check_explicit_axis(
    constraint: Any, axes: tuple[int, ...], shape: tuple[int, ...], where: str
) -> None:
    """Raise when ``constraint`` has an explicit axis other than ``axes``, those giving one
    norm per input unit of the kernel ``where`` (the axis rule's own error speaks of output
    units)."""
    if not is_per_node(constraint) or is_default_axis(constraint.axis):
        return
    if normalize_axes(constraint.axis, shape) != axes:
        raise ValueError(
            f"{constraint!r} has the explicit axis={constraint.axis!r}, but one norm per input "
            f"unit of {where} (shape {shape}, chosen by per_input) is taken over axes {axes}. "
            "Leave the axis at its default to use them."
        )


def input_axes(
    constraint: Any, per_node: tuple[int, ...], shape: tuple[int, ...], n: int, where: str
) -> tuple[int, ...]:
    """The axes of the kernel ``where`` of ``shape`` (``n`` leading stacked axes, per-node axes
    ``per_node`` in one layer's kernel) that give one norm per input unit: the other axis of
    each layer's 2-D kernel, shifted past the stacked axes.

    Raises:
        ValueError: The (unstacked) kernel is not 2-D, or ``constraint`` has an explicit axis
            other than these.
    """
    axes = tuple(a + n for a in _per_input_axes(per_node, shape, n, where))
    _check_explicit_axis(constraint, axes, shape, where)
    return axes

"""Bounds given as a rule of the weight's shape (``"sqrt(fan_in)"``), resolved when a constraint
meets a weight: exact (the rule is evaluated in float64 from integer sizes), serialisable (the
rule is kept as its string in configs), the same on every front end.

``fan_in`` is the number of entries of a node: the product of the sizes of the axes each norm is
taken over (``in`` for a ``Linear`` weight ``(out, in)``, ``in · kh · kw`` for a ``Conv2d``
weight). A rule is ``fan_in`` or ``sqrt(fan_in)``, optionally times a positive number
(``"2 * sqrt(fan_in)"``).

Example:
    >>> check_bound("max_value", "sqrt(fan_in)"), check_bound("radius", " 2*fan_in ")
    ('sqrt(fan_in)', '2.0 * fan_in')
    >>> resolve("sqrt(fan_in)", 9), resolve("0.5 * fan_in", 9), resolve(3.0, 9)
    (3.0, 4.5, 3.0)
    >>> fan_in((64, 3, 3, 3), (1, 2, 3))  # a Conv2d weight, one norm per output channel
    27
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from ._checks import Axis, check_value, normalize_axes

Bound = float | str
"""A bound: a number, or a rule of the weight's shape (``"sqrt(fan_in)"``)."""

_RULES: dict[str, Callable[[int], float]] = {
    "fan_in": float,
    "sqrt(fan_in)": lambda n: math.sqrt(n),
}
_SPELLING = re.compile(
    r"^\s*(?:(?P<scale>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*\*\s*)?"
    r"(?P<rule>fan_in|sqrt\(\s*fan_in\s*\))\s*$"
)


def is_rule(value: object) -> bool:
    """Whether ``value`` is a rule (a string) rather than a number."""
    return isinstance(value, str)


def check_bound(name: str, value: object) -> Bound:
    """``value`` as a bound: a finite number ``>= 0`` (see ``check_value``), or a rule, checked
    and spelled in one way (``"2 * sqrt(fan_in)"``).

    Raises:
        ValueError: Neither a valid number nor a known rule; the message names the value.
    """
    if not isinstance(value, str):
        return check_value(name, value)
    match = _SPELLING.match(value)
    if match is None:
        known = ", ".join(repr(rule) for rule in _RULES)
        raise ValueError(
            f"{name} must be a real number or a rule of the weight's shape ({known}, "
            f"optionally times a number: '2 * sqrt(fan_in)'), got {value!r}"
        )
    rule = "sqrt(fan_in)" if match["rule"].startswith("sqrt") else "fan_in"
    if match["scale"] is None:
        return rule
    scale = check_value(name, float(match["scale"]))
    if scale == 0:
        raise ValueError(f"{name}: the factor of a rule must be > 0, got {value!r}")
    return f"{scale!r} * {rule}"


def resolve(bound: Bound, fan_in: int) -> float:
    """The number a bound stands for on a weight whose nodes have ``fan_in`` entries."""
    if not isinstance(bound, str):
        return bound
    scale, _, rule = bound.rpartition(" * ")
    return (float(scale) if scale else 1.0) * _RULES[rule](fan_in)


def fan_in(shape: tuple[int, ...], axis: Axis) -> int:
    """The number of entries of a node of a weight of ``shape`` whose norms run over ``axis``."""
    return math.prod(shape[a] for a in normalize_axes(axis, shape))


def for_weights(name: str, value: object, w: Any, axis: Axis) -> float:
    """A bound given to a projection function: checked (:func:`check_bound`), and a rule
    resolved for the nodes of ``w`` over ``axis``."""
    bound = check_bound(name, value)
    if isinstance(bound, str):
        return resolve(bound, fan_in(tuple(np.shape(w)), axis))
    return bound

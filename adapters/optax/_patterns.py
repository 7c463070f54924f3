"""The user's path declarations: ``rules=`` and ``stacked=``, compiled and matched against the
paths of a parameter tree.

A path is a leaf's keys joined by ``/`` (``"Dense_0/kernel"``, ``"encoder/layers/0/w"``); a
pattern is a regular expression that must match the whole path. A leaf matched by two
patterns of the same declaration, and a pattern that matches no leaf (a typo), raise.

Example:
    >>> import weight_constraints as wc
    >>> rules = compile_rules({"encoder/w": (wc.UnitNorm(), 0), "encoder/lora_.*": None})
    >>> rule_for(rules, "encoder/lora_a").constraint is None  # left alone
    True
    >>> stacks = compile_stacked({"blocks/.*": 1})
    >>> stack_for(stacks, "blocks/Dense_0/kernel", (6, 16, 16)).axes
    1
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import weight_constraints as wc

__all__ = [
    "Rule",
    "Rules",
    "Stack",
    "check_used",
    "compile_rules",
    "compile_stacked",
    "rule_for",
    "stack_for",
]

Rules = Mapping[str, "tuple[Any, Any] | None"]
"""``{path_regex: (constraint, axis)}``, or ``{path_regex: None}`` to leave leaves alone."""


class Rule(NamedTuple):
    """One entry of ``rules=``: leaves whose path ``regex`` matches get ``constraint`` over
    ``axis`` (``None``: the whole leaf); a rule without a constraint leaves them alone."""

    pattern: str
    regex: re.Pattern[str]
    constraint: Any
    axis: Any


class Stack(NamedTuple):
    """One entry of ``stacked=``: the leaves whose path ``regex`` matches have ``axes``
    leading layer axes."""

    pattern: str
    regex: re.Pattern[str]
    axes: int


def _regex(declaration: str, pattern: Any) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except (re.error, TypeError) as error:
        raise ValueError(
            f"{declaration}: {pattern!r} is not a regular expression ({error})"
        ) from None


def compile_rules(rules: Rules | None) -> list[Rule]:
    """The rules of ``rules=``, checked; constraints given by name or config are resolved.

    Raises:
        TypeError: ``rules`` is not a mapping.
        ValueError: A pattern is not a regular expression, or a value is neither
            ``(constraint, axis)`` nor ``None``.
    """
    if rules is None:
        return []
    if not isinstance(rules, Mapping):
        raise TypeError(
            f"rules must map path patterns to (constraint, axis) or None, got {rules!r}"
        )
    compiled = []
    for pattern, value in rules.items():
        regex = _regex("rules", pattern)
        if value is None:
            compiled.append(Rule(pattern, regex, None, None))
            continue
        if not (isinstance(value, tuple) and len(value) == 2):
            raise ValueError(
                f"rules[{pattern!r}] must be (constraint, axis) or None, got {value!r}; "
                "the axis is the axes each norm is taken over (None: the whole leaf)"
            )
        constraint = wc.get(value[0])
        if constraint is None:
            raise ValueError(f"rules[{pattern!r}] has no constraint; use None to skip a leaf")
        compiled.append(Rule(pattern, regex, constraint, value[1]))
    return compiled


def compile_stacked(stacked: Mapping[str, int] | None) -> list[Stack]:
    """The declarations of ``stacked=``, checked.

    Raises:
        TypeError: ``stacked`` is not a mapping.
        ValueError: A pattern is not a regular expression, or a number of axes is not a
            positive integer.
    """
    if stacked is None:
        return []
    if not isinstance(stacked, Mapping):
        raise TypeError(f"stacked must map path patterns to numbers of axes, got {stacked!r}")
    compiled = []
    for pattern, n in stacked.items():
        regex = _regex("stacked", pattern)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(
                f"stacked[{pattern!r}] must be the number of stacked leading axes (1, 2...), "
                f"got {n!r}"
            )
        compiled.append(Stack(pattern, regex, n))
    return compiled


def rule_for(rules: Iterable[Rule], where: str) -> Rule | None:
    """The rule matching the path ``where`` (``None`` when none does).

    Raises:
        ValueError: Several rules match it.
    """
    matches = [rule for rule in rules if rule.regex.fullmatch(where)]
    if len(matches) > 1:
        listed = ", ".join(repr(rule.pattern) for rule in matches)
        raise ValueError(f"{where} matches several rules ({listed}); make them exclusive")
    return matches[0] if matches else None


def stack_for(stacks: Iterable[Stack], where: str, shape: tuple[int, ...]) -> Stack | None:
    """The stack declaration matching the leaf ``where`` of ``shape`` (``None``: none).

    Raises:
        ValueError: Several declarations match it, or it has no axis left once the declared
            leading axes are removed.
    """
    matches = [stack for stack in stacks if stack.regex.fullmatch(where)]
    if len(matches) > 1:
        listed = ", ".join(repr(stack.pattern) for stack in matches)
        raise ValueError(f"{where} matches several stacked patterns ({listed})")
    if not matches:
        return None
    stack = matches[0]
    if stack.axes >= len(shape):
        raise ValueError(
            f"stacked[{stack.pattern!r}] = {stack.axes} leading axes, but {where} has shape {shape}"
        )
    return stack


def check_used(declaration: str, patterns: Iterable[str], used: set[str], paths: list[str]) -> None:
    """Raise a ValueError when a pattern of ``declaration`` (``"rules"``, ``"stacked"``)
    matched none of the leaves, whose ``paths`` are shown as examples."""
    unused = [pattern for pattern in patterns if pattern not in used]
    if unused:
        example = ", ".join(repr(path) for path in paths[:3]) or "(no parameters)"
        raise ValueError(f"{declaration} {unused} match no parameter (paths look like {example})")

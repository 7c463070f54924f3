"""Test ids that are the same in every process, as pytest-xdist requires of its workers: a
``repr`` without the memory addresses of objects and functions."""

from __future__ import annotations

import re

_ADDRESS = re.compile(r" (object )?at 0x[0-9a-fA-F]+")


def stable_repr(value: object) -> str:
    """``repr(value)`` with every `` at 0x...`` address left out.

    Example:
        >>> stable_repr(object())
        '<object object>'
    """
    return _ADDRESS.sub("", repr(value))

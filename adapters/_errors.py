"""Errors that carry their reason as data, for callers that show or act on it (audit notes,
advice), so that no code reads an exception's message to decide anything.

Example:
    >>> try:
    ...     raise WeightValueError("fc.weight is computed by a parametrization", "constrain ...")
    ... except ValueError as error:
    ...     print(error.note)
    ...     print(error)
    fc.weight is computed by a parametrization
    fc.weight is computed by a parametrization: constrain ...
"""

from __future__ import annotations

__all__ = ["WeightError", "WeightTypeError", "WeightValueError"]


class WeightError(Exception):
    """An error about one weight: ``note`` is its short reason (what an audit row shows), the
    message is ``"{note}: {detail}"``; ``code`` names the reason for callers that act on it
    (``"lora"``, ``"quantized"``...; ``""`` when none is needed)."""

    def __init__(self, note: str, detail: str, *, code: str = "") -> None:
        super().__init__(f"{note}: {detail}" if detail else note)
        self.note = note
        self.code = code


class WeightValueError(WeightError, ValueError):
    """A :class:`WeightError` that is a ``ValueError`` (a weight that cannot hold as asked)."""


class WeightTypeError(WeightError, TypeError):
    """A :class:`WeightError` that is a ``TypeError`` (a weight of a kind that cannot be
    constrained: not floating point, not dense)."""

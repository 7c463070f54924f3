"""Dtype names shared by every array family: which dtypes are accepted, which one norms use."""

from __future__ import annotations

from typing import Any

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
"""Names of the dtypes the projections accept."""

_HALF_DTYPES = ("float16", "bfloat16")


def dtype_name(w: Any) -> str:
    """The dtype of ``w`` as a plain name such as ``"float32"``, for any array library.

    Example:
        >>> import numpy as np
        >>> dtype_name(np.zeros(2, np.float16))
        'float16'
    """
    dtype = w.dtype
    name = getattr(dtype, "name", None)
    if not isinstance(name, str):
        name = str(dtype)
    return name.removeprefix("torch.")


def float_dtype(w: Any) -> str:
    """Return the dtype name of ``w``; raise a TypeError unless it is a real floating dtype."""
    name = dtype_name(w)
    if name not in FLOAT_DTYPES:
        raise TypeError(
            f"weights must have a floating dtype ({', '.join(FLOAT_DTYPES)}), got dtype {name}"
        )
    return name


def accumulation_dtype(name: str) -> str:
    """The dtype norms are accumulated in: float32 for half precision, else the dtype itself."""
    return "float32" if name in _HALF_DTYPES else name

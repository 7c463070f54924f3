"""Dtype tables shared by every array family: accepted dtypes, their range and rounding.

Example:
    >>> import numpy as np
    >>> dtype_name(np.zeros(2, np.float16)), largest("float16"), eps("bfloat16")
    ('float16', 65504.0, 0.0078125)
"""

from __future__ import annotations

import math
from typing import Any

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
"""Names of the dtypes the projections accept."""

_HALF_DTYPES = ("float16", "bfloat16")

_LARGEST = {
    "float16": 65504.0,
    "bfloat16": 3.3895313892515355e38,
    "float32": 3.4028234663852886e38,
    "float64": 1.7976931348623157e308,
}
"""The largest finite value of each dtype (plain floats: no NumPy call in traced code)."""

_EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}
"""The spacing of each dtype at 1: the rounding of a value stored in it, relative to the value."""


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


def as_name(dtype: Any) -> str | None:
    """A dtype given as a name or a dtype object (NumPy, torch, JAX, Keras) as a plain name;
    ``None`` for ``None``.

    Example:
        >>> import numpy as np
        >>> as_name(np.float32), as_name(np.dtype("float16")), as_name("bfloat16"), as_name(None)
        ('float32', 'float16', 'bfloat16', None)
    """
    if dtype is None:
        return None
    name = getattr(dtype, "name", None)
    if not isinstance(name, str):  # a scalar type (numpy.float32, jax.numpy.bfloat16) or torch
        name = dtype.__name__ if isinstance(dtype, type) else str(dtype)
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


def largest(name: str) -> float:
    """The largest finite value of the floating dtype called ``name``."""
    return _LARGEST[name]


def eps(name: str) -> float:
    """The spacing at 1 of the floating dtype called ``name`` (``2**-7`` for bfloat16)."""
    return _EPS[name]


def rounding(dtype: Any, roundings: float = 2) -> float:
    """``roundings`` times the spacing at 1 of ``dtype`` (a name or a dtype object): how far,
    relative to the size of its set, a projected weight stored in ``dtype`` may lie from the
    set; 0.0 for ``None`` or a dtype that is not a floating one.

    Example:
        >>> rounding("bfloat16"), rounding("float32") == 2 * 2.0**-23, rounding(None)
        (0.015625, True, 0.0)
    """
    name = as_name(dtype)
    return roundings * _EPS[name] if name in _EPS else 0.0


def in_range(value: float, name: str) -> float:
    """A finite ``value`` clamped into the finite range of the dtype called ``name`` (infinite
    values stay infinite): for values derived from checked parameters, such as a squared bound,
    that may overflow the accumulation dtype; a bound beyond the range holds every finite
    entry alike."""
    if math.isinf(value):
        return value
    return min(max(value, -_LARGEST[name]), _LARGEST[name])

"""The namespace of an array, as plain functions: thin wrappers over ``_backends``.

Kept for modules written against them; new code takes the backend once
(``weight_constraints._backends.prepare`` / ``for_namespace``) and calls its methods.

Example:
    >>> import numpy as np
    >>> w, xp = namespace([[3.0], [4.0]])
    >>> xp is np, float_dtype(w), astype(w, "float32", xp).dtype
    (True, 'float64', dtype('float32'))
"""

from __future__ import annotations

from typing import Any

from ._backends import for_namespace, prepare
from ._dtypes import FLOAT_DTYPES, accumulation_dtype, dtype_name, float_dtype

__all__ = [
    "FLOAT_DTYPES",
    "accumulation_dtype",
    "astype",
    "check_out",
    "dtype_name",
    "float_dtype",
    "namespace",
]


def namespace(w: Any, xp: Any = None) -> tuple[Any, Any]:
    """Return ``(w, xp)``: ``w`` as an array of the namespace ``xp`` (inferred from ``w`` when
    None: torch, ``keras.ops``, ``jax.numpy`` or NumPy for array-likes) and that namespace.

    Raises:
        TypeError: ``xp`` is not an array namespace, or ``w`` cannot be one of its arrays.
    """
    w, backend = prepare(w, xp)
    return w, backend.xp


def astype(x: Any, name: str, xp: Any) -> Any:
    """Cast ``x`` to the dtype called ``name`` (no copy when it already has that dtype)."""
    return for_namespace(xp).astype(x, name)


def check_out(out: Any, w: Any, xp: Any) -> None:
    """Check that ``out`` can receive the result for ``w`` (NumPy and torch only)."""
    for_namespace(xp).check_out(out, w)

"""Which array library an array belongs to, and the few operations that differ between them.

The projections are written once against a NumPy-style namespace ``xp``.  Everything that NumPy,
PyTorch and ``keras.ops`` do not spell the same way (casting, writing into ``out``) lives here.

Array types are recognised lazily through ``sys.modules`` (as ``array-api-compat`` does): a
framework the caller did not import is never imported.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
"""Names of the dtypes the projections accept."""

_HALF_DTYPES = ("float16", "bfloat16")


def _module_of(obj: Any) -> str:
    return type(obj).__module__.partition(".")[0]


def is_torch_tensor(w: Any) -> bool:
    """Whether ``w`` is a ``torch.Tensor``, without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(w, torch.Tensor)


def kind(xp: Any) -> str:
    """Classify a namespace as ``"numpy"``, ``"torch"``, ``"keras"`` or ``"array_api"``."""
    if xp is np:
        return "numpy"
    name = getattr(xp, "__name__", "")
    if name == "torch":
        return "torch"
    if name.partition(".")[0] == "keras":
        return "keras"
    return "array_api"


def namespace(w: Any, xp: ModuleType | None = None) -> tuple[Any, Any]:
    """Return ``(w, xp)``: the namespace of ``w`` (NumPy for array-likes) and ``w`` as an array.

    Torch tensors get the ``torch`` module, Keras variables and TensorFlow tensors get
    ``keras.ops`` (when Keras is already imported) and JAX arrays get ``jax.numpy``. Anything else
    is converted with ``numpy.asarray``.
    """
    if xp is None:
        if is_torch_tensor(w):
            xp = sys.modules["torch"]
        elif _module_of(w) in ("keras", "tensorflow") and "keras.ops" in sys.modules:
            xp = sys.modules["keras.ops"]
        elif _module_of(w) in ("jax", "jaxlib") and "jax.numpy" in sys.modules:
            xp = sys.modules["jax.numpy"]
        else:
            xp = np
    if xp is np:
        w = np.asarray(w)
    elif kind(xp) == "keras":
        w = xp.convert_to_tensor(w)  # a variable's value; NumPy input becomes a backend tensor
    return w, xp


def dtype_name(w: Any) -> str:
    """The dtype of ``w`` as a plain name such as ``"float32"``, for any array library."""
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


def astype(x: Any, name: str, xp: Any) -> Any:
    """Cast ``x`` to the dtype called ``name`` (no copy when it already has that dtype)."""
    family = kind(xp)
    if family == "numpy":
        return x.astype(name, copy=False)
    if family == "torch":
        return x.to(getattr(xp, name))
    if family == "keras":
        return xp.cast(x, name)
    return xp.astype(x, getattr(xp, name))


def check_out(out: Any, w: Any, xp: Any) -> None:
    """Check that ``out`` can receive the result for ``w``: same library, shape and dtype."""
    if out is None:
        return
    family = kind(xp)
    if family not in ("numpy", "torch"):
        raise TypeError(f"out= needs NumPy arrays or torch tensors; got the namespace {xp!r}")
    array_type = np.ndarray if family == "numpy" else sys.modules["torch"].Tensor
    if not isinstance(out, array_type):
        raise TypeError(f"out must be a {array_type.__name__} like w, got {type(out).__name__}")
    if tuple(out.shape) != tuple(w.shape) or dtype_name(out) != dtype_name(w):
        raise ValueError(
            f"out must have the shape and dtype of w: w is {tuple(w.shape)} {dtype_name(w)}, "
            f"out is {tuple(out.shape)} {dtype_name(out)}"
        )


def multiply(w: Any, factor: Any, out: Any, xp: Any) -> Any:
    """Return ``w * factor`` in the dtype of ``w``, written into ``out`` when it is given.

    ``factor`` may have a wider dtype (float32 for half-precision ``w``): the product is formed
    in that dtype and rounded once.
    """
    if out is None:
        return astype(w * factor, dtype_name(w), xp)
    return xp.multiply(w, factor, out=out)


def zero_negatives(w: Any, out: Any, xp: Any) -> Any:
    """Return ``w`` with its negative entries set to ``+0.0``, into ``out`` when it is given."""
    if out is None:
        return astype(xp.where(w < 0, 0.0, w), dtype_name(w), xp)
    if kind(xp) == "numpy":
        if out is not w:
            np.copyto(out, w)
        np.copyto(out, 0.0, where=out < 0)
        return out
    if out is not w:
        out.copy_(w)
    return out.masked_fill_(out < 0, 0.0)

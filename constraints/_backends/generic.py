"""The generic backend: any other array namespace: ``keras.ops``, ``jax.numpy``, array-API
namespaces (``array_api_compat``, ``array_api_strict``). Plain namespace functions only, so the
projections trace inside ``jax.jit`` and compiled Keras train steps; no ``out=``."""

from __future__ import annotations

import contextlib
from typing import Any

from .._dtypes import accumulation_dtype, dtype_name
from ._common import type_name

# The array libraries whose arrays a namespace of another library must not be given: jax.numpy
# would convert a NumPy array silently (float64 to float32 without x64), and a torch tensor
# fails deep inside JAX. Keyed by the top-level module of the array's type.
_FAMILIES = {"numpy": "numpy", "torch": "torch", "jax": "jax", "jaxlib": "jax"}


def _family(w: Any) -> str | None:
    """The library of the array ``w`` among ``_FAMILIES`` (None for any other)."""
    return _FAMILIES.get(type(w).__module__.partition(".")[0])


def _namespace_family(xp: Any) -> str | None:
    """The library whose arrays the namespace ``xp`` computes with: ``jax.numpy`` takes JAX
    arrays, ``array_api_compat.torch`` torch tensors...; None when it is none of ``_FAMILIES``
    (its own library then refuses foreign arrays itself)."""
    name = str(getattr(xp, "__name__", ""))
    parts = name.removeprefix("array_api_compat.").split(".")
    return _FAMILIES.get(parts[0])


_FUNCTIONS = ("abs", "clip", "divide", "isnan", "reshape", "sqrt", "sum", "where", "zeros_like")


class GenericBackend:
    """A namespace with the array-API functions the projections use (``astype`` included).

    Example:
        >>> import numpy as np
        >>> backend = GenericBackend(np)  # NumPy through the generic code, for the example
        >>> backend.norms(np.array([[3.0], [4.0]], np.float16), (0,), "float32")
        array([[5.]], dtype=float32)
    """

    name = "generic"
    _needs: tuple[str, ...] = (*_FUNCTIONS, "astype")

    def __init__(self, xp: Any) -> None:
        missing = [name for name in self._needs if not hasattr(xp, name)]
        if missing:
            raise TypeError(
                "xp must be an array namespace such as numpy, torch, keras.ops or jax.numpy, "
                f"got {xp!r} (it has no {', '.join(missing)})"
            )
        self.xp = xp

    def accurate_cumsum(self, name: str) -> bool:
        return False  # not known for every namespace (TensorFlow's adds one entry at a time)

    def prepare(self, w: Any) -> Any:
        if not (hasattr(w, "shape") and hasattr(w, "dtype")) or _family(w) not in (
            None,
            _namespace_family(self.xp),
        ):
            name = getattr(self.xp, "__name__", repr(self.xp))
            raise TypeError(f"xp={name} needs an array of that namespace, got {type_name(w)}")
        return w

    def astype(self, x: Any, name: str) -> Any:
        return self.xp.astype(x, getattr(self.xp, name))

    def norms(self, w: Any, axes: tuple[int, ...], acc: str) -> Any:
        wide = self.astype(w, acc)
        if not axes:  # every entry is its own node
            return self.xp.abs(wide)
        return self.xp.sqrt(self.xp.sum(wide * wide, axis=axes, keepdims=True))

    def multiply(self, w: Any, factor: Any, out: Any) -> Any:
        if out is not None:
            self.check_out(out, w)
        # The product is formed in the factor's (accumulation) dtype and rounded once; a cast
        # first, since not every namespace promotes half precision times float32 (TensorFlow
        # tensors through keras.ops do not). Where the factor is exactly 1 the node is w itself:
        # XLA flushes subnormals to zero (JAX on CPU and GPU), so w * 1 is not always w.
        name = dtype_name(w)
        product = self.astype(self.astype(w, accumulation_dtype(name)) * factor, name)
        return self.xp.where(factor == 1, w, product)

    def zero_negatives(self, w: Any, out: Any) -> Any:
        if out is not None:
            self.check_out(out, w)
        return self.astype(self.xp.where(w < 0, 0.0, w), dtype_name(w))

    def check_out(self, out: Any, w: Any) -> None:
        if out is not None:
            raise TypeError(
                f"out= needs NumPy arrays or torch tensors; got the namespace {self.xp!r}"
            )

    def copy_into(self, w: Any, out: Any) -> Any:
        self.check_out(out, w)

    # -- per-node projections on rows (``_polyhedral.py``) -----------------------------------

    def permute(self, x: Any, order: tuple[int, ...]) -> Any:
        return self.xp.permute_dims(x, order)

    def sort_last(self, x: Any) -> Any:
        return self.xp.sort(x, axis=-1)

    def argsort_last(self, x: Any) -> Any:
        return self.xp.argsort(x, axis=-1)

    def take_last(self, x: Any, indices: Any) -> Any:
        return self.xp.take_along_axis(x, indices, axis=-1)

    def cumsum_last(self, x: Any) -> Any:
        return self.xp.cumulative_sum(x, axis=-1)

    def flip_last(self, x: Any) -> Any:
        return self.xp.flip(x, axis=-1)

    def max_last(self, x: Any) -> Any:
        return self.xp.max(x, axis=-1, keepdims=True)

    def sum_last(self, x: Any) -> Any:
        return self.xp.sum(x, axis=-1, keepdims=True)

    def quiet(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def counts(self, m: int, like: Any) -> Any:
        return self.xp.arange(1, m + 1, dtype=like.dtype, device=getattr(like, "device", None))

    def clip(self, x: Any, lower: float, upper: float, out: Any = None) -> Any:
        # NaN stays NaN (TensorFlow's maximum does not propagate it, hence the comparisons).
        if out is not None:
            self.check_out(out, x)
        return self.xp.where(x < lower, lower, self.xp.where(x > upper, upper, x))

    def write(self, result: Any, out: Any) -> Any:
        if out is not None:
            self.check_out(out, result)
        return result


class KerasBackend(GenericBackend):
    """``keras.ops``: any input Keras takes becomes a backend tensor (a variable its value);
    dtypes are cast by name with ``keras.ops.cast``."""

    name = "keras"
    _needs = (*_FUNCTIONS, "cast", "convert_to_tensor")

    def prepare(self, w: Any) -> Any:
        return self.xp.convert_to_tensor(w)

    def astype(self, x: Any, name: str) -> Any:
        return self.xp.cast(x, name)

    def permute(self, x: Any, order: tuple[int, ...]) -> Any:
        return self.xp.transpose(x, order)

    def cumsum_last(self, x: Any) -> Any:
        return self.xp.cumsum(x, axis=-1)

    def counts(self, m: int, like: Any) -> Any:
        return self.xp.arange(1, m + 1, dtype=dtype_name(like))

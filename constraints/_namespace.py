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
    family = kind(xp)
    if family == "numpy":
        w = np.asarray(w)
    elif family == "keras":
        check_namespace(xp, _KERAS_FUNCTIONS)
        w = xp.convert_to_tensor(w)  # a variable's value; NumPy input becomes a backend tensor
    elif family == "torch":
        if not is_torch_tensor(w):
            raise TypeError(f"xp=torch needs a torch.Tensor, got {_type_name(w)}")
        if w.layout is not xp.strided:
            raise TypeError(f"weights must be a strided (dense) tensor, got layout {w.layout}")
    else:
        check_namespace(xp)
        if not (hasattr(w, "shape") and hasattr(w, "dtype")):
            raise TypeError(f"xp={_name(xp)} needs an array of that namespace, got {_type_name(w)}")
    return w, xp


_FUNCTIONS = ("abs", "clip", "divide", "isnan", "sqrt", "sum", "where")
_GENERIC_FUNCTIONS = (*_FUNCTIONS, "astype")
_KERAS_FUNCTIONS = (*_FUNCTIONS, "cast", "convert_to_tensor")


def check_namespace(xp: Any, functions: tuple[str, ...] = _GENERIC_FUNCTIONS) -> None:
    """Raise a TypeError unless ``xp`` has the functions the projections use."""
    missing = [name for name in functions if not hasattr(xp, name)]
    if missing:
        raise TypeError(
            "xp must be an array namespace such as numpy, torch, keras.ops or jax.numpy, "
            f"got {xp!r} (it has no {', '.join(missing)})"
        )


def _name(xp: Any) -> str:
    return getattr(xp, "__name__", repr(xp))


def _type_name(w: Any) -> str:
    cls = type(w)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


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
    if out is not w:
        array_type = np.ndarray if family == "numpy" else sys.modules["torch"].Tensor
        if not isinstance(out, array_type):
            raise TypeError(f"out must be a {array_type.__name__} like w, got {type(out).__name__}")
        if tuple(out.shape) != tuple(w.shape) or dtype_name(out) != dtype_name(w):
            raise ValueError(
                f"out must have the shape and dtype of w: w is {tuple(w.shape)} "
                f"{dtype_name(w)}, out is {tuple(out.shape)} {dtype_name(out)}"
            )
    if family == "torch" and not xp.compiler.is_compiling():
        _check_torch_out(out, w, xp)


def _check_torch_out(out: Any, w: Any, torch: Any) -> None:
    """Refuse a torch ``out`` that cannot be written safely, from metadata only (no sync)."""
    if out.layout is not torch.strided:
        raise TypeError(f"out must be a strided (dense) tensor, got layout {out.layout}")
    if out.device != w.device:
        raise ValueError(f"out must be on the device of w: w is on {w.device}, out on {out.device}")
    if out.is_inference() and not torch.is_inference_mode_enabled():
        raise ValueError(
            "out is an inference tensor (made under torch.inference_mode()): it can only be "
            "written inside torch.inference_mode(); clone() it outside, or project inside"
        )
    if any(stride == 0 and size > 1 for stride, size in zip(out.stride(), out.shape, strict=True)):
        raise ValueError(
            f"out has entries that share memory (stride 0, e.g. an expanded tensor: shape "
            f"{tuple(out.shape)}, strides {out.stride()}); clone() it first"
        )
    if out is not w and _torch_overlap(out, w):
        raise ValueError(
            "out overlaps the memory of w without being laid out as w (a view of w such as a "
            "transpose or a slice): the projection would read entries it has already written; "
            "pass out=w or a separate tensor"
        )


def _torch_overlap(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` share memory, other than as the very same layout (then each
    entry is read before it is written, as with ``out=w``)."""
    if not a.numel() or not b.numel() or a.device.type == "meta":  # meta tensors: no memory
        return False
    same_layout = a.data_ptr() == b.data_ptr() and a.stride() == b.stride()
    return not same_layout and _span(a)[0] < _span(b)[1] and _span(b)[0] < _span(a)[1]


def _span(t: Any) -> tuple[int, int]:
    """The bytes ``[start, stop)`` that a non-empty strided tensor's entries lie in."""
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def multiply(w: Any, factor: Any, out: Any, xp: Any) -> Any:
    """Return ``w * factor`` in the dtype of ``w``, written into ``out`` when it is given.

    ``factor`` may have a wider dtype (float32 for half-precision ``w``): the product is formed
    in that dtype and rounded once, except for bfloat16 torch tensors on the CPU (see below).
    """
    family = kind(xp)
    if family == "torch" and w.device.type == "cpu" and w.dtype == xp.bfloat16:
        # Mixed-dtype products run some 40x slower on the CPU: scale bfloat16 weights in
        # bfloat16 (the factor is rounded once more; it is exactly 1 for nodes that stay as
        # they are). Not float16: its narrow range would flush small factors to subnormals.
        factor = factor.to(w.dtype)
    if out is None:
        name = dtype_name(w)
        if family not in ("numpy", "torch"):
            # keras.ops on TensorFlow does not promote a half-precision tensor times a float32
            # one: form the product in the accumulation dtype explicitly, then round once.
            w = astype(w, accumulation_dtype(name), xp)
        return astype(w * factor, name, xp)
    if family == "torch":
        return _torch_multiply_into(w, factor, out, xp)
    return xp.multiply(w, factor, out=out)


def _torch_multiply_into(w: Any, factor: Any, out: Any, torch: Any) -> Any:
    """``out = w * factor`` for torch. When ``factor`` broadcasts over leading *and* trailing
    dims (the ConvTranspose layout ``(in, out, *k)``), torch's CPU kernel runs short inner loops;
    the factor is expanded over the trailing dims (a tensor the size of one leading slice) so
    the product runs over long rows."""
    if (
        factor.ndim < 2
        or factor.shape[0] != 1  # no leading broadcast
        or factor.shape[-1] != 1  # or no trailing one
        or factor.numel() == 1
        or w.shape[-1] == 1
        or w.device.type != "cpu"
        or not (w.is_contiguous() and out.is_contiguous())
        or torch.compiler.is_compiling()
    ):
        return torch.mul(w, factor, out=out)
    lead = next(i for i, n in enumerate(factor.shape) if n != 1)
    row = factor.expand(factor.shape[:lead] + w.shape[lead:]).reshape(1, -1)
    torch.mul(w.view(-1, row.shape[1]), row, out=out.view(-1, row.shape[1]))
    return out


def zero_negatives(w: Any, out: Any, xp: Any) -> Any:
    """Return ``max(w, 0)`` entry by entry (NaN stays NaN), into ``out`` when it is given."""
    family = kind(xp)
    if family == "numpy":
        return np.maximum(w, 0.0, out=out)
    if family == "torch":
        return xp.clamp(w, min=0.0) if out is None else xp.clamp(w, min=0.0, out=out)
    return astype(xp.where(w < 0, 0.0, w), dtype_name(w), xp)


def copy(w: Any, out: Any, xp: Any) -> Any:
    """Copy ``w`` into ``out`` (a checked NumPy array or torch tensor) and return ``out``."""
    if kind(xp) == "numpy":
        np.copyto(out, w)
        return out
    return out.copy_(w)

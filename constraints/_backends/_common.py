"""Checks shared by the backends."""

from __future__ import annotations

from typing import Any

from .._dtypes import dtype_name


def type_name(obj: Any) -> str:
    """``obj``'s type as ``module.Name`` (builtins without their module), for messages."""
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__name__
    return f"{cls.__module__}.{cls.__qualname__}"


def check_like(out: Any, w: Any, array_type: type[Any]) -> None:
    """Raise unless ``out`` is an ``array_type`` with the shape and dtype of ``w``."""
    if not isinstance(out, array_type):
        raise TypeError(f"out must be a {array_type.__name__} like w, got {type(out).__name__}")
    if tuple(out.shape) != tuple(w.shape) or dtype_name(out) != dtype_name(w):
        raise ValueError(
            f"out must have the shape and dtype of w: w is {tuple(w.shape)} {dtype_name(w)}, "
            f"out is {tuple(out.shape)} {dtype_name(out)}"
        )

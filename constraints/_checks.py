"""Validation of constraint parameters and axes: fail early, name the value."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence

from ._dtypes import largest

Axis = int | Sequence[int] | None
"""The axis or axes a norm is taken over: an int, a sequence of ints, or None for all axes."""


class _DefaultAxis(int):
    """The default ``axis=0`` of a constraint object, told apart from an explicit ``0``.

    It is the int 0 in every computation, comparison, repr and config; only ``is`` tells it from
    an explicit ``0``. The adapters read it as "not given" (the layer's per-node axes apply),
    while an explicit axis is honoured or rejected, never replaced (see ``is_default_axis``).
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "0"

    def __reduce__(self) -> tuple:  # copies and pickles stay the default
        return (_default_axis, ())


def _default_axis() -> int:
    return DEFAULT_AXIS


DEFAULT_AXIS: int = _DefaultAxis(0)
"""The default axis of the constraint objects: ``0``, but distinguishable from an explicit 0."""


def is_default_axis(axis: object) -> bool:
    """Whether ``axis`` is the default of a constraint object (not an axis the user gave)."""
    return axis is DEFAULT_AXIS


def _real(value: object) -> float | None:
    """``value`` as a float when it is a real number (not a bool) or a 0-d real array or tensor
    (as ``torch.renorm`` takes its ``maxnorm``); None otherwise."""
    if type(value) is float:
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if getattr(value, "ndim", None) == 0 and hasattr(value, "dtype"):
        dtype = str(value.dtype)  # "float32", "torch.int64", "bfloat16", ...
        if "float" not in dtype and "int" not in dtype:
            return None
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
    return None


def check_value(name: str, value: object) -> float:
    """Return ``value`` as a float; raise ValueError unless it is a finite, non-negative number.

    Python and NumPy real numbers are accepted, and so are 0-d real arrays and tensors.
    """
    number = _real(value)
    if number is None:
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return number


def check_bounds(min_value: object, max_value: object) -> tuple[float, float]:
    """Validate the bounds of a min-max norm: 0 <= min_value <= max_value, both finite."""
    low = check_value("min_value", min_value)
    high = check_value("max_value", max_value)
    if low > high:
        raise ValueError(
            f"min_value must be <= max_value, got min_value={min_value!r}, max_value={max_value!r}"
        )
    return low, high


def check_rate(rate: object) -> float:
    """Validate the rate of a min-max norm: a number in [0, 1]."""
    number = check_value("rate", rate)
    if number > 1:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    return number


def check_real(name: str, value: object) -> float:
    """``value`` as a float: a real number (or a 0-d real array or tensor), infinite allowed,
    NaN not."""
    number = _real(value)
    if number is None:
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if math.isnan(number):
        raise ValueError(f"{name} must not be NaN, got {value!r}")
    return number


def check_clip_bounds(lower: object, upper: object) -> tuple[float, float]:
    """Validate the bounds of a clip: ``lower <= upper``, not both the same infinity."""
    low, high = check_real("lower", lower), check_real("upper", upper)
    if low > high:
        raise ValueError(f"lower must be <= upper, got lower={lower!r}, upper={upper!r}")
    if low == high and math.isinf(low):
        raise ValueError(
            f"lower and upper cannot both be {low}: no number lies between them, got "
            f"lower={lower!r}, upper={upper!r}"
        )
    return low, high


def check_box(lower: object, upper: object) -> tuple[float, float]:
    """Validate the box of a box max-norm: ``lower <= 0 <= upper``."""
    low, high = check_clip_bounds(lower, upper)
    if low > 0:
        raise ValueError(f"lower must be <= 0 (the box must contain 0), got lower={lower!r}")
    if high < 0:
        raise ValueError(f"upper must be >= 0 (the box must contain 0), got upper={upper!r}")
    return low, high


def check_fits(dtype: str, **bounds: float) -> None:
    """Raise a ValueError, naming the parameter and the dtype, for a finite bound beyond the
    finite range of the weights' dtype ``dtype`` (a bound the weights cannot represent:
    ``radius=1e5`` for float16 weights). Infinite bounds (a clip's) pass.

    Example:
        >>> check_fits("float32", max_value=3.0)
        >>> check_fits("float16", radius=1e5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: radius=100000.0 is beyond the range of float16 weights (largest finite ...
    """
    top = largest(dtype)
    for name, value in bounds.items():
        if math.isfinite(value) and abs(value) > top:
            raise ValueError(
                f"{name}={value!r} is beyond the range of {dtype} weights (largest finite value "
                f"{top!r}): use a bound the weights' dtype can represent, or weights of a wider "
                "dtype"
            )


def _axis_error(original: object) -> ValueError:
    return ValueError(f"axis must be an int, a sequence of ints or None, got {original!r}")


def _as_int(axis: object, original: object) -> int:
    if isinstance(axis, bool) or str(getattr(axis, "dtype", "")).endswith("bool"):
        raise _axis_error(original)
    try:
        return int(operator.index(axis))  # type: ignore[arg-type]  # any __index__
    except TypeError:
        raise _axis_error(original) from None


def check_axis(axis: object) -> int | tuple[int, ...] | None:
    """Normalise an axis specification without knowing the array: int, tuple of ints or None.

    Any sequence of ints (lists, tuples, ``range``, 1-d NumPy integer arrays) becomes a tuple (so
    constraints stay hashable) and a single axis becomes an int, so ``axis=[0]``, ``(0,)`` and
    ``0`` are the same constraint. Repeated axes are rejected when they are spelled the same way
    (``(0, 0)``); ``(0, -2)`` on a 2-d array is caught at call time. ``DEFAULT_AXIS`` is kept as
    it is, so the adapters can tell it from an explicit ``0``.
    """
    if axis is None or axis is DEFAULT_AXIS:
        return axis
    if isinstance(axis, (str, bytes)):
        raise _axis_error(axis)
    if getattr(axis, "ndim", None) == 0:  # a 0-d array or tensor holding one axis
        return _as_int(axis, axis)
    if isinstance(axis, Sequence) or hasattr(axis, "__array__") or hasattr(axis, "ndim"):
        try:
            items = list(axis)  # type: ignore[call-overload]  # any iterable of ints
        except TypeError:
            raise _axis_error(axis) from None
        axes = tuple(_as_int(a, axis) for a in items)
        if len(set(axes)) != len(axes):
            raise ValueError(f"axis contains a repeated axis: {axis!r}")
        return axes[0] if len(axes) == 1 else axes
    return _as_int(axis, axis)


def normalize_axes(axis: Axis, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Return the sorted, non-negative axes that ``axis`` names in an array of ``shape``.

    Raises:
        ValueError: ``axis`` is out of range for ``shape`` or names an axis twice.
    """
    ndim = len(shape)
    checked = check_axis(axis)
    if checked is None:
        return tuple(range(ndim))
    given = checked if isinstance(checked, tuple) else (checked,)
    axes = []
    for a in given:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {axis!r} is out of range for weights of shape {tuple(shape)}")
        axes.append(a % ndim)
    if len(set(axes)) != len(axes):
        raise ValueError(f"axis {axis!r} repeats an axis of weights of shape {tuple(shape)}")
    return tuple(sorted(axes))

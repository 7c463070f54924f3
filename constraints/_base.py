"""The base class of every constraint, what the adapters ask of a constraint, and saved names."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

from ._checks import Axis, check_fits
from ._projections import copy_into
from ._shapes import fan_in, resolve


class Constraint:
    """Base class of the constraints, with the interface of ``keras.constraints.Constraint``.

    The base class itself is the identity: ``Constraint()(w)`` returns ``w`` and its config is
    ``{}``. The built-in constraints are frozen dataclasses: validated, immutable, hashable, and
    ``get_config()`` returns their fields. A plain subclass overrides ``__call__`` (and
    ``get_config`` when its constructor takes arguments); ``from_config(config)`` calls
    ``cls(**config)``, as in Keras.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import Constraint
        >>> class Clip(Constraint):
        ...     def __init__(self, limit=1.0):
        ...         self.limit = limit
        ...
        ...     def __call__(self, w, *, out=None, xp=None):
        ...         return np.clip(w, -self.limit, self.limit, out=out)
        ...
        ...     def get_config(self):
        ...         return {"limit": self.limit}
        >>> Clip.from_config(Clip(0.5).get_config())(np.array([-2.0, 0.25]))
        array([-0.5 ,  0.25])
    """

    name: ClassVar[str]

    roundings: ClassVar[float] = 2
    """How far from its set a projected node may lie, in roundings of the weights' dtype
    (spacings at 1) relative to the set's size: a projected weight is rounded to its dtype.
    The audits accept a node within this distance; the sum constraints (:class:`Simplex`,
    :class:`MaxL1Norm`) keep a node within it as it is, by the same number."""

    def __call__(self, w: Any, *, out: Any = None, xp: Any = None) -> Any:
        """Return ``w`` unchanged (written into ``out`` when it is given and is not ``w``)."""
        if out is None or out is w:
            return w
        return copy_into(w, out, xp)

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable (axis tuples become lists)."""
        if not dataclasses.is_dataclass(self):
            return {}
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def with_axis(self, axis: Axis) -> Constraint:
        """This constraint taken over ``axis`` instead of its own (a copy: constraints are
        immutable). The adapters give a per-node constraint (see :func:`is_per_node`) each
        weight's per-node axes through this method, and only through it.

        Dataclass constraints with an ``axis`` field, the built-in ones among them, are copied
        with ``dataclasses.replace``. A constraint of another kind that has an ``axis``
        attribute overrides this method to return its copy over ``axis``.

        Raises:
            TypeError: The constraint has no axis (it works entry by entry), or has one but
                does not say how to copy itself over another axis.

        Example:
            >>> from weight_constraints import MaxNorm
            >>> MaxNorm(3).with_axis((0, 1))
            MaxNorm(max_value=3.0, axis=(0, 1))
        """
        if not is_per_node(self):
            raise TypeError(f"{self!r} has no axis: it applies entry by entry")
        if dataclasses.is_dataclass(self) and any(
            f.name == "axis" for f in dataclasses.fields(self)
        ):
            return dataclasses.replace(self, axis=axis)
        raise TypeError(
            f"{type(self).__qualname__} has an axis attribute but no with_axis(): define "
            "with_axis(self, axis) returning a copy of the constraint over that axis (the "
            "adapters call it to give the constraint each weight's per-node axes), or make it a "
            "dataclass with an axis field"
        )

    def bounds(self) -> dict[str, float]:
        """The parameters that bound the weights' values or norms, by name (``max_value``,
        ``radius``, ``lower``...), those given as numbers; ``{}`` for a constraint without
        any."""
        return {}

    rule_fields: ClassVar[tuple[str, ...]] = ()
    """The parameters that may be given as a rule of the weight's shape (``"sqrt(fan_in)"``)."""

    def rules(self) -> dict[str, str]:
        """The parameters given as rules of the weight's shape, by name (``{}`` when all are
        numbers)."""
        found = {name: getattr(self, name) for name in self.rule_fields}
        return {name: value for name, value in found.items() if isinstance(value, str)}

    def resolved(self, shape: Sequence[int]) -> Constraint:
        """This constraint for weights of ``shape``: each rule (``"sqrt(fan_in)"``) replaced by
        its number, ``fan_in`` being the entries of a node (the sizes of the axes each norm runs
        over); itself when it has no rule. The adapters resolve a constraint when they bind it
        to a weight; calling the constraint on an array resolves it for that array.

        Raises:
            ValueError: The numbers do not make a valid constraint (``min_value > max_value``).

        Example:
            >>> from weight_constraints import MinMaxNorm
            >>> edm2 = MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)", axis=(1, 2, 3))
            >>> edm2.resolved((64, 16, 3, 3))  # a Conv2d weight: fan_in = 16 * 3 * 3
            MinMaxNorm(min_value=12.0, max_value=12.0, rate=1.0, axis=(1, 2, 3))
        """
        rules = self.rules()
        if not rules:
            return self
        n = fan_in(tuple(shape), getattr(self, "axis", None))
        return dataclasses.replace(self, **{name: resolve(r, n) for name, r in rules.items()})  # type: ignore[type-var]

    def check_dtype(self, dtype: str) -> None:
        """Raise a ValueError, naming the parameter and the dtype, when a finite bound of this
        constraint lies beyond the range of weights of the dtype called ``dtype`` (the
        adapters call it when they bind a constraint to a weight, before any projection).

        Example:
            >>> from weight_constraints import Simplex
            >>> Simplex(radius=1e5).check_dtype("float16")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: radius=100000.0 is beyond the range of float16 weights ...
        """
        check_fits(dtype, **self.bounds())

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Constraint:
        """Rebuild the constraint from the output of :meth:`get_config`."""
        return cls(**config)


SAVED_PREFIX = "weight_constraints."
"""The prefix of the built-in classes' ``__name__`` (see :func:`saved_name`)."""


def saved_name(cls: type[Constraint]) -> type[Constraint]:
    """Give a built-in constraint class the ``__name__`` ``weight_constraints.<Name>``.

    Keras saves an object's ``type(obj).__name__`` as its ``class_name`` and, in a process
    where the registered name is unknown, looks that name up among its own classes: a core
    ``MaxNorm`` used directly as a layer constraint would load silently as
    ``keras.constraints.MaxNorm``. No Keras class is called ``weight_constraints.MaxNorm``, so
    such a file loads as ours (``weight_constraints.adapters.keras`` registers the name) or
    fails with an error. ``__qualname__`` stays ``MaxNorm``, so ``repr``, pickling and
    :func:`get` by class name are unchanged; :func:`get` also takes the saved name.

    Example:
        >>> from weight_constraints import MaxNorm
        >>> MaxNorm.__name__, MaxNorm.__qualname__
        ('weight_constraints.MaxNorm', 'MaxNorm')
    """
    cls.__name__ = SAVED_PREFIX + cls.__qualname__
    return cls


def is_per_node(constraint: Any) -> bool:
    """Whether ``constraint`` takes one norm per node over an axis (it has an ``axis``, as
    :class:`MaxNorm` and ``keras.constraints.MaxNorm`` do): the adapters give it each weight's
    per-node axes (:meth:`Constraint.with_axis`). Constraints without one (:class:`NonNeg`,
    :class:`Clip`) apply entry by entry.

    Example:
        >>> import weight_constraints as wc
        >>> is_per_node(wc.MaxNorm(3)), is_per_node(wc.NonNeg()), is_per_node(wc.Clip(-1, 1))
        (True, False, False)
    """
    return hasattr(constraint, "axis")


def _plain(value: Any) -> Any:
    """A config value as plain JSON data: axis tuples become lists, the default axis a plain 0."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return value

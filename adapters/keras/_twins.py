"""The ``keras.constraints`` drop-in classes backed by the core, and their registration for saving.

Each class holds a core constraint (:attr:`_CoreBacked.core`) and projects with it, with
``xp=keras.ops`` inside the compiled train step (the core's own torch backend on the torch
backend). The classes are registered for saving as ``weight_constraints>Name`` under the class
name ``weight_constraints.Name``; the core classes used directly as layer constraints are
registered too. Importing ``weight_constraints.adapters.keras`` runs this registration.

A bound given as a rule of the weight's shape (``MaxNorm("2 * sqrt(fan_in)")``) stays a rule in
the object and its config (saved models keep it) and is resolved from the static shape of the
weight it projects, so one object gives each layer its own bound.

Example:
    >>> import weight_constraints as wc
    >>> from weight_constraints.adapters.keras import MaxNorm
    >>> MaxNorm(3).core == wc.MaxNorm(3), TWINS[wc.MaxNorm] is MaxNorm
    (True, True)
    >>> import keras
    >>> edm2 = MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)")
    >>> edm2.get_config()["max_value"]
    'sqrt(fan_in)'
    >>> keras.ops.convert_to_numpy(edm2(keras.ops.ones((4, 2))))  # fan_in 4: norm 2
    array([[1., 1.],
           [1., 1.],
           [1., 1.],
           [1., 1.]], dtype=float32)
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

import weight_constraints as wc
from weight_constraints._checks import DEFAULT_AXIS

PACKAGE = "weight_constraints"
"""The package name the classes are registered under for saving."""

MODULE = "weight_constraints.adapters.keras"
"""The public module of the classes: the ``module`` Keras saves beside a config."""

Constraint = keras.constraints.Constraint
"""The base class of Keras constraints (``keras.constraints.Constraint`` itself): subclass it for
a constraint of your own, as with ``keras.constraints``."""


class _CoreBacked(keras.constraints.Constraint):
    """A Keras constraint that holds a core constraint and projects with ``xp=keras.ops``."""

    _core: wc.Constraint

    def __call__(self, w: Any) -> Any:
        core = self._core
        if core.rules():  # "sqrt(fan_in)": resolved from the weight's static shape
            core = core.resolved(_static_shape(w, core))
        if keras.backend.backend() == "torch":
            # keras.ops on torch computes some 64-bit results in 32 bits (cumsum, maximum...,
            # Keras 3.15): the core's own torch backend is exact in float64, and the same
            # projection in every other dtype.
            return core(ops.convert_to_tensor(w))
        return core(w, xp=ops)

    def get_config(self) -> dict[str, Any]:
        return self._core.get_config()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> _CoreBacked:
        """The constraint of a config, checked as the core's :func:`weight_constraints.get`
        checks it: a ValueError naming an unknown or a missing parameter."""
        core_class = next(CORE_CLASSES[c] for c in cls.__mro__ if c in CORE_CLASSES)
        core = wc.get({"class_name": core_class.__qualname__, "config": config})
        return cls._from_core(core)

    @classmethod
    def _from_core(cls, core: Any) -> _CoreBacked:
        """The twin of ``core`` as it is: a default axis stays the default (``from_config`` would
        make it an explicit 0)."""
        twin = cls.__new__(cls)
        twin._core = core
        return twin

    @property
    def core(self) -> wc.Constraint:
        """The core constraint this object projects with."""
        return self._core

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, _CoreBacked)
            and other._core == self._core
        )

    def __hash__(self) -> int:
        return hash((type(self), self._core))

    def __repr__(self) -> str:
        return repr(self._core)

    def __getattr__(self, name: str) -> Any:
        # max_value, axis, ... read through to the core object
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._core, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            raise AttributeError(
                f"{type(self).__name__} is immutable; create a new constraint instead of "
                f"setting {name}"
            )
        super().__setattr__(name, value)


def _static_shape(w: Any, core: wc.Constraint) -> tuple[int, ...]:
    """The static shape of ``w`` (a variable, or a tensor inside a compiled train step), which
    a rule of the weight's shape (``"sqrt(fan_in)"``) is resolved from.

    Raises:
        ValueError: A size is not known before the step runs (a rule needs it).
    """
    shape = tuple(w.shape)
    if any(size is None for size in shape):
        raise ValueError(
            f"{core!r} resolves {core.rules()} from the weight's shape, and this tensor's shape "
            f"{shape} is not fully known; call it on the variable (or a tensor of static shape)"
        )
    return tuple(int(size) for size in shape)


def _register(cls: type[_CoreBacked]) -> type[_CoreBacked]:
    """Register ``cls`` for saving as ``weight_constraints>Name`` and give it a class name that
    does not collide with Keras's own.

    Keras writes ``type(obj).__name__`` as a saved object's ``class_name`` and, where the
    registered name is unknown (a process that has not imported this module),
    ``keras.constraints.get`` looks the ``class_name`` up among its own classes: a saved
    ``MaxNorm`` would silently load as ``keras.constraints.MaxNorm``. With the class name
    ``weight_constraints.MaxNorm`` Keras finds no such class and the loading fails with an error
    naming this module instead. ``__qualname__`` stays ``MaxNorm`` (``repr`` of the class, pickle);
    ``__module__`` is the public module, which Keras saves beside the config.
    """
    cls.__module__ = MODULE
    keras.saving.register_keras_serializable(package=PACKAGE, name=cls.__qualname__)(cls)
    cls.__name__ = f"{PACKAGE}.{cls.__qualname__}"
    return cls


@_register
class MaxNorm(_CoreBacked):
    """Per-node max-norm, as ``keras.constraints.MaxNorm`` but exact (see
    :func:`weight_constraints.max_norm`).

    Args:
        max_value (float | str): The largest norm of the incoming weights of a unit, or a rule
            of the weight's shape, resolved for each weight it projects: ``"fan_in"`` or
            ``"sqrt(fan_in)"``, optionally times a number (``"2 * sqrt(fan_in)"``), ``fan_in``
            being the entries of a node. The config keeps the rule, so saved models do.
        axis (int | tuple[int, ...] | None): The axis or axes each norm is taken over: 0 for
            a ``Dense`` kernel ``(in, out)``; for a ``Conv2D`` kernel ``(rows, cols, in, out)``
            use ``[0, 1, 2]``, for a ``Conv2DTranspose`` kernel ``(rows, cols, out, in)`` use
            ``[0, 1, 3]`` (:func:`per_node_axes` gives them for any layer). Left at its default,
            :func:`constrain` applies it over each layer's per-node axes.
    """

    def __init__(self, max_value=2, axis=DEFAULT_AXIS):
        self._core = wc.MaxNorm(max_value, axis)


@_register
class UnitNorm(_CoreBacked):
    """Per-node unit norm, as ``keras.constraints.UnitNorm`` but exact (see
    :func:`weight_constraints.unit_norm`).

    Args:
        axis (int | tuple[int, ...] | None): The axis or axes each norm is taken over (see
            :class:`MaxNorm`).
    """

    def __init__(self, axis=DEFAULT_AXIS):
        self._core = wc.UnitNorm(axis)


@_register
class MinMaxNorm(_CoreBacked):
    """Per-node norm in ``[min_value, max_value]``, as ``keras.constraints.MinMaxNorm`` but exact
    (see :func:`weight_constraints.min_max_norm`).

    Args:
        min_value (float | str): The smallest norm of the incoming weights of a unit, or a
            rule of the weight's shape (``"sqrt(fan_in)"``, see :class:`MaxNorm`).
        max_value (float | str): The largest norm of the incoming weights of a unit, or a
            rule: ``MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)")`` keeps every node at the norm
            ``sqrt(fan_in)`` (EDM2's forced weight normalization).
        rate (float): The fraction of the way to the interval moved at each step, in ``[0, 1]``.
        axis (int | tuple[int, ...] | None): The axis or axes each norm is taken over (see
            :class:`MaxNorm`).
    """

    def __init__(self, min_value=0.0, max_value=1.0, rate=1.0, axis=DEFAULT_AXIS):
        self._core = wc.MinMaxNorm(min_value, max_value, rate, axis)


@_register
class NonNeg(_CoreBacked):
    """Non-negative weights, as ``keras.constraints.NonNeg``."""

    def __init__(self):
        self._core = wc.NonNeg()


@_register
class Clip(_CoreBacked):
    """Every entry clipped to ``[lower, upper]`` (see :func:`weight_constraints.clip`);
    ``Clip(0, inf)`` is :class:`NonNeg`. No Keras namesake.

    Args:
        lower (float): The smallest value an entry may have; may be ``-inf``.
        upper (float): The largest value an entry may have, ``>= lower``; may be ``inf``.

    Example:
        >>> import keras
        >>> from weight_constraints.adapters.keras import Clip
        >>> keras.ops.convert_to_numpy(Clip(-0.1, 0.1)(keras.ops.array([0.5, -0.05, -2.0])))
        array([ 0.1 , -0.05, -0.1 ], dtype=float32)
    """

    def __init__(self, lower, upper):
        self._core = wc.Clip(lower, upper)


@_register
class BoxMaxNorm(_CoreBacked):
    """Every node projected onto the box ``[lower, upper]`` (containing 0) within the L2 ball of
    radius ``max_value`` (see :func:`weight_constraints.box_max_norm`). No Keras namesake.

    Args:
        lower (float): The smallest value an entry may have, ``<= 0``; may be ``-inf``.
        upper (float): The largest value an entry may have, ``>= 0``; may be ``inf``.
        max_value (float | str): The largest norm of the incoming weights of a unit, or a
            rule of the weight's shape (``"sqrt(fan_in)"``, see :class:`MaxNorm`).
        axis (int | tuple[int, ...] | None): The axis or axes each node spans (see
            :class:`MaxNorm`).

    Example:
        >>> import keras
        >>> from weight_constraints.adapters.keras import BoxMaxNorm
        >>> w = keras.ops.array([[3.0], [-1.0], [4.0]])  # one node: clipped at 0, then scaled
        >>> keras.ops.convert_to_numpy(BoxMaxNorm(0.0, float("inf"), max_value=1.0)(w))
        array([[0.6],
               [0. ],
               [0.8]], dtype=float32)
    """

    def __init__(self, lower, upper, max_value, axis=DEFAULT_AXIS):
        self._core = wc.BoxMaxNorm(lower, upper, max_value, axis)


@_register
class Simplex(_CoreBacked):
    """Every node projected onto the simplex: entries ``>= 0`` summing to ``radius`` (see
    :func:`weight_constraints.simplex`). No Keras namesake.

    Args:
        radius (float | str): The sum of the incoming weights of a unit, or a rule of the
            weight's shape (``"fan_in"``, see :class:`MaxNorm`).
        axis (int | tuple[int, ...] | None): The axis or axes each node spans (see
            :class:`MaxNorm`).

    Example:
        >>> import keras
        >>> from weight_constraints.adapters.keras import Simplex
        >>> w = keras.ops.array([[0.5, 2.0], [1.5, 0.0]])  # one node per column
        >>> keras.ops.convert_to_numpy(Simplex()(w))
        array([[0., 1.],
               [1., 0.]], dtype=float32)
    """

    def __init__(self, radius=1.0, axis=DEFAULT_AXIS):
        self._core = wc.Simplex(radius, axis)


@_register
class MaxL1Norm(_CoreBacked):
    """Every node projected onto the L1 ball of radius ``max_value`` (see
    :func:`weight_constraints.max_l1_norm`). No Keras namesake.

    Args:
        max_value (float | str): The largest L1 norm of the incoming weights of a unit, or a
            rule of the weight's shape (``"fan_in"``, see :class:`MaxNorm`).
        axis (int | tuple[int, ...] | None): The axis or axes each node spans (see
            :class:`MaxNorm`).

    Example:
        >>> import keras
        >>> from weight_constraints.adapters.keras import MaxL1Norm
        >>> w = keras.ops.array([[3.0, 0.25], [-2.0, 0.5]])  # L1 norms 5 and 0.75
        >>> keras.ops.convert_to_numpy(MaxL1Norm(2.0)(w))
        array([[ 1.5 ,  0.25],
               [-0.5 ,  0.5 ]], dtype=float32)
    """

    def __init__(self, max_value, axis=DEFAULT_AXIS):
        self._core = wc.MaxL1Norm(max_value, axis)


max_norm = MaxNorm
unit_norm = UnitNorm
min_max_norm = MinMaxNorm
non_neg = NonNeg
clip = Clip
box_max_norm = BoxMaxNorm
simplex = Simplex
max_l1_norm = MaxL1Norm

TWINS: dict[type[wc.Constraint], type[_CoreBacked]] = {
    wc.MaxNorm: MaxNorm,
    wc.UnitNorm: UnitNorm,
    wc.MinMaxNorm: MinMaxNorm,
    wc.NonNeg: NonNeg,
    wc.Clip: Clip,
    wc.BoxMaxNorm: BoxMaxNorm,
    wc.Simplex: Simplex,
    wc.MaxL1Norm: MaxL1Norm,
}
"""The Keras twin of each core kind."""

CORE_CLASSES = {twin: core for core, twin in TWINS.items()}
"""The core kind of each twin."""


def twin_of(core: wc.Constraint) -> _CoreBacked:
    """The Keras twin of a core object of one of the eight kinds, as it is (its axis kept).

    Example:
        >>> import weight_constraints as wc
        >>> twin_of(wc.Simplex(2.0, axis=(0, 1)))
        Simplex(radius=2.0, axis=(0, 1))
    """
    return TWINS[type(core)]._from_core(core)


def _register_core_classes() -> None:
    """Let core objects used directly as layer constraints save and load too.

    They are saved under the registered name ``weight_constraints.core>MaxNorm`` and the class
    name ``weight_constraints.MaxNorm`` (the core's ``__name__``, which no Keras class has: a
    process without this module gets an error, never ``keras.constraints.MaxNorm``). A process
    that saved them without this module wrote the class name as the registered name too: it is
    registered as well, so such files load as ours.
    """
    for core_class in TWINS:
        keras.saving.register_keras_serializable(
            package=f"{PACKAGE}.core", name=core_class.__qualname__
        )(core_class)
        keras.saving.get_custom_objects()[core_class.__name__] = core_class


_register_core_classes()

"""Entries of a registry: the public :class:`Entry`, the record of one registered tensor, and
binding a tensor or a module's parameter to its constraint, at ``add()`` and again after a
change (a new dtype, layout or tensor).

Binding goes through the shared :func:`~weight_constraints.adapters._binding.bind`: the axis
rule, the constraint's own ``with_axis`` and a check of its bounds against the tensor's dtype
(a bound the dtype cannot represent raises when the tensor is registered, and again when it is
bound anew after a dtype change, before anything is projected).

Example:
    >>> import torch
    >>> import weight_constraints as wc
    >>> registered = tensor_registration(torch.zeros(3, 4), wc.MaxNorm(2), 1, "w")
    >>> registered.constraint, registered.dims
    (MaxNorm(max_value=2.0, axis=1), (1,))
    >>> tensor_registration(torch.zeros(3, 4, dtype=torch.float16), wc.Simplex(1e5), 1, "w")
    Traceback (most recent call last):
    ...
    ValueError: w: radius=100000.0 is beyond the range of float16 weights (largest finite ...
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

import weight_constraints as wc
from weight_constraints._checks import Axis, is_default_axis, normalize_axes
from weight_constraints._dtypes import as_name
from weight_constraints.adapters._binding import bind, bind_axes, is_per_node
from weight_constraints.adapters._errors import WeightValueError
from weight_constraints.adapters._roles import PER_INPUT_ROLES, Request

from ._computed import computed_weight_error, is_computed, parameter_at
from ._layers import layout, owner
from ._memory import Region, check_writable, is_dtensor, region

__all__ = [
    "MISSING",
    "Entry",
    "ModulePlace",
    "Registration",
    "bind_again",
    "bind_to_dims",
    "module_registration",
    "module_registrations",
    "tensor_registration",
]

MISSING: Any = object()
"""The default of ``dims=``: told apart from ``None`` (every dim)."""

ModulePlace = tuple[nn.Module, str, str]
"""``(module, attribute, name)``: where a registered parameter is held in a model."""


class Entry(NamedTuple):
    """One constrained tensor.

    Attributes:
        name: Where the tensor is (``"0.weight"``, ``"Linear.weight"``, or the name you gave).
        parameter: The tensor itself (projected in place; never replaced).
        constraint: The core constraint, bound to ``dims``.
        dims: The dims each norm is taken over, in the shape ``view`` when there is one.
        view: ``None``, or the shape the tensor is viewed as for projecting (grouped
            transposed convolutions).
    """

    name: str
    parameter: torch.Tensor
    constraint: wc.Constraint
    dims: tuple[int, ...]
    view: tuple[int, ...] | None = None


class Registration:
    """One registered tensor, bound to what its projection needs.

    ``asked`` is the constraint as asked (default axis kept), ``constraint`` the one bound to
    ``dims`` (in the shape ``view`` when not None), ``projected`` the same with its bounds given
    as rules (``"sqrt(fan_in)"``) resolved for that shape (the one the projections run);
    ``per_input`` says it was asked for one norm per input unit. ``places`` are the
    ``(module, attribute, name)`` the tensor was found at (several for a tied weight); ``source``
    is ``(module, parameter name, label)`` for a module entry, to bind again when the parameter
    is replaced.
    ``shape``/``stride``/``dtype`` are what the binding was checked against, ``memory`` the
    tensor's :class:`~._memory.Region` as of the last full check; ``item`` is what the eager
    projection takes.
    """

    __slots__ = (
        "asked",
        "constraint",
        "dims",
        "dtensor",
        "dtype",
        "item",
        "memory",
        "name",
        "parameter",
        "per_input",
        "places",
        "projected",
        "shape",
        "source",
        "stride",
        "view",
    )

    def __init__(
        self,
        name: str,
        parameter: torch.Tensor,
        asked: Any,
        constraint: Any,
        dims: tuple[int, ...],
        view: tuple[int, ...] | None,
        places: tuple[ModulePlace, ...],
        source: ModulePlace | None,
        per_input: bool = False,
    ) -> None:
        self.name = name
        self.parameter = parameter
        self.asked = asked
        self.constraint = constraint
        shape = tuple(parameter.shape) if view is None else view
        self.projected = (
            constraint.resolved(shape) if hasattr(constraint, "resolved") else constraint
        )
        self.per_input = per_input
        self.dims = dims
        self.view = view
        self.places = places
        self.source = source
        self.dtensor = is_dtensor(parameter)
        self.shape = parameter.shape
        self.stride = parameter.stride()
        self.dtype = parameter.dtype
        self.item = (parameter, view, self.projected)
        self.memory: Region | None = region(parameter)

    def plan_item(self) -> tuple[torch.Tensor, tuple[int, ...] | None, Any, tuple[int, ...]]:
        """What :class:`~._plan.Plan` takes for this tensor."""
        return (self.parameter, self.view, self.projected, self.dims)

    def take(self, other: Registration) -> None:
        """Become ``other`` (a fresh binding of the same registration), keeping the places."""
        for field in self.__slots__:
            if field != "places":
                setattr(self, field, getattr(other, field))

    def entry(self) -> Entry:
        return Entry(self.name, self.parameter, self.constraint, self.dims, self.view)

    def same_request(self, other: Registration) -> bool:
        """Whether ``other`` asks for the same projection of the same tensor."""
        if self.constraint != other.constraint:
            return False
        return not is_per_node(self.constraint) or (self.dims, self.view) == (
            other.dims,
            other.view,
        )


def bind_to_dims(
    constraint: Any,
    axes: tuple[int, ...],
    shape: tuple[int, ...],
    where: str,
    dims: Any,
    dtype: Any,
) -> Any:
    """``constraint`` bound to the dims given with a tensor (the axis rule, ``per_node=dims``)."""
    try:
        bind_axes(constraint, axes, shape, where)
    except ValueError:
        raise ValueError(
            f"{constraint!r} has an explicit axis that differs from dims={dims!r} on {where} "
            f"(shape {shape}); leave the constraint's axis at its default and pass dims only"
        ) from None
    return bind(constraint, axes, shape, where, dtype=as_name(dtype))[0]


def tensor_registration(
    tensor: torch.Tensor, constraint: Any, dims: Axis, name: str
) -> Registration:
    """Bind ``tensor`` to ``constraint`` (an object, a name or a config) over ``dims``.

    Raises:
        ValueError: No constraint, no ``dims`` for a per-node constraint, dims out of range, an
            explicit axis that is not ``dims``, a bound the tensor's dtype cannot represent, or
            a tensor that cannot be written in place.
        TypeError: A tensor that is not floating point or not dense, or a per-node constraint
            without ``with_axis``.
    """
    resolved = wc.get(constraint)
    if resolved is None:
        raise ValueError("add(tensor, constraint, dims=...) needs a constraint")
    if dims is MISSING:
        if is_per_node(resolved):
            raise ValueError(
                f"add(tensor, {resolved!r}) needs dims=: the dims of the tensor each norm is "
                "taken over (torch's dim; e.g. dims=1 for a Linear weight)"
            )
        dims = None
    check_writable(tensor, name)
    shape = tuple(tensor.shape)
    axes = normalize_axes(dims, shape)
    bound = bind_to_dims(resolved, axes, shape, name, dims, tensor.dtype)
    return Registration(name, tensor, resolved, bound, axes, None, (), None)


def _viewed_shape(
    parameter: torch.Tensor, view: tuple[int, ...], where: str, dims: Any, asked: Any
) -> tuple[int, ...]:
    """The shape a parameter is projected in when its per-node norms exist only in ``view``."""
    if is_per_node(asked) and not is_default_axis(asked.axis):
        raise WeightValueError(
            f"{asked!r} has an explicit axis, but the per-node norms of {where} exist only "
            f"in the grouped view {view} (dims {dims})",
            "leave the axis at its default",
        )
    try:
        parameter.view(view)
    except RuntimeError as error:
        raise WeightValueError(
            f"{where} cannot be viewed as {view} for projecting", str(error)
        ) from None
    return view


def module_registration(
    module: nn.Module, name: str, asked: Any, label: str, *, per_input: bool = False
) -> Registration:
    """Bind the parameter ``name`` of ``module`` (found by role) to the constraint ``asked``,
    over its per-node dims, or with ``per_input`` over the dims that give one norm per input
    unit (2-D weights).

    Raises:
        ValueError: A weight the module computes, a lazy parameter, an explicit axis that is
            not the per-node one, a bound the parameter's dtype cannot represent, a tensor
            that cannot be written in place, or ``per_input`` on a weight that is not 2-D.
        TypeError: A parameter that is not floating point or not dense, or a per-node
            constraint without ``with_axis``.
    """
    where = f"{label}.{name}"
    holder, attr = owner(module, name)
    dims, view = next((d, v) for role in layout(module).values() for n, d, v in role if n == name)
    parameter = parameter_at(holder, attr, where, dims, view, asked)
    if nn.parameter.is_lazy(parameter):
        raise WeightValueError(
            f"{where} is not initialised yet (lazy module)",
            "run one forward pass before constraining it",
        )
    check_writable(parameter, where)
    shape = (
        tuple(parameter.shape)
        if view is None
        else _viewed_shape(parameter, view, where, dims, asked)
    )
    dtype = as_name(parameter.dtype)
    bound, bound_axes = bind(asked, dims, shape, where, dtype=dtype, per_input=per_input)
    axes = normalize_axes(dims, shape) if bound_axes is None else bound_axes
    place = ((holder, attr, where),)
    source = (module, name, label)
    return Registration(where, parameter, asked, bound, axes, view, place, source, per_input)


def module_registrations(
    module: nn.Module, request: Request, label: str, *, per_input: bool = False
) -> list[Registration]:
    """Registrations for every parameter of ``module`` whose role gets a constraint; with
    ``per_input``, its kernels take one norm per input unit."""
    registrations = []
    for role, places in layout(module).items():
        constraint = request.constraint_for(role)
        if constraint is not None:
            by_input = per_input and role in PER_INPUT_ROLES
            for name, _, _ in places:
                registrations.append(
                    module_registration(module, name, constraint, label, per_input=by_input)
                )
    if per_input and not any(r.per_input and is_per_node(r.constraint) for r in registrations):
        raise ValueError(
            f"{label} ({type(module).__name__}) is chosen by per_input, but none of its weights "
            "takes one norm per input unit: per_input applies to the 2-D kernels (and "
            "recurrent weights) given a per-node constraint (kernel=UnitNorm(), ...)"
        )
    return registrations


def _changed_shape(registration: Registration, fresh: Registration) -> WeightValueError:
    return WeightValueError(
        f"{registration.name} changed shape from {tuple(registration.shape)} to "
        f"{tuple(fresh.shape)} after it was constrained",
        "constrain it again",
    )


def bind_again(registration: Registration) -> Registration:
    """A fresh binding of ``registration`` to the tensor now at its places, checked as
    ``add()`` checks (a new dtype is checked against the constraint's bounds again).

    Raises:
        ValueError: The tensor became unusable (computed, untied, reshaped, a dtype that cannot
            represent the bounds, ...).
        TypeError: It is no longer a floating-point dense tensor.
    """
    if registration.source is None:
        fresh = tensor_registration(
            registration.parameter, registration.asked, registration.dims, registration.name
        )
        if fresh.shape != registration.shape:
            raise _changed_shape(registration, fresh)
        return fresh
    module, name, label = registration.source
    holder, attr = owner(module, name)
    if is_computed(holder, attr):
        raise computed_weight_error(
            holder,
            attr,
            registration.name,
            registration.dims,
            registration.view,
            registration.asked,
            when=" since it was constrained",
        )
    fresh = module_registration(
        module, name, registration.asked, label, per_input=registration.per_input
    )
    for place_owner, place_attr, place in registration.places:
        if place_owner._parameters.get(place_attr) is not fresh.parameter:
            raise WeightValueError(
                f"{registration.name} was tied to {place} when it was constrained, and the two "
                "are now different tensors",
                "constrain each of them again",
            )
    if fresh.shape != registration.shape and fresh.parameter is registration.parameter:
        raise _changed_shape(registration, fresh)
    return fresh

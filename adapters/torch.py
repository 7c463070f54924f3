"""PyTorch adapter: per-node constraints applied after every optimizer step.

PyTorch has no ``kernel_constraint=``: the usual recipe is a loop of ``renorm_``/``clamp_`` after
``optimizer.step()``. Here a :class:`Constraints` registry records (parameter, constraint, dims)
and :meth:`Constraints.attach` runs the projections in an optimizer step post-hook, in place,
under ``torch.no_grad()``, with no host synchronisation. The math is the core's
(:mod:`weight_constraints`) on torch tensors; this module only finds the parameters and their
per-node dims, and checks that what it projects is what the model uses.

Axes. A constraint attached *by role* (``kernel=``, ``recurrent=``, ``bias=``, ``embedding=``)
is applied over the module's per-node dims (:func:`per_node_dims`), e.g. dim 1 of a ``Linear``
weight ``(out, in)``: with its axis left at the default, it takes those dims; an explicit axis is
honoured when it names them (``MaxNorm(3, axis=1)`` on a ``Linear``) and raises a ValueError
otherwise (``axis=0`` is Keras's per-node axis of a ``Dense`` kernel ``(in, out)``, not torch's).
``add(tensor, constraint, dims=...)`` and :func:`project_` follow the same rule with your
``dims``. An axis is never silently replaced.

What the hook projects. A hook projects what its optimizer updated in that step: the registered
parameters that are in the optimizer's param groups and have a gradient (frozen weights,
``requires_grad=False``, are left alone, as in Keras). :meth:`Constraints.apply` projects every
registered tensor. An entry no step can project raises instead of being skipped: a view,
``.data`` or ``.detach()`` of a parameter (at ``attach()``), and a parameter registered as a
tensor that no attached optimizer holds (at the next step). A tensor takes one constraint across
all live registries. Before projecting anything, every entry is checked (O(1) per entry): a
parameter replaced in its module after registration (``load_state_dict(..., assign=True)``,
``module.weight = nn.Parameter(...)``) is projected in its new form when the optimizer updates
it, and raises when the optimizer still holds the old one; a weight computed by a
parametrization (``weight_norm``, ``spectral_norm``, ``torch.nn.utils.parametrize``) raises with
what to constrain instead. A weight shared by two modules (tied embeddings) is constrained once.
:func:`audit` shows, weight by weight, whether the next step will project it; copies of an
optimizer (``copy.deepcopy``, ``torch.save``/``torch.load`` of the object) lose their step hooks,
a PyTorch behaviour that the audit reports. accelerate's ``AcceleratedOptimizer`` (what Hugging
Face Trainer callbacks receive) is unwrapped: the hook goes on the optimizer it steps. Other
wrappers that are not initialised torch optimizers raise (their step may write the weights after
the inner one, as Lookahead does): call :meth:`Constraints.apply` after their step.

Cost. The first projection (after ``add()``) checks every entry in full; the later ones check in
O(1) per entry, without host synchronisation, that nothing changed since (a guard), then run a
plan bound once to the tensors they project (``_torch_plan.Plan``: small tensors of one shape
stacked, one norm per larger tensor into one buffer, the factors of many tensors formed at
once, one ``_foreach_mul_``), with the core's results bit for bit. A change (a replaced
parameter, a new dtype, device or layout, a parametrization) sends the next call through the
full check again, and the plans are bound anew.

Example:
    >>> import torch
    >>> from weight_constraints import MaxNorm
    >>> from weight_constraints.adapters.torch import constrain, node_norms
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    >>> registry = constrain(model, optimizer, kernel=MaxNorm(0.5))
    >>> len(registry)
    2
    >>> model(torch.randn(4, 8)).sum().backward()
    >>> optimizer.step()  # the projection runs right after the update
    >>> bool((node_norms(model[0].weight, dims=1) <= 0.5 + 1e-6).all())
    True
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import sys
import weakref
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

import weight_constraints as wc
from weight_constraints._checks import Axis, is_default_axis, normalize_axes
from weight_constraints.adapters._rules import (
    ROLES,
    Audit,
    AuditRow,
    bind_axes,
    check_strict,
    explicit_roles,
    resolve_roles,
    worst_violation,
)
from weight_constraints.adapters._torch_plan import Plan

__all__ = [
    "Constraints",
    "Entry",
    "audit",
    "constrain",
    "node_norms",
    "norm_stats",
    "per_node_dims",
    "project_",
]

# Modules whose parameters are neither kernels nor biases in the sense of a weight constraint:
# constrain() passes over them quietly.
_NO_ROLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.PReLU,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


_SUPPORTED_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.modules.conv._ConvNd,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.RNNBase,
    nn.RNNCellBase,
    nn.MultiheadAttention,
)

_MISSING: Any = object()


def _is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face transformers' ``Conv1D`` (a linear layer with weight ``(in, out)``), told by
    its type name and module, without importing transformers."""
    return any(
        cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")
        for cls in type(module).__mro__
    )


def _supported(module: nn.Module) -> bool:
    return isinstance(module, _SUPPORTED_TYPES) or _is_hf_conv1d(module)


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


@functools.lru_cache(maxsize=256)
def _with_axis(constraint: wc.Constraint, axes: tuple[int, ...]) -> wc.Constraint:
    """``constraint`` with its axis set to ``axes`` (objects are immutable: shared safely)."""
    return dataclasses.replace(constraint, axis=axes)


def _is_dtensor(tensor: torch.Tensor) -> bool:
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def _may_overlap(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether two elements of a strided tensor may share one memory location (an expanded
    tensor, or strides that interleave). Exact for every layout ``view``/``expand``/``permute``
    and slicing produce; conservative for hand-made ``as_strided`` layouts."""
    reach = 0
    for step, size in sorted((s, n) for n, s in zip(shape, stride, strict=True) if n > 1):
        if step <= reach:
            return True
        reach += (size - 1) * step
    return False


def _check_writable(tensor: torch.Tensor, where: str, *, in_inference_mode: bool = False) -> None:
    """Raise unless ``tensor`` is a floating-point dense tensor that can be written in place.

    Raises:
        TypeError: Not floating point, or not strided (sparse and other layouts).
        ValueError: An inference tensor outside inference mode, or elements sharing memory.
    """
    if tensor.layout is not torch.strided:
        raise TypeError(
            f"{where} has layout {tensor.layout}; only dense (strided) tensors can be projected in "
            "place: constrain the dense tensor the model trains"
        )
    if not tensor.is_floating_point():
        raise TypeError(
            f"can only constrain floating-point tensors, got dtype {str(tensor.dtype)[6:]} "
            f"({where})"
        )
    if tensor.is_inference() and not (in_inference_mode and torch.is_inference_mode_enabled()):
        raise ValueError(
            f"{where} is an inference tensor (made under torch.inference_mode()): it cannot be "
            "modified in place outside inference mode. Constrain a copy made outside inference "
            "mode (tensor.clone())"
        )
    local = tensor.to_local() if _is_dtensor(tensor) else tensor
    if _may_overlap(tuple(local.shape), local.stride()):
        raise ValueError(
            f"{where} has elements that share memory (shape {tuple(local.shape)}, strides "
            f"{local.stride()}: an expanded or overlapping view), so writing one node would "
            "write others: constrain a tensor with memory of its own (tensor.clone())"
        )


def _axes_for(
    constraint: wc.Constraint, per_node: tuple[int, ...], shape: tuple[int, ...], where: str
) -> wc.Constraint:
    """``constraint`` bound to the per-node dims by the shared axis rule (``bind_axes``)."""
    axes = bind_axes(constraint, per_node, shape, where)
    return constraint if axes is None else _with_axis(constraint, axes)


class _Slot:
    """One registered tensor, bound once at ``add()`` to what its projection needs (its plan).

    ``places`` are the ``(module, attribute, name)`` triples the tensor was found at (several
    for a tied weight); ``source`` is ``(module, parameter name, label)`` for a module entry, to
    bind again when the parameter is replaced. ``shape``/``stride``/``dtype`` are what the binding
    was checked against, ``memory`` the tensor's memory (:func:`_memory`) then; ``item`` is what
    the projection takes.
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
        "places",
        "shape",
        "source",
        "stride",
        "view",
    )

    def __init__(
        self,
        name: str,
        parameter: torch.Tensor,
        asked: wc.Constraint,
        constraint: wc.Constraint,
        dims: tuple[int, ...],
        view: tuple[int, ...] | None,
        places: tuple[tuple[nn.Module, str, str], ...],
        source: tuple[nn.Module, str, str] | None,
    ) -> None:
        self.name = name
        self.parameter = parameter
        self.asked = asked
        self.constraint = constraint
        self.dims = dims
        self.view = view
        self.places = places
        self.source = source
        self.dtensor = _is_dtensor(parameter)
        self.shape = parameter.shape
        self.stride = parameter.stride()
        self.dtype = parameter.dtype
        self.item = (parameter, view, constraint)
        self.memory = _memory(parameter)  # as of the last full check (refreshed there)

    def plan_item(self) -> tuple:
        """What :class:`~weight_constraints.adapters._torch_plan.Plan` takes for this tensor."""
        return (self.parameter, self.view, self.constraint, self.dims)

    def take(self, other: _Slot) -> None:
        """Become ``other`` (a fresh binding of the same registration), keeping the places."""
        for field in self.__slots__:
            if field != "places":
                setattr(self, field, getattr(other, field))

    def entry(self) -> Entry:
        return Entry(self.name, self.parameter, self.constraint, self.dims, self.view)

    def same_request(self, other: _Slot) -> bool:
        """Whether ``other`` asks for the same projection of the same tensor."""
        if self.constraint != other.constraint:
            return False
        return not hasattr(self.constraint, "axis") or (self.dims, self.view) == (
            other.dims,
            other.view,
        )


def _tensor_slot(tensor: torch.Tensor, constraint: Any, dims: Any, name: str) -> _Slot:
    resolved = wc.get(constraint)
    if resolved is None:
        raise ValueError("add(tensor, constraint, dims=...) needs a constraint")
    if dims is _MISSING:
        if hasattr(resolved, "axis"):
            raise ValueError(
                f"add(tensor, {resolved!r}) needs dims=: the dims of the tensor each norm is "
                "taken over (torch's dim; e.g. dims=1 for a Linear weight)"
            )
        dims = None
    _check_writable(tensor, name)
    shape = tuple(tensor.shape)
    axes = normalize_axes(dims, shape)
    bound = _dims_rule(resolved, axes, shape, name, dims)
    return _Slot(name, tensor, resolved, bound, axes, None, (), None)


def _dims_rule(
    constraint: wc.Constraint, axes: tuple[int, ...], shape: tuple[int, ...], where: str, dims: Any
) -> wc.Constraint:
    """The axis rule for a tensor and the dims given with it (``per_node=dims``)."""
    try:
        return _axes_for(constraint, axes, shape, where)
    except ValueError:
        raise ValueError(
            f"{constraint!r} has an explicit axis that differs from dims={dims!r} on {where} "
            f"(shape {shape}); leave the constraint's axis at its default and pass dims only"
        ) from None


def _conv_transpose_layout(module: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Per-node dims of a transposed convolution weight ``(in, out/groups, *k)``.

    With groups, output channel ``(g, j)`` is fed by the input channels of group ``g`` only, so
    the weight is viewed as ``(groups, in/groups, out/groups, *k)`` and the norm runs over dims 1
    and the kernel dims: one norm per output channel.
    """
    ndim = module.weight.ndim
    if module.groups == 1:
        return (0, *range(2, ndim)), None
    shape = module.weight.shape
    view = (module.groups, shape[0] // module.groups, *shape[1:])
    return (1, *range(3, ndim + 1)), view


Layout = dict[str, list[tuple[str, tuple[int, ...], Any]]]


def _layout(module: nn.Module) -> Layout:
    """The constrainable parameters of ``module`` by role: ``(name, dims, view shape or None)``.

    Raises:
        TypeError: The module type is not supported.
    """
    roles: Layout = {role: [] for role in ROLES}

    def bias(name: str) -> None:
        if getattr(module, name, None) is not None:
            roles["bias"].append((name, (0,), None))

    if isinstance(module, nn.Linear):
        roles["kernel"].append(("weight", (1,), None))
        bias("bias")
    elif _is_hf_conv1d(module):  # transformers' Conv1D: weight (in, out), one norm per column
        roles["kernel"].append(("weight", (0,), None))
        bias("bias")
    elif isinstance(module, nn.Bilinear):
        roles["kernel"].append(("weight", (1, 2), None))
        bias("bias")
    elif isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:
            dims, view = _conv_transpose_layout(module)
        else:
            dims, view = tuple(range(1, module.weight.ndim)), None
        roles["kernel"].append(("weight", dims, view))
        bias("bias")
    elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        roles["embedding"].append(("weight", (1,), None))
    elif isinstance(module, nn.RNNBase):
        for name in module._flat_weights_names:
            if name.startswith("weight_ih"):
                roles["kernel"].append((name, (1,), None))
            elif name.startswith(("weight_hh", "weight_hr")):
                roles["recurrent"].append((name, (1,), None))
            else:
                bias(name)
    elif isinstance(module, nn.RNNCellBase):
        roles["kernel"].append(("weight_ih", (1,), None))
        roles["recurrent"].append(("weight_hh", (1,), None))
        bias("bias_ih")
        bias("bias_hh")
    elif isinstance(module, nn.MultiheadAttention):
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            if getattr(module, name, None) is not None:
                roles["kernel"].append((name, (1,), None))
        roles["kernel"].append(("out_proj.weight", (1,), None))
        bias("in_proj_bias")
        if module.out_proj.bias is not None:
            roles["bias"].append(("out_proj.bias", (0,), None))
    else:
        raise TypeError(
            f"{type(module).__name__} is not a supported module type; constrain its parameters "
            "with Constraints.add(parameter, constraint, dims=...)"
        )
    return roles


def per_node_dims(module: nn.Module, parameter_name: str) -> tuple[int, ...]:
    """The dims that give one norm per output unit for a parameter of a supported module.

    Example:
        >>> import torch
        >>> from weight_constraints.adapters.torch import per_node_dims
        >>> per_node_dims(torch.nn.Linear(3, 4), "weight")
        (1,)
        >>> per_node_dims(torch.nn.ConvTranspose2d(3, 4, 5), "weight")  # (in, out, kh, kw)
        (0, 2, 3)
    """
    for entries in _layout(module).values():
        for name, dims, view in entries:
            if name == parameter_name:
                if view is not None:
                    raise ValueError(
                        f"{parameter_name} of {module!r} has per-node norms only in the grouped "
                        f"view {view}; Constraints.add(module, ...) handles it"
                    )
                return dims
    raise ValueError(f"{type(module).__name__} has no constrainable parameter {parameter_name!r}")


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, attr = name.split(".")
    for part in path:
        module = getattr(module, part)
    return module, attr


# -- weights a module computes (parametrizations, weight_norm hooks) -------------------------------


def _moved_to(
    norm_dims: tuple[int, ...], per_node: tuple[int, ...], ndim: int, g: str, asked: Any
) -> str:
    """What to constrain instead of a weight normalised as ``g * v / ||v||`` over ``norm_dims``."""
    if not hasattr(asked, "axis"):
        return (
            f"An entry-wise constraint such as {asked!r} cannot be moved onto the magnitudes {g}: "
            "remove the weight normalisation, or constrain the tensors it starts from yourself."
        )
    if norm_dims == per_node:
        return (
            f"Each node's norm of the computed weight is its magnitude |g|, so constrain {g} "
            f"instead, over the same dims: Constraints().add({g}, {asked!r}, dims={per_node}), "
            "then attach it; the constraint then holds on the computed weight."
        )
    kept = [d for d in range(ndim) if d not in per_node]
    hint = f" (dim={kept[0]} normalises each node)" if len(kept) == 1 else ""
    return (
        f"It normalises over dims {norm_dims}, not over the per-node dims {per_node}, so the "
        f"constraint cannot be moved onto {g}: apply weight_norm with the node dim kept{hint}, "
        "or remove it."
    )


def _norm_dims(dim: int | None, ndim: int) -> tuple[int, ...]:
    if dim is None or dim == -1:
        return tuple(range(ndim))
    return tuple(d for d in range(ndim) if d != dim % ndim)


def _computed_weight_error(
    owner: nn.Module,
    attr: str,
    where: str,
    per_node: tuple[int, ...],
    view: Any,
    asked: Any,
    *,
    when: str = "",
) -> ValueError:
    """The error for a weight that ``owner`` computes instead of holding it as a parameter."""
    prefix = where[: len(where) - len(attr)]
    if parametrize.is_parametrized(owner, attr):
        chain = owner.parametrizations[attr]
        kinds = ", ".join(type(p).__name__ for p in chain)
        weight_norm = len(chain) == 1 and type(chain[0]).__name__ == "_WeightNorm"
        if weight_norm and view is None:
            ndim = chain.original1.ndim
            advice = _moved_to(
                _norm_dims(chain[0].dim, ndim),
                per_node,
                ndim,
                f"{prefix}parametrizations.{attr}.original0",
                asked,
            )
        else:
            original = "original" if hasattr(chain, "original") else "original0, original1, ..."
            advice = (
                f"Constrain the tensor it is computed from ({prefix}parametrizations.{attr}."
                f"{original}) with Constraints.add(tensor, constraint, dims=...), knowing that "
                f"the constraint then holds on that tensor, not on the computed {attr}; or remove "
                "the parametrization (torch.nn.utils.parametrize.remove_parametrizations)."
            )
        return ValueError(
            f"{where} is computed by a parametrization ({kinds}){when}: projecting the computed "
            f"tensor would be lost at the next forward pass. {advice}"
        )
    hooks = [h for h in owner._forward_pre_hooks.values() if getattr(h, "name", None) == attr]
    kind = type(hooks[0]).__name__ if hooks else ""
    if kind == "WeightNorm" and view is None:
        ndim = getattr(owner, f"{attr}_v").ndim
        advice = _moved_to(
            _norm_dims(hooks[0].dim, ndim), per_node, ndim, f"{prefix}{attr}_g", asked
        )
        return ValueError(
            f"{where} is computed by torch.nn.utils.weight_norm from {attr}_g and {attr}_v{when}: "
            f"projecting it would be lost at the next forward pass. {advice}"
        )
    if kind:
        return ValueError(
            f"{where} is computed by a {kind} hook (torch.nn.utils){when}: projecting it would be "
            "lost at the next forward pass. Constrain the parameter it is computed from with "
            "Constraints.add(tensor, constraint, dims=...), knowing that the constraint then holds "
            "on that tensor, or remove the hook."
        )
    value = getattr(owner, attr, None)
    return ValueError(
        f"{where} is not a parameter of {type(owner).__name__}{when} (it is "
        f"{type(value).__name__}); constrain the parameter it comes from with "
        "Constraints.add(tensor, constraint, dims=...)"
    )


def _parameter_at(
    owner: nn.Module, attr: str, where: str, per_node: Any, view: Any, asked: Any
) -> torch.Tensor:
    """The parameter ``owner`` holds at ``attr``; raise when it computes that weight instead."""
    parameter = owner._parameters.get(attr)
    if parameter is None or parametrize.is_parametrized(owner, attr):
        raise _computed_weight_error(owner, attr, where, per_node, view, asked)
    return parameter


def _module_slot(module: nn.Module, name: str, asked: Any, label: str) -> _Slot:
    """Bind the parameter ``name`` of ``module`` (found by role) to ``asked``."""
    where = f"{label}.{name}"
    owner, attr = _owner(module, name)
    dims, view = next((d, v) for role in _layout(module).values() for n, d, v in role if n == name)
    parameter = _parameter_at(owner, attr, where, dims, view, asked)
    if nn.parameter.is_lazy(parameter):
        raise ValueError(
            f"{where} is not initialised yet (lazy module): run one forward pass before "
            "constraining it"
        )
    _check_writable(parameter, where)
    if view is None:
        shape = tuple(parameter.shape)
    else:
        if hasattr(asked, "axis") and not is_default_axis(asked.axis):
            raise ValueError(
                f"{asked!r} has an explicit axis, but the per-node norms of {where} exist only "
                f"in the grouped view {view} (dims {dims}): leave the axis at its default"
            )
        try:
            parameter.view(view)
        except RuntimeError as error:
            raise ValueError(
                f"{where} cannot be viewed as {view} for projecting: {error}"
            ) from None
        shape = view
    bound = _axes_for(asked, dims, shape, where)
    axes = normalize_axes(dims, shape)
    place = ((owner, attr, where),)
    return _Slot(where, parameter, asked, bound, axes, view, place, (module, name, label))


def _module_slots(module: nn.Module, wanted: dict[str, Any], label: str) -> list[_Slot]:
    """Slots for every parameter of ``module`` whose role has a constraint in ``wanted``."""
    layout = _layout(module)
    slots = []
    for role, constraint in wanted.items():
        if constraint is None:
            continue
        resolved = wc.get(constraint)
        for name, _, _ in layout[role]:
            slots.append(_module_slot(module, name, resolved, label))
    return slots


def _rebind(slot: _Slot) -> _Slot:
    """A fresh binding of ``slot`` to the tensor now at its places (checked like ``add()``).

    Raises:
        ValueError: The tensor became unusable (parametrized, untied, reshaped, ...).
    """
    if slot.source is None:
        fresh = _tensor_slot(slot.parameter, slot.asked, slot.dims, slot.name)
        if fresh.shape != slot.shape:
            raise ValueError(
                f"{slot.name} changed shape from {tuple(slot.shape)} to {tuple(fresh.shape)} after "
                "it was constrained: constrain it again"
            )
        return fresh
    module, name, label = slot.source
    owner, attr = _owner(module, name)
    if owner._parameters.get(attr) is None or parametrize.is_parametrized(owner, attr):
        per_node, view = slot.dims, slot.view
        raise _computed_weight_error(
            owner, attr, slot.name, per_node, view, slot.asked, when=" since it was constrained"
        )
    fresh = _module_slot(module, name, slot.asked, label)
    for place_owner, place_attr, place in slot.places:
        if place_owner._parameters.get(place_attr) is not fresh.parameter:
            raise ValueError(
                f"{slot.name} was tied to {place} when it was constrained, and the two are now "
                "different tensors: constrain each of them again"
            )
    if fresh.shape != slot.shape and fresh.parameter is slot.parameter:
        raise ValueError(
            f"{slot.name} changed shape from {tuple(slot.shape)} to {tuple(fresh.shape)} after it "
            "was constrained: constrain it again"
        )
    return fresh


def _project_dtensor_(tensor: Any, constraint: wc.Constraint, dims: tuple[int, ...]) -> None:
    """Project a distributed tensor so that the constraint holds on the full tensor.

    When no node is split across shards (no ``Shard`` placement on a reduced dim; always for
    :class:`~weight_constraints.NonNeg`), each rank projects its own shard: no communication.
    Otherwise the full tensor is gathered, projected identically on every rank, and each rank
    keeps its shard. The parameter stays sharded either way.
    """
    from torch.distributed.tensor import Partial, Shard, distribute_tensor

    local = tensor.to_local()
    entrywise = not hasattr(constraint, "axis")
    splits_nodes = any(
        isinstance(p, Partial) or (isinstance(p, Shard) and p.dim % tensor.ndim in dims)
        for p in tensor.placements
    )
    if entrywise or not splits_nodes:
        constraint(local, out=local)
        return
    full = tensor.full_tensor()
    constraint(full, out=full)
    local.copy_(distribute_tensor(full, tensor.device_mesh, tensor.placements).to_local())


def project_(tensor: torch.Tensor, constraint: Any, dims: Axis) -> torch.Tensor:
    """Project ``tensor`` in place onto ``constraint`` with one norm per index of the other dims.

    Runs under ``torch.no_grad()`` on the tensor's own device and dtype, without host
    synchronisation. The norms are taken over ``dims``; the constraint's ``axis`` must be left
    at its default or name the same dims, so that no axis is silently replaced.
    Distributed tensors (``DTensor``, e.g. FSDP2 parameters) stay sharded and the constraint
    holds on the full tensor. Tensors that cannot be written in place (sparse, inference tensors
    outside inference mode, expanded views) raise before anything is written.

    Args:
        tensor: A floating-point tensor or parameter.
        constraint: A core constraint object, or a name / config that :func:`weight_constraints.get`
            resolves.
        dims: The dims each norm is taken over (torch's ``dim``); ``None`` for all of them.

    Returns:
        ``tensor``, projected.

    Example:
        >>> import torch
        >>> from weight_constraints import MaxNorm
        >>> from weight_constraints.adapters.torch import project_
        >>> w = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # a Linear weight (out, in)
        >>> project_(w, MaxNorm(1.0), dims=1)
        tensor([[0.6000, 0.8000],
                [0.3000, 0.4000]])
    """
    resolved = wc.get(constraint)
    if resolved is None:
        raise ValueError("constraint must not be None")
    _check_writable(tensor, "tensor", in_inference_mode=True)
    shape = tuple(tensor.shape)
    axes = normalize_axes(dims, shape)
    bound = _dims_rule(resolved, axes, shape, "tensor", dims)
    with torch.no_grad():
        if _is_dtensor(tensor):
            _project_dtensor_(tensor, bound, axes)
        else:
            bound(tensor, out=tensor)
    return tensor


def _project_all_(items: list[tuple[torch.Tensor, tuple[int, ...] | None, wc.Constraint]]) -> None:
    """Project each ``(tensor, view, constraint)`` in place, ``tensor`` viewed in the shape
    ``view`` when it is not None; the constraints are bound to their dims already."""
    for tensor, view, constraint in items:
        target = tensor if view is None else tensor.view(view)
        constraint(target, out=target)


@functools.cache
def _compiled_projection() -> Any:
    """``torch.compile(_project_all_)``, made on first use: one graph for all the tensors of a
    registry, in which each norm and its scaling fuse into one pass over the weights."""
    return torch.compile(_project_all_)


def node_norms(tensor: torch.Tensor, dims: Axis) -> torch.Tensor:
    """Per-node L2 norms of ``tensor`` over ``dims`` (float32 for half precision).

    Example:
        >>> import torch
        >>> from weight_constraints.adapters.torch import node_norms
        >>> node_norms(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), dims=1)
        tensor([5., 1.])
    """
    with torch.no_grad():
        if _is_dtensor(tensor):
            tensor = tensor.full_tensor()
        return wc.node_norms(tensor, dims)


def _memory(tensor: torch.Tensor) -> tuple[Any, int, int, int, int] | None:
    """``(device, storage address, first byte, end byte, element size)`` of ``tensor``'s
    memory, or None when it has none to compare (empty, meta, no storage)."""
    local = tensor.to_local() if _is_dtensor(tensor) else tensor
    if local.numel() == 0 or local.device.type == "meta":
        return None
    try:
        address = local.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    size = local.element_size()
    start = local.storage_offset()
    last = start + sum((n - 1) * s for n, s in zip(local.shape, local.stride(), strict=True))
    return local.device, address, start * size, (last + 1) * size, size


def _overlap(ma: tuple, mb: tuple, a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b``, whose ``_memory`` are ``ma`` and ``mb`` on the same storage, have
    an element in common (exact for equal element sizes)."""
    if ma[3] <= mb[2] or mb[3] <= ma[2]:
        return False
    if ma[4] != mb[4]:
        return True  # different element sizes over the same bytes: assume they meet
    size = ma[4]
    low, high = min(ma[2], mb[2]) // size, max(ma[3], mb[3]) // size
    if high - low > 2**28:
        return True
    mask = torch.zeros(high - low, dtype=torch.bool)
    la, lb = (t.to_local() if _is_dtensor(t) else t for t in (a, b))
    mask.as_strided(la.shape, la.stride(), ma[2] // size - low).fill_(True)
    return bool(mask.as_strided(lb.shape, lb.stride(), mb[2] // size - low).any())


# Every registry alive, for audit(model) and norm_stats(model), and to find two registries
# asking different things of one tensor; numbered in the order they were made.
_REGISTRIES: weakref.WeakSet[Constraints] = weakref.WeakSet()
_SERIALS = itertools.count()


def _live_registries() -> list[Constraints]:
    """Every registry alive, oldest first (a fixed order: audits do not depend on a set's)."""
    return sorted(_REGISTRIES, key=lambda registry: registry._serial)


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype


class _Conflicts:
    """The entries seen so far, by tensor and by storage, to find an entry that cannot hold
    together with them: the same tensor asked for another projection (in any registry), or
    memory shared with another tensor (through ``.data``, ``.detach()``, a view or a slice).
    Across registries, the same memory in the same layout asked for the same projection is
    allowed (each registry's projection leaves the other's result as it is); within one
    registry it is not, since a plan forms every factor before it multiplies."""

    def __init__(self) -> None:
        self.by_id: dict[int, list[tuple[Constraints, _Slot]]] = {}
        self.regions: dict[tuple, list[tuple[tuple, Constraints, _Slot]]] = {}

    def add(self, registry: Constraints, slot: _Slot) -> None:
        self.by_id.setdefault(id(slot.parameter), []).append((registry, slot))
        if slot.memory is not None:
            self.regions.setdefault(slot.memory[:2], []).append((slot.memory, registry, slot))

    def check(self, registry: Constraints, slot: _Slot) -> None:
        """Raise a ValueError, naming both entries, when ``slot`` of ``registry`` conflicts
        with an entry seen."""
        for other_registry, other in self.by_id.get(id(slot.parameter), ()):
            if other.same_request(slot):
                continue
            where = (
                "already constrained"
                if other_registry is registry
                else "constrained by another registry"
            )
            raise ValueError(
                f"{slot.name} is the same tensor as {other.name}, {where} with "
                f"{other.constraint!r} over dims {other.dims}; {slot.name} asks for "
                f"{slot.constraint!r} over dims {slot.dims}. A tensor takes one constraint: ask "
                "for the same one in both places"
                + (
                    ""
                    if other_registry is registry
                    else " (two hooks projecting it onto different sets would leave it in "
                    "whichever ran last), or clear the other registry first (registry.clear() "
                    "detaches it and forgets its entries)"
                )
            )
        memory = slot.memory
        if memory is None:
            return
        for other_memory, other_registry, other in self.regions.get(memory[:2], ()):
            if other.parameter is slot.parameter:
                continue
            if (
                other_registry is not registry
                and other_memory == memory
                and _same_layout(other.parameter, slot.parameter)
                and other.same_request(slot)
            ):
                continue
            if _overlap(other_memory, memory, other.parameter, slot.parameter):
                where = (
                    "already constrained in this registry"
                    if other_registry is registry
                    else "constrained by another registry"
                )
                raise ValueError(
                    f"{slot.name} shares memory with {other.name}, {where} (the same storage "
                    "through .data, .detach(), a view or a slice): constrain each piece of "
                    "memory once"
                    + ("" if other_registry is registry else " (registry.clear() drops one)")
                )


class _StepHook:
    """The step post-hook of one registry on one optimizer. It knows its registry (for
    :func:`audit`) and caches which tensors the optimizer holds (recomputed when the tensors
    in the param groups change)."""

    def __init__(self, registry: Constraints, optimizer: torch.optim.Optimizer) -> None:
        self.registry = registry
        self.optimizer = weakref.ref(optimizer)
        self._key: list[list[int]] = []
        self._members: frozenset[int] = frozenset()
        self.selection: _Selection | None = None  # what this hook projects, bound once
        self.handle: RemovableHandle | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "selection": None, "handle": None}

    def members(self, optimizer: torch.optim.Optimizer) -> frozenset[int]:
        """The ids of the tensors in ``optimizer``'s param groups (recomputed when a group is
        added, or a group's list is edited in place)."""
        key = [[*map(id, group["params"])] for group in optimizer.param_groups]
        if key != self._key:
            self._members = _param_ids(optimizer)
            self._key = key
        return self._members

    def attached(self) -> torch.optim.Optimizer | None:
        """The optimizer this hook is registered on, or None when removed or collected."""
        optimizer = self.optimizer()
        if optimizer is None:
            return None
        hooks = getattr(optimizer, "_optimizer_step_post_hooks", {})
        return optimizer if any(h is self for h in hooks.values()) else None

    def __call__(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.registry._step(optimizer, self)


def _param_ids(optimizer: torch.optim.Optimizer) -> frozenset[int]:
    return frozenset(id(p) for group in optimizer.param_groups for p in group["params"])


def _regions(optimizer: torch.optim.Optimizer) -> dict[tuple, list[tuple[tuple, torch.Tensor]]]:
    """The memory of ``optimizer``'s tensors by storage (see :func:`_memory`)."""
    regions: dict[tuple, list[tuple[tuple, torch.Tensor]]] = {}
    for group in optimizer.param_groups:
        for tensor in group["params"]:
            if (memory := _memory(tensor)) is not None:
                regions.setdefault(memory[:2], []).append((memory, tensor))
    return regions


_MARK = "_weight_constraints"


def _mark(owner: nn.Module, attr: str, slot: _Slot) -> None:
    """Note on the module, in plain strings and ints, what its parameter was constrained with.
    Copies and pickles of the module keep the note while no registry holds the copy's tensors,
    so that :func:`audit` can tell a copied or reloaded model whose constraints were lost."""
    owner.__dict__.setdefault(_MARK, {})[attr] = (repr(slot.constraint), slot.dims)


def _passes_through(wrapper: Any) -> bool:
    """Whether ``wrapper`` is an optimizer wrapper known to step the optimizer it holds in
    ``.optimizer`` and to write nothing else: accelerate's ``AcceleratedOptimizer`` (what
    Hugging Face Trainer callbacks receive), told by its exact type and module without
    importing accelerate. Its subclasses are not (``DeepSpeedOptimizerWrapper``'s step does
    nothing; DeepSpeed's engine steps its own optimizer, which updates flat partitions)."""
    kind = type(wrapper)
    return (
        kind.__name__ == "AcceleratedOptimizer"
        and kind.__module__ == "accelerate.optimizer"
        and isinstance(getattr(wrapper, "optimizer", None), torch.optim.Optimizer)
    )


def _check_optimizer(optimizer: Any, where: str) -> torch.optim.Optimizer:
    """The torch optimizer that ``optimizer`` is, or passes through to; raise a TypeError for
    anything else.

    accelerate's ``AcceleratedOptimizer`` subclasses ``torch.optim.Optimizer`` without
    initialising it, so it has no step hooks of its own; its ``step()`` calls the optimizer it
    holds in ``.optimizer``, and the hooks go on that one: it runs exactly the steps that happen
    (none when the wrapper skips a step, as during gradient accumulation or after an AMP
    overflow). Other wrappers are refused: one may write the weights after the inner step
    (Lookahead moves them towards its slow weights), which would leave a projection run on the
    inner step violated.
    """
    while not _has_step_hooks(optimizer) and _passes_through(optimizer):
        optimizer = optimizer.optimizer
    if _has_step_hooks(optimizer):
        return optimizer
    inner = getattr(optimizer, "optimizer", None)
    if isinstance(inner, torch.optim.Optimizer) or hasattr(inner, "param_groups"):
        raise TypeError(
            f"{where}() got a {type(optimizer).__name__}, which holds an optimizer in "
            ".optimizer but is not an initialised torch optimizer (it has no step hooks: "
            "Optimizer.__init__ was not called), and whose step() may write the weights after "
            "the inner step (as Lookahead does), so a projection on the inner step could be "
            "undone. Call registry.apply() after each wrapper.step() instead of attaching (a "
            "registry made with constrain(model, None, ...) or Constraints().add(...)); if its "
            "step() only calls the inner optimizer's, pass that optimizer "
            f"({type(optimizer).__name__}.optimizer)"
        )
    if isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"{where}() got a {type(optimizer).__name__}, a torch.optim.Optimizer subclass that "
            "was not initialised (it has no step hooks: Optimizer.__init__ was not called) and "
            "holds no optimizer in .optimizer; pass the torch optimizer it steps"
        )
    hint = ""
    if isinstance(optimizer, wc.Constraint) or type(optimizer).__module__.startswith(
        "weight_constraints"
    ):
        hint = (
            f". It looks like a constraint: pass constraints by role, e.g. "
            f"{where}(model, optimizer, kernel={optimizer!r})"
        )
    raise TypeError(
        f"{where}() expects a torch.optim.Optimizer (or None), got "
        f"{type(optimizer).__name__}: {optimizer!r}"[:300]
        + hint
    )


def _has_step_hooks(optimizer: Any) -> bool:
    """Whether ``optimizer`` is an initialised torch optimizer (one that runs step hooks)."""
    return isinstance(optimizer, torch.optim.Optimizer) and isinstance(
        getattr(optimizer, "_optimizer_step_post_hooks", None), dict
    )


def _metadata(tensors: list[torch.Tensor]) -> list[tuple]:
    return [(t.shape, t.stride(), t.dtype, t.device, t.is_inference()) for t in tensors]


@functools.cache
def _tensor_guards_class() -> Any:
    try:
        from torch._C._dynamo.guards import TensorGuards
    except ImportError:  # a private API: any other version means not available
        return None
    return TensorGuards


def _tensor_guards(tensors: list[torch.Tensor]) -> Any:
    """A check in C++ of the tensors' shapes, strides, dtypes, devices, dispatch keys and
    ``requires_grad`` (the one ``torch.compile`` guards its graphs with), or None where it is
    not available. It answers in some 0.05 µs per tensor, where comparing the same properties
    in Python takes 0.3."""
    guards_class = _tensor_guards_class()
    if guards_class is None:
        return None
    try:
        guards = guards_class(
            *tensors,
            dynamic_dims_sizes=[list(t.shape) for t in tensors],
            dynamic_dims_strides=[list(t.stride()) for t in tensors],
        )
        if guards.check(*tensors) is True:
            return guards
    except Exception:  # a private API: any other behaviour means not available
        pass
    return None


_data_ptr = torch.Tensor.data_ptr


class _Guard:
    """What the last full check of a registry found, checked again in O(1) per entry: every
    place still holds its tensor, and every tensor has the shape, stride, dtype, device,
    inference state and memory address it had (new memory, ``a.data = b.data`` included, is
    checked in full again: views bound to the old memory, and memory now shared with another
    entry). When it holds, the full check would find nothing to do and the plans bound since
    are valid.

    The tensors' properties are compared in C++ (:func:`_tensor_guards`) where it can be; when
    that check fails, they are compared in Python, since it also fails for what does not matter
    here (another ``requires_grad``, a call under ``torch.autocast``): if those agree, the
    guard holds, and the C++ check is made again for the tensors as they are now.
    """

    def __init__(self, slots: list[_Slot]) -> None:
        self.places = [(o, a, s.parameter) for s in slots for o, a, _ in s.places]
        self.plain = [s.parameter for s in slots if not s.dtensor]
        self.metadata = _metadata(self.plain)
        self.guards = _tensor_guards(self.plain)
        self.dtensors = [s.parameter for s in slots if s.dtensor]
        self.dtensor_metadata = _metadata(self.dtensors)
        self.addresses = [*map(_data_ptr, self.plain)]

    def holds(self) -> bool:
        for owner, attr, tensor in self.places:
            if owner._parameters.get(attr) is not tensor:
                return False
        if self.guards is None or not self.guards.check(*self.plain):
            if _metadata(self.plain) != self.metadata:
                return False
            self.guards = _tensor_guards(self.plain)
        if self.dtensors and _metadata(self.dtensors) != self.dtensor_metadata:
            return False
        return [*map(_data_ptr, self.plain)] == self.addresses


class _Selection:
    """What one kind of call projects, bound once: every entry for ``apply()`` (``members``
    None), or for a hook the entries whose tensor is in its optimizer (``members``, the ids of
    its tensors), those with a gradient being picked at each step. ``version`` is the
    registry's when it was made."""

    def __init__(self, slots: list[_Slot], version: int, members: frozenset[int] | None) -> None:
        chosen = [s for s in slots if members is None or id(s.parameter) in members]
        self.version, self.members = version, members
        self.slots = [s for s in chosen if not s.dtensor]
        self.items = [s.item for s in self.slots]
        self.dtensors = [s for s in chosen if s.dtensor]
        self._plan: Plan | None = None

    def project(self, with_grad_only: bool, compile: bool) -> None:
        with torch.no_grad():
            for slot in self.dtensors:
                if not with_grad_only or slot.parameter.grad is not None:
                    tensor = slot.parameter
                    tensor = tensor if slot.view is None else tensor.view(slot.view)
                    _project_dtensor_(tensor, slot.constraint, slot.dims)
            if compile:
                items = self.items
                if with_grad_only:
                    items = [item for item in items if item[0].grad is not None]
                if items:
                    _compiled_projection()(items)
            elif self.items:
                if self._plan is None:
                    self._plan = Plan(s.plan_item() for s in self.slots)
                self._plan.run(with_grad_only=with_grad_only)


class Constraints:
    """A registry of (parameter, constraint, dims), projected after every optimizer step.

    Example:
        >>> import torch
        >>> from weight_constraints import MaxNorm, UnitNorm
        >>> from weight_constraints.adapters.torch import Constraints
        >>> lstm = torch.nn.LSTM(4, 8)
        >>> registry = Constraints().add(lstm, kernel=MaxNorm(3), recurrent=UnitNorm())
        >>> for entry in registry:
        ...     print(entry.name, entry.dims)
        LSTM.weight_ih_l0 (1,)
        LSTM.weight_hh_l0 (1,)
        >>> extra = torch.nn.Parameter(torch.randn(5, 6))
        >>> _ = registry.add(extra, MaxNorm(2), dims=0)  # any tensor, dims of your choice
        >>> registry.apply()  # project now, e.g. after loading a checkpoint

    Args:
        compile: Project through ``torch.compile``: one graph for all the registered tensors,
            built on the first :meth:`apply` (seconds; again when tensors are added or change
            shape, dtype or device). Each norm and its scaling then fuse into one kernel.
            Measured against the eager plans: faster on the CPU for most layer sizes
            (0.74-0.95x), slower on a GPU for many small tensors (2.7-3.6x) and faster there
            for large ones (0.76-0.79x); see the performance pages. Needs a working
            ``torch.compile`` (a C++ compiler on the CPU, Triton on CUDA); results agree with
            eager projection to rounding. Distributed tensors (``DTensor``) are always projected
            eagerly.
    """

    def __init__(self, *, compile: bool = False) -> None:
        self._slots: list[_Slot] = []
        self._hooks: list[_StepHook] = []
        self.compile = compile
        self._version = 0  # bumped whenever an entry is added or bound again
        self._guard: _Guard | None = None  # what the last full check found
        self._selection: _Selection | None = None  # what apply() projects
        self._serial = next(_SERIALS)
        _REGISTRIES.add(self)

    def __len__(self) -> int:
        return len(self._slots)

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles (a registry kept on a module that is deep-copied) check in full
        # and plan anew: the guard holds a C++ object, and plans hold buffers.
        return {**self.__dict__, "_guard": None, "_selection": None}

    def __iter__(self) -> Iterator[Entry]:
        return iter([slot.entry() for slot in self._slots])

    def __repr__(self) -> str:
        lines = [f"  {s.name}: {s.constraint!r}" for s in self._slots]
        return "Constraints(\n" + "\n".join(lines) + "\n)" if lines else "Constraints()"

    def add(
        self,
        target: nn.Module | torch.Tensor,
        constraint: Any = None,
        dims: Axis = _MISSING,
        *,
        kernel: Any = None,
        recurrent: Any = None,
        bias: Any = None,
        embedding: Any = None,
        name: str | None = None,
    ) -> Constraints:
        """Register constraints for a module's roles, or for one tensor.

        ``add(module, kernel=..., recurrent=..., bias=..., embedding=...)`` finds the
        parameters of each role and their per-node dims from the module type (see
        :func:`per_node_dims`); embedding tables take the ``kernel`` constraint unless
        ``embedding=`` is given. ``add(tensor, constraint, dims=...)`` constrains any tensor over
        the dims you give; ``dims`` is required there (``NonNeg`` excepted). An explicit axis on
        the constraint is honoured when it names the per-node dims (or ``dims``) and raises
        otherwise.

        A tensor reached twice (a weight tied between two modules) is constrained once when
        both places ask for the same constraint over the same dims, and raises, naming both,
        when they differ; two entries sharing memory (through ``.data``, views or slices) raise.
        The same holds across every live registry: a tensor (or memory) another registry
        constrains differently raises, naming both entries; the same constraint over the same
        dims is accepted there.

        Everything is checked before anything is registered: an unsupported module type, a role
        the module does not have, an explicit axis that is not the per-node one, a weight the
        module computes (parametrizations, ``weight_norm``), integer, boolean, sparse,
        inference-mode or self-overlapping tensors and dims out of range raise, and nothing is
        added.

        Args:
            target: A module (roles) or a tensor.
            constraint: The constraint for a tensor: an object, a name or a config dict.
            dims: The dims each norm of the tensor is taken over (torch's ``dim``).
            kernel: For a module: the constraint of its input weights.
            recurrent: For a module: the constraint of its recurrent weights.
            bias: For a module: the constraint of its biases (one norm per bias vector).
            embedding: For an ``Embedding``/``EmbeddingBag``: the constraint of its table (one
                norm per embedding vector); default: the ``kernel`` constraint.
            name: A label for the entries (default: the module type or ``"tensor"``).

        Returns:
            The registry, so calls can be chained.
        """
        raw = {"kernel": kernel, "recurrent": recurrent, "bias": bias, "embedding": embedding}
        if isinstance(target, nn.Module):
            if constraint is not None or dims is not _MISSING:
                raise TypeError(
                    "for a module, pass constraints as kernel=, recurrent=, bias=, embedding="
                )
            label = name or type(target).__name__
            layout = _layout(target)
            for role in explicit_roles(raw):
                fallback = role == "kernel" and embedding is None and layout["embedding"]
                if not layout[role] and not fallback:
                    raise ValueError(f"{label} ({type(target).__name__}) has no {role} weights")
            new = _module_slots(target, resolve_roles(**raw), label)
        elif isinstance(target, torch.Tensor):
            if explicit_roles(raw):
                raise TypeError("roles (kernel=, ...) need a module; for a tensor pass constraint")
            new = [_tensor_slot(target, constraint, dims, name or "tensor")]
        else:
            raise TypeError(f"can only constrain an nn.Module or a tensor, got {type(target)}")
        self._extend(new)
        return self

    def _extend(self, new: list[_Slot]) -> None:
        """Register ``new``: a tensor already here with the same request gains a place. A
        conflicting request or shared memory, in this registry or another live one, raises
        (see :class:`_Conflicts`), and then nothing is registered."""
        seen = _Conflicts()
        for registry in _live_registries():
            for known in registry._slots:
                seen.add(registry, known)
        own = {id(s.parameter): s for s in self._slots}
        added: list[_Slot] = []
        aliases: list[tuple[_Slot, _Slot]] = []
        for slot in new:
            seen.check(self, slot)
            known = own.get(id(slot.parameter))
            if known is not None:
                aliases.append((known, slot))
                continue
            own[id(slot.parameter)] = slot
            seen.add(self, slot)
            added.append(slot)
        for known, slot in aliases:
            fresh = [
                p
                for p in slot.places
                if not any(p[0] is o and p[1] == a for o, a, _ in known.places)
            ]
            known.places = (*known.places, *fresh)
        self._slots.extend(added)
        self._changed()
        for slot in added + [known for known, _ in aliases]:
            for owner, attr, _ in slot.places:
                _mark(owner, attr, slot)

    def _changed(self) -> None:
        """Entries were added or bound again: check them in full and plan them anew."""
        self._version += 1
        self._guard = None

    def _plan(self, members: frozenset[int] | None) -> tuple[list[tuple], list[_Slot]]:
        """Check every entry (O(1) each), then list what to project: all of them, or with
        ``members`` (a hook) those in the optimizer that got a gradient. Raises before anything
        is projected."""
        items: list[tuple] = []
        dtensors: list[_Slot] = []
        for slot in self._slots:
            tensor = slot.parameter
            use = slot
            for owner, attr, _ in slot.places:
                if owner._parameters.get(attr) is not tensor:
                    use = self._replaced(slot, members)
                    break
            else:
                if (
                    tensor.shape != slot.shape
                    or tensor.stride() != slot.stride
                    or tensor.dtype is not slot.dtype
                    or tensor.is_inference()
                ):
                    slot.take(_rebind(slot))
            if use is None:  # replaced; the optimizer holding it (or the old one) decides
                continue
            if members is not None:
                live = use.parameter
                if id(live) not in members or live.grad is None:
                    continue
            if use.dtensor:
                dtensors.append(use)
            else:
                items.append(use.item)
        return items, dtensors

    def _replaced(self, slot: _Slot, members: frozenset[int] | None) -> _Slot | None:
        """``slot``'s parameter is no longer the one at its place: bind the live one. A direct
        apply() projects it (the registration is kept, so hooks still see the change). A hook
        adopts it when its optimizer updates it, and raises when its optimizer holds the old
        tensor. When another optimizer the registry is attached to holds either, that one's
        hook decides: this one returns None and leaves the registration as it is, so that the
        guard keeps failing and the next hook checks in full (and raises if its optimizer holds
        the old tensor). Held by none, the new tensor is adopted (and left alone by hooks)."""
        fresh = _rebind(slot)
        if members is None:
            return fresh
        new, old = id(fresh.parameter), id(slot.parameter)
        if new not in members and old in members:
            raise RuntimeError(
                f"{slot.name} was replaced by a new tensor after it was constrained (e.g. "
                "load_state_dict(..., assign=True), or module.weight = nn.Parameter(...)), and "
                "this optimizer still holds the old one: the step updated a tensor the model no "
                "longer uses, and the new one is neither trained nor constrained. Create the "
                "optimizer (and attach the constraints) after replacing parameters, or load with "
                "assign=False, which copies the values into the existing tensors"
            )
        if new not in members and any(
            new in held or old in held
            for held in (hook.members(optimizer) for hook, optimizer in _live_hooks(self))
        ):
            return None
        slot.take(fresh)
        return slot

    def _check_memory(self) -> None:
        """The full check of shared memory (after a change, such as ``a.data = b.data``): every
        entry's memory is read again, and an entry of this registry that conflicts with
        another entry (see :class:`_Conflicts`) raises."""
        seen = _Conflicts()
        for registry in _live_registries():
            if registry is not self:
                for slot in registry._slots:
                    slot.memory = _memory(slot.parameter)
                    seen.add(registry, slot)
        for slot in self._slots:
            slot.memory = _memory(slot.parameter)
            seen.check(self, slot)
            seen.add(self, slot)

    def _check_reachable(
        self, optimizer: torch.optim.Optimizer, members: frozenset[int] | None = None
    ) -> None:
        """Raise a ValueError for a tensor entry that no step of ``optimizer`` can project: one
        that is not a leaf (an optimizer holds leaves only, and a view gets no ``.grad``), or
        one that shares memory with a tensor of ``optimizer`` without being it (``.data``,
        ``.detach()`` or a view of a parameter: the optimizer updates the parameter, and the
        hook projects what the optimizer holds)."""
        if members is None:
            members = _param_ids(optimizer)
        regions = None
        for slot in self._slots:
            tensor = slot.parameter
            if slot.source is not None or id(tensor) in members:
                continue
            what = None
            if not tensor.is_leaf:
                what = "is not a leaf tensor (a view of a parameter, or computed from one)"
            elif slot.memory is not None:
                if regions is None:
                    regions = _regions(optimizer)
                for memory, held in regions.get(slot.memory[:2], ()):
                    if _overlap(memory, slot.memory, held, tensor):
                        what = (
                            "shares memory with a tensor of the optimizer (shape "
                            f"{tuple(held.shape)}) without being it (a view, .data or "
                            ".detach() of a parameter, or a parameter replaced in its module "
                            "by a new one over the same memory)"
                        )
                        break
            if what is not None:
                raise ValueError(
                    f"{slot.name} {what}: the optimizer updates its parameters, never this "
                    "tensor, and a step hook projects what the optimizer updated, so no step "
                    "would project it. Register the parameter itself (add(parameter, "
                    "constraint, dims=...), with dims for the part you mean), or call "
                    "registry.apply() after each optimizer.step() instead of attaching"
                )

    def _check_held(self) -> None:
        """Raise a RuntimeError for a trainable parameter registered as a tensor
        (``add(parameter, constraint, dims=...)``) that none of the optimizers the registry is
        attached to holds: typically one replaced in its module (``load_state_dict(...,
        assign=True)``) and a new optimizer made for the new tensors; a registry knows no
        module of a tensor entry, so it cannot follow the replacement."""
        held = [hook.members(optimizer) for hook, optimizer in _live_hooks(self)]
        for slot in self._unheld_tensor_entries(held):
            raise RuntimeError(
                f"{slot.name} (a parameter registered as a tensor) is in none of the "
                "optimizers this registry is attached to, so no step projects it. If it "
                "was replaced in its module (load_state_dict(..., assign=True), "
                "module.weight = nn.Parameter(...)) and a new optimizer holds the new "
                "tensor, constrain the new one (a registry cannot follow a tensor entry; "
                "add(module, kernel=...) or constrain() can); if another optimizer updates "
                "it, attach the registry to that one too; if nothing trains it, set "
                "requires_grad=False"
            )

    def _unheld_tensor_entries(self, held: list) -> list[_Slot]:
        """Trainable parameters registered as tensors (no module place to follow) that none of
        the id sets in ``held`` (the members of the attached optimizers) holds."""
        return [
            slot
            for slot in self._slots
            if slot.source is None
            and slot.parameter.requires_grad
            and slot.parameter.is_leaf
            and not any(id(slot.parameter) in ids for ids in held)
        ]

    def _project(self, items: list[tuple], dtensors: list[_Slot]) -> None:
        with torch.no_grad():
            for slot in dtensors:
                tensor = slot.parameter
                tensor = tensor if slot.view is None else tensor.view(slot.view)
                _project_dtensor_(tensor, slot.constraint, slot.dims)
            if items:
                (_compiled_projection() if self.compile else _project_all_)(items)

    def _step(self, optimizer: torch.optim.Optimizer, hook: _StepHook) -> None:
        self._run(hook.members(optimizer), hook)

    def _run(self, members: frozenset[int] | None, hook: _StepHook | None) -> None:
        """Project for ``apply()`` (``members`` None) or a hook.

        The fast path: the guard finds every entry as the last full check left it (O(1) per
        entry, no host synchronisation), and the plan bound to what this call projects runs.
        Otherwise (the first call, or something changed: a replaced parameter, a new dtype,
        device, shape or layout, a parametrization...) every entry is checked in full and bound
        again where needed (raising before anything is projected), the tensors are projected
        one by one through the core, and the guard records the state just checked.
        """
        if torch.compiler.is_compiling():  # a compiled optimizer step traces its hooks:
            self._project(*self._plan(members))  # the compiler guards what it traced itself
            return
        guard = self._guard
        if guard is None or not guard.holds():
            self._guard = None
            items, dtensors = self._plan(members)
            self._check_memory()
            if hook is not None and (optimizer := hook.optimizer()) is not None:
                self._check_reachable(optimizer, members)
                self._check_held()
            self._project(items, dtensors)
            self._changed()
            self._guard = _Guard(self._slots)
            return
        version = self._version
        if hook is None:
            selection = self._selection
            if selection is None or selection.version != version:
                selection = self._selection = _Selection(self._slots, version, None)
        else:
            selection = hook.selection
            if (
                selection is None
                or selection.version != version
                or selection.members is not members
            ):
                selection = hook.selection = _Selection(self._slots, version, members)
        selection.project(members is not None, self.compile)

    def apply(self) -> None:
        """Project every registered tensor now (after loading a checkpoint, after swapping in
        averaged EMA/SWA weights, ...), frozen ones included.

        Every entry is checked first; a parameter replaced in its module since it was
        registered is projected in its new form, and one that became a computed weight
        (a parametrization added since) raises. Nothing is projected when one entry raises.
        """
        self._run(None, None)

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Project after every step of ``optimizer`` that happens.

        Uses ``Optimizer.register_step_post_hook``: a step that is skipped (an AMP
        ``GradScaler`` that found inf/NaN gradients does not call ``step``) projects nothing.
        A step projects what it updated: the registered tensors in ``optimizer``'s param groups
        that have a gradient. A copy of the optimizer (``copy.deepcopy``, ``torch.save`` of the
        object) does not carry the hook: attach again to the copy.

        An entry no step of ``optimizer`` can project raises, here and at every full check of a
        step: a tensor entry that is not a leaf, or that shares memory with a tensor of the
        optimizer without being it (a view, ``.data`` or ``.detach()`` of a parameter). A
        trainable parameter registered as a tensor that none of the attached optimizers holds
        raises at the next step (one replaced in its module, with a new optimizer made for the
        new tensor, is the usual cause).

        Returns:
            The hook's handle; ``handle.remove()`` detaches the registry.

        Raises:
            TypeError: ``optimizer`` is not an initialised torch optimizer, nor accelerate's
                ``AcceleratedOptimizer`` (other wrappers: call :meth:`apply` after their step).
            ValueError: An entry that no step of ``optimizer`` can project (see above), or
                memory shared with an entry that asks for another projection.
        """
        optimizer = _check_optimizer(optimizer, "attach")
        self._check_memory()
        self._check_reachable(optimizer)
        hook = _StepHook(self, optimizer)
        self._changed()  # the next step checks in full, with this optimizer among the others
        self._hooks = [h for h in self._hooks if h.attached() is not None]
        self._hooks.append(hook)
        hook.handle = optimizer.register_step_post_hook(hook)
        return hook.handle

    def clear(self) -> None:
        """Detach from every optimizer and forget every entry: the registry constrains nothing
        afterwards. For constraining the same weights differently (a tensor takes one
        constraint across the live registries).

        Example:
            >>> import torch
            >>> from weight_constraints import MaxNorm
            >>> from weight_constraints.adapters.torch import constrain
            >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
            >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            >>> registry = constrain(model, optimizer, kernel=MaxNorm(1.0))
            >>> registry.clear()
            >>> registry = constrain(model, optimizer, kernel=MaxNorm(2.0))
            >>> len(optimizer._optimizer_step_post_hooks)
            1
        """
        for hook in self._hooks:
            if hook.handle is not None:
                hook.handle.remove()
        for slot in self._slots:
            for owner, attr, _ in slot.places:
                owner.__dict__.get(_MARK, {}).pop(attr, None)
        self._hooks, self._slots = [], []
        self._selection = None
        self._changed()


def _walk(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(name, module)`` for every supported module, and for every other module with
    parameters of its own (normalisation layers excepted). Supported modules are not descended
    into (``MultiheadAttention`` owns its ``out_proj``)."""
    if _supported(module):
        yield prefix, module
        return
    if not isinstance(module, _NO_ROLE_TYPES) and any(
        True for _ in module.parameters(recurse=False)
    ):
        yield prefix, module
    for name, child in module.named_children():
        yield from _walk(child, f"{prefix}.{name}" if prefix else name)


def constrain(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    kernel: Any = None,
    recurrent: Any = None,
    bias: Any = None,
    embedding: Any = None,
    skip_unknown: bool = False,
    compile: bool = False,
) -> Constraints:
    """Constrain every supported submodule of ``model`` by role, and attach to ``optimizer``.

    Adding a constraint to an existing model is one line. Normalisation layers and ``PReLU``
    have no kernel or bias in this sense and are passed over; a module with parameters of its
    own whose type is not supported raises a TypeError naming it, unless ``skip_unknown=True``.
    A role that no submodule has raises a ValueError. A weight tied between two modules (an
    embedding and an output head) is constrained once. The constraints are keyword-only:
    ``constrain(model, optimizer, kernel=MaxNorm(3))``.

    Args:
        model: The model (``torch.compile``, DDP and FSDP2-wrapped models work).
        optimizer: The optimizer to attach to; ``None`` to attach later with
            :meth:`Constraints.attach`.
        kernel: The constraint for input weights (Linear, Conv, ConvTranspose, RNN
            ``weight_ih``, attention projections, transformers' ``Conv1D``), and for embedding
            tables unless ``embedding`` is given.
        recurrent: The constraint for recurrent weights (RNN ``weight_hh``, LSTM ``weight_hr``).
        bias: The constraint for bias vectors, each one norm over the whole vector.
        embedding: The constraint for embedding tables (``Embedding``, ``EmbeddingBag``), one
            norm per embedding vector.
        skip_unknown: Pass over unsupported modules instead of raising.
        compile: Project through ``torch.compile`` (see :class:`Constraints`).

    Returns:
        The registry (its hook is attached when ``optimizer`` is given).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"constrain() expects an nn.Module, got {type(model).__name__}")
    if optimizer is not None:
        optimizer = _check_optimizer(optimizer, "constrain")
    raw = {"kernel": kernel, "recurrent": recurrent, "bias": bias, "embedding": embedding}
    wanted = resolve_roles(**raw)
    registry = Constraints(compile=compile)
    found = set()
    new: list[_Slot] = []
    for name, module in _walk(model):
        if not _supported(module):
            if skip_unknown:
                continue
            raise TypeError(
                f"module {name or '<model>'} ({type(module).__name__}) has parameters of its own "
                "and is not a supported type; constrain them with Constraints.add(parameter, "
                "constraint, dims=...) or pass skip_unknown=True"
            )
        layout = _layout(module)
        present = {role: c for role, c in wanted.items() if c is not None and layout[role]}
        new.extend(_module_slots(module, present, name or type(module).__name__))
        found.update(present)
    if embedding is None and "embedding" in found:
        found.add("kernel")  # the tables took the kernel constraint
    missing = [role for role in explicit_roles(raw) if role not in found]
    if missing:
        raise ValueError(f"no module of {type(model).__name__} has {' or '.join(missing)} weights")
    registry._extend(new)
    if optimizer is not None:
        registry.attach(optimizer)
    return registry


# -- the audit -----------------------------------------------------------------------------------


class _Found(NamedTuple):
    name: str
    parameter: torch.Tensor
    places: list[tuple[nn.Module, str, str]]


def _model_parameters(model: nn.Module) -> list[_Found]:
    """Every parameter of ``model`` once, with every ``(module, attribute, name)`` holding it."""
    found: dict[int, _Found] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for attr, parameter in module._parameters.items():
            if parameter is None:
                continue
            name = f"{prefix}.{attr}" if prefix else attr
            if id(parameter) not in found:
                found[id(parameter)] = _Found(name, parameter, [])
            found[id(parameter)].places.append((module, attr, name))
    return list(found.values())


def _live_hooks(registry: Constraints) -> list[tuple[_StepHook, torch.optim.Optimizer]]:
    return [(h, o) for h in registry._hooks if (o := h.attached()) is not None]


def _choose(
    candidates: list[tuple[Constraints, _Slot]], optimizer: torch.optim.Optimizer | None
) -> tuple[Constraints, _Slot] | None:
    """The registration that matters for ``optimizer``: one attached to it (to any optimizer
    when None), else the first one."""
    for registry, slot in candidates:
        optimizers = [o for _, o in _live_hooks(registry)]
        if (optimizer is None and optimizers) or any(o is optimizer for o in optimizers):
            return registry, slot
    return candidates[0] if candidates else None


def _status(
    registry: Constraints,
    slot: _Slot,
    parameter: torch.Tensor,
    optimizer: torch.optim.Optimizer | None,
    members: Any,
) -> tuple[bool, str]:
    """Whether the next step of ``optimizer`` (of any optimizer the registry is attached to,
    when None) projects ``parameter``, and why not. ``members(optimizer)`` gives the ids of
    an optimizer's tensors."""
    try:
        fresh = _rebind(slot)
    except (TypeError, ValueError) as error:
        return False, str(error).split(":")[0]
    replaced = fresh.parameter is not slot.parameter
    optimizers = [o for _, o in _live_hooks(registry)]
    if optimizer is not None:
        if not any(o is optimizer for o in optimizers):
            where = " (it is attached to another one)" if optimizers else ""
            return False, (
                f"its registry is not attached to this optimizer{where}; a copy of an optimizer "
                "(deepcopy, torch.save/load) loses its step hooks: attach again"
            )
        optimizers = [optimizer]
    elif not optimizers:
        return False, "its registry is attached to no optimizer (apply() projects it)"
    if not any(id(parameter) in members(o) for o in optimizers):
        if replaced and any(id(slot.parameter) in members(o) for o in optimizers):
            return False, (
                "replaced after it was constrained (assign=True?) and the optimizer holds the "
                "old tensor: the next step raises"
            )
        return False, "not in the optimizer's param groups: not updated, not projected"
    if not parameter.requires_grad:
        if parameter.grad is None:
            return False, "frozen (requires_grad=False): not updated, not projected"
        return True, (
            "requires_grad=False but it keeps a gradient (zero_grad(set_to_none=False)): the "
            "optimizer still updates it (momentum, weight decay) and the hook projects it"
        )
    return True, "replaced since constrain(); the next step binds it" if replaced else ""


def _violation(slot: _Slot, parameter: torch.Tensor) -> float:
    with torch.no_grad():
        tensor = parameter.detach()
        if _is_dtensor(tensor):
            tensor = tensor.full_tensor()
        if slot.view is not None:
            tensor = tensor.reshape(slot.view)
        weight = tensor.to("cpu", torch.float64).numpy()
    axes = slot.dims if hasattr(slot.constraint, "axis") else None
    return worst_violation(slot.constraint, weight, axes)


def _registrations(
    model: nn.Module,
) -> tuple[dict[int, list[tuple[Constraints, _Slot]]], dict[tuple[int, str], list[tuple]]]:
    by_id: dict[int, list[tuple[Constraints, _Slot]]] = {}
    by_place: dict[tuple[int, str], list[tuple[Constraints, _Slot]]] = {}
    for registry in _live_registries():
        for slot in registry._slots:
            by_id.setdefault(id(slot.parameter), []).append((registry, slot))
            for owner, attr, _ in slot.places:
                by_place.setdefault((id(owner), attr), []).append((registry, slot))
    return by_id, by_place


def _default_dims(module: nn.Module, attr: str) -> tuple[int, ...] | None:
    try:
        return per_node_dims(module, attr)
    except (TypeError, ValueError):
        return None


def audit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    strict: bool = False,
    tol: float = 1e-5,
) -> Audit:
    """One row per parameter of ``model``: its constraint, and whether the next step projects it.

    A row is *active* when a registry holding the parameter is attached to ``optimizer`` (to
    any live optimizer when ``None``), the parameter is in that optimizer's param groups, it
    requires grad (or keeps a gradient, which the optimizer still applies), it is still the
    tensor the module uses (not replaced, not turned into a computed weight by a
    parametrization), and no other registry constrains it differently. The hook then projects
    it after every step in which it has a gradient. Entries no step projects show too: a
    parameter registered through a view or ``.data`` (on the parameter's row), and a parameter
    registered as a tensor that neither the model nor an attached optimizer holds (a row of
    its own). ``violation`` is the largest distance of a node from the constraint's
    set now. Computing it copies every constrained weight to the host: this is for checks and
    logs, not for the training step.

    Args:
        model: The model.
        optimizer: The optimizer whose next step is meant; ``None`` for any.
        strict: Raise a RuntimeError listing every constrained parameter that is not active or
            is violated by more than ``tol``.
        tol: The tolerance of ``strict``, relative to the constraint's scale; at least the
            rounding of the weight's dtype (2 eps: ``2**-6`` for bfloat16).

    Returns:
        The rows (a list that prints as a table; ``.problems(tol)`` lists what ``strict``
        raises for).

    Example:
        >>> import torch
        >>> from weight_constraints import MaxNorm
        >>> from weight_constraints.adapters.torch import audit, constrain
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> _ = constrain(model, optimizer, kernel=MaxNorm(1.0))
        >>> print(audit(model, optimizer))  # doctest: +NORMALIZE_WHITESPACE
        weight    shape  constraint                      axes  active  violation  note
        0.weight  3x4    MaxNorm(max_value=1.0, axis=1)  1     yes     0
        0.bias    3      -                               0     -       -
        1.weight  3      -                               -     -       -
        1.bias    3      -                               -     -       -
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"audit() expects an nn.Module, got {type(model).__name__}")
    if optimizer is not None:
        optimizer = _check_optimizer(optimizer, "audit")
    members = functools.cache(_param_ids)
    rows = Audit()
    shown = set()
    inventory = _inventory(model, optimizer)
    shadows = _Shadows()
    for record, chosen, candidates in inventory:
        shape = tuple(record.parameter.shape)
        dtype = str(record.parameter.dtype).removeprefix("torch.")
        tied = ", ".join(name for _, _, name in record.places[1:])
        if chosen is None:
            module, attr, _ = record.places[0]
            dims = _default_dims(module, attr)
            note = f"tied: also {tied}" if tied else ""
            marks = [m.__dict__.get(_MARK, {}).get(a) for m, a, _ in record.places]
            mark = next((m for m in marks if m is not None), None)
            shadow = shadows.find(record.parameter)
            if shadow is not None:
                shown.add(id(shadow))
                note = (
                    f"registered as {shadow.name}, which shares its memory without being it (a "
                    "view, .data or .detach()): no optimizer updates that tensor, so no step "
                    "projects it (attach raises); register the parameter itself, or call apply()"
                )
                rows.append(
                    AuditRow(
                        record.name, shape, shadow.constraint, shadow.dims, False, None, note, dtype
                    )
                )
                continue
            if mark is not None:
                note = (
                    "constrained before this module was copied or reloaded; no registry holds "
                    "this tensor (registries and hooks are not copied): constrain the copy"
                )
                rows.append(
                    AuditRow(record.name, shape, mark[0], mark[1], False, None, note, dtype)
                )
                continue
            rows.append(AuditRow(record.name, shape, None, dims, False, None, note, dtype))
            continue
        registry, slot = chosen
        shown.add(id(slot))
        active, note = _status(registry, slot, record.parameter, optimizer, members)
        others = [other for _, other in candidates if not other.same_request(slot)]
        if others:
            active, note = (
                False,
                (
                    f"conflicting constraints: also {others[0].constraint!r} over dims "
                    f"{others[0].dims} ({others[0].name}, another registry); the hook that runs "
                    "last wins"
                ),
            )
        notes = [note, f"tied: also {tied}" if tied else ""]
        same = record.parameter.shape == slot.shape
        violation = _violation(slot, record.parameter) if same else None
        note = "; ".join(n for n in notes if n)
        rows.append(
            AuditRow(record.name, shape, slot.constraint, slot.dims, active, violation, note, dtype)
        )
    for _, slot in _orphans(model):
        if id(slot) in shown:
            continue
        shown.add(id(slot))
        try:
            _rebind(slot)
            note = ""
        except (TypeError, ValueError) as error:
            note = str(error).split(":")[0]
        rows.append(
            AuditRow(slot.name, tuple(slot.shape), slot.constraint, slot.dims, False, None, note)
        )
    for slot in _unheld(inventory, members):
        if id(slot) in shown:
            continue
        note = (
            "a parameter registered as a tensor, in neither the model nor any optimizer its "
            "registry is attached to (replaced by load_state_dict(assign=True) and a new "
            "optimizer made?): no step projects it and the next step raises; constrain the "
            "parameter the model uses"
        )
        rows.append(
            AuditRow(slot.name, tuple(slot.shape), slot.constraint, slot.dims, False, None, note)
        )
    if strict:
        check_strict(rows, tol)
    return rows


class _Shadows:
    """Tensor entries (``add(tensor, ...)``) of live registries by storage, to find one that
    shares a parameter's memory without being it (a view, ``.data`` or ``.detach()``)."""

    def __init__(self) -> None:
        self.regions: dict[tuple, list[tuple[tuple, _Slot]]] = {}
        for registry in _live_registries():
            for slot in registry._slots:
                if slot.source is None and (memory := _memory(slot.parameter)) is not None:
                    self.regions.setdefault(memory[:2], []).append((memory, slot))

    def find(self, parameter: torch.Tensor) -> _Slot | None:
        memory = _memory(parameter) if self.regions else None
        if memory is None:
            return None
        for other, slot in self.regions.get(memory[:2], ()):
            if slot.parameter is not parameter and _overlap(
                other, memory, slot.parameter, parameter
            ):
                return slot
        return None


def _unheld(inventory: list[tuple[_Found, Any, list]], members: Any) -> list[_Slot]:
    """Trainable parameters registered as tensors, by a registry that constrains this model
    or is attached to an optimizer of its parameters, that are neither in the model nor in
    any optimizer the registry is attached to (what the hook raises for)."""
    model_ids = {id(record.parameter) for record, _, _ in inventory}
    users = {id(chosen[0]) for _, chosen, _ in inventory if chosen is not None}
    found = []
    for registry in _live_registries():
        held = [members(o) for _, o in _live_hooks(registry)]
        if not held or (id(registry) not in users and not any(model_ids & ids for ids in held)):
            continue  # no hook to raise (apply() projects it), or another model's registry
        found += [
            slot
            for slot in registry._unheld_tensor_entries(held)
            if id(slot.parameter) not in model_ids
        ]
    return found


def _inventory(
    model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> list[tuple[_Found, tuple[Constraints, _Slot] | None, list[tuple[Constraints, _Slot]]]]:
    """Each parameter of ``model`` with the registration that constrains it, if any, and every
    registration of it (registries oldest first)."""
    by_id, by_place = _registrations(model)
    result = []
    for record in _model_parameters(model):
        candidates = list(by_id.get(id(record.parameter), []))
        for module, attr, _ in record.places:
            candidates += by_place.get((id(module), attr), [])
        result.append((record, _choose(candidates, optimizer), candidates))
    return result


def _orphans(model: nn.Module) -> list[tuple[Constraints, _Slot]]:
    """Registrations whose place in ``model`` holds no parameter any more (a parametrization
    or a weight-norm hook added after ``constrain()``)."""
    modules = {id(m) for m in model.modules()}
    found = []
    seen = set()
    for registry in _live_registries():
        for slot in registry._slots:
            for owner, attr, _ in slot.places:
                if (
                    id(owner) in modules
                    and owner._parameters.get(attr) is None
                    and id(slot) not in seen
                ):
                    seen.add(id(slot))
                    found.append((registry, slot))
    return found


def norm_stats(target: Constraints | nn.Module) -> dict[str, float]:
    """Per-weight norm statistics as a flat dict, for any logger.

    For a registry, every entry; for a model, every parameter with per-node dims (from its
    constraint, or its module type when it has none). Keys are ``"<name>/norm_max"``,
    ``"<name>/norm_mean"`` and, for constrained weights, ``"<name>/violation"`` (the largest
    distance of a node from the constraint's set). The values are Python floats: this copies
    to the host and synchronises with the device, so call it when you log, not in the training
    step.

    Example:
        >>> import torch
        >>> from weight_constraints import MaxNorm
        >>> from weight_constraints.adapters.torch import Constraints, norm_stats
        >>> w = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
        >>> norm_stats(Constraints().add(w, MaxNorm(2.0), dims=1, name="w"))
        {'w/norm_max': 5.0, 'w/norm_mean': 3.0, 'w/violation': 3.0}
    """
    sources: list[tuple[str, torch.Tensor, tuple | None, Any, _Slot | None]] = []
    if isinstance(target, Constraints):
        for slot in target._slots:
            sources.append((slot.name, slot.parameter, slot.dims, slot.view, slot))
    elif isinstance(target, nn.Module):
        for record, chosen, _ in _inventory(target, None):
            if chosen is not None and chosen[1].shape == record.parameter.shape:
                slot = chosen[1]
                sources.append((record.name, record.parameter, slot.dims, slot.view, slot))
                continue
            module, attr, _ = record.places[0]
            dims = _default_dims(module, attr)
            if dims is not None:
                sources.append((record.name, record.parameter, dims, None, None))
    else:
        raise TypeError(
            f"norm_stats() expects a Constraints registry or an nn.Module, got {target!r}"
        )
    stats: dict[str, float] = {}
    for name, tensor, dims, view, slot in sources:
        with torch.no_grad():
            viewed = tensor.detach() if view is None else tensor.detach().reshape(view)
            norms = node_norms(viewed, dims).double()
        stats[f"{name}/norm_max"] = float(norms.max()) if norms.numel() else 0.0
        stats[f"{name}/norm_mean"] = float(norms.mean()) if norms.numel() else 0.0
        if slot is not None:
            stats[f"{name}/violation"] = _violation(slot, tensor)
    return stats

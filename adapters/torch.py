"""PyTorch adapter: per-node constraints applied after every optimizer step.

PyTorch has no ``kernel_constraint=``: the usual recipe is a loop of ``renorm_``/``clamp_`` after
``optimizer.step()``. Here a :class:`Constraints` registry records (parameter, constraint, dims)
and :meth:`Constraints.attach` runs the projections in an optimizer step post-hook, in place,
under ``torch.no_grad()``, with no host synchronisation. The math is the core's
(:mod:`weight_constraints`) on torch tensors; this module only finds the parameters and their
per-node dims.

Axes. A constraint attached *by role* (``kernel=``, ``recurrent=``, ``bias=``) is applied over the
module's per-node dims (:func:`per_node_dims`), e.g. dim 1 of a ``Linear`` weight ``(out, in)``.
The constraint's ``axis`` must then be left at its default, ``0``, which in Keras's layout means
"one norm per output unit"; any other axis raises a ValueError that tells you to use
``Constraints.add(parameter, constraint, dims=...)``. An axis is never silently replaced.

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
import sys
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

import weight_constraints as wc
from weight_constraints._checks import Axis, normalize_axes

__all__ = [
    "Constraints",
    "Entry",
    "constrain",
    "node_norms",
    "per_node_dims",
    "project_",
]

ROLES = ("kernel", "recurrent", "bias")

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


def _bind(constraint: Any, dims: Axis, tensor: torch.Tensor) -> tuple[wc.Constraint, tuple]:
    """Resolve ``constraint`` (object, name or config) and bind it to ``dims`` of ``tensor``."""
    resolved = wc.get(constraint)
    if resolved is None:
        raise ValueError("constraint must not be None")
    if not tensor.is_floating_point():
        raise TypeError(
            f"can only constrain floating-point tensors, got dtype {str(tensor.dtype)[6:]}"
        )
    axes = normalize_axes(dims, tuple(tensor.shape))
    if isinstance(resolved, wc.NonNeg):
        return resolved, axes
    if resolved.axis != 0 and normalize_axes(resolved.axis, tuple(tensor.shape)) != axes:
        raise ValueError(
            f"{resolved!r} has an explicit axis that differs from dims={dims!r}; "
            "leave the constraint's axis at its default and pass dims only"
        )
    return _with_axis(resolved, axes), axes


@functools.lru_cache(maxsize=256)
def _with_axis(constraint: wc.Constraint, axes: tuple[int, ...]) -> wc.Constraint:
    """``constraint`` with its axis set to ``axes`` (objects are immutable: shared safely)."""
    return dataclasses.replace(constraint, axis=axes)


def _is_dtensor(tensor: torch.Tensor) -> bool:
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def _project_dtensor_(tensor: Any, constraint: wc.Constraint, dims: tuple[int, ...]) -> None:
    """Project a distributed tensor so that the constraint holds on the full tensor.

    When no node is split across shards (no ``Shard`` placement on a reduced dim; always for
    :class:`~weight_constraints.NonNeg`), each rank projects its own shard: no communication.
    Otherwise the full tensor is gathered, projected identically on every rank, and each rank
    keeps its shard. The parameter stays sharded either way.
    """
    from torch.distributed.tensor import Partial, Shard, distribute_tensor

    local = tensor.to_local()
    entrywise = isinstance(constraint, wc.NonNeg)
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
    at its default (or name the same dims), so that no axis is silently replaced.
    Distributed tensors (``DTensor``, e.g. FSDP2 parameters) stay sharded and the constraint
    holds on the full tensor.

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
    bound, axes = _bind(constraint, dims, tensor)
    with torch.no_grad():
        _project_bound_(tensor, bound, axes)
    return tensor


def _project_bound_(tensor: torch.Tensor, constraint: wc.Constraint, dims: tuple) -> None:
    if _is_dtensor(tensor):
        _project_dtensor_(tensor, constraint, dims)
    else:
        constraint(tensor, out=tensor)


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


def _layout(module: nn.Module) -> dict[str, list[tuple[str, tuple[int, ...], Any]]]:
    """The constrainable parameters of ``module`` by role: ``(name, dims, view shape or None)``.

    Raises:
        TypeError: The module type is not supported.
    """
    roles: dict[str, list[tuple[str, tuple[int, ...], Any]]] = {role: [] for role in ROLES}

    def bias(name: str) -> None:
        if getattr(module, name, None) is not None:
            roles["bias"].append((name, (0,), None))

    if isinstance(module, nn.Linear):
        roles["kernel"].append(("weight", (1,), None))
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
        roles["kernel"].append(("weight", (1,), None))
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


def _get_parameter(module: nn.Module, name: str) -> torch.Tensor:
    owner = module
    *path, leaf = name.split(".")
    for part in path:
        owner = getattr(owner, part)
    return getattr(owner, leaf)


def _check_role_axis(constraint: Any, role: str, module: nn.Module) -> wc.Constraint:
    resolved = wc.get(constraint)
    axis = getattr(resolved, "axis", 0)
    if axis != 0:
        raise ValueError(
            f"{resolved!r} has an explicit axis; a constraint attached as {role}= is applied "
            f"over the per-node dims of {type(module).__name__} (see per_node_dims). Leave axis "
            "at its default, or use Constraints.add(parameter, constraint, dims=...)"
        )
    return resolved


def _tensor_entry(tensor: torch.Tensor, constraint: Any, dims: Any, name: str) -> Entry:
    resolved = wc.get(constraint)
    if resolved is None:
        raise ValueError("add(tensor, constraint, dims=...) needs a constraint")
    if dims is _MISSING:
        if not isinstance(resolved, wc.NonNeg):
            raise ValueError(
                f"add(tensor, {resolved!r}) needs dims=: the dims of the tensor each norm is "
                "taken over (torch's dim; e.g. dims=1 for a Linear weight)"
            )
        dims = None
    bound, axes = _bind(resolved, dims, tensor)
    return Entry(name, tensor, bound, axes)


def _module_entries(module: nn.Module, wanted: dict[str, Any], label: str) -> list[Entry]:
    layout = _layout(module)
    entries = []
    for role, constraint in wanted.items():
        if constraint is None:
            continue
        if not layout[role]:
            raise ValueError(f"{label} ({type(module).__name__}) has no {role} weights")
        resolved = _check_role_axis(constraint, role, module)
        for name, dims, view in layout[role]:
            parameter = _get_parameter(module, name)
            if nn.parameter.is_lazy(parameter):
                raise ValueError(
                    f"{label}.{name} is not initialised yet (lazy module): run one forward pass "
                    "before constraining it"
                )
            tensor = parameter.view(view) if view is not None else parameter
            bound, axes = _bind(resolved, dims, tensor)
            entries.append(Entry(f"{label}.{name}", parameter, bound, axes, view))
    return entries


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
            shape, dtype or device). Each norm and its scaling then fuse into one kernel and the
            per-tensor Python overhead goes, which pays off with many small tensors or half
            precision (see the performance page). Needs a working ``torch.compile`` (a C++
            compiler on the CPU, Triton on CUDA); results agree with eager projection to
            rounding. Distributed tensors (``DTensor``) are always projected eagerly.
    """

    def __init__(self, *, compile: bool = False) -> None:
        self._entries: list[Entry] = []
        self.compile = compile

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    def __repr__(self) -> str:
        lines = [f"  {e.name}: {e.constraint!r}" for e in self._entries]
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
        name: str | None = None,
    ) -> Constraints:
        """Register constraints for a module's roles, or for one tensor.

        ``add(module, kernel=..., recurrent=..., bias=...)`` finds the parameters of each role
        and their per-node dims from the module type (see :func:`per_node_dims`).
        ``add(tensor, constraint, dims=...)`` constrains any tensor over the dims you give;
        ``dims`` is required there (``NonNeg`` excepted), and a constraint whose own ``axis``
        is not the default must agree with it.

        Everything is checked before anything is registered: an unsupported module type, a role
        the module does not have, an explicit axis on a role constraint, integer or boolean
        tensors, dims out of range and a tensor already in the registry raise, and nothing is
        added.

        Args:
            target: A module (roles) or a tensor.
            constraint: The constraint for a tensor: an object, a name or a config dict.
            dims: The dims each norm of the tensor is taken over (torch's ``dim``).
            kernel: For a module: the constraint of its input weights.
            recurrent: For a module: the constraint of its recurrent weights.
            bias: For a module: the constraint of its biases (one norm per bias vector).
            name: A label for the entries (default: the module type or ``"tensor"``).

        Returns:
            The registry, so calls can be chained.
        """
        if isinstance(target, nn.Module):
            if constraint is not None or dims is not _MISSING:
                raise TypeError("for a module, pass constraints as kernel=, recurrent=, bias=")
            roles = {"kernel": kernel, "recurrent": recurrent, "bias": bias}
            new = _module_entries(target, roles, name or type(target).__name__)
        elif isinstance(target, torch.Tensor):
            if kernel is not None or recurrent is not None or bias is not None:
                raise TypeError("roles (kernel=, ...) need a module; for a tensor pass constraint")
            new = [_tensor_entry(target, constraint, dims, name or "tensor")]
        else:
            raise TypeError(f"can only constrain an nn.Module or a tensor, got {type(target)}")
        known = {id(e.parameter) for e in self._entries}
        for entry in new:
            if id(entry.parameter) in known:
                raise ValueError(f"{entry.name} is already constrained in this registry")
            known.add(id(entry.parameter))
        self._entries.extend(new)
        return self

    def apply(self) -> None:
        """Project every registered tensor now (after loading a checkpoint, after swapping in
        averaged EMA/SWA weights, ...)."""
        local = []
        with torch.no_grad():
            for entry in self._entries:
                if _is_dtensor(entry.parameter):
                    tensor = entry.parameter
                    tensor = tensor if entry.view is None else tensor.view(entry.view)
                    _project_dtensor_(tensor, entry.constraint, entry.dims)
                else:
                    local.append((entry.parameter, entry.view, entry.constraint))
            if local:
                (_compiled_projection() if self.compile else _project_all_)(local)

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Project after every step of ``optimizer`` that happens.

        Uses ``Optimizer.register_step_post_hook``: a step that is skipped (an AMP
        ``GradScaler`` that found inf/NaN gradients does not call ``step``) projects nothing.

        Returns:
            The hook's handle; ``handle.remove()`` detaches the registry.
        """
        return optimizer.register_step_post_hook(lambda opt, args, kwargs: self.apply())


def _walk(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(name, module)`` for every supported module, and for every other module with
    parameters of its own (normalisation layers excepted). Supported modules are not descended
    into (``MultiheadAttention`` owns its ``out_proj``)."""
    if isinstance(module, _SUPPORTED_TYPES):
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
    kernel: Any = None,
    recurrent: Any = None,
    bias: Any = None,
    *,
    skip_unknown: bool = False,
    compile: bool = False,
) -> Constraints:
    """Constrain every supported submodule of ``model`` by role, and attach to ``optimizer``.

    Adding a constraint to an existing model is one line. Normalisation layers and ``PReLU``
    have no kernel or bias in this sense and are passed over; a module with parameters of its
    own whose type is not supported raises a TypeError naming it, unless ``skip_unknown=True``.
    A role that no submodule has raises a ValueError.

    Args:
        model: The model (``torch.compile``, DDP and FSDP2-wrapped models work).
        optimizer: The optimizer to attach to; ``None`` to attach later with
            :meth:`Constraints.attach`.
        kernel: The constraint for input weights (Linear, Conv, ConvTranspose, Embedding,
            RNN ``weight_ih``, attention projections).
        recurrent: The constraint for recurrent weights (RNN ``weight_hh``, LSTM ``weight_hr``).
        bias: The constraint for bias vectors, each one norm over the whole vector.
        skip_unknown: Pass over unsupported modules instead of raising.
        compile: Project through ``torch.compile`` (see :class:`Constraints`).

    Returns:
        The registry (its hook is attached when ``optimizer`` is given).
    """
    wanted = {"kernel": kernel, "recurrent": recurrent, "bias": bias}
    registry = Constraints(compile=compile)
    found = set()
    for name, module in _walk(model):
        if not isinstance(module, _SUPPORTED_TYPES):
            if skip_unknown:
                continue
            raise TypeError(
                f"module {name or '<model>'} ({type(module).__name__}) has parameters of its own "
                "and is not a supported type; constrain them with Constraints.add(parameter, "
                "constraint, dims=...) or pass skip_unknown=True"
            )
        layout = _layout(module)
        present = {role: c for role, c in wanted.items() if c is not None and layout[role]}
        if present:
            registry.add(module, **present, name=name or type(module).__name__)
            found.update(present)
    missing = [role for role, c in wanted.items() if c is not None and role not in found]
    if missing:
        raise ValueError(f"no module of {type(model).__name__} has {' or '.join(missing)} weights")
    if optimizer is not None:
        registry.attach(optimizer)
    return registry

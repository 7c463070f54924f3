"""Projecting tensors in place: :func:`project_` and :func:`node_norms` for any tensor, and the
projection a registry runs (distributed tensors, the eager and compiled paths, and the
selection a fast-path call projects through its plan).

Example:
    >>> import torch
    >>> from weight_constraints import MaxNorm
    >>> w = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    >>> project_(w, MaxNorm(1.0), dims=1)
    tensor([[0.6000, 0.8000],
            [0.3000, 0.4000]])
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import torch

import weight_constraints as wc
from weight_constraints._checks import Axis, normalize_axes
from weight_constraints.adapters._binding import is_per_node

from ._entries import Registration, bind_to_dims
from ._memory import check_writable, is_dtensor
from ._plan import Plan

__all__ = ["Selection", "node_norms", "project_", "project_dtensor_", "project_eagerly"]

EagerItem = tuple[torch.Tensor, "tuple[int, ...] | None", Any]
"""``(tensor, view, bound constraint)``: what the eager path projects, ``tensor`` viewed in the
shape ``view`` when it is not None."""


def project_dtensor_(tensor: Any, constraint: Any, dims: tuple[int, ...]) -> None:
    """Project a distributed tensor so that the constraint holds on the full tensor.

    When no node is split across shards (no ``Shard`` placement on a reduced dim; always for
    :class:`~weight_constraints.NonNeg`), each rank projects its own shard: no communication.
    Otherwise the full tensor is gathered, projected identically on every rank, and each rank
    keeps its shard. The parameter stays sharded either way.
    """
    from torch.distributed.tensor import Partial, Shard, distribute_tensor

    local = tensor.to_local()
    splits_nodes = any(
        isinstance(p, Partial) or (isinstance(p, Shard) and p.dim % tensor.ndim in dims)
        for p in tensor.placements
    )
    if not is_per_node(constraint) or not splits_nodes:
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
    outside inference mode, expanded views) and bounds the tensor's dtype cannot represent raise
    before anything is written.

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
    check_writable(tensor, "tensor", in_inference_mode=True)
    shape = tuple(tensor.shape)
    axes = normalize_axes(dims, shape)
    bound = bind_to_dims(resolved, axes, shape, "tensor", dims, tensor.dtype)
    with torch.no_grad():
        if is_dtensor(tensor):
            project_dtensor_(tensor, bound, axes)
        else:
            bound(tensor, out=tensor)
    return tensor


def node_norms(tensor: torch.Tensor, dims: Axis) -> torch.Tensor:
    """Per-node L2 norms of ``tensor`` over ``dims`` (float32 for half precision).

    Example:
        >>> import torch
        >>> from weight_constraints.adapters.torch import node_norms
        >>> node_norms(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), dims=1)
        tensor([5., 1.])
    """
    with torch.no_grad():
        if is_dtensor(tensor):
            tensor = tensor.full_tensor()  # type: ignore[attr-defined]
        return wc.node_norms(tensor, dims)


def _project_all_(items: Sequence[EagerItem]) -> None:
    """Project each ``(tensor, view, constraint)`` in place through the core, ``tensor`` viewed
    in the shape ``view`` when it is not None; the constraints are bound to their dims."""
    for tensor, view, constraint in items:
        target = tensor if view is None else tensor.view(view)
        constraint(target, out=target)


@functools.cache
def _compiled_projection() -> Any:
    """``torch.compile(_project_all_)``, made on first use: one graph for all the tensors of a
    registry, in which each norm and its scaling fuse into one pass over the weights."""
    return torch.compile(_project_all_)


def _project_dtensors(registrations: Iterable[Registration], with_grad_only: bool) -> None:
    """Project the distributed tensors among ``registrations`` (with ``with_grad_only``, those
    with a gradient), one by one (they never take the plans)."""
    for registration in registrations:
        tensor = registration.parameter
        if not with_grad_only or tensor.grad is not None:
            target = tensor if registration.view is None else tensor.view(registration.view)
            project_dtensor_(target, registration.projected, registration.dims)


def project_eagerly(
    items: Sequence[EagerItem], dtensors: Sequence[Registration], *, compile: bool
) -> None:
    """The projection of a full check: ``items`` one by one through the core (or through the
    compiled projection with ``compile``), then ``dtensors``; nothing is checked again."""
    with torch.no_grad():
        _project_dtensors(dtensors, False)
        if items:
            (_compiled_projection() if compile else _project_all_)(items)


class Selection:
    """What one kind of call projects on the fast path, bound once: every entry for
    ``apply()`` (``members`` None), or for a hook the entries whose tensor is in its optimizer
    (``members``, the ids of its tensors), those with a gradient being picked at each step.
    ``version`` is the registry's when it was made; its :class:`~._plan.Plan` is built on the
    first projection."""

    def __init__(
        self, registrations: Iterable[Registration], version: int, members: frozenset[int] | None
    ) -> None:
        chosen = [r for r in registrations if members is None or id(r.parameter) in members]
        self.version, self.members = version, members
        self.registrations = [r for r in chosen if not r.dtensor]
        self.items = [r.item for r in self.registrations]
        self.dtensors = [r for r in chosen if r.dtensor]
        self._plan: Plan | None = None

    def project(self, with_grad_only: bool, compile: bool) -> None:
        """Project the selection in place (with ``with_grad_only``, what has a gradient)."""
        with torch.no_grad():
            if self.dtensors:
                _project_dtensors(self.dtensors, with_grad_only)
            if compile:
                items = self.items
                if with_grad_only:
                    items = [item for item in items if item[0].grad is not None]
                if items:
                    _compiled_projection()(items)
            elif self.items:
                if self._plan is None:
                    self._plan = Plan(r.plan_item() for r in self.registrations)
                self._plan.run(with_grad_only=with_grad_only)

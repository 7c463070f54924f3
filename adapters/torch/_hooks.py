"""The step hook a registry puts on an optimizer, and the guard of the registry's fast path.

A registry's projection after a step has two paths. The first call (and any call after a
change) checks every entry in full and records what it found in a :class:`Guard`; the later
calls check only the guard, in O(1) per entry and without host synchronisation, and run the
plan bound to what they project. The guard fails for anything the full check would have to
handle (a replaced parameter, a new dtype, device, shape, layout or memory), which sends that
call through the full check again.

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(2, 3))
    >>> guard = Guard([], [w])
    >>> guard.holds()
    True
    >>> w.data = w.data.double()  # a new dtype (and new memory): the full check must run
    >>> guard.holds()
    False
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ._memory import is_dtensor
from ._optimizers import param_ids

if TYPE_CHECKING:
    from ._fused import FusedStep
    from ._project import Selection
    from ._registry import Constraints

__all__ = ["Guard", "StepHook"]


class StepHook:
    """The step post-hook of one registry on one optimizer. It knows its registry (for
    :func:`~.audit`) and caches which tensors the optimizer holds (recomputed when the tensors
    in the param groups change). Attached with ``fuse=True``, it has a :class:`~._fused.FusedStep`
    (``fused``), whose pre-hook hid the gradients of the tensors it updates: the post-hook
    projects the others, has it update and project those (after the step, so that nothing is
    written when the step raises), then gives the gradients back; ``unfused`` says why
    fuse=True was asked and not granted."""

    def __init__(self, registry: Constraints, optimizer: torch.optim.Optimizer) -> None:
        self.registry = registry
        self.optimizer = weakref.ref(optimizer)
        self._key: list[list[int]] = []
        self._members: frozenset[int] = frozenset()
        self.selection: Selection | None = None  # what this hook projects, bound once
        self.handle: RemovableHandle | None = None
        self.fused: FusedStep | None = None
        self.unfused = ""

    def members(self, optimizer: torch.optim.Optimizer) -> frozenset[int]:
        """The ids of the tensors in ``optimizer``'s param groups (recomputed when a group is
        added, or a group's list is edited in place)."""
        key = [[*map(id, group["params"])] for group in optimizer.param_groups]
        if key != self._key:
            self._members = param_ids(optimizer)
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
        if self.fused is None:
            self.registry._step(optimizer, self)
            return
        try:  # the fused tensors have no gradient now: the projection passes them over
            self.registry._step(optimizer, self)
            self.fused.run(optimizer)
        finally:
            self.fused.restore()


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


class Guard:
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

    Args:
        places: ``(module, attribute, tensor)``: each place that must still hold its tensor.
        tensors: The registered tensors (``DTensor`` ones compared in Python only).
    """

    def __init__(
        self, places: Sequence[tuple[nn.Module, str, torch.Tensor]], tensors: Sequence[torch.Tensor]
    ) -> None:
        self.places = list(places)
        self.plain = [t for t in tensors if not is_dtensor(t)]
        self.metadata = _metadata(self.plain)
        self.guards = _tensor_guards(self.plain)
        self.dtensors = [t for t in tensors if is_dtensor(t)]
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

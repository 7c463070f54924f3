"""The memory of tensors: whether a tensor can be written in place, one index of storage regions
to find tensors that share memory (views, ``.data``, ``.detach()``, slices), and the conflicts
between registered tensors, across every live registry.

Example:
    >>> import torch
    >>> w = torch.zeros(4, 6)
    >>> index = MemoryIndex()
    >>> index.add(w[:, :3], "left")
    >>> [item for _, _, item in index.sharing(w[:, 3:])]  # interleaved, but disjoint
    []
    >>> [item for _, _, item in index.sharing(w[1])]
    ['left']
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch

from weight_constraints._backends.torch import Region, may_overlap, share
from weight_constraints._backends.torch import region as core_region
from weight_constraints.adapters._errors import WeightTypeError, WeightValueError

if TYPE_CHECKING:
    from ._entries import Registration

__all__ = [
    "Conflicts",
    "MemoryIndex",
    "Region",
    "check_writable",
    "is_dtensor",
    "local",
    "may_overlap",
    "region",
]

Item = TypeVar("Item")


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a distributed tensor (``DTensor``), without importing the module."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor this process holds: a ``DTensor``'s local shard, else ``tensor`` itself."""
    return tensor.to_local() if is_dtensor(tensor) else tensor  # type: ignore[attr-defined]


def check_writable(tensor: torch.Tensor, where: str, *, in_inference_mode: bool = False) -> None:
    """Raise unless ``tensor`` is a floating-point dense tensor that can be written in place.

    Raises:
        WeightTypeError: Not floating point, or not strided (sparse and other layouts).
        WeightValueError: An inference tensor outside inference mode, or elements sharing memory.
    """
    if tensor.layout is not torch.strided:
        raise WeightTypeError(
            f"{where} has layout {tensor.layout}; only dense (strided) tensors can be projected "
            "in place",
            "constrain the dense tensor the model trains",
        )
    if not tensor.is_floating_point():
        raise WeightTypeError(
            f"can only constrain floating-point tensors, got dtype {str(tensor.dtype)[6:]} "
            f"({where})",
            "",
        )
    if tensor.is_inference() and not (in_inference_mode and torch.is_inference_mode_enabled()):
        raise WeightValueError(
            f"{where} is an inference tensor (made under torch.inference_mode())",
            "it cannot be modified in place outside inference mode. Constrain a copy made "
            "outside inference mode (tensor.clone())",
        )
    mine = local(tensor)
    if may_overlap(tuple(mine.shape), mine.stride()):
        raise WeightValueError(
            f"{where} has elements that share memory (shape {tuple(mine.shape)}, strides "
            f"{mine.stride()}: an expanded or overlapping view), so writing one node would "
            "write others",
            "constrain a tensor with memory of its own (tensor.clone())",
        )


def region(tensor: torch.Tensor) -> Region | None:
    """The :class:`Region` of ``tensor``'s local shard (see :func:`local`), or None when it has
    no memory to compare (empty, meta, no storage)."""
    return core_region(local(tensor))


def _share(ra: Region, rb: Region, a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` (their local shards), of regions ``ra`` and ``rb``, have an
    element in common (the core's exact test)."""
    return share(ra, rb, local(a), local(b))


class MemoryIndex(Generic[Item]):
    """Tensors by the storage they lie in, each with an item of the caller's, to find those
    that share an element with another tensor. The one place the adapter compares memory."""

    def __init__(self) -> None:
        self._by_storage: dict[tuple[Any, int], list[tuple[Region, torch.Tensor, Item]]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_storage)

    def add(self, tensor: torch.Tensor, item: Item, at: Region | None = None) -> None:
        """Index ``tensor`` with ``item``, at its region ``at`` (by default its region now;
        a tensor without memory is not indexed)."""
        at = region(tensor) if at is None else at
        if at is not None:
            self._by_storage.setdefault(at[:2], []).append((at, tensor, item))

    def sharing(
        self,
        tensor: torch.Tensor,
        at: Region | None = None,
        *,
        unless: Callable[[Region, torch.Tensor, Item], bool] | None = None,
    ) -> Iterator[tuple[Region, torch.Tensor, Item]]:
        """``(region, tensor, item)`` of every indexed tensor other than ``tensor`` itself that
        shares an element with it (at its region ``at``, by default its region now), in the
        order they were indexed; those for which ``unless`` holds are passed over unchecked."""
        at = region(tensor) if at is None and self._by_storage else at
        if at is None:
            return
        for other_at, other, item in self._by_storage.get(at[:2], ()):
            if other is tensor or (unless is not None and unless(other_at, other, item)):
                continue
            if _share(other_at, at, other, tensor):
                yield other_at, other, item


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype


class Conflicts:
    """The registrations seen so far, by tensor and by memory, to find one that cannot hold
    together with them: the same tensor asked for another projection (in any registry), or
    memory shared with another tensor (through ``.data``, ``.detach()``, a view or a slice).
    Across registries, the same memory in the same layout asked for the same projection is
    allowed (each registry's projection leaves the other's result as it is); within one
    registry it is not, since a plan forms every factor before it multiplies.

    ``registry`` is any object that tells registries apart (they are compared by identity).
    """

    def __init__(self) -> None:
        self._by_id: dict[int, list[tuple[object, Registration]]] = {}
        self._memory: MemoryIndex[tuple[object, Registration]] = MemoryIndex()

    def add(self, registry: object, entry: Registration) -> None:
        self._by_id.setdefault(id(entry.parameter), []).append((registry, entry))
        if entry.memory is not None:
            self._memory.add(entry.parameter, (registry, entry), entry.memory)

    def check(self, registry: object, entry: Registration) -> None:
        """Raise a ValueError, naming both, when ``entry`` of ``registry`` conflicts with a
        registration seen."""
        for other_registry, other in self._by_id.get(id(entry.parameter), ()):
            if not other.same_request(entry):
                raise _same_tensor_error(entry, other, other_registry is registry)
        if entry.memory is None:
            return

        def same_request(at: Region, tensor: torch.Tensor, seen: tuple) -> bool:
            other_registry, other = seen
            return (
                other_registry is not registry
                and at == entry.memory
                and _same_layout(other.parameter, entry.parameter)
                and other.same_request(entry)
            )

        for _, _, (other_registry, other) in self._memory.sharing(
            entry.parameter, entry.memory, unless=same_request
        ):
            where = (
                "already constrained in this registry"
                if other_registry is registry
                else "constrained by another registry"
            )
            raise ValueError(
                f"{entry.name} shares memory with {other.name}, {where} (the same storage "
                "through .data, .detach(), a view or a slice): constrain each piece of "
                "memory once"
                + ("" if other_registry is registry else " (registry.clear() drops one)")
            )


def _same_tensor_error(entry: Registration, other: Registration, same: bool) -> ValueError:
    where = "already constrained" if same else "constrained by another registry"
    return ValueError(
        f"{entry.name} is the same tensor as {other.name}, {where} with "
        f"{other.constraint!r} over dims {other.dims}; {entry.name} asks for "
        f"{entry.constraint!r} over dims {entry.dims}. A tensor takes one constraint: ask "
        "for the same one in both places"
        + (
            ""
            if same
            else " (two hooks projecting it onto different sets would leave it in "
            "whichever ran last), or clear the other registry first (registry.clear() "
            "detaches it and forgets its entries)"
        )
    )

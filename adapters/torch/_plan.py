"""The batched projection of the PyTorch adapter: the arithmetic of the registry's fast path.

The tensors a call projects are bound once to a :class:`Plan` (validated dims, views, groups and
buffers); running the plan then runs tensor operations only, with no per-call validation and no
host synchronisation (the registry's guard checks that the tensors are still those it was
bound to). The per-tensor core call costs some 20 µs of Python and half a dozen small
operations per tensor, against one ``renorm_`` for the hand-written loop; the plan brings that
down by grouping tensors that share a constraint, dtype and device:

* Small contiguous tensors of one shape and dims are stacked into one buffer: one norm over the
  stack, one factor, one product, and one ``_foreach_copy_`` back (on CUDA, a handful of kernel
  launches for the whole group). Other layouts (``channels_last``, transposed) are not stacked:
  the stack is contiguous, and a norm over it would add in another order than the core's.
* Other tensors take one norm each, written into slices of one buffer of norms; the factors of
  the whole group are formed at once and applied by one ``_foreach_mul_``.
* Contiguous float32 CPU tensors whose nodes are their trailing dims (Linear and Conv weights,
  biases; MaxNorm, UnitNorm and MinMaxNorm) are projected by the native per-row kernel
  (:mod:`._native`) when it is available and its probes passed: one call for all of them, each
  row read once and scaled from L1 only when its factor is not 1, the core's arithmetic bit for
  bit (checked at first use against the core on this machine).
* ``NonNeg`` tensors are clamped by one ``_foreach_clamp_min_``.
* Anything else (a constraint without a known factor, every entry its own node, a CPU tensor
  whose norms run over leading dims, where the core has its own faster reduction) goes through
  the core per tensor, as ``constraint(tensor, out=tensor)``.

Every path computes the norms, factors and products the core computes, so the results are the
core's bit for bit (checked by the tests on CPU); nodes inside the set come back unchanged, zero
nodes stay zero, and a NaN stays in its own node.

Example:
    >>> import torch
    >>> from weight_constraints import MaxNorm
    >>> weights = [torch.nn.Parameter(torch.full((3, 4), 1.0)) for _ in range(5)]
    >>> plan = Plan([(w, None, MaxNorm(1.0, axis=1), (1,)) for w in weights])
    >>> plan.run()  # in place, under no_grad
    >>> [round(float(w.detach()[0].norm()), 6) for w in weights]
    [1.0, 1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import torch

import weight_constraints as wc
from weight_constraints._backends import for_namespace
from weight_constraints._backends.torch import TorchBackend
from weight_constraints._checks import normalize_axes
from weight_constraints._dtypes import accumulation_dtype

from . import _native

__all__ = ["Plan"]

Factor = Callable[[torch.Tensor], torch.Tensor]
"""Maps the per-node norms (float32 or float64) to the factor each node is multiplied by."""

Item = tuple[torch.Tensor, "tuple[int, ...] | None", wc.Constraint, "tuple[int, ...]"]
"""``(tensor, view, constraint, dims)``: ``tensor`` is projected in the shape ``view`` (or its
own when None) with one norm per index of the dims not in ``dims``; ``constraint`` is bound."""

STACK_MAX_BYTES = {"cpu": 1 << 15, "other": 1 << 23}
"""Tensors up to this size (by device type) are stacked with the others of their shape and dims.
On the CPU the stack costs one more pass over the weights, which pays only while the overhead
of each operation dominates; on a GPU each operation is a kernel launch, and stacking pays up to
large tensors (measured on an H100: 100 x (64, 64) to 24 x (1024, 1024) float32)."""

STACK_CHUNK_BYTES = {"cpu": 1 << 21, "other": 1 << 25}
"""The size of one stack at most. On the CPU its buffer is kept between calls (and stays in
cache; 2 MiB takes 100 x (64, 64) float32 in one stack, some 8% faster than two stacks of
1 MiB, measured on one thread of an AMD EPYC); on other devices it is allocated per call from
the caching allocator, so that the weights are not held twice."""

NORMS_CHUNK_BYTES = 1 << 22
"""The weights one group of per-tensor norms covers at most: the norms and the products run one
after the other, so the second pass should find the weights still in cache, while the factors
of a group are formed at once."""

_HALF = (torch.float16, torch.bfloat16)


# -- the factor of each constraint -----------------------------------------------------------------
# The math is the core's: each norm constraint gives its per-node factor through its
# ``factor(n, acc, xp)`` method, and the torch backend says in which dtype the product is formed.

_BACKEND = cast(TorchBackend, for_namespace(torch))

_FACTOR_TYPES = (wc.MaxNorm, wc.UnitNorm, wc.MinMaxNorm)
"""The constraints whose projection is ``w * constraint.factor(norms)``. Exact types only: a
subclass may override ``__call__``, so it is projected by calling it, as any other constraint."""


def _factor_key(constraint: wc.Constraint) -> Any:
    """What the factor depends on: the constraint without its axis (None if it has no factor)."""
    if type(constraint) not in _FACTOR_TYPES:
        return None
    return constraint.with_axis(0)


def _factor_function(key: Any, dtype: torch.dtype) -> Factor:
    """The factor of ``key`` (see :func:`_factor_key`) for the norms of ``dtype`` weights."""
    return functools.partial(key.factor, acc=_accumulation_name(dtype), xp=torch)


# -- the steps of a plan ---------------------------------------------------------------------------


def _accumulation_name(dtype: torch.dtype) -> str:
    """The name of the dtype the norms of ``dtype`` weights are accumulated in (the core's)."""
    return accumulation_dtype(str(dtype).removeprefix("torch."))


def _accumulation(dtype: torch.dtype) -> torch.dtype:
    return getattr(torch, _accumulation_name(dtype))


def _product_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype of the factor in the product with ``tensor``, as the core forms it."""
    acc = torch.empty(0, dtype=_accumulation(tensor.dtype), device=tensor.device)
    return _BACKEND.factor_for_product(tensor, acc).dtype


class _Core:
    """Tensors projected one by one through the core: ``constraint(t, out=t)``."""

    def __init__(self, items: list[tuple[torch.Tensor, torch.Tensor, wc.Constraint]]) -> None:
        self.items = items

    def __call__(self, with_grad_only: bool) -> None:
        for tensor, target, constraint in self.items:
            if not with_grad_only or tensor.grad is not None:
                constraint(target, out=target)


class _EntryWise:
    """``NonNeg`` tensors of one device and dtype: one ``_foreach_clamp_min_``."""

    def __init__(self, tensors: list[torch.Tensor], targets: list[torch.Tensor]) -> None:
        self.tensors, self.targets = tensors, targets

    def __call__(self, with_grad_only: bool) -> None:
        targets = self.targets
        if with_grad_only:
            targets = [t for p, t in zip(self.tensors, targets, strict=True) if p.grad is not None]
        if targets:
            torch._foreach_clamp_min_(targets, 0.0)


class _Norms:
    """Tensors of one dtype, device and factor: one norm per tensor into slices of one buffer,
    the factors of all at once, one ``_foreach_mul_``."""

    def __init__(
        self, tensors: list[torch.Tensor], targets: list[torch.Tensor], dims: list, factor: Factor
    ) -> None:
        first = targets[0]
        acc = _accumulation(first.dtype)
        self.dtype = acc if first.dtype in _HALF else None  # vector_norm's dtype=
        shapes = [
            tuple(1 if i in d else n for i, n in enumerate(t.shape))
            for t, d in zip(targets, dims, strict=True)
        ]
        sizes = [math.prod(s) for s in shapes]
        self.norms = torch.zeros(sum(sizes), dtype=acc, device=first.device)
        product = _product_dtype(first)
        self.factors = torch.ones(sum(sizes), dtype=product, device=first.device)
        self.norm_slices = [c.view(s) for c, s in zip(self.norms.split(sizes), shapes, strict=True)]
        self.factor_slices = [
            c.view(s) for c, s in zip(self.factors.split(sizes), shapes, strict=True)
        ]
        self.tensors, self.targets, self.factor = tensors, targets, factor
        self.rows = list(zip(targets, dims, self.norm_slices, strict=True))

    def __call__(self, with_grad_only: bool) -> None:
        rows, targets, factors = self.rows, self.targets, self.factor_slices
        if with_grad_only:
            kept = [p.grad is not None for p in self.tensors]
            if not all(kept):
                rows = [r for r, k in zip(rows, kept, strict=True) if k]
                targets = [t for t, k in zip(targets, kept, strict=True) if k]
                factors = [f for f, k in zip(factors, kept, strict=True) if k]
                if not rows:
                    return
        dtype = self.dtype
        for target, dims, out in rows:
            torch.linalg.vector_norm(target, 2, dims, True, dtype=dtype, out=out)
        self.factors.copy_(self.factor(self.norms))
        torch._foreach_mul_(targets, factors)


class _Stack:
    """Small tensors of one shape, dims, dtype, device and factor: stacked into one buffer,
    projected there, copied back."""

    def __init__(
        self, tensors: list[torch.Tensor], targets: list[torch.Tensor], dims: tuple, factor: Factor
    ) -> None:
        first = targets[0]
        self.buffer: torch.Tensor | None = None
        self.slices: list[torch.Tensor] = []
        if _keeps_buffer(first.device):  # no allocation and no slicing per call
            shape = (len(targets), *first.shape)
            self.buffer = torch.empty(shape, dtype=first.dtype, device=first.device)
            self.slices = list(self.buffer.unbind(0))
        self.dims = tuple(d + 1 for d in dims)
        self.dtype = _accumulation(first.dtype) if first.dtype in _HALF else None
        self.product = _product_dtype(first)
        self.tensors, self.targets, self.factor = tensors, targets, factor
        self.partial = _Norms(tensors, targets, [dims] * len(targets), factor)

    def __call__(self, with_grad_only: bool) -> None:
        if with_grad_only and any(p.grad is None for p in self.tensors):
            self.partial(True)  # only some were updated: project those one norm at a time
            return
        slices: Sequence[torch.Tensor]
        if self.buffer is None:
            buffer = torch.stack(self.targets)
            slices = buffer.unbind(0)
        else:
            buffer, slices = torch.stack(self.targets, out=self.buffer), self.slices
        n = torch.linalg.vector_norm(buffer, 2, self.dims, True, dtype=self.dtype)
        buffer.mul_(self.factor(n).to(self.product))
        torch._foreach_copy_(self.targets, slices)


class _NativeRows:
    """Contiguous float32 CPU tensors projected row by row by the native kernel, in one call."""

    def __init__(
        self,
        native: _native.Native,
        tensors: list[torch.Tensor],
        targets: list[torch.Tensor],
        shapes: list[tuple[int, int]],
        projections: list[Any],
    ) -> None:
        self.native, self.tensors, self.targets = native, tensors, targets
        self.shapes, self.projections = shapes, projections
        self.array = (_native.Projection * len(projections))(*projections)

    def __call__(self, with_grad_only: bool) -> None:
        targets, shapes, array = self.targets, self.shapes, self.array
        if with_grad_only:
            kept = [i for i, p in enumerate(self.tensors) if p.grad is not None]
            if len(kept) < len(targets):
                if not kept:
                    return
                targets = [targets[i] for i in kept]
                shapes = [shapes[i] for i in kept]
                array = (_native.Projection * len(kept))(*[self.projections[i] for i in kept])
        self.native.project(targets, shapes, array)
        torch.autograd.graph.increment_version(targets)  # written through their memory


def _native_shape(target: torch.Tensor, dims: tuple[int, ...]) -> tuple[int, int] | None:
    """``(rows, cols)`` when the native kernel can project ``target`` (a contiguous float32 CPU
    tensor whose nodes are its trailing ``dims``), else None."""
    count = len(dims)
    if (
        target.device.type != "cpu"
        or target.dtype != torch.float32
        or not count
        or dims != tuple(range(target.ndim - count, target.ndim))
        or not target.is_contiguous()
        or target.numel() == 0
    ):
        return None
    return _native.rows_and_cols(target, count)


# -- the plan -------------------------------------------------------------------------------------


def _core_reduces_in_blocks(target: torch.Tensor, dims: tuple[int, ...]) -> bool:
    """Whether the core computes these norms with its own blocked CPU reduction (norms over
    leading dims), which a plain ``vector_norm`` would not reproduce bit for bit."""
    lead = 0
    while lead in dims:
        lead += 1
    return (
        target.device.type == "cpu"
        and 0 < lead < target.ndim
        and target.is_contiguous()
        and target.numel() > 0
    )


def _by_device(setting: dict[str, int], tensor: torch.Tensor) -> int:
    return setting["cpu" if tensor.device.type == "cpu" else "other"]


def _keeps_buffer(device: torch.device) -> bool:
    """Whether a stack keeps its buffer between calls (see ``STACK_CHUNK_BYTES``)."""
    return device.type == "cpu"


def _chunks(rows: list, limit: int) -> Iterable[list]:
    """Consecutive runs of ``rows`` (``(tensor, target, ...)``) of at most ``limit`` bytes each."""
    run: list = []
    size = 0
    for row in rows:
        nbytes = row[1].numel() * row[1].element_size()
        if run and size + nbytes > limit:
            yield run
            run, size = [], 0
        run.append(row)
        size += nbytes
    if run:
        yield run


def _steps(items: Sequence[Item]) -> list[Callable[[bool], None]]:
    native: _native.Native | None = None
    native_rows: list = []
    core: list = []
    entrywise: dict[Any, list] = {}
    stacks: dict[Any, list] = {}
    norms: dict[Any, list] = {}
    for tensor, view, constraint, dims in items:
        if not tensor.is_floating_point():
            raise TypeError(f"can only constrain floating-point tensors, got {tensor.dtype}")
        target = tensor if view is None else tensor.view(view)
        dims = normalize_axes(dims, tuple(target.shape))
        place = (target.dtype, target.device)
        if type(constraint) is wc.NonNeg:
            entrywise.setdefault(place, []).append((tensor, target))
            continue
        key = _factor_key(constraint)
        shape = None if key is None else _native_shape(target, dims)
        projection = None if shape is None else _native.projection(constraint)
        if projection is not None and (native := native or _native.library()) is not None:
            native_rows.append((tensor, target, shape, projection))
            continue
        if key is None or not dims or _core_reduces_in_blocks(target, dims):
            core.append((tensor, target, constraint))
        elif target.is_contiguous() and (
            target.numel() * target.element_size() <= _by_device(STACK_MAX_BYTES, target)
        ):  # a stack is contiguous: a norm over it reduces in the order of a contiguous target
            stacks.setdefault((*place, key, target.shape, dims), []).append((tensor, target, dims))
        else:
            norms.setdefault((*place, key), []).append((tensor, target, dims))
    for key, rows in list(stacks.items()):
        if len(rows) == 1:  # nothing to stack with: one norm, as the others
            norms.setdefault(key[:3], []).extend(rows)
            del stacks[key]
    steps: list[Callable[[bool], None]] = []
    if native is not None and native_rows:
        columns = [list(x) for x in zip(*native_rows, strict=True)]
        steps.append(_NativeRows(native, *columns))
    for (dtype, _, key, *_), rows in stacks.items():
        factor = _factor_function(key, dtype)
        for run in _chunks(rows, _by_device(STACK_CHUNK_BYTES, rows[0][1])):
            tensors, targets, _ = zip(*run, strict=True)
            steps.append(_Stack(list(tensors), list(targets), run[0][2], factor))
    for (dtype, _, key), rows in norms.items():
        factor = _factor_function(key, dtype)
        for run in _chunks(rows, NORMS_CHUNK_BYTES):
            tensors, targets, dims = zip(*run, strict=True)
            steps.append(_Norms(list(tensors), list(targets), list(dims), factor))
    for rows in entrywise.values():
        tensors, targets = zip(*rows, strict=True)
        steps.append(_EntryWise(list(tensors), list(targets)))
    if core:
        steps.append(_Core(core))
    return steps


class Plan:
    """The projection of a list of tensors, bound once, run in place by :meth:`run`.

    Args:
        items: ``(tensor, view, constraint, dims)`` for each tensor: the tensor (a parameter),
            the shape it is projected in (``None`` for its own; transposed convolutions with
            groups), the core constraint bound to ``dims``, and the dims each norm runs over in
            that shape. DTensors are not supported here (the registry projects them itself).

    Raises:
        TypeError: A tensor is not floating-point.
        ValueError: ``dims`` do not fit a tensor. Nothing is built or modified then.

    A plan is bound to the tensors as they are when it is built (their memory, shape, strides,
    dtype and device): its caller makes a new one when they change (the registry's guard tells).
    """

    def __init__(self, items: Iterable[Item]) -> None:
        self._items = list(items)
        self._steps = _steps(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def run(self, *, with_grad_only: bool = False) -> None:
        """Project the tensors in place under ``torch.no_grad()`` (with ``with_grad_only``,
        those whose ``.grad`` is not None), without checking them again."""
        with torch.no_grad():
            for step in self._steps:
                step(with_grad_only)

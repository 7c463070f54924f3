"""The probes of the native kernels: before a kernel is used, it is run beside what it replaces
on this machine, and compared bit for bit. A probe that finds a difference keeps torch's own
operations for what it covers (the speed changes, never the numbers).

- :func:`check_norms`: the row norms against ``torch.linalg.vector_norm`` at many row lengths;
- :func:`check_projection`: the projection against the core, with zero, NaN, inf, tiny rows and
  rows on the bound, on Linear, Conv and bias layouts;
- :func:`check_sqrt`: which square root reproduces ``torch.sqrt`` (MKL's, or the correctly
  rounded one);
- :func:`check_update`: one optimizer's update, for each combination of its options that runs
  other operations (its *signature*), against three steps of the optimizer itself.

Example:
    >>> import torch
    >>> same_bits(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, float("nan")]))
    True
    >>> same_bits(torch.tensor([0.0]), torch.tensor([-0.0]))
    False
"""

from __future__ import annotations

import ctypes
import inspect
from typing import Any

import numpy as np
import torch

import weight_constraints as wc

from ._native import NONE, Native, Projection, projection, rows_and_cols
from ._updates import KINDS, update

__all__ = ["check_norms", "check_projection", "check_sqrt", "check_update", "same_bits"]

NORM_LENGTHS = (*range(1, 81), 127, 255, 256, 257, 1000, 1023, 4096, 5000)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two float32 tensors hold the same bits (NaN where the other has NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    x, y = a.detach().numpy(), b.detach().numpy()
    nan = np.isnan(x)
    if not np.array_equal(nan, np.isnan(y)):
        return False
    return np.array_equal(np.where(nan, 0, x).view(np.int32), np.where(nan, 0, y).view(np.int32))


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(19)


def check_norms(native: Native) -> str:
    """What differs from ``vector_norm``'s row norms at the lengths tried ("" when nothing)."""
    generator = _generator()
    scales = torch.logspace(-3, 3, 8).unsqueeze(1)
    for cols in NORM_LENGTHS:
        rows = torch.randn(8, cols, generator=generator) * scales
        expected = torch.linalg.vector_norm(rows, 2, (1,), True).view(-1)
        if not same_bits(native.norms(rows), expected):
            return f"row norms of {cols} entries differ from torch.linalg.vector_norm's"
    return ""


def special_rows(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """Rows at norms from 1e-2 to 10, with a zero, a NaN, an inf, a tiny row and rows on the
    bounds 0.25, 0.5 and 1 (by construction and by rescaling)."""
    w = torch.randn(rows, cols, generator=generator)
    w *= torch.logspace(-2, 1, rows).unsqueeze(1)
    w[0] = 0.0
    w[1, 0] = float("nan")
    w[2] = 1e-30
    w[3, 0] = float("inf")
    w[4] = w[4] / torch.linalg.vector_norm(w[4]) * 0.5
    for row, value in ((5, 0.5), (6, 1.0), (7, 0.25)):
        w[row] = 0.0
        w[row, 0] = value
    return w


PROBED = (
    wc.MaxNorm(0.5),
    wc.MaxNorm(0.0),
    wc.UnitNorm(),
    wc.MinMaxNorm(0.25, 0.5),
    wc.MinMaxNorm(0.25, 0.5, rate=0.3),
)


def _layouts(generator: torch.Generator) -> list[tuple[torch.Tensor, tuple[int, ...]]]:
    """Tensors in the layouts the kernels project: Linear rows of several lengths, a Conv2d
    weight, biases (one node each)."""
    found: list[tuple[torch.Tensor, tuple[int, ...]]] = [
        (special_rows(12, cols, generator), (1,)) for cols in (1, 13, 257)
    ]
    found.append((special_rows(8, 27, generator).view(8, 3, 3, 3), (1, 2, 3)))
    for scale in (0.0, 0.3):
        found.append((torch.randn(37, generator=generator) * scale, (0,)))
    return found


def check_projection(native: Native) -> str:
    """What the kernels project otherwise than the core ("" when nothing, bit for bit)."""
    for constraint in PROBED:
        for tensor, dims in _layouts(_generator()):
            bound = constraint.with_axis(dims)
            expected = tensor.clone()
            bound(expected, out=expected)
            ours = tensor.clone()
            array = (Projection * 1)(projection(bound) or NONE)
            native.project([ours], [rows_and_cols(ours, len(dims))], array)
            if not same_bits(ours, expected):
                return f"{bound!r} on shape {tuple(tensor.shape)} differs from the core's"
    return ""


def _sqrt_inputs() -> torch.Tensor:
    generator = _generator()
    exponents = torch.randint(-40, 40, (4096,), generator=generator).float()
    values = torch.rand(4096, generator=generator) * torch.pow(10.0, exponents)
    values[:8] = torch.tensor([0.0, 1e-45, 1e-40, 1.0, 4.0, float("inf"), 3e38, 2.0])
    return values


def _torch_sqrt_matches(native: Native, values: torch.Tensor) -> bool:
    expected = values.sqrt()
    for start, length in ((0, 4096), (1, 7), (3, 1001), (11, 4085), (0, 1)):
        part = values[start : start + length].clone()
        out = torch.empty_like(part)
        if not native.lib.wc_torch_sqrt_f32(length, part.data_ptr(), out.data_ptr()):
            return False
        if not same_bits(out, expected[start : start + length]):
            return False
        if not same_bits(out, part.sqrt()):
            return False
    return True


def check_sqrt(native: Native, candidates: list[tuple[int, int]]) -> None:
    """Find the square root ``torch.sqrt`` computes: one of ``candidates`` (MKL's functions, as
    ``(address, mode)``), else the correctly rounded one; set ``native.torch_sqrt`` or
    ``native.exact_sqrt`` accordingly (neither: the foreach Adam is not fused)."""
    values = _sqrt_inputs()
    for address, mode in candidates:
        native.lib.wc_set_sqrt(ctypes.c_void_p(address), mode)
        if _torch_sqrt_matches(native, values):
            native.torch_sqrt = True
            return
    native.lib.wc_set_sqrt(None, 0)
    exact = torch.from_numpy(np.sqrt(values.numpy()))
    native.exact_sqrt = same_bits(values.sqrt(), exact)


# -- the update probe --------------------------------------------------------------------------

PROBE_SHAPES = ((3, 21), (5, 8), (1, 13), (2, 3), (4, 64))


def _options(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> dict[str, Any]:
    """The group's options that the optimizer's constructor takes."""
    accepted = inspect.signature(type(optimizer).__init__).parameters
    return {k: v for k, v in group.items() if k in accepted and k != "params"}


def check_update(native: Native, optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> str:
    """What differs between three native steps with ``group``'s options and three steps of a new
    optimizer of ``optimizer``'s type with them ("" when nothing, bit for bit, state included)."""
    kind = type(optimizer)
    sqrt = 0 if group.get("fused") or KINDS[kind] == "sgd" else native.foreach_sqrt
    if sqrt is None:
        return "torch.sqrt's square root could not be reproduced on this build"
    generator = _generator()
    start = [torch.randn(shape, generator=generator) for shape in PROBE_SHAPES]
    grads = [
        [torch.randn(shape, generator=generator) * 0.1 for shape in PROBE_SHAPES] for _ in range(3)
    ]
    for step in grads:
        step[0][1] = 0.0  # a zero-gradient row
    theirs = [torch.nn.Parameter(t.clone()) for t in start]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    options = _options(optimizer, group)
    reference = kind(theirs, **options)
    state_holder = kind(ours, **options)
    shapes = [rows_and_cols(t, 1) for t in start]
    none = [NONE] * len(start)  # the update alone
    with torch.no_grad():
        for step in grads:
            for p, g in zip(theirs, step, strict=True):
                p.grad = g.clone()
            reference.step()
            own = [g.clone() for g in step]
            group = state_holder.param_groups[0]
            update(native, state_holder, group, ours, own, shapes, none, sqrt)
    for a, b in zip(theirs, ours, strict=True):
        if not same_bits(a.detach(), b.detach()):
            return f"the {kind.__name__} update differs from torch's on this build"
        for key, value in reference.state[a].items():
            if not same_bits(value.float(), state_holder.state[b][key].float()):
                return f"the {kind.__name__} state {key!r} differs from torch's on this build"
    return ""

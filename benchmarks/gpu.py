"""GPU checks and speed ratios of the PyTorch adapter, as one short script (under 5 minutes on an
H100).

    python3 benchmarks/gpu.py --out $OUT/gpu.json   # on a CUDA machine; no download, no install
    python benchmarks/gpu.py --quick --cpu          # the same code paths on the CPU, tiny sizes

Sections (each runs even when an earlier one failed; the script exits 1 at the end when a check
failed or a section raised, after writing everything it has):

- ``correctness``: every constraint kind (the eight of ``weight_constraints``) in float32,
  float16 and bfloat16, three weight layouts, against a float64 reference written here:
  ``project_``, the registry and ``compile=True``; the constraint holds, weights already inside
  the set come back bit for bit, zero nodes stay zero (for the kinds that keep them), a NaN node
  does not leak. The norm kinds are compared entry by entry (relative to the exact value); the
  box, simplex and L1 kinds node by node (the distance to the exact projection, within the
  library's tolerance for the kind and dtype plus the float32 rounding of the computation).
- ``sync``: optimizer steps with the hook under ``torch.cuda.set_sync_debug_mode("error")``
  (any host synchronisation raises).
- ``graph``: a training step (forward, backward, optimizer step with the hook) captured in a
  CUDA graph with ``capturable=True`` optimizers, warmed up on a side stream, replayed on new
  data against an eager twin; the constraint holds after every replay.
- ``speed``: the ratios of ``benchmarks/run.py`` sections 3–4 on the device (a registry of many
  tensors against the hand-written loops, eager and ``compile=True``; the hook's overhead on a
  foreach AdamW step over 100 Linear(256) and a fused AdamW step over 24 Linear(4096)), timed
  as loops of calls with ``torch.cuda.synchronize()`` around each loop.

On the CPU (``--cpu``, or ``--quick`` without CUDA) the sync debug mode and graph capture are
not run (CUDA only; the report says so); everything else is. The JSON (``--out``) is rewritten
after every section and speed row, so a run cut short keeps what it measured. ``--budget``
bounds the time: the speed rows (and their compiles) that would start after it are reported as
not run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import math
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _checkout import ROOT, ensure_importable  # the script's folder is on sys.path

ORIGIN = ensure_importable()

import torch  # noqa: E402
import torch_bench  # noqa: E402
from _timing import Row, seconds  # noqa: E402
from report import compile_summary, cpu_name, now  # noqa: E402
from torch import nn  # noqa: E402

import weight_constraints as wc  # noqa: E402
from weight_constraints.adapters.torch import Constraints, project_  # noqa: E402

C, LOW, HIGH = 0.5, 0.25, 0.5  # MaxNorm(C), MinMaxNorm(LOW, HIGH)
BOX = 0.3  # Clip(-BOX, BOX), BoxMaxNorm(-BOX, BOX, C)
RADIUS = 1.0  # Simplex(RADIUS), MaxL1Norm(RADIUS)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Relative tolerance against the exact (float64) result. Half precision: one ulp, as the factor
# may be rounded to the dtype before the product is (bfloat16 on the CPU), plus float32 slack.
# float32: its norms of ~150 entries and the factor cost a few ulps (about 1.5 measured).
RTOL = {torch.float32: 2e-6, torch.float16: 2.0**-10 + 1e-6, torch.bfloat16: 2.0**-7 + 1e-6}
LAYOUTS = {
    "Linear (out, in), dims 1": ((64, 48), (1,)),
    "Conv2d (out, in, 3, 3), dims (1, 2, 3)": ((16, 8, 3, 3), (1, 2, 3)),
    "ConvTranspose2d (in, out, 3, 3), dims (0, 2, 3)": ((8, 16, 3, 3), (0, 2, 3)),
}

Tensor = torch.Tensor


# -- the constraint kinds and their float64 references --------------------------------------------


def _norms(w: Tensor, dims: tuple[int, ...]) -> Tensor:
    return torch.linalg.vector_norm(w, dim=dims, keepdim=True)


def _scale_to(w: Tensor, dims: tuple[int, ...], target: Callable[[Tensor], Tensor]) -> Tensor:
    """``w`` with every non-zero node rescaled to the norm ``target(n)`` (zero nodes stay)."""
    n = _norms(w, dims)
    nonzero = n > 0
    return torch.where(nonzero, w * (target(n) / torch.where(nonzero, n, 1.0)), w)


def _outside_norms(w: Tensor, dims: tuple[int, ...], low: float, high: float) -> Tensor:
    """How far the non-zero nodes' norms are outside ``[low, high]``, relative to the bound."""
    n = _norms(w, dims)
    above = (n - high).clamp_min(0) / high
    below = torch.where(n > 0, (low - n).clamp_min(0) / max(low, 1e-300), 0.0)
    return torch.maximum(above, below).max()


def _sample(shape: tuple[int, ...], dims: tuple[int, ...], low: float, high: float, seed: int):
    """float64 weights whose node norms are spread geometrically over ``[low, high]``."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=generator, dtype=torch.float64)
    n = _norms(w, dims)
    spread = torch.logspace(math.log10(low), math.log10(high), n.numel(), dtype=torch.float64)
    order = torch.randperm(n.numel(), generator=generator)
    return w / n * spread[order].reshape(n.shape)


def _one_hot(shape: tuple[int, ...], dims: tuple[int, ...], seed: int) -> Tensor:
    """Nodes of norm exactly 1 in every dtype: one entry ±1 each, the others zero."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    peak = x.abs().amax(dim=dims, keepdim=True)
    return torch.where(x.abs() == peak, x.sign(), 0.0)


def _moved(dims: tuple[int, ...], ndim: int) -> list[int]:
    """The order that puts the node dims last (one node per row after a reshape)."""
    return [d for d in range(ndim) if d not in dims] + list(dims)


def _per_row(w: Tensor, dims: tuple[int, ...], project: Callable[[Tensor], Tensor]) -> Tensor:
    """``project`` applied to the nodes of ``w`` as rows ``(nodes, m)``, put back in place."""
    order = _moved(dims, w.ndim)
    moved = w.permute(order)
    rows = project(moved.reshape(-1, math.prod(w.shape[d] for d in dims)))
    return rows.reshape(moved.shape).permute([order.index(d) for d in range(w.ndim)])


def _simplex_rows(y: Tensor, radius: float) -> Tensor:
    """Duchi et al. (2008), in float64: the threshold from the sorted rows."""
    u = y.sort(dim=1, descending=True).values
    k = torch.arange(1, y.shape[1] + 1, dtype=y.dtype)
    theta = (u.cumsum(1) - radius) / k
    rho = (u - theta > 0).sum(1, keepdim=True)  # the entries left positive
    return (y - theta.gather(1, rho - 1)).clamp_min(0)


def _l1_rows(y: Tensor, radius: float) -> Tensor:
    shrunk = y.sign() * _simplex_rows(y.abs(), radius)
    return torch.where(y.abs().sum(1, keepdim=True) > radius, shrunk, y)


def _box_rows(y: Tensor, low: float, high: float, c: float) -> Tensor:
    """clip(s·y) with the largest s in [0, 1] whose norm is at most c, by bisection (float64:
    60 halvings reach its rounding)."""
    lo, hi = torch.zeros(len(y), 1, dtype=y.dtype), torch.ones(len(y), 1, dtype=y.dtype)
    fits = torch.linalg.vector_norm((hi * y).clamp(low, high), dim=1, keepdim=True) <= c
    for _ in range(60):
        mid = (lo + hi) / 2
        ok = torch.linalg.vector_norm((mid * y).clamp(low, high), dim=1, keepdim=True) <= c
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return (torch.where(fits, hi, lo) * y).clamp(low, high)


def _sum_outside(w: Tensor, dims: tuple[int, ...], radius: float, exact: bool) -> Tensor:
    """How far node sums (``exact``: of the entries; else L1 norms) are off ``radius`` (or
    above it), relative, and how negative the entries of a simplex are."""
    if exact:
        gap = (w.sum(dim=dims) - radius).abs()
        return torch.maximum(gap.max() / radius, (-w).clamp_min(0).max())
    return ((w.abs().sum(dim=dims) - radius).clamp_min(0) / radius).max()


@dataclass(frozen=True)
class Kind:
    """A constraint with what checking it needs: the exact projection in float64, how far a
    tensor is outside the set (relative; 0 inside), weights already inside the set, and how
    the result is compared with the exact projection (``"entries"``, relative to each exact
    value, or ``"nodes"``, the distance of each node within the kind's tolerance)."""

    constraint: wc.Constraint
    reference: Callable[[Tensor, tuple[int, ...]], Tensor]
    outside: Callable[[Tensor, tuple[int, ...]], Tensor]
    inside: Callable[[tuple[int, ...], tuple[int, ...], int], Tensor]
    compare: str = "entries"
    keeps_zero: bool = True  # a zero node stays zero (the simplex moves it to its centre)


KINDS: dict[str, Kind] = {
    "MaxNorm": Kind(
        wc.MaxNorm(C),
        lambda w, dims: _scale_to(w, dims, lambda n: n.clamp_max(C)),
        lambda w, dims: _outside_norms(w, dims, 0.0, C),
        lambda shape, dims, seed: _sample(shape, dims, 0.05, 0.9 * C, seed),
    ),
    "UnitNorm": Kind(
        wc.UnitNorm(),
        lambda w, dims: _scale_to(w, dims, torch.ones_like),
        lambda w, dims: _outside_norms(w, dims, 1.0, 1.0),
        _one_hot,
    ),
    "MinMaxNorm": Kind(
        wc.MinMaxNorm(LOW, HIGH),
        lambda w, dims: _scale_to(w, dims, lambda n: n.clamp(LOW, HIGH)),
        lambda w, dims: _outside_norms(w, dims, LOW, HIGH),
        lambda shape, dims, seed: _sample(shape, dims, 1.1 * LOW, 0.9 * HIGH, seed),
    ),
    "NonNeg": Kind(
        wc.NonNeg(),
        lambda w, dims: w.clamp_min(0),
        lambda w, dims: (-w).clamp_min(0).max(),
        lambda shape, dims, seed: _sample(shape, dims, 0.05, 2.0, seed).abs(),
    ),
    "Clip": Kind(
        wc.Clip(-BOX, BOX),
        lambda w, dims: w.clamp(-BOX, BOX),
        lambda w, dims: (w.abs() - BOX).clamp_min(0).max() / BOX,
        lambda shape, dims, seed: _sample(shape, dims, 0.05, 2.0, seed).clamp(-BOX, BOX),
    ),
    "BoxMaxNorm": Kind(
        wc.BoxMaxNorm(-BOX, BOX, C),
        lambda w, dims: _per_row(w, dims, lambda y: _box_rows(y, -BOX, BOX, C)),
        lambda w, dims: torch.maximum(
            (w.abs() - BOX).clamp_min(0).max() / BOX, _outside_norms(w, dims, 0.0, C)
        ),
        lambda shape, dims, seed: _sample(shape, dims, 0.05, 0.9 * C, seed).clamp(-BOX, BOX),
        compare="nodes",
    ),
    "Simplex": Kind(
        wc.Simplex(RADIUS),
        lambda w, dims: _per_row(w, dims, lambda y: _simplex_rows(y, RADIUS)),
        lambda w, dims: _sum_outside(w, dims, RADIUS, exact=True),
        lambda shape, dims, seed: _one_hot(shape, dims, seed).abs() * RADIUS,
        compare="nodes",
        keeps_zero=False,
    ),
    "MaxL1Norm": Kind(
        wc.MaxL1Norm(RADIUS),
        lambda w, dims: _per_row(w, dims, lambda y: _l1_rows(y, RADIUS)),
        lambda w, dims: _sum_outside(w, dims, RADIUS, exact=False),
        lambda shape, dims, seed: _one_hot(shape, dims, seed) * 0.5 * RADIUS,
        compare="nodes",
    ),
}


def kind_of(constraint: wc.Constraint) -> Kind:
    return KINDS[type(constraint).__qualname__]


# -- sections -----------------------------------------------------------------------------------


@dataclass
class Section:
    """What one section found: checks (each ok or not, with numbers), what it did not run."""

    name: str
    status: str = "not started"
    seconds: float = 0.0
    checks: list[dict] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    error: str | None = None

    def check(self, name: str, ok: bool, **details: object) -> bool:
        self.checks.append({"name": name, "ok": bool(ok), **details})
        return bool(ok)

    @property
    def failed(self) -> list[dict]:
        return [c for c in self.checks if not c["ok"]]


@dataclass
class Settings:
    device: torch.device
    quick: bool
    compile: bool
    repeats: int
    deadline: float  # time.monotonic() after which no new speed row or compile starts

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


def _node_mask(shape: tuple[int, ...], dims: tuple[int, ...], index: int) -> Tensor:
    """True on the entries of the nodes with ``index`` along the first dim not in ``dims``."""
    mask = torch.zeros(shape, dtype=torch.bool)
    mask.select(min(set(range(len(shape))) - set(dims)), index).fill_(True)
    return mask


def _worst(ours: Tensor, exact: Tensor, dtype: torch.dtype) -> float:
    """max |ours − exact| / (rtol·|exact| + tiny): at most 1 passes."""
    rtol, tiny = RTOL[dtype], torch.finfo(dtype).tiny
    error = (ours.double() - exact).abs() / (rtol * exact.abs() + tiny)
    return float(error.max())


def _worst_node(
    ours: Tensor, exact: Tensor, dims: tuple[int, ...], kind: Kind, dtype: torch.dtype
) -> float:
    """The largest distance of a node from the exact projection over what the kind allows:
    the library's tolerance for the kind and dtype (``roundings · eps · scale``) plus eight
    float32 roundings of the computation; at most 1 passes."""
    eps = torch.finfo(dtype).eps
    allowed = (kind.constraint.roundings * eps + 8 * 2.0**-23) * max(C, BOX, RADIUS, 1.0)
    distance = torch.linalg.vector_norm(ours.double() - exact, dim=dims)
    return float(distance.max()) / allowed


def _compare(ours: Tensor, exact: Tensor, dims: tuple[int, ...], kind: Kind, dtype) -> float:
    if kind.compare == "nodes":
        return _worst_node(ours, exact, dims, kind, dtype)
    return _worst(ours, exact, dtype)


def correctness(section: Section, s: Settings) -> None:
    for name in wc.__all__:
        public = getattr(wc, name)
        if (
            isinstance(public, type)
            and issubclass(public, wc.Constraint)
            and public is not (wc.Constraint)
        ):
            section.check(f"{name} has a float64 reference in gpu.py", name in KINDS)
    cases = list(itertools.product(KINDS.items(), DTYPES, LAYOUTS.items()))
    compiled = Constraints(compile=True) if s.compile else None
    compiled_cases = []
    first_layout = next(iter(LAYOUTS))
    if s.quick and compiled is not None:
        section.not_run.append(f"compile=True on layouts other than {first_layout} (--quick)")
    for seed, ((name, kind), dtype, (layout, (shape, dims))) in enumerate(cases):
        label = f"{name}, {str(dtype)[6:]}, {layout}"
        exact_input = _sample(shape, dims, 0.05, 2.0, seed)
        exact_input[_node_mask(shape, dims, 0)] = 0.0  # a zero node
        w = exact_input.to(s.device, dtype)
        exact = kind.reference(w.double(), dims)
        result = project_(w.clone(), kind.constraint, dims)
        worst = _compare(result, exact, dims, kind, dtype)
        section.check(
            f"{label}: project_ against the float64 reference",
            worst <= 1 and result.dtype == dtype,
            worst_in_tolerances=worst,
            dtype=str(result.dtype),
        )
        outside = float(kind.outside(result.double(), dims))
        section.check(f"{label}: the constraint holds", outside <= RTOL[dtype], outside=outside)
        zero = _node_mask(shape, dims, 0).to(s.device)
        if kind.keeps_zero:
            section.check(f"{label}: the zero node stays zero", bool((result[zero] == 0).all()))
        target = w.clone()
        Constraints().add(target, kind.constraint, dims=dims).apply()
        section.check(f"{label}: the registry gives project_'s result", torch.equal(target, result))
        inside = kind.inside(shape, dims, seed).to(s.device, dtype)
        section.check(
            f"{label}: weights inside the set come back bit for bit",
            torch.equal(project_(inside.clone(), kind.constraint, dims), inside),
        )
        nan_node = _node_mask(shape, dims, 1).to(s.device)
        poisoned = project_(w.clone().masked_fill_(nan_node, float("nan")), kind.constraint, dims)
        section.check(
            f"{label}: a NaN node does not leak into the others",
            torch.equal(poisoned[~nan_node], result[~nan_node]),
        )
        if compiled is not None and (layout == first_layout or not s.quick):
            copies = (w.clone(), inside.clone())
            compiled.add(copies[0], kind.constraint, dims=dims, name=f"{label}")
            compiled.add(copies[1], kind.constraint, dims=dims, name=f"{label}, inside")
            compiled_cases.append((label, kind, dtype, dims, exact, copies, inside))
    if compiled is None:
        section.not_run.append("compile=True (--no-compile)")
        return
    torch.compiler.reset()
    start = time.perf_counter()
    compiled.apply()
    s.sync()
    section.check(
        f"compile=True: one graph for {len(compiled)} tensors compiled and ran",
        True,
        seconds=time.perf_counter() - start,
    )
    for label, kind, dtype, dims, exact, (projected, inside_copy), inside in compiled_cases:
        worst = _compare(projected, exact, dims, kind, dtype)
        outside = float(kind.outside(projected.double(), dims))
        section.check(
            f"{label}: compile=True against the float64 reference, constraint holds",
            worst <= 1 and outside <= RTOL[dtype] and projected.dtype == dtype,
            worst_in_tolerances=worst,
            outside=outside,
        )
        section.check(
            f"{label}: compile=True leaves weights inside the set bit for bit",
            torch.equal(inside_copy, inside),
        )


def constrained_model(s: Settings, *, compile: bool = False) -> tuple[nn.Module, Constraints]:
    """A seeded MLP of four Linear layers whose kernels get the kinds in turn (a registry not
    yet attached)."""
    torch.manual_seed(0)
    widths = (32, 64, 64, 64, 8)
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).to(s.device)
    registry = Constraints(compile=compile)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for layer, kind in zip(linears, itertools.cycle(KINDS.values())):
        registry.add(layer, kernel=kind.constraint)
    return model, registry


def batches(s: Settings, count: int) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(16, 32, generator=generator).to(s.device),
            torch.randn(16, 8, generator=generator).to(s.device),
        )
        for _ in range(count)
    ]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()


def worst_outside(registry: Constraints) -> float:
    """The largest relative distance outside its set of any registered tensor (float32)."""
    values = []
    with torch.no_grad():
        for e in registry:
            tensor = e.parameter if e.view is None else e.parameter.view(e.view)
            values.append(float(kind_of(e.constraint).outside(tensor.double(), e.dims)))
    return max(values)


@contextlib.contextmanager
def no_host_sync(s: Settings) -> Iterator[None]:
    """Inside the block, on CUDA, any host synchronisation raises a RuntimeError."""
    if not s.cuda:
        yield
        return
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


OPTIMIZERS: dict[str, Callable[[list, bool], torch.optim.Optimizer]] = {
    "AdamW (foreach)": lambda p, cap: torch.optim.AdamW(p, 1e-3, foreach=True, capturable=cap),
    "AdamW (fused)": lambda p, cap: torch.optim.AdamW(p, 1e-3, fused=True, capturable=cap),
    "SGD (momentum, foreach)": lambda p, cap: torch.optim.SGD(p, 1e-2, momentum=0.9, foreach=True),
}


def sync(section: Section, s: Settings) -> None:
    if not s.cuda:
        section.not_run.append(
            "torch.cuda.set_sync_debug_mode('error') (CUDA only): the steps "
            "run and the constraint is checked, without the sync check"
        )
    data = batches(s, 4)
    for name, make in OPTIMIZERS.items():
        for with_hook in (False, True):
            model, registry = constrained_model(s)
            optimizer = make(list(model.parameters()), False)
            if with_hook:
                registry.attach(optimizer)
            train_step(model, optimizer, *data[0])  # the optimizer's state is made here
            before = [p.detach().clone() for p in model.parameters()]
            label = f"{name} step {'with' if with_hook else 'without'} the hook"
            try:
                with no_host_sync(s):
                    for x, y in data[1:]:
                        train_step(model, optimizer, x, y)
                error = None
            except RuntimeError as exc:
                error = str(exc).splitlines()[0]
            s.sync()
            if s.cuda:  # the baseline without the hook tells whether the optimizer alone syncs
                baseline = "" if with_hook else " (baseline)"
                section.check(
                    f"{label}{baseline}: no host synchronisation", error is None, error=error
                )
            if with_hook:
                outside = worst_outside(registry)
                section.check(f"{label}: the constraint holds", outside <= 1e-5, outside=outside)
            moved = any(
                not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)
            )
            section.check(f"{label}: the weights were updated", moved)
    for compile in (False, True) if s.compile else (False,):
        model, registry = constrained_model(s, compile=compile)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(4.0)  # well outside the sets
        registry.apply()  # compiles, with compile=True
        try:
            with no_host_sync(s), torch.no_grad():
                for p in model.parameters():
                    p.mul_(4.0)
                registry.apply()
            error = None
        except RuntimeError as exc:
            error = str(exc).splitlines()[0]
        s.sync()
        label = f"Constraints(compile={compile}).apply()"
        if s.cuda:
            section.check(f"{label}: no host synchronisation", error is None, error=error)
        outside = worst_outside(registry)
        section.check(f"{label}: the constraint holds", outside <= 1e-5, outside=outside)


def graph(section: Section, s: Settings) -> None:
    steps, replays = 3, 5
    data = batches(s, steps + replays)
    if not s.cuda:
        section.not_run.append(
            "CUDA graph capture and replay (CUDA only): the same training "
            "steps run eagerly and the constraint is checked after each"
        )
    for name in ("AdamW (foreach)", "AdamW (fused)"):
        make = OPTIMIZERS[name]
        twin, twin_registry = constrained_model(s)  # eager, step by step
        twin_optimizer = make(list(twin.parameters()), s.cuda)
        twin_registry.attach(twin_optimizer)
        label = f"{name}, capturable={s.cuda}"
        if not s.cuda:
            worst = 0.0
            for x, y in data:
                train_step(twin, twin_optimizer, x, y)
                worst = max(worst, worst_outside(twin_registry))
            section.check(
                f"{label}: the constraint holds after every eager step",
                worst <= 1e-5,
                outside=worst,
            )
            continue
        model, registry = constrained_model(s)
        optimizer = make(list(model.parameters()), True)
        registry.attach(optimizer)
        static_x, static_y = (t.clone() for t in data[0])
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as PyTorch's docs require
            for x, y in data[:steps]:
                static_x.copy_(x)
                static_y.copy_(y)
                train_step(model, optimizer, static_x, static_y)
        torch.cuda.current_stream().wait_stream(side)
        for x, y in data[:steps]:
            train_step(twin, twin_optimizer, x, y)
        captured = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(captured):
            nn.functional.mse_loss(model(static_x), static_y).backward()
            optimizer.step()
        worst, before = 0.0, [p.detach().clone() for p in model.parameters()]
        for x, y in data[steps:]:
            static_x.copy_(x)
            static_y.copy_(y)
            captured.replay()
            train_step(twin, twin_optimizer, x, y)
            torch.cuda.synchronize()
            worst = max(worst, worst_outside(registry))
        section.check(f"{label}: captured in a CUDA graph and replayed {replays} times", True)
        section.check(
            f"{label}: the constraint holds after every replay", worst <= 1e-5, outside=worst
        )
        moved = any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        section.check(f"{label}: the replays updated the weights", moved)
        difference = max(
            float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
            for a, b in zip(model.parameters(), twin.parameters(), strict=True)
        )
        section.check(
            f"{label}: replayed weights equal the eager twin's (relative max difference)",
            difference <= 1e-4,
            difference=difference,
        )


# -- speed --------------------------------------------------------------------------------------


def speed_jobs(s: Settings) -> list[tuple[str, Callable[[], list[Row]]]]:
    """The speed rows, most important first, each a separate job (one row or one row set)."""
    quick = s.quick
    layouts = torch_bench.QUICK_LAYOUTS if quick else torch_bench.LAYOUTS
    target = 1e-3 if quick else 0.01
    common = {
        "device": s.device,
        "repeats": s.repeats,
        "compile": s.compile and not quick,
        "sync": s.sync,
        "compile_allowed": lambda: s.time_left() > 60 or quick,
    }
    big = (2, 32) if quick else (24, 4096)
    small = (4, 16) if quick else (100, 256)
    jobs: list[tuple[str, Callable[[], list[Row]]]] = [
        (
            f"fused AdamW step, {big[0]} × Linear({big[1]}), with and without the hook",
            lambda: [torch_bench.hook_row(*big, fused=True, target_s=target * 2, **common)],
        ),
        (
            f"foreach AdamW step, {small[0]} × Linear({small[1]}), with and without the hook",
            lambda: [torch_bench.hook_row(*small, target_s=target * 2, **common)],
        ),
    ]
    for layout in (big, (1, 64 if quick else 4096)):  # issue 19's GPU goals
        jobs.append(
            (
                f"fused AdamW step, {layout[0]} × Linear({layout[1]}): fuse=True and the hook",
                lambda layout=layout: torch_bench.step_rows(
                    (layout,),
                    repeats=s.repeats,
                    target_s=target * 2,
                    compile=False,
                    device=s.device,
                    sync=s.sync,
                    optimizers=("AdamW",),
                    modes=("fused=True",),
                ),
            )
        )
    for kind in torch_bench.REFERENCES:
        for layout in layouts:
            jobs.append(
                (
                    f"{kind}, {layout[0]} × Linear({layout[1]}): registry against hand-written",
                    lambda kind=kind, layout=layout: torch_bench.registry_rows(
                        (layout,), kinds=(kind,), target_s=target, **common
                    ),
                )
            )
    return jobs


def speed(section: Section, s: Settings, rows: list[Row], save: Callable[[], None]) -> None:
    if s.quick and s.compile:
        section.not_run.append(
            "compile=True rows (--quick: compiling each row takes seconds; "
            "benchmarks/run.py --quick runs the same rows compiled)"
        )
    for name, job in speed_jobs(s):
        if s.time_left() <= 0:
            section.not_run.append(f"{name} (past the time budget)")
            continue
        start = time.perf_counter()
        try:
            new = job()
        except Exception:  # one row's failure must not lose the others
            section.check(f"{name}: ran", False, error=traceback.format_exc(limit=-3))
            continue
        finally:
            gc.collect()
            if s.cuda:
                torch.cuda.empty_cache()
        rows += new
        compiled = all("compile=True / eager" in r.extra for r in new)
        section.check(f"{name}: ran", True, seconds=time.perf_counter() - start)
        if s.compile and not s.quick and not compiled:
            section.not_run.append(f"{name}: compile=True (past the time budget)")
        save()


# -- report -------------------------------------------------------------------------------------


def device_info(s: Settings) -> dict[str, str]:
    info = {
        "date": now(),
        "device": str(s.device),
        "gpu": "none (CPU)",
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "torch": f"{torch.__version__} ({torch.get_num_threads()} CPU threads)",
        "weight_constraints": f"{wc.__version__} ({ORIGIN}: {Path(wc.__file__).parent})",
        "mode": "quick (tiny sizes)" if s.quick else "full",
    }
    if s.cuda:
        props = torch.cuda.get_device_properties(s.device)
        info["gpu"] = (
            f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
            f"compute capability {props.major}.{props.minor}, "
            f"{props.multi_processor_count} multiprocessors"
        )
        info["cuda"] = str(torch.version.cuda)
        with contextlib.suppress(ImportError):
            import triton

            info["triton"] = triton.__version__
    return info


def print_report(info: dict, sections: list[Section], rows: list[Row]) -> None:
    print(f"weight_constraints on {info['gpu'] if info['gpu'] != 'none (CPU)' else 'the CPU'}")
    for key, value in info.items():
        print(f"  {key}: {value}")
    for section in sections:
        failed = section.failed
        print(
            f"\n== {section.name}: {section.status} ({section.seconds:.1f} s), "
            f"{len(section.checks) - len(failed)}/{len(section.checks)} checks passed"
        )
        for check in failed:
            details = {k: v for k, v in check.items() if k not in ("name", "ok")}
            print(f"  FAILED {check['name']} {details}")
        for line in section.not_run:
            print(f"  not run: {line}")
        if section.error:
            print("  ERROR:\n    " + section.error.strip().replace("\n", "\n    "))
    if rows:
        print("\n== speed rows (median seconds per call; per tensor where it applies)")
        for r in rows:
            per = f", {r.tensors} tensors" if r.tensors else ""
            print(f"  {r.case}{per}")
            for name, value in r.medians.items():
                each = f" ({seconds(value / r.tensors)} per tensor)" if r.tensors else ""
                print(f"      {name:28} {seconds(value):>10}{each}")
            met = {True: "met", False: "MISSED", None: ""}[r.met]
            extra = "".join(f"; {k} {v:.2f}x" for k, v in r.extra.items())
            print(f"      {r.ratio_name} {r.ratio:.2f}x (goal {r.goal}: {met}){extra}")
        for title, section_rows in (
            ("registry", [r for r in rows if r.section == "registry"]),
            ("hook", [r for r in rows if r.section == "hook"]),
        ):
            summary = compile_summary(section_rows)
            if summary:
                print(f"\n  {title}: {summary.replace('`', '')}")


SECTIONS = {"correctness": correctness, "sync": sync, "graph": graph, "speed": speed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is there")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "gpu" / "gpu.json",
        help="the JSON",
    )
    parser.add_argument("--repeats", type=int, default=None, help="median of (default 21)")
    parser.add_argument("--no-compile", action="store_true", help="skip compile=True")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds (default 240; no limit with --quick)"
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)}"
    )
    args = parser.parse_args(argv)
    names = [n for n in args.sections.split(",") if n]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    if not args.cpu and not torch.cuda.is_available():
        if not args.quick:
            print(
                "CUDA is not available: pass --cpu (or --quick) to run the CPU paths",
                file=sys.stderr,
            )
            return 2
        args.cpu = True
    budget = args.budget if args.budget is not None else (math.inf if args.quick else 240.0)
    s = Settings(
        device=torch.device("cpu" if args.cpu else "cuda"),
        quick=args.quick,
        compile=not args.no_compile,
        repeats=args.repeats or (3 if args.quick else 21),
        deadline=time.monotonic() + budget,
    )
    if not s.cuda:
        torch.set_num_threads(1)  # as benchmarks/run.py's sections 3-4
    info = device_info(s)
    sections = [Section(name) for name in names]
    rows: list[Row] = []

    def save() -> None:
        failures = [f"{x.name}: {c['name']}" for x in sections for c in x.failed]
        failures += [f"{x.name}: raised" for x in sections if x.error]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "device": info,
                    "sections": {x.name: asdict(x) for x in sections},
                    "rows": [asdict(r) for r in rows],
                    "failures": failures,
                    "complete": all(x.status != "not started" for x in sections),
                },
                indent=2,
            )
            + "\n"
        )

    for section in sections:
        start = time.perf_counter()
        section.status = "running"
        print(f"{section.name} ...", file=sys.stderr, flush=True)
        try:
            if section.name == "speed":
                speed(section, s, rows, save)
            else:
                SECTIONS[section.name](section, s)
            section.status = "failed" if section.failed else "ok"
        except Exception:  # one section's failure must not lose the others
            section.error = traceback.format_exc()
            section.status = "error"
        finally:
            section.seconds = time.perf_counter() - start
            gc.collect()
            if s.cuda:
                with contextlib.suppress(Exception):
                    torch.cuda.set_sync_debug_mode(0)
                    torch.cuda.empty_cache()
        save()
    info["total time"] = f"{sum(x.seconds for x in sections):.0f} s"
    save()
    print_report(info, sections, rows)
    print(f"\nwritten: {args.out}")
    return 1 if any(x.status != "ok" for x in sections) else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The PyTorch adapter: one tensor against ``renorm_``, a registry of many tensors against the
hand-written loops it replaces, and the hook inside an optimizer step.

:func:`registry_rows` and :func:`hook_row` take a device and a ``sync`` function, so that
``benchmarks/gpu.py`` runs the same code on CUDA as ``benchmarks/run.py`` runs on the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from _timing import COMPILED, Row, compile_extra, interleaved, interleaved_loops
from torch import nn

import weight_constraints as wc
from weight_constraints.adapters.torch import Constraints, constrain, project_

# (number of layers, width, goal for ours / hand-written): the model shapes.
LAYOUTS: tuple[tuple[int, int, float], ...] = (
    (100, 64, 0.5),
    (100, 256, 1.0),
    (24, 1024, 1.0),
    (1, 4096, 1.0),
)
QUICK_LAYOUTS: tuple[tuple[int, int, float], ...] = ((4, 8, 0.5), (1, 32, 1.0))

TINY = 1e-12  # torch.nn.functional.normalize's eps


@dataclass(frozen=True)
class Reference:
    """A constraint and the hand-written PyTorch loop that it replaces, for ``Linear`` weights
    ``(out, in)`` (one norm per row)."""

    constraint: wc.Constraint
    written: str
    loop: Callable[[list[torch.Tensor]], None]


def _renorm(weights: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for w in weights:
            w.renorm_(2, 0, 0.5)


def _normalize(weights: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for w in weights:
            w.div_(w.norm(dim=1, keepdim=True).clamp_min(TINY))


def _clamp_norms(weights: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for w in weights:
            n = w.norm(dim=1, keepdim=True)
            w.mul_(n.clamp(0.25, 0.5).div_(n.clamp_min(TINY)))


REFERENCES: dict[str, Reference] = {
    "MaxNorm": Reference(wc.MaxNorm(0.5), "w.renorm_(2, 0, 0.5)", _renorm),
    "UnitNorm": Reference(
        wc.UnitNorm(), "w.div_(w.norm(dim=1, keepdim=True).clamp_min(1e-12))", _normalize
    ),
    "MinMaxNorm": Reference(
        wc.MinMaxNorm(0.25, 0.5),
        "n = w.norm(dim=1, keepdim=True); w.mul_(n.clamp(0.25, 0.5).div_(n.clamp_min(1e-12)))",
        _clamp_norms,
    ),
}


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Run torch's CPU operations on ``count`` threads inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _always() -> bool:
    return True


def linear_layers(count: int, width: int, device: str | torch.device) -> list[nn.Linear]:
    """``count`` ``Linear(width, width)`` layers, seeded (the default init: row norms ~0.58)."""
    torch.manual_seed(0)
    return [nn.Linear(width, width, device=device) for _ in range(count)]


def registry_rows(
    layouts: tuple[tuple[int, int, float], ...],
    *,
    device: str | torch.device = "cpu",
    repeats: int = 21,
    target_s: float = 0.02,
    compile: bool = True,
    sync: Callable[[], object] | None = None,
    compile_allowed: Callable[[], bool] = _always,
    section: str = "registry",
    kinds: tuple[str, ...] = tuple(REFERENCES),
) -> list[Row]:
    """``Constraints.apply()`` over the weights of ``count`` Linear layers against the
    hand-written loop over the same tensors, for each constraint of :data:`REFERENCES` named
    in ``kinds``.

    With ``compile``, a ``Constraints(compile=True)`` registry over the same tensors runs beside
    them (compiled before timing; skipped for a row when ``compile_allowed()`` says no).
    """
    rows = []
    for kind in kinds:
        reference = REFERENCES[kind]
        for count, width, goal in layouts:
            layers = linear_layers(count, width, device)
            weights = [layer.weight for layer in layers]
            eager = Constraints()
            for layer in layers:
                eager.add(layer, kernel=reference.constraint)
            contenders: dict[str, Callable[[], object]] = {
                "ours": eager.apply,
                "hand-written": lambda weights=weights, loop=reference.loop: loop(weights),
            }
            if compile and compile_allowed():
                torch.compiler.reset()  # compiled for these tensors alone, as in a fresh process
                compiled = Constraints(compile=True)
                for layer in layers:
                    compiled.add(layer, kernel=reference.constraint)
                compiled.apply()  # compiles (seconds)
                contenders[COMPILED] = compiled.apply
            medians, _ = interleaved_loops(contenders, repeats, target_s=target_s, sync=sync)
            ratio = medians["ours"] / medians["hand-written"]
            extra = compile_extra(medians)
            rows.append(
                Row(
                    section,
                    f"{kind}, {count} × Linear({width})",
                    medians,
                    "ours / hand-written",
                    ratio,
                    goal=f"≤ {goal:.1f}×",
                    met=ratio <= goal,
                    extra=extra,
                    tensors=count,
                )
            )
    return rows


def hook_row(
    count: int,
    width: int,
    *,
    fused: bool = False,
    device: str | torch.device = "cpu",
    repeats: int = 21,
    target_s: float = 0.05,
    compile: bool = True,
    sync: Callable[[], object] | None = None,
    compile_allowed: Callable[[], bool] = _always,
    section: str = "hook",
) -> Row:
    """An AdamW step (foreach, or fused) over ``count`` Linear layers with the hook projecting
    their weights onto MaxNorm(0.5), against the same step without it.

    Three optimizers update the same parameters (same gradients, each with its own state): one
    plain, one with the eager hook, one with the ``compile=True`` hook. The registry's
    ``apply()`` alone is timed beside them.
    """
    layers = linear_layers(count, width, device)
    parameters = [p for layer in layers for p in layer.parameters()]
    for p in parameters:
        p.grad = torch.randn_like(p) * 1e-3

    def adamw() -> torch.optim.Optimizer:
        kind = {"fused": True} if fused else {"foreach": True}
        return torch.optim.AdamW(parameters, lr=1e-4, **kind)

    plain, hooked = adamw(), adamw()
    registry = Constraints()
    for layer in layers:
        registry.add(layer, kernel=wc.MaxNorm(0.5))
    registry.attach(hooked)
    contenders: dict[str, Callable[[], object]] = {
        "step": plain.step,
        "step + hook": hooked.step,
        "hook alone": registry.apply,
    }
    if compile and compile_allowed():
        torch.compiler.reset()
        compiled_step = adamw()
        compiled = Constraints(compile=True)
        for layer in layers:
            compiled.add(layer, kernel=wc.MaxNorm(0.5))
        compiled.attach(compiled_step)
        compiled.apply()  # compiles (seconds)
        contenders["step + hook, compile=True"] = compiled_step.step
    medians, _ = interleaved_loops(contenders, repeats, target_s=target_s, sync=sync)
    ratio = medians["step + hook"] / medians["step"]
    extra = {"hook alone / step": medians["hook alone"] / medians["step"]}
    compiled_median = medians.get("step + hook, compile=True")
    if compiled_median is not None:
        extra["compile=True: with / without"] = compiled_median / medians["step"]
        extra["compile=True / eager"] = compiled_median / medians["step + hook"]
    name = "fused" if fused else "foreach"
    return Row(
        section,
        f"AdamW ({name}) step, {count} × Linear({width}), MaxNorm on the weights",
        medians,
        "with hook / without",
        ratio,
        goal="≤ 1.05×",
        met=ratio <= 1.05,
        extra=extra,
    )


def torch_section(size: int, repeats: int) -> list[Row]:
    """One ``size`` x ``size`` tensor against ``renorm_`` and a hand-written norm + multiply, in
    two layouts and two dtypes; and the hook on a 20-layer MLP against the optimizer step."""
    torch.manual_seed(0)
    c = 2.0
    constraint = wc.MaxNorm(c)
    rows = []
    layouts = {
        "Linear (out, in), dims 1": ((size, size), (1,), 0),
        "ConvTranspose (in, out, 4, 4), dims (0, 2, 3)": (
            (size // 4, size // 4, 4, 4),
            (0, 2, 3),
            1,
        ),
    }
    ours_times = {}
    for dtype in (torch.float32, torch.bfloat16):
        for label, (shape, dims, renorm_dim) in layouts.items():
            pristine = torch.randn(shape).to(dtype)
            w = pristine.clone()

            def hand_written(w=w, dims=dims):
                norms = w.norm(2, dim=dims, keepdim=True)
                w.mul_(torch.clamp(c / (norms + 1e-7), max=1.0))

            torch.compiler.reset()  # compiled for this tensor alone, as in a fresh process
            compiled = Constraints(compile=True).add(w, constraint, dims=dims)
            compiled.apply()  # compiles (seconds)
            medians = interleaved(
                {
                    "ours": lambda w=w, dims=dims: project_(w, constraint, dims),
                    "torch.renorm_": lambda w=w, d=renorm_dim: w.renorm_(2, d, c),
                    "hand-written": hand_written,
                    "ours, compile=True": compiled.apply,
                },
                repeats,
                setup=lambda w=w, p=pristine: w.copy_(p),
                warmup=10,  # past the slower first second of a process
            )
            dtype_name = str(dtype).removeprefix("torch.")
            ours_times[(dtype_name, label)] = medians["ours"]
            ratio = medians["ours"] / medians["torch.renorm_"]
            row = Row(
                "torch",
                f"{label}, {dtype_name}",
                medians,
                "ours / renorm_",
                ratio,
                extra={
                    "hand-written / ours": medians["hand-written"] / medians["ours"],
                    "compile=True / renorm_": medians["ours, compile=True"]
                    / medians["torch.renorm_"],
                },
            )
            if label.startswith("Linear") and dtype == torch.float32:
                row.goal, row.met = "ours ≤ 1.0× renorm_", ratio <= 1.0
            rows.append(row)
        linear, strided = list(layouts)
        dtype_name = str(dtype).removeprefix("torch.")
        strided_ratio = ours_times[(dtype_name, strided)] / ours_times[(dtype_name, linear)]
        rows.append(
            Row(
                "torch",
                f"strided layout against contiguous, same size, {dtype_name}",
                {
                    "ours, ConvTranspose layout": ours_times[(dtype_name, strided)],
                    "ours, Linear layout": ours_times[(dtype_name, linear)],
                },
                "strided / contiguous",
                strided_ratio,
                goal="≤ 2.0×",
                met=strided_ratio <= 2.0,
            )
        )
    # The hook on a 20-layer MLP of small layers, against the optimizer step itself.
    layers = []
    for _ in range(20):
        layers += [nn.Linear(64, 64), nn.ReLU()]
    model = nn.Sequential(*layers)
    model(torch.randn(32, 64)).sum().backward()
    registry = constrain(model, None, kernel=wc.MaxNorm(3.0))
    torch.compiler.reset()
    compiled = Constraints(compile=True)
    for layer in model[::2]:
        compiled.add(layer, kernel=wc.MaxNorm(3.0))
    compiled.apply()  # compiles (seconds)
    steps = {
        "Adam": torch.optim.Adam(model.parameters(), lr=1e-4),
        "Adam (fused)": torch.optim.Adam(model.parameters(), lr=1e-4, fused=True),
        "SGD": torch.optim.SGD(model.parameters(), lr=1e-4),
    }
    hook, compiled_hook = "hook (20 projections)", "hook, compile=True"
    contenders = {hook: registry.apply, compiled_hook: compiled.apply}
    contenders.update({f"{name} step": opt.step for name, opt in steps.items()})
    medians = interleaved(contenders, repeats * 10)
    for name in steps:
        step = f"{name} step"
        ratio = medians[hook] / medians[step]
        row = Row(
            "torch",
            f"20-layer MLP (64 units): hook against the {name} step",
            {k: medians[k] for k in (hook, compiled_hook, step)},
            "hook / step",
            ratio,
            extra={"compile=True hook / step": medians[compiled_hook] / medians[step]},
        )
        if name == "Adam":
            row.goal, row.met = "hook < step", ratio < 1.0
        rows.append(row)
    return rows


# -- the constrained optimizer step (issue 19) ---------------------------------------------------

STEP_LAYOUTS: tuple[tuple[int, int], ...] = ((100, 256), (24, 1024))
QUICK_STEP_LAYOUTS: tuple[tuple[int, int], ...] = ((4, 16),)
STEP_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "SGD (momentum 0.9)": lambda ps, **kw: torch.optim.SGD(ps, lr=1e-4, momentum=0.9, **kw),
    "Adam": lambda ps, **kw: torch.optim.Adam(ps, lr=1e-4, **kw),
    "AdamW": lambda ps, **kw: torch.optim.AdamW(ps, lr=1e-4, **kw),
}
STEP_GOAL = 1.05


def _stepper(
    count: int,
    width: int,
    make: Callable[..., torch.optim.Optimizer],
    mode: dict,
    constraint: Any,
    device: str | torch.device = "cpu",
) -> tuple[torch.optim.Optimizer, Callable[[], object]]:
    """A fresh copy of ``count`` Linear layers (seeded: every copy holds the same values and
    gradients) and its optimizer, with the weights constrained by ``constraint`` through the
    hook (``"hook"``), ``fuse=True`` (``"fuse"``), or not at all (None); returns the optimizer and
    its step (compiled with ``mode["compiled"]``), after two steps (state made, plans bound)."""
    layers = linear_layers(count, width, device)
    generator = torch.Generator().manual_seed(1)
    parameters = [p for layer in layers for p in layer.parameters()]
    for p in parameters:
        p.grad = (torch.randn(p.shape, generator=generator) * 1e-3).to(device)
    options = {k: v for k, v in mode.items() if k != "compiled" and k != "with"}
    optimizer = make(parameters, **options)
    if mode["with"] is not None:
        registry = Constraints()
        for layer in layers:
            registry.add(layer, kernel=constraint)
        registry.attach(optimizer, fuse=mode["with"] == "fuse")
    step = torch.compile(optimizer.step) if mode["compiled"] else optimizer.step
    for _ in range(2):
        step()  # compiles (seconds to minutes) in the compiled mode
    return optimizer, step


def _step_row(
    name: str,
    mode: str,
    count: int,
    width: int,
    kind: str,
    medians: dict[str, float],
    device: str | torch.device = "cpu",
) -> Row:
    ratio = medians["step, fuse=True"] / medians["step"]
    # the goals: on the CPU the foreach and compiled modes; on a GPU fused=True AdamW
    goal = mode != "fused=True" or torch.device(device).type != "cpu"
    return Row(
        "step",
        f"{name} ({mode}), {count} × Linear({width}), {kind}",
        medians,
        "fuse=True / step",
        ratio,
        goal=f"≤ {STEP_GOAL:.2f}×" if goal else "",
        met=ratio <= STEP_GOAL if goal else None,
        extra={"step + hook / step": medians["step + hook"] / medians["step"]},
    )


CONTROL = "step (A/A′ control)"


def _step_contenders(
    count: int,
    width: int,
    make: Callable[..., torch.optim.Optimizer],
    options: dict,
    kind: str,
    device: str | torch.device = "cpu",
) -> dict[str, Callable[[], object]]:
    """The step alone, with the hook and with fuse=True, each on its own copy."""
    constraint = REFERENCES[kind].constraint
    return {
        label: _stepper(count, width, make, {**options, "with": using}, constraint, device)[1]
        for label, using in (("step", None), ("step + hook", "hook"), ("step, fuse=True", "fuse"))
    }


def step_rows(
    layouts: tuple[tuple[int, int], ...],
    *,
    repeats: int = 15,
    target_s: float = 0.05,
    compile: bool = True,
    kinds: tuple[str, ...] = tuple(REFERENCES),
    device: str | torch.device = "cpu",
    sync: Callable[[], object] | None = None,
    optimizers: tuple[str, ...] = tuple(STEP_OPTIMIZERS),
    modes: tuple[str, ...] = ("foreach", "fused=True"),
) -> list[Row]:
    """The constrained optimizer step against the same optimizer's unconstrained step in the
    same mode: SGD (momentum), Adam and AdamW over ``count`` Linear layers with the weights
    constrained (each constraint of ``kinds``), the hook against ``fuse=True``; in the foreach
    and ``fused=True`` modes, and (with ``compile``, the first of ``kinds`` only, to bound the
    compile time) ``torch.compile(optimizer.step)`` with the hook traced in. Every contender has
    its own copy of the same parameters and gradients; the first row has an A/A' control (the
    same unconstrained step on another copy) that shows the noise. ``device``, ``sync``,
    ``optimizers`` and ``modes`` select the GPU rows of ``gpu.py``.
    """
    rows = []
    all_modes: dict[str, dict] = {
        "foreach": {"foreach": True, "compiled": False},
        "fused=True": {"fused": True, "compiled": False},
    }
    chosen = {mode: all_modes[mode] for mode in modes}
    if compile:
        chosen["compiled"] = {"foreach": True, "compiled": True}  # torch.compile(optimizer.step)
    for count, width in layouts:
        for name in optimizers:
            make = STEP_OPTIMIZERS[name]
            for mode, options in chosen.items():
                for kind in kinds[:1] if options["compiled"] else kinds:
                    if options["compiled"]:
                        torch.compiler.reset()
                    contenders = _step_contenders(count, width, make, options, kind, device)
                    if not rows:
                        plain = {**options, "with": None}
                        contenders[CONTROL] = _stepper(count, width, make, plain, None, device)[1]
                    medians, _ = interleaved_loops(
                        contenders, repeats, target_s=target_s, sync=sync
                    )
                    control = medians.pop(CONTROL, None)
                    rows.append(_step_row(name, mode, count, width, kind, medians, device))
                    if control is not None:
                        rows[-1].extra["A/A′ control: step again / step"] = (
                            control / medians["step"]
                        )
    return rows

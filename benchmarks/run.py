"""Speed, measured side by side: every contender of a row runs in the same process, interleaved
(A B C A B C ...), repeated; the table reports medians and ratios.

    python benchmarks/run.py            # everything; writes benchmarks/results.json,
                                        # docs/performance.md and docs/performance_scaling.png
    python benchmarks/run.py --quick --out /tmp/bench   # tiny sizes (the smoke test)

Sections: (1) the NumPy core against the Keras formula and the floor, (2) the PyTorch adapter
against ``torch.renorm_`` and a hand-written loop, and the hook on a 20-layer MLP against the
optimizer step, (3) the Keras adapter against ``keras.constraints`` inside ``model.fit``, (4) the
training overhead on the moons MLP, (5) the cost against the number of weights.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import weight_constraints as wc

ROOT = Path(__file__).resolve().parents[1]
KERAS_EPSILON = 1e-7


@dataclass
class Row:
    """One comparison: the median seconds of each contender and the ratio that is the goal."""

    section: str
    case: str
    medians: dict[str, float]
    ratio_name: str
    ratio: float
    goal: str = ""
    met: bool | None = None
    extra: dict[str, float] = field(default_factory=dict)


def interleaved(
    contenders: dict[str, Callable[[], object]],
    repeats: int,
    setup: Callable[[], object] | None = None,
    warmup: int = 2,
) -> dict[str, float]:
    """Median seconds of each contender, run A B C A B C ... (``setup`` untimed before each)."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(warmup + repeats):
        for name, run in contenders.items():
            if setup is not None:
                setup()
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


# -- 1. NumPy core -----------------------------------------------------------------------------


def keras_formula(name: str, w: np.ndarray, axis: int) -> np.ndarray:
    """keras.constraints' formulas written in NumPy."""
    if name == "non_neg":
        return np.maximum(w, 0)
    n = np.sqrt(np.sum(np.square(w), axis=axis, keepdims=True))
    if name == "max_norm":
        return w * (np.clip(n, 0, 2.0) / (KERAS_EPSILON + n))
    if name == "unit_norm":
        return w / (KERAS_EPSILON + n)
    desired = 1.0 * np.clip(n, 0.5, 2.0) + 0.0 * n
    return w * (desired / (KERAS_EPSILON + n))


def ours(name: str, w: np.ndarray, axis: int, out: np.ndarray | None) -> np.ndarray:
    if name == "max_norm":
        return wc.max_norm(w, 2.0, axis, out=out)
    if name == "unit_norm":
        return wc.unit_norm(w, axis, out=out)
    if name == "min_max_norm":
        return wc.min_max_norm(w, 0.5, 2.0, 1.0, axis, out=out)
    return wc.non_neg(w, out=out)


def numpy_section(size: int, repeats: int) -> list[Row]:
    rng = np.random.default_rng(0)
    pristine = rng.standard_normal((size, size), dtype=np.float32)
    w = pristine.copy()
    rows = []
    for axis in (0, 1):
        factors = np.full((1, size) if axis == 0 else (size, 1), 0.5, np.float32)
        for name in ("max_norm", "unit_norm", "min_max_norm", "non_neg"):
            for mode in ("in place", "copy"):
                out = w if mode == "in place" else None
                floor = (
                    (lambda f=factors: np.multiply(w, f, out=w))
                    if mode == "in place"
                    else (lambda f=factors: np.multiply(w, f))
                )
                medians = interleaved(
                    {
                        "ours": lambda name=name, out=out, axis=axis: ours(name, w, axis, out),
                        "keras formula": lambda name=name, axis=axis: keras_formula(name, w, axis),
                        "floor": floor,
                    },
                    repeats,
                    setup=lambda: np.copyto(w, pristine),
                )
                ratio = medians["ours"] / medians["floor"]
                speedup = medians["keras formula"] / medians["ours"]
                row = Row(
                    "numpy",
                    f"{name}, axis {axis}, {mode}",
                    medians,
                    "ours / floor",
                    ratio,
                    extra={"keras formula / ours": speedup},
                )
                goals = []
                if mode == "in place":
                    goals.append(("ours ≤ 2.0× floor", ratio <= 2.0))
                    if name != "non_neg":  # Keras's NonNeg is np.maximum, as ours
                        goals.append(("≥ 3× faster than the Keras formula", speedup >= 3.0))
                row.goal = "; ".join(g for g, _ in goals)
                row.met = all(ok for _, ok in goals) if goals else None
                rows.append(row)
    return rows


# -- 2. PyTorch adapter ------------------------------------------------------------------------


def torch_section(size: int, repeats: int) -> list[Row]:
    import torch

    from weight_constraints.adapters.torch import Constraints, constrain, project_

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

            torch._dynamo.reset()  # compiled for this tensor alone, as in a fresh process
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
        layers += [torch.nn.Linear(64, 64), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers)
    model(torch.randn(32, 64)).sum().backward()
    registry = constrain(model, None, kernel=wc.MaxNorm(3.0))
    torch._dynamo.reset()
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


# -- 3. Keras adapter in fit ---------------------------------------------------------------------


def keras_section(width: int, repeats: int) -> list[Row]:
    import keras

    from weight_constraints.adapters import keras as wk

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32 * 64, width)).astype("float32")
    y = rng.standard_normal((32 * 64, 1)).astype("float32")

    def model(constraint):
        keras.utils.set_random_seed(0)
        m = keras.Sequential(
            [keras.Input((width,))]
            + [keras.layers.Dense(width, "relu", kernel_constraint=constraint) for _ in range(3)]
            + [keras.layers.Dense(1)]
        )
        m.compile(keras.optimizers.SGD(1e-3), "mse")
        m.fit(x, y, batch_size=64, epochs=1, verbose=0)  # compile the train step
        return m

    models = {
        "weight_constraints MaxNorm": model(wk.MaxNorm(2.0)),
        "keras.constraints.MaxNorm": model(keras.constraints.MaxNorm(2.0)),
        "no constraint": model(None),
    }
    medians = interleaved(
        {
            name: (lambda m=m: m.fit(x, y, batch_size=64, epochs=1, verbose=0))
            for name, m in models.items()
        },
        repeats,
    )
    ratio = medians["weight_constraints MaxNorm"] / medians["keras.constraints.MaxNorm"]
    return [
        Row(
            "keras",
            f"fit epoch, 3 Dense({width}) + MaxNorm(2), 32 steps ({keras.backend.backend()})",
            medians,
            "ours / keras.constraints",
            ratio,
            goal="≤ 1.05×",
            met=ratio <= 1.05,
        )
    ]


# -- 4. Training overhead on the moons MLP -------------------------------------------------------


def moons_section(repeats: int) -> list[Row]:
    import keras
    import torch

    sys.path.insert(0, str(ROOT / "examples"))
    from weight_constraints.adapters.keras import unit_norm
    from weight_constraints.adapters.torch import Constraints

    from moons_data import moons
    from moons_torch import MLP

    train_x, train_y, _, _ = moons()
    tx, ty = torch.from_numpy(train_x), torch.from_numpy(train_y)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def torch_step(constrained: bool):
        model = MLP(1)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
        if constrained:
            Constraints().add(model.hidden, kernel=wc.UnitNorm()).attach(optimizer)

        def step():
            optimizer.zero_grad()
            loss_fn(model(tx), ty).backward()
            optimizer.step()

        return step

    def keras_step(constrained: bool):
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [
                keras.Input((2,)),
                keras.layers.Dense(
                    500, "relu", kernel_constraint=unit_norm() if constrained else None
                ),
                keras.layers.Dense(1, "sigmoid"),
            ]
        )
        model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
        model.train_on_batch(train_x, train_y)
        return lambda: model.train_on_batch(train_x, train_y)

    rows = []
    for backend, make in (
        ("torch", torch_step),
        (f"keras ({keras.backend.backend()})", keras_step),
    ):
        medians = interleaved(
            {"unit_norm on the hidden layer": make(True), "no constraint": make(False)},
            repeats * 20,
        )
        ratio = medians["unit_norm on the hidden layer"] / medians["no constraint"]
        rows.append(Row("moons", f"one training step, {backend}", medians, "with / without", ratio))
    return rows


# -- 5. Scaling ----------------------------------------------------------------------------------


def scaling_section(sizes: list[int], repeats: int) -> list[Row]:
    import torch

    from weight_constraints.adapters.torch import project_

    rows = []
    for n in sizes:
        width = min(n, 1000)
        shape = (n // width, width)
        pristine = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        w = pristine.copy()
        tensor = torch.from_numpy(pristine.copy())
        tensor_pristine = torch.from_numpy(pristine)
        factors = np.full((shape[0], 1), 0.5, np.float32)
        medians = interleaved(
            {
                "numpy max_norm in place": lambda w=w: wc.max_norm(w, 2.0, 1, out=w),
                "numpy floor": lambda w=w, f=factors: np.multiply(w, f, out=w),
                "torch project_": lambda t=tensor: project_(t, wc.MaxNorm(2.0), 1),
            },
            repeats if n >= 10**7 else repeats * 5,
            setup=lambda w=w, t=tensor, p=pristine, tp=tensor_pristine: (
                np.copyto(w, p),
                t.copy_(tp),
            ),
        )
        rows.append(
            Row(
                "scaling",
                f"{n:.0e} weights, {shape[0]} nodes of {width}",
                medians,
                "ours / floor",
                medians["numpy max_norm in place"] / medians["numpy floor"],
                extra={"n": float(n)},
            )
        )
    return rows


def plot_scaling(rows: list[Row], path: Path) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib.pyplot as plt

    n = np.array([r.extra["n"] for r in rows])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in rows[0].medians:
        seconds = np.array([r.medians[name] for r in rows])
        left.loglog(n, seconds, marker="o", label=name)
        right.loglog(n, seconds / n * 1e9, marker="o", label=name)
    linear = rows[-1].medians["numpy floor"] * n / n[-1]
    left.loglog(n, linear, "k--", linewidth=0.8, label="linear in n")
    left.set_xlabel("weights")
    left.set_ylabel("seconds per call")
    left.set_title("Cost is linear in the number of weights")
    right.set_xlabel("weights")
    right.set_ylabel("nanoseconds per weight")
    right.set_title("Per-call overhead dominates small tensors")
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- report --------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    import keras
    import tensorflow as tf
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} logical CPUs",
        "load average at start": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": f"{torch.__version__} ({torch.get_num_threads()} threads)",
        "keras": f"{keras.__version__} (backend {keras.backend.backend()})",
        "tensorflow": tf.__version__,
        "weight_constraints": wc.__version__,
        "gpu": "none (CPU only)",
    }


def seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.2f} ms"
    return f"{value * 1e6:.1f} µs"


SECTION_TITLES = {
    "numpy": "1. NumPy core against the Keras formula and the floor",
    "torch": "2. PyTorch adapter",
    "keras": "3. Keras adapter inside `model.fit`",
    "moons": "4. Training overhead on the moons MLP",
    "scaling": "5. Scaling with the number of weights",
}

SECTION_NOTES = {
    "numpy": (
        "4096×4096 float32. The floor is the scaling pass alone, "
        "`np.multiply(w, s, out=w)` with precomputed factors (in place) or `np.multiply(w, s)` "
        "(copy). The Keras formula is `w * clip(n, 0, c) / (1e-7 + n)` in NumPy (for "
        "`non_neg`, `np.maximum(w, 0)`, which is also ours). Each call starts from the same "
        "array (an untimed copy)."
    ),
    "torch": (
        "`project_(w, MaxNorm(2), dims)` against `w.renorm_(2, dim, 2)` and a hand-written "
        "`w.mul_(clamp(c / (w.norm(dim=dims, keepdim=True) + 1e-7), max=1))`, on the same "
        "number of weights in both layouts; `compile=True` is `Constraints(compile=True)` "
        "projecting the same tensor (compiled beforehand). The hook rows compare "
        "`Constraints.apply()` over 20 Linear(64, 64) weights with one optimizer step of the "
        "same model."
    ),
    "keras": "Epoch time of `fit` with our MaxNorm against keras.constraints.MaxNorm.",
    "moons": (
        "One step of the moons MLP (2 → 500 → 1) with and without `unit_norm` on the hidden "
        "layer: a full forward, backward and Adam update on 30 samples."
    ),
    "scaling": (
        "`max_norm` in place on float32 weights shaped (n / 1000, 1000), axis 1 (NumPy; "
        "PyTorch with `dims=1`), against the scaling pass alone. Below about 1e5 weights the "
        "fixed cost of a call (about 15 µs in NumPy, 20–25 µs in PyTorch: validation and a few "
        "small operations on the norms) dominates; from 1e6 weights on the cost grows linearly, "
        "with a step where the weights stop fitting in the cache."
    ),
}


def write_markdown(rows: list[Row], info: dict[str, str], path: Path, figure: str) -> None:
    lines = [
        "# Performance",
        "",
        "Generated by `python benchmarks/run.py`: every contender of a row runs in one process, "
        "interleaved (A B C A B C …) and repeated; the table gives medians and the ratio that "
        "the goal is about. Timings on a shared machine vary from run to run by a few percent; "
        "the ratios are what to read.",
        "",
        "| machine | |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in info.items()]
    for section, title in SECTION_TITLES.items():
        section_rows = [r for r in rows if r.section == section]
        if not section_rows:
            continue
        lines += ["", f"## {title}", "", SECTION_NOTES[section], ""]
        lines += ["| case | medians | ratio | goal | met |", "|---|---|---|---|---|"]
        for r in section_rows:
            medians = "<br>".join(f"{k}: {seconds(v)}" for k, v in r.medians.items())
            ratio = f"{r.ratio_name}: **{r.ratio:.2f}×**"
            ratio += "".join(f"<br>{k}: {v:.2f}×" for k, v in r.extra.items() if k != "n")
            met = {True: "yes", False: "**no**", None: ""}[r.met]
            lines.append(f"| {r.case} | {medians} | {ratio} | {r.goal} | {met} |")
        if section == "scaling":
            lines += ["", f"![Projection time against the number of weights]({figure})"]
    missed = [r for r in rows if r.met is False]
    lines += ["", "## Goals missed in this run", ""]
    if missed:
        lines += [f"- {r.case}: {r.ratio_name} {r.ratio:.2f}× (goal {r.goal})." for r in missed]
        for section in dict.fromkeys(r.section for r in missed):
            lines += ["", f"**{SECTION_TITLES[section]}.** {MISSED_NOTES[section]}"]
    else:
        lines.append("None.")
    path.write_text("\n".join(lines) + "\n")


MISSED_NOTES = {
    "numpy": (
        "The norms are one read of the weights (einsum's sum of products, or a BLAS dot product "
        "per node where nodes are contiguous) and the scaling one in-place multiply: about "
        "1.5–1.9× the floor in place. The Keras formula allocates three temporaries the size of "
        "the weights and costs about 5× the floor here (the issue measured 7× on another day), "
        "so 3× faster than it needs ≤ 1.7× the floor. The gap is the single-threaded read pass "
        "(about 2.2 ms for 64 MB along axis 0). Tried: cache-sized column blocks that fuse the "
        "norm and the scaling (slower: strided reads), row blocks with a BLAS gemv on squared "
        "blocks (3.3 ms), row blocks fused with the scaling for axis 1 (5 % faster, not kept). "
        "Two threads would do it (1.5 ms), but the library does not start threads of its own."
    ),
    "torch": (
        "Ours runs the same two kernels as `renorm_` (a fused norm, then an in-place multiply); "
        "the difference is fixed cost: about 200 µs per call once the 64 MB pass has flushed "
        "the caches (25 µs when warm), against 30 µs for `renorm_`, whose small steps run inside "
        "one C++ call. Even the bare sequence norm + multiply from Python, with no factor at "
        "all, runs at 0.98–1.01× `renorm_`, so no eager Python implementation reaches 1.0× "
        "reliably; only a kernel that fuses the norm with the scaling (one read of the weights "
        "instead of two) could. `compile=True` builds exactly that kernel, but Inductor's CPU "
        "reduction runs one accumulator chain and is compute-bound here (about 2.3 ms against "
        "1.8 ms for `renorm_` in steady state; it wins only while memory is slow). Tried: "
        "cache-sized row blocks fusing the two passes in eager mode (1.2–1.6×: per-block "
        "overhead), BLAS batched dot products (5× slower), fewer factor operations (≈ 1 %). "
        "The strided/contiguous ratio depends on the state of this shared machine: the Linear "
        "case runs at 1.8–2.2 ms once a process has run for a while and at 3.2–3.6 ms before "
        "(or in some processes throughout), the ConvTranspose case at 4.5–6 ms in both, so the "
        "ratio comes out 1.3–1.8× in some runs and up to 3× in others. Its norm reduces 16 "
        "contiguous entries per output (about 3 ms for 64 MB against 1 ms for long rows); "
        "squaring blocks and summing over the leading dim, or a BLAS gemv per block, are no "
        "faster."
    ),
    "keras": "Within the run-to-run noise of `fit` on a shared machine.",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: docs/)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 15)
    size = 256 if args.quick else 4096
    sizes = (
        [10**3, 10**4]
        if args.quick
        else [10**3, 3 * 10**3, 10**4, 3 * 10**4, 10**5, 3 * 10**5, 10**6, 10**7, 10**8]
    )
    docs = args.out or ROOT / "docs"
    results = args.out or ROOT / "benchmarks"
    docs.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)

    info = machine()
    started = time.perf_counter()
    rows: list[Row] = []
    for name, run in (
        ("numpy", lambda: numpy_section(size, repeats)),
        ("torch", lambda: torch_section(size, repeats)),
        ("keras", lambda: keras_section(64 if args.quick else 512, max(3, repeats // 2))),
        ("moons", lambda: moons_section(repeats)),
        ("scaling", lambda: scaling_section(sizes, max(3, repeats // 3))),
    ):
        section_start = time.perf_counter()
        rows += run()
        print(f"{name}: {time.perf_counter() - section_start:.1f} s", file=sys.stderr)
    info["load average at end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    info["total time"] = f"{time.perf_counter() - started:.0f} s"

    figure = "performance_scaling.png"
    plot_scaling([r for r in rows if r.section == "scaling"], docs / figure)
    (results / "results.json").write_text(
        json.dumps({"machine": info, "rows": [asdict(r) for r in rows]}, indent=2) + "\n"
    )
    write_markdown(rows, info, docs / "performance.md", figure)
    for r in rows:
        met = {True: "met", False: "MISSED", None: ""}[r.met]
        print(f"{r.section:8} {r.case:70} {r.ratio_name} {r.ratio:6.2f}x {r.goal} {met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

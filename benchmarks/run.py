"""Speed, measured side by side: every contender of a row runs in the same process, interleaved
(A B C A B C ...), repeated; the table reports medians and ratios.

    python benchmarks/run.py            # everything; writes benchmarks/results/cpu.json,
                                        # docs/performance.md and docs/performance_scaling.png
    python benchmarks/run.py --quick --out /tmp/bench   # tiny sizes (the smoke test)

Sections, one module each: (1) the NumPy core against the Keras formula and the floor
(numpy_bench.py); (2) the PyTorch adapter on one tensor against ``torch.renorm_`` and a
hand-written loop, and the hook on a 20-layer MLP against the optimizer step; (3) a registry of
many tensors against the hand-written loops it replaces and (4) the hook inside an AdamW step,
both on one thread (torch_bench.py); (5) the Keras adapter against ``keras.constraints`` inside
``model.fit`` (keras_bench.py); (6) the training overhead on the moons MLP (moons_bench.py);
(7) the cost against the number of weights (scaling_bench.py); (8) the nGPT and EDM2
normalisations of every matrix of a GPT-2-small-sized model against the hand-written loops, on
one thread (normalized_bench.py); (9) the constrained optimizer step, the hook against
``fuse=True``, in the foreach, ``fused=True`` and compiled modes, on one thread
(torch_bench.py). The report is report.py; the GPU counterpart of sections 3–4,
with checks of the CUDA paths, is gpu.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _checkout import ROOT, ensure_importable  # the script's folder is on sys.path

ensure_importable()

import keras_bench  # noqa: E402
import moons_bench  # noqa: E402
import normalized_bench  # noqa: E402
import numpy_bench  # noqa: E402
import report  # noqa: E402
import scaling_bench  # noqa: E402
import torch_bench  # noqa: E402
from _timing import Row  # noqa: E402


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
    layouts = torch_bench.QUICK_LAYOUTS if args.quick else torch_bench.LAYOUTS
    median_of = args.repeats or (3 if args.quick else 21)
    target_s = 1e-3 if args.quick else 0.02  # seconds per timed loop of calls
    hook_target_s = 1e-3 if args.quick else 0.05
    hook_layers = (4, 16) if args.quick else (100, 256)
    step_layouts = torch_bench.QUICK_STEP_LAYOUTS if args.quick else torch_bench.STEP_LAYOUTS
    keras_width = 64 if args.quick else 512
    normalized_size = normalized_bench.QUICK_SIZE if args.quick else normalized_bench.SIZE
    docs = args.out or ROOT / "docs"
    results = args.out or ROOT / "benchmarks" / "results"  # results apart from the scripts
    docs.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)

    def one_thread(run):
        def wrapped():
            with torch_bench.threads(1):
                return run()

        return wrapped

    info = report.machine()
    started = time.perf_counter()
    rows: list[Row] = []
    for name, run in (
        ("numpy", lambda: numpy_bench.numpy_section(size, repeats)),
        ("torch", lambda: torch_bench.torch_section(size, repeats)),
        (
            "registry",
            one_thread(
                lambda: torch_bench.registry_rows(layouts, repeats=median_of, target_s=target_s)
            ),
        ),
        (
            "hook",
            one_thread(
                lambda: [
                    torch_bench.hook_row(*hook_layers, repeats=median_of, target_s=hook_target_s)
                ]
            ),
        ),
        (
            "step",
            one_thread(
                lambda: torch_bench.step_rows(
                    step_layouts, repeats=median_of, target_s=hook_target_s, compile=not args.quick
                )
            ),
        ),
        ("keras", lambda: keras_bench.keras_section(keras_width, max(3, repeats // 2))),
        ("moons", lambda: moons_bench.moons_section(repeats)),
        ("scaling", lambda: scaling_bench.scaling_section(sizes, max(3, repeats // 3))),
        (
            "normalized",
            one_thread(
                lambda: normalized_bench.normalized_rows(
                    *normalized_size, repeats=median_of, target_s=target_s, compile=not args.quick
                )
            ),
        ),
    ):
        section_start = time.perf_counter()
        rows += run()
        print(f"{name}: {time.perf_counter() - section_start:.1f} s", file=sys.stderr)
    info["load average at end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    info["total time"] = f"{time.perf_counter() - started:.0f} s"

    figure = "performance_scaling.png"
    scaling_bench.plot_scaling([r for r in rows if r.section == "scaling"], docs / figure)
    (results / "cpu.json").write_text(
        json.dumps({"machine": info, "rows": [asdict(r) for r in rows]}, indent=2) + "\n"
    )
    report.write_markdown(rows, info, docs / "performance.md", figure)
    for r in rows:
        met = {True: "met", False: "MISSED", None: ""}[r.met]
        print(f"{r.section:8} {r.case:70} {r.ratio_name} {r.ratio:6.2f}x {r.goal} {met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The cost of ``max_norm`` in place against the number of weights (NumPy and PyTorch)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from _timing import Row, interleaved

import weight_constraints as wc
from weight_constraints.adapters.torch import project_


def scaling_section(sizes: list[int], repeats: int) -> list[Row]:
    """``max_norm`` in place on (n / 1000, 1000) float32 weights, axis 1, for each n in
    ``sizes``, against the scaling pass alone (the ratio) and ``project_`` on a tensor."""
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
    """Seconds per call and nanoseconds per weight against n, log-log, to ``path`` (PNG)."""
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

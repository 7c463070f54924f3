"""Machinery shared by the case studies (``moons_study.py``, ``digits_study.py``).

- the command line: :class:`UsageError`, :func:`positive_int`, :func:`parse_numbers`,
  :func:`label_of`;
- batched ensembles in PyTorch: every repeat of a configuration trains at once, weights shaped
  ``(repeats, out, in)``: :func:`stack_parameter`, :func:`ensemble_forward`,
  :func:`constrain_ensemble`, :func:`ensemble_node_norms`;
- progress: :func:`progress_bar` (a tqdm bar updated in place on a terminal, a few plain lines in
  a log file or a CI job);
- statistics over repeats: :func:`mean_std`, :func:`min_median_max`, :func:`mean_ci`;
- report writing: :func:`markdown_table`, :func:`figure_lines`, :func:`machine`.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

import numpy as np

import weight_constraints as wc

# -- command line --------------------------------------------------------------------------------


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit status 2."""


def positive_int(name: str, text: str | int, minimum: int) -> int:
    """``--name``'s value as an integer >= ``minimum``, or a :class:`UsageError`."""
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--{name} must be an integer, got {text!r}") from None
    if value < minimum:
        raise UsageError(f"--{name} must be >= {minimum}, got {value}")
    return value


def parse_numbers(text: str, option: str, example: str, *, positive: bool = False) -> list[float]:
    """``"0.3,0.6"`` -> ``[0.3, 0.6]``: finite numbers >= 0 (> 0 with ``positive``)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"malformed {option} {text!r}: expected numbers like {example}") from None
    low = "> 0" if positive else ">= 0"
    if not values or any(not math.isfinite(v) or v < 0 or (positive and v == 0) for v in values):
        raise UsageError(f"malformed {option} {text!r}: expected finite numbers {low}")
    return values


def label_of(constraint: wc.Constraint | None) -> str:
    """A constraint as a command-line spec: ``MaxNorm(3)`` -> ``"max_norm:3"``."""
    if constraint is None:
        return "none"
    config = constraint.get_config()
    config.pop("axis", None)
    if isinstance(constraint, wc.MinMaxNorm) and config["rate"] == 1.0:
        config.pop("rate")
    values = ":".join(f"{v:g}" for v in config.values())
    return f"{constraint.name}:{values}" if values else constraint.name


# -- batched ensembles (PyTorch) -----------------------------------------------------------------


def stack_parameter(tensors: Iterable[Any]) -> Any:
    """One parameter holding the repeats' tensors stacked along a new first dim."""
    import torch

    return torch.nn.Parameter(torch.stack([t.detach() for t in tensors]))


def ensemble_forward(
    layers: Sequence[tuple[Any, Any]],
    x: Any,
    first: int | None = None,
    between: Callable[[Any], Any] | None = None,
) -> Any:
    """The outputs of the first ``first`` repeats of a batched ReLU MLP.

    ``layers`` holds ``(weight, bias)`` pairs shaped ``(repeats, out, in)`` and
    ``(repeats, out)``; ``x`` is one input batch ``(N, in)`` shared by the repeats, or one batch
    per repeat ``(first, N, in)``. ``between`` (dropout, say) acts on each hidden layer's
    activations after the ReLU. Returns ``(first, N, out)``.
    """
    import torch

    first = layers[0][0].shape[0] if first is None else first
    h = x.expand(first, *x.shape) if x.dim() == 2 else x
    for i, (weight, bias) in enumerate(layers):
        if i:
            h = h.relu_()
            if between is not None:
                h = between(h)
        h = torch.baddbmm(bias[:first, None], h, weight[:first].transpose(1, 2))
    return h


def constrain_ensemble(
    optimizer: Any, constraint: wc.Constraint | None, entries: Iterable[tuple[str, Any, int]]
) -> Any:
    """Attach ``constraint`` to ``optimizer`` for each ``(name, tensor, dims)`` entry: a weight
    ``(repeats, out, in)`` takes ``dims=2`` (one norm per repeat and unit). Returns the
    registry, or None without a constraint."""
    if constraint is None:
        return None
    from weight_constraints.adapters.torch import Constraints

    registry = Constraints()
    for name, tensor, dims in entries:
        registry.add(tensor, constraint, dims=dims, name=name)
    return registry.attach(optimizer)


def ensemble_node_norms(weight: Any) -> np.ndarray:
    """Per-node L2 norms of a batched weight ``(repeats, out, in)``: ``(repeats, out)``."""
    return wc.node_norms(weight.detach(), axis=2).numpy().copy()


# -- progress ------------------------------------------------------------------------------------


class LineProgress:
    """Progress for logs: one line each time another tenth of the work is done, none between.

    The same ``update``/``close`` interface as tqdm, used where output is not a terminal (a
    file, a pipe, a CI job), where a tqdm bar would write one line per refresh.
    """

    def __init__(self, total: int, desc: str, unit: str, file: IO[str], steps: int = 10) -> None:
        self.total, self.desc, self.unit, self.file = max(int(total), 1), desc, unit, file
        self.steps, self.n, self.reported = steps, 0, 0
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        reached = min(self.steps, self.n * self.steps // self.total)
        if reached > self.reported:
            self.reported = reached
            percent = 100 * self.n // self.total
            elapsed = time.perf_counter() - self.start
            print(
                f"{self.desc}: {percent:3d}% ({self.n}/{self.total} {self.unit}s, {elapsed:.0f} s)",
                file=self.file,
                flush=True,
            )

    def close(self) -> None:
        pass

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(
    total: int,
    desc: str,
    *,
    disable: bool = False,
    unit: str = "epoch",
    file: IO[str] | None = None,
) -> Any:
    """A tqdm bar updated in place when ``file`` (stderr) is a terminal; otherwise a
    :class:`LineProgress` printing about ten lines in all. ``disable``: no output at all."""
    from tqdm import tqdm

    file = sys.stderr if file is None else file
    if disable or (hasattr(file, "isatty") and file.isatty()):
        return tqdm(total=total, disable=disable, unit=unit, unit_scale=True, desc=desc, file=file)
    return LineProgress(total, desc, unit, file)


# -- statistics ----------------------------------------------------------------------------------


def mean_std(values: np.ndarray, scale: float = 1.0, digits: int = 3) -> str:
    """``"mean ± standard deviation"`` of ``values * scale``."""
    values = np.asarray(values) * scale
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def min_median_max(values: np.ndarray) -> str:
    return f"{values.min():.3f} / {np.median(values):.3f} / {values.max():.3f}"


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """The mean of ``values`` and its ``level`` confidence interval (Student's t over the
    values, e.g. the per-seed paired differences): ``(mean, low, high)``; NaN bounds for fewer
    than two values."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan, math.nan
    from scipy.stats import t

    sem = values.std(ddof=1) / math.sqrt(values.size)
    half = float(t.ppf(0.5 + level / 2, values.size - 1) * sem)
    return mean, mean - half, mean + half


# -- reports -------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def figure_lines(names: Iterable[str]) -> list[str]:
    return [f"![{name}]({name})" for name in names]


def machine() -> str:
    """The processor, CPU count, load average and Python version, for a report."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load}, Python {platform.python_version()}"
    )

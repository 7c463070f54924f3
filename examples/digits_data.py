"""The digits study's data, settings and figures, shared by ``digits_study.py`` and
``digits_backends.py``.

The data: scikit-learn's 8x8 digits (1,797 images, 10 classes, shipped inside its wheel), pixel
values scaled from 0..16 to 0..1, split once (stratified, ``random_state=0``) into a small
training set of 500 images and a test set of the other 1,297. The network: an MLP
64 -> 256 ReLU -> 256 ReLU -> 10 with Glorot-uniform weights and zero biases, trained with SGD
and momentum on mini-batches, the learning rate following a cosine from its peak to zero.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from study_common import mean_ci

N_TRAIN = 500
CLASSES = 10

# Srivastava et al. 2014 (JMLR, "Dropout"), Table 9: test error (%) on MNIST. Literature values,
# quoted as the paper's; the study compares their ordering with its own measurements.
PAPER_TABLE_9 = (
    ("L2", "l2", 1.62),
    ("Max-norm", "max_norm", 1.35),
    ("Dropout + L2", "dropout + l2", 1.25),
    ("Dropout + Max-norm", "dropout + max_norm", 1.05),
)


@dataclass(frozen=True)
class Settings:
    """How every model of the study is trained (the regularisers' strengths included)."""

    epochs: int = 100
    hidden: int = 256
    batch: int = 50
    lr: float = 0.1  # the peak learning rate of the cosine schedule
    momentum: float = 0.9
    l2: float = 5e-4  # weight decay on the kernels (SGD's weight_decay: a gradient term l2 * w)
    dropout: float = 0.5  # on both hidden layers' activations; none on the inputs

    def steps(self, n_train: int = N_TRAIN) -> int:
        return self.epochs * (n_train // self.batch)

    def sizes(self, inputs: int = 64) -> tuple[int, ...]:
        return (inputs, self.hidden, self.hidden, CLASSES)


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_x, train_y, test_x, test_y)``: float32 pixels in [0, 1], int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32), y.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        x, y, train_size=N_TRAIN, random_state=0, stratify=y
    )
    return train_x, train_y, test_x, test_y


def cosine(step: int, steps: int) -> float:
    """The learning-rate factor at ``step`` (0-based): 1 at the start, 0 after ``steps``."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


# -- figures -------------------------------------------------------------------------------------


def _pyplot():
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib.pyplot as plt

    return plt


def _interval(values: np.ndarray) -> tuple[float, float]:
    """``(mean, half width of the 95% interval)`` of ``values`` (0 for a single value)."""
    mean, low, high = mean_ci(values)
    return mean, (0.0 if math.isnan(low) else (high - low) / 2)


def plot_errors(errors: dict[str, np.ndarray], baseline: str, path: Path, title: str) -> Path:
    """Left: each configuration's test error (%), one dot per seed, the mean and its 95%
    interval. Right: the paired difference to ``baseline`` with its 95% interval."""
    plt = _pyplot()
    labels = list(errors)[::-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.42 * len(labels) + 1.6), sharey=True)
    for row, label in enumerate(labels):
        values = errors[label]
        jitter = np.linspace(-0.18, 0.18, values.size)
        axes[0].scatter(values, row + jitter, s=8, color="0.6", zorder=1)
        mean, half = _interval(values)
        axes[0].errorbar(mean, row, xerr=half, fmt="o", color="C0", capsize=3, zorder=2)
        mean, half = _interval(values - errors[baseline])
        color = "C2" if mean + half < 0 else ("C3" if mean - half > 0 else "0.45")
        axes[1].errorbar(mean, row, xerr=half, fmt="o", color=color, capsize=3)
    axes[0].axvline(errors[baseline].mean(), color="C1", linewidth=1, linestyle="--")
    axes[1].axvline(0.0, color="C1", linewidth=1, linestyle="--")
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].set_xlabel("test error (%): seeds, mean and 95% interval")
    axes[1].set_xlabel(f"difference to {baseline} (percentage points, paired by seed)")
    for ax in axes:
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_learning_rates(
    rates: Sequence[float],
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    chance: float,
) -> Path:
    """Against the peak learning rate, per configuration: the final test error (%, mean and
    95% interval over seeds; dotted: always answering the commonest class) and the largest
    node norm reached (median, band min..max)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (label, (errors, norms)), color in zip(series.items(), _colors(plt), strict=False):
        intervals = [_interval(e) for e in errors]
        means, halves = zip(*intervals, strict=True)
        axes[0].errorbar(rates, means, yerr=halves, marker="o", capsize=3, color=color, label=label)
        finite = np.where(np.isfinite(norms), norms, np.nan)
        axes[1].plot(rates, np.nanmedian(finite, axis=1), marker="o", color=color, label=label)
        axes[1].fill_between(
            rates, np.nanmin(finite, axis=1), np.nanmax(finite, axis=1), color=color, alpha=0.15
        )
    axes[0].axhline(100 * chance, color="0.4", linestyle=":", label="chance (commonest class)")
    axes[0].set_ylabel("test error (%)")
    axes[1].set_ylabel("largest node norm reached")
    for ax in axes:
        _log_axes(ax)
        ax.set_xlabel("peak learning rate")
    axes[0].legend(fontsize=8)
    fig.suptitle("Learning-rate sweep: dropout with and without max-norm")
    fig.tight_layout()
    return _save(fig, path)


def plot_norm_curves(curves: dict[float, dict[str, np.ndarray]], path: Path) -> Path:
    """One panel per learning rate: the largest node norm of the network after each epoch,
    median over seeds with a band from min to max, per configuration (log scale)."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(curves), figsize=(3.4 * len(curves) + 0.6, 3.6), sharey=True, squeeze=False
    )
    for ax, (rate, by_label) in zip(axes[0], curves.items(), strict=True):
        colors = _colors(plt)
        for i, (label, norms) in enumerate(by_label.items()):
            color = colors[i % len(colors)]
            norms = np.where(np.isfinite(norms), norms, np.nan)
            epochs = np.arange(1, norms.shape[1] + 1)
            style = {"linestyle": "--", "zorder": 3} if i == 0 else {}  # visible under twins
            ax.plot(epochs, np.nanmedian(norms, axis=0), color=color, label=label, **style)
            ax.fill_between(
                epochs, np.nanmin(norms, axis=0), np.nanmax(norms, axis=0), color=color, alpha=0.15
            )
        ax.set_title(f"peak learning rate {rate:g}")
        ax.set_xlabel("epoch")
        _log_axes(ax, x=False)
    axes[0][0].set_ylabel("largest node norm")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("Node norms over training (the largest of all units; median and range over seeds)")
    fig.tight_layout()
    return _save(fig, path)


def _log_axes(ax, x: bool = True) -> None:
    """Log scales labelled with plain numbers (1, 2, 5, 10...)."""
    from matplotlib import ticker

    scaled = [(ax.yaxis, ax.set_yscale)] + ([(ax.xaxis, ax.set_xscale)] if x else [])
    for axis, set_scale in scaled:
        set_scale("log")
        axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(alpha=0.3, which="both")


def _colors(plt) -> list[str]:
    return plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    fig.canvas.figure.clf()
    _pyplot().close(fig)
    return path

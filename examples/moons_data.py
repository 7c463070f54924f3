"""The case study's data and figures, shared by the moons examples.

The tutorial ("How to reduce overfitting with weight constraints in Keras") defines the problem:
``make_moons(n_samples=100, noise=0.2, random_state=1)``, the first 30 samples to train on and the
other 70 to test on, an MLP 2 -> 500 ReLU -> 1 sigmoid trained for 4000 epochs with Adam.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

N_TRAIN = 30
EPOCHS = 4000
HIDDEN = 500
LEARNING_RATE = 1e-3
EPSILON = 1e-7  # Keras's Adam epsilon (PyTorch's default is 1e-8)


def moons() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_x, train_y, test_x, test_y)`` as float32 arrays, split as in the tutorial."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=100, noise=0.2, random_state=1)
    x, y = x.astype(np.float32), y.astype(np.float32)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def result_line(train_accuracy: float, test_accuracy: float) -> str:
    """The tutorial's summary line, from measured accuracies."""
    return f"Train: {train_accuracy:.3f}, Test: {test_accuracy:.3f}"


def compare_cli(
    argv: list[str] | None,
    description: str,
    train: Callable[..., dict],
    constraint: object,
    figure: str,
    title: str,
) -> int:
    """The command line of the two-model examples: train without and with ``constraint``,
    print what each measured, and save the learning curves to ``--out/figure``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    start = time.perf_counter()
    curves = {}
    for label, this in (("no constraint", None), ("unit_norm hidden", constraint)):
        result = train(args.seed, this, args.epochs)
        print(f"{label:>17}: {result_line(*result['final'])}")
        curves[label] = {"train": result["train"], "test": result["test"]}
    path = plot_learning_curves(curves, args.out / figure, f"{title}, {args.epochs} epochs")
    print(f"figure: {path}   ({time.perf_counter() - start:.1f} s)")
    return 0


def _pyplot():
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(curves: dict[str, dict[str, np.ndarray]], path: Path, title: str) -> Path:
    """Train and test accuracy per epoch for each model; arrays of shape (epochs,) or
    (repeats, epochs), the latter drawn as the mean with a band of one standard deviation."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (label, curve), color in zip(curves.items(), colors, strict=False):
        for ax, key in zip(axes, ("train", "test"), strict=True):
            values = np.atleast_2d(curve[key])
            mean, std = values.mean(axis=0), values.std(axis=0)
            epochs = np.arange(1, mean.size + 1)
            ax.plot(epochs, mean, color=color, label=label, linewidth=1.2)
            if values.shape[0] > 1:
                ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
    for ax, key in zip(axes, ("train", "test"), strict=True):
        ax.set_title(f"{key} accuracy")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_norm_histograms(norms: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """Histograms of the hidden layer's per-node norms before and after training, per model."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(norms), figsize=(3.6 * len(norms), 3.2), squeeze=False)
    for ax, (label, (before, after)) in zip(axes[0], norms.items(), strict=True):
        high = max(float(before.max()), float(after.max()))
        bins = np.linspace(0.0, high * 1.05 + 1e-9, 40)
        ax.hist(before.ravel(), bins=bins, alpha=0.6, label="before")
        ax.hist(after.ravel(), bins=bins, alpha=0.6, label="after")
        ax.set_title(label)
        ax.set_xlabel("per-node L2 norm")
    axes[0][0].set_ylabel("nodes")
    axes[0][-1].legend()
    fig.suptitle("Hidden layer: norm of each unit's incoming weights")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_decision_boundaries(
    boundaries: dict[str, np.ndarray], grid: tuple[np.ndarray, np.ndarray], path: Path
) -> Path:
    """Each model's predicted probability over the plane, with the train and test points."""
    plt = _pyplot()
    train_x, train_y, test_x, test_y = moons()
    xx, yy = grid
    fig, axes = plt.subplots(
        1, len(boundaries), figsize=(3.6 * len(boundaries), 3.4), squeeze=False
    )
    for ax, (label, probability) in zip(axes[0], boundaries.items(), strict=True):
        ax.contourf(xx, yy, probability, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.6)
        ax.contour(xx, yy, probability, levels=[0.5], colors="k", linewidths=1)
        ax.scatter(*test_x.T, c=test_y, cmap="RdBu_r", marker="x", s=18, label="test")
        ax.scatter(*train_x.T, c=train_y, cmap="RdBu_r", edgecolors="k", s=30, label="train")
        ax.set_title(label)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.suptitle("Decision boundaries (first repeat): o train, x test")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plane_grid(steps: int = 150) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grid over the moons: ``(xx, yy, points)`` with points of shape (steps², 2)."""
    xx, yy = np.meshgrid(np.linspace(-1.6, 2.6, steps), np.linspace(-1.2, 1.7, steps))
    return xx, yy, np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32)


def plot_grid(values: Sequence[float], test: np.ndarray, path: Path) -> Path:
    """Test accuracy (mean and standard deviation over repeats) against the constraint value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    mean, std = test.mean(axis=1), test.std(axis=1)
    ax.errorbar(values, mean, yerr=std, marker="o", capsize=3)
    ax.set_xlabel("a in min_max_norm(a, a)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Constraint value grid")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

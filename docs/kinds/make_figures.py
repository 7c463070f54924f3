"""Figures of docs/constraint-kinds.md: what each kind does to a 2-d node.

Each figure shades the set, draws a few nodes (circles) and a line from each to its projection
(dots), computed by the library itself. Usage: ``python docs/kinds/make_figures.py [--out DIR]``
(default: next to this script).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Circle, Polygon, Rectangle

import weight_constraints as wc

HERE = Path(__file__).resolve().parent
LIMIT = 2.2
SET_STYLE = {"facecolor": "#9ecae1", "edgecolor": "#3182bd", "linewidth": 1.5, "alpha": 0.6}

# Nodes (as the columns of one 2 x n weight: axis=0, one node per column).
POINTS = np.array(
    [
        [1.9, 1.6],
        [-1.8, 1.2],
        [-1.2, -1.9],
        [1.7, -0.4],
        [0.3, 2.0],
        [-2.0, -0.2],
        [0.9, -1.8],
        [0.2, 0.3],
        [1.2, 0.6],
        [-0.5, 0.9],
    ]
).T


def box_ball(ax, lower: float, upper: float, radius: float) -> None:
    """The intersection of the box [lower, upper]^2 with the disc of ``radius``, drawn as the
    disc clipped to the box."""
    box = Rectangle(
        (lower, lower), upper - lower, upper - lower, facecolor="none", edgecolor="none"
    )
    ax.add_patch(box)
    disc = Circle((0, 0), radius, **SET_STYLE)
    ax.add_patch(disc)
    disc.set_clip_path(box)
    outline = {"fill": False, "linestyle": ":", "edgecolor": "#636363", "linewidth": 1}
    ax.add_patch(Rectangle((lower, lower), upper - lower, upper - lower, **outline))
    ax.add_patch(Circle((0, 0), radius, **outline))


KINDS = {
    "clip": (
        "clip(w, -1, 1)",
        lambda w: wc.clip(w, -1.0, 1.0),
        lambda ax: ax.add_patch(Rectangle((-1, -1), 2, 2, **SET_STYLE)),
    ),
    "box_max_norm": (
        "box_max_norm(w, -0.6, 1.5, max_value=1.2)",
        lambda w: wc.box_max_norm(w, -0.6, 1.5, 1.2),
        lambda ax: box_ball(ax, -0.6, 1.5, 1.2),
    ),
    "box_max_norm_nonneg": (
        "box_max_norm(w, 0, inf, max_value=1.2)",
        lambda w: wc.box_max_norm(w, 0.0, math.inf, 1.2),
        lambda ax: box_ball(ax, 0.0, 10.0, 1.2),
    ),
    "simplex": (
        "simplex(w, radius=1.5)",
        lambda w: wc.simplex(w, 1.5),
        lambda ax: ax.plot([1.5, 0], [0, 1.5], color="#3182bd", linewidth=4, alpha=0.8),
    ),
    "max_l1_norm": (
        "max_l1_norm(w, max_value=1.2)",
        lambda w: wc.max_l1_norm(w, 1.2),
        lambda ax: ax.add_patch(Polygon([(1.2, 0), (0, 1.2), (-1.2, 0), (0, -1.2)], **SET_STYLE)),
    ),
}


def figure(name: str, out: Path) -> Path:
    title, project, draw_set = KINDS[name]
    projected = project(POINTS)
    fig, ax = plt.subplots(figsize=(4, 4.4), dpi=100)
    draw_set(ax)
    for (x0, y0), (x1, y1) in zip(POINTS.T, projected.T, strict=True):
        ax.plot([x0, x1], [y0, y1], color="#969696", linewidth=1, zorder=2)
    ax.scatter(*POINTS, s=28, facecolors="white", edgecolors="#252525", zorder=3, label="node")
    ax.scatter(*projected, s=22, color="#d62728", zorder=4, label="projected")
    ax.axhline(0, color="#bdbdbd", linewidth=0.8, zorder=1)
    ax.axvline(0, color="#bdbdbd", linewidth=0.8, zorder=1)
    ax.set_xlim(-LIMIT, LIMIT)
    ax.set_ylim(-LIMIT, LIMIT)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(title, fontsize=10, family="monospace")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    path = out / f"{name}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the PNGs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in KINDS:
        print(figure(name, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

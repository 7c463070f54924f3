"""The moons case study with the tutorial's extensions: repeated evaluation, weight norms,
constraining the output layer and the biases, and a grid over the constraint value.

Writes to --out: ``report.md`` (accuracy as mean ± standard deviation over the repeats and the
hidden layer's per-node norms before and after training, per constraint; the grid), and the
figures ``learning_curves.png``, ``norms.png``, ``boundaries.png`` and ``grid.png``.

On the torch backend all repeats of a configuration train at once as one batched ensemble:
weights shaped (repeats, out, in), batched matrix products, and the per-node constraint applied by
the core to the batched weights (``dims=2``). Each repeat is exactly the model of
``moons_torch.py`` with seed ``seed + repeat``. The Keras backend trains the repeats one by one
(as ``moons_keras.py`` does). The batched ensemble, the progress bar and the report's pieces are
shared with the digits study (``study_common.py``).

Constraint specs: ``none``, ``unit_norm``, ``non_neg``, ``max_norm:C``,
``min_max_norm:MIN:MAX[:RATE]``, and the box, simplex and L1 kinds: ``clip:LOWER:UPPER``,
``box_max_norm:LOWER:UPPER:C``, ``simplex[:RADIUS]``, ``max_l1_norm:C`` (``inf`` is a number,
e.g. ``box_max_norm:0:inf:1``).

Example: ``python examples/moons_study.py --backend torch --repeats 30 --out out/study``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import weight_constraints as wc

from moons_data import (
    EPOCHS,
    EPSILON,
    HIDDEN,
    LEARNING_RATE,
    moons,
    plane_grid,
    plot_decision_boundaries,
    plot_grid,
    plot_learning_curves,
    plot_norm_histograms,
)
from study_common import (
    UsageError,
    constrain_ensemble,
    ensemble_forward,
    ensemble_node_norms,
    figure_lines,
    label_of,
    machine,
    markdown_table,
    mean_std,
    min_median_max,
    parse_numbers,
    positive_int,
    progress_bar,
    stack_parameter,
)

DEFAULT_CONSTRAINTS = "none,unit_norm,max_norm:1,min_max_norm:1:1"
PARSERS = {
    "none": (0, 0, lambda: None),
    "unit_norm": (0, 0, wc.UnitNorm),
    "non_neg": (0, 0, wc.NonNeg),
    "max_norm": (1, 1, wc.MaxNorm),
    "min_max_norm": (2, 3, wc.MinMaxNorm),
    "clip": (2, 2, lambda *values: wc.Clip(*values)),
    "box_max_norm": (3, 3, lambda *values: wc.BoxMaxNorm(*values)),
    "simplex": (0, 1, lambda *values: wc.Simplex(*values)),
    "max_l1_norm": (1, 1, lambda *values: wc.MaxL1Norm(*values)),
}


def parse_constraint(spec: str) -> wc.Constraint | None:
    """``"max_norm:1"`` -> ``MaxNorm(1.0)``; ``"none"`` -> ``None``."""
    name, *arguments = spec.strip().split(":")
    if name not in PARSERS:
        raise UsageError(f"unknown constraint {spec!r}; known: {', '.join(PARSERS)}")
    low, high, make = PARSERS[name]
    if not low <= len(arguments) <= high:
        raise UsageError(f"constraint {spec!r} takes {low} to {high} numbers after the name")
    try:
        values = [float(a) for a in arguments]
    except ValueError:
        raise UsageError(
            f"constraint {spec!r}: the values after the name must be numbers"
        ) from None
    try:
        return make(*values)
    except ValueError as error:
        raise UsageError(f"constraint {spec!r}: {error}") from None


def parse_grid(text: str) -> list[float]:
    return parse_numbers(text, "--grid", "0.3,0.6,1.0")


@dataclass
class Outcome:
    """What one configuration measured over its repeats."""

    label: str
    train_curves: np.ndarray  # (repeats, epochs)
    test_curves: np.ndarray
    final_train: np.ndarray  # (repeats,)
    final_test: np.ndarray
    norms_before: np.ndarray  # (repeats, hidden)
    norms_after: np.ndarray
    boundary: np.ndarray = field(repr=False)  # first repeat's probabilities on the plane grid
    seconds: float = 0.0  # wall time of the training, all repeats


# -- torch: one batched ensemble per configuration ------------------------------------------------


def train_torch_ensemble(
    constraint, seeds, epochs, *, output=False, bias=False, hidden=HIDDEN, progress=None
) -> Outcome:
    import torch

    from moons_torch import MLP

    train_x, train_y, test_x, test_y = (torch.from_numpy(a) for a in moons())
    # Repeat r is moons_torch.MLP(seed r): the same initial weights, stacked.
    models = [MLP(seed, hidden) for seed in seeds]
    w1 = stack_parameter(m.hidden.weight for m in models)  # (R, H, 2)
    b1 = stack_parameter(m.hidden.bias for m in models)  # (R, H)
    w2 = stack_parameter(m.output.weight for m in models)  # (R, 1, H)
    b2 = stack_parameter(m.output.bias for m in models)  # (R, 1)
    repeats = len(seeds)

    def forward(x, first=repeats):
        """Logits of the first ``first`` repeats for inputs x (N, 2): shape (first, N)."""
        return ensemble_forward([(w1, b1), (w2, b2)], x, first)[..., 0]

    optimizer = torch.optim.Adam([w1, b1, w2, b2], lr=LEARNING_RATE, eps=EPSILON)
    entries = [("hidden.weight", w1, 2)]
    if output:
        entries.append(("output.weight", w2, 2))
    if bias:
        entries += [("hidden.bias", b1, 1), ("output.bias", b2, 1)]
    constrain_ensemble(optimizer, constraint, entries)
    norms_before = ensemble_node_norms(w1)
    curves = torch.empty(2, repeats, epochs)
    for epoch in range(epochs):
        optimizer.zero_grad(set_to_none=True)
        logits = forward(train_x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, train_y.expand_as(logits), reduction="none"
        )
        loss.mean(dim=1).sum().backward()  # each repeat's gradient is its own mean loss's
        optimizer.step()
        with torch.no_grad():
            curves[0, :, epoch] = ((logits > 0).float() == train_y).float().mean(dim=1)
            curves[1, :, epoch] = ((forward(test_x) > 0).float() == test_y).float().mean(dim=1)
        if progress is not None and (epoch + 1) % 100 == 0:
            progress.update(100 * repeats)
    if progress is not None:
        progress.update((epochs % 100) * repeats)
    with torch.no_grad():
        final_train = ((forward(train_x) > 0).float() == train_y).float().mean(dim=1)
        final_test = ((forward(test_x) > 0).float() == test_y).float().mean(dim=1)
        boundary = torch.sigmoid(forward(torch.from_numpy(plane_grid()[2]), first=1)[0])
    return Outcome(
        label_of(constraint),
        curves[0].numpy(),
        curves[1].numpy(),
        final_train.numpy(),
        final_test.numpy(),
        norms_before,
        ensemble_node_norms(w1),
        boundary.numpy(),
    )


# -- keras: the repeats one by one -------------------------------------------------------------


def train_keras_repeats(
    constraint, seeds, epochs, *, output=False, bias=False, hidden=HIDDEN, progress=None
) -> Outcome:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from weight_constraints.adapters.keras import to_keras

    train_x, train_y, test_x, test_y = moons()
    runs = []
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        twin = None if constraint is None else to_keras(constraint)
        model = keras.Sequential(
            [
                keras.Input((2,)),
                keras.layers.Dense(
                    hidden, "relu", kernel_constraint=twin, bias_constraint=twin if bias else None
                ),
                keras.layers.Dense(
                    1,
                    "sigmoid",
                    kernel_constraint=twin if output else None,
                    bias_constraint=twin if bias else None,
                ),
            ]
        )
        model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
        kernel = model.layers[0].kernel
        before = wc.node_norms(keras.ops.convert_to_numpy(kernel), axis=0)
        curves = np.empty((2, epochs))
        for epoch in range(epochs):
            _, curves[0, epoch] = model.train_on_batch(train_x, train_y)
            _, curves[1, epoch] = model.test_on_batch(test_x, test_y)
            if progress is not None and (epoch + 1) % 100 == 0:
                progress.update(100)
        if progress is not None:
            progress.update(epochs % 100)
        final = (
            model.evaluate(train_x, train_y, verbose=0)[1],
            model.evaluate(test_x, test_y, verbose=0)[1],
        )
        after = wc.node_norms(keras.ops.convert_to_numpy(kernel), axis=0)
        runs.append((curves, final, before, after, model))
    boundary = runs[0][4].predict(plane_grid()[2], verbose=0, batch_size=4096)[:, 0]
    return Outcome(
        label_of(constraint),
        np.stack([r[0][0] for r in runs]),
        np.stack([r[0][1] for r in runs]),
        np.array([r[1][0] for r in runs]),
        np.array([r[1][1] for r in runs]),
        np.stack([r[2] for r in runs]),
        np.stack([r[3] for r in runs]),
        boundary,
    )


TRAINERS = {"torch": train_torch_ensemble, "keras": train_keras_repeats}


# -- report --------------------------------------------------------------------------------------


def write_report(args, outcomes, grid_outcomes, seconds, figures) -> Path:
    options = []
    if args.constrain_output:
        options.append("output layer constrained too")
    if args.constrain_bias:
        options.append("biases constrained too")
    lines = [
        "# Moons case study",
        "",
        f"Backend **{args.backend}**, {args.epochs} epochs, {args.repeats} repeats "
        f"(seeds {args.seed}..{args.seed + args.repeats - 1}), hidden kernel constrained"
        + (f"; {'; '.join(options)}" if options else "")
        + ".",
        f"Trained in {seconds:.1f} s in all on {machine()}.",
        "",
        "## Accuracy and hidden-layer weight norms",
        "",
        "Accuracy: mean ± standard deviation over the repeats, after the last epoch. Norms: the "
        "L2 norm of each hidden unit's incoming weights, min / median / max over all units of "
        "all repeats.",
        "",
    ]
    header = ["constraint", "train accuracy", "test accuracy", "norms before training"]
    header += ["norms after training", "training time"]
    rows = [
        (
            o.label,
            mean_std(o.final_train),
            mean_std(o.final_test),
            min_median_max(o.norms_before),
            min_median_max(o.norms_after),
            f"{o.seconds:.1f} s",
        )
        for o in outcomes
    ]
    lines += markdown_table(header, rows)
    if grid_outcomes:
        lines += [
            "",
            "## Grid over the constraint value: min_max_norm(a, a) on the hidden kernel",
            "",
        ]
        rows = [
            (f"{a:g}", mean_std(o.final_train), mean_std(o.final_test)) for a, o in grid_outcomes
        ]
        lines += markdown_table(["a", "train accuracy", "test accuracy"], rows)
    lines += ["", "## Figures", "", *figure_lines(figures)]
    path = args.out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- command line --------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Constraint specs: " + ", ".join(PARSERS)
    )
    parser.add_argument("--backend", choices=sorted(TRAINERS), default="torch")
    parser.add_argument(
        "--constraints",
        default=DEFAULT_CONSTRAINTS,
        help=f"comma-separated (default: {DEFAULT_CONSTRAINTS})",
    )
    parser.add_argument("--repeats", default="30", help="repeats per configuration (default 30)")
    parser.add_argument("--epochs", default=str(EPOCHS), help=f"default {EPOCHS}")
    parser.add_argument("--seed", default="1", help="seed of the first repeat (default 1)")
    parser.add_argument("--out", type=Path, default=Path("out/study"))
    parser.add_argument(
        "--constrain-output", action="store_true", help="constrain the output layer's kernel too"
    )
    parser.add_argument("--constrain-bias", action="store_true", help="constrain both biases too")
    parser.add_argument(
        "--grid", default=None, help="values a for min_max_norm(a, a), e.g. 0.3,0.6,0.9,1.0,1.3,1.6"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> Path:
    args.repeats = positive_int("repeats", args.repeats, 1)
    args.epochs = positive_int("epochs", args.epochs, 1)
    args.seed = positive_int("seed", args.seed, 0)
    constraints = [parse_constraint(spec) for spec in args.constraints.split(",")]
    grid = parse_grid(args.grid) if args.grid is not None else []
    args.out.mkdir(parents=True, exist_ok=True)
    if args.backend == "torch":
        import torch

        torch.set_num_threads(min(2, os.cpu_count() or 1))
    seeds = list(range(args.seed, args.seed + args.repeats))
    moons()  # load the data (and scikit-learn) before anything is timed
    train = TRAINERS[args.backend]
    total = (len(constraints) + len(grid)) * args.epochs * args.repeats
    start = time.perf_counter()
    with progress_bar(total, "moons", disable=args.quiet) as bar:
        options = {"output": args.constrain_output, "bias": args.constrain_bias, "progress": bar}

        def timed(constraint):
            started = time.perf_counter()
            outcome = train(constraint, seeds, args.epochs, **options)
            outcome.seconds = time.perf_counter() - started
            return outcome

        outcomes = [timed(c) for c in constraints]
        grid_outcomes = [(a, timed(wc.MinMaxNorm(a, a))) for a in grid]
    seconds = time.perf_counter() - start
    curves = {o.label: {"train": o.train_curves, "test": o.test_curves} for o in outcomes}
    title = f"moons, {args.backend}, mean ± 1 std over {args.repeats} repeats"
    plot_learning_curves(curves, args.out / "learning_curves.png", title)
    plot_norm_histograms(
        {o.label: (o.norms_before, o.norms_after) for o in outcomes}, args.out / "norms.png"
    )
    xx, yy, _ = plane_grid()
    boundaries = {o.label: o.boundary.reshape(xx.shape) for o in outcomes}
    plot_decision_boundaries(boundaries, (xx, yy), args.out / "boundaries.png")
    figures = ["learning_curves.png", "norms.png", "boundaries.png"]
    if grid_outcomes:
        tests = np.stack([o.final_test for _, o in grid_outcomes])
        plot_grid(grid, tests, args.out / "grid.png")
        figures.append("grid.png")
    report = write_report(args, outcomes, grid_outcomes, seconds, figures)
    if not args.quiet:
        rows = [(o.label, o) for o in outcomes] + [(f"grid {o.label}", o) for _, o in grid_outcomes]
        width = max(len(label) for label, _ in rows)
        for label, o in rows:
            train, test = mean_std(o.final_train), mean_std(o.final_test)
            print(f"{label:>{width}}: Train: {train}, Test: {test}")
        print(f"report: {report}   ({seconds:.1f} s of training)")
    return report


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        run(args)
    except UsageError as error:
        print(f"moons_study.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

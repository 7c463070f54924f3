"""The digits case study: max-norm with dropout and high learning rates, on real data.

Srivastava et al. 2014 ("Dropout", JMLR) compare regularisers on MNIST (their Table 9) and find
dropout together with max-norm best; they explain that the max-norm bound lets training use
learning rates large enough to explore without the weights blowing up. This study measures both
claims on scikit-learn's 8x8 digits (see ``digits_data.py`` for the data, network and training):

- configurations: no regularisation, L2 weight decay, dropout, max-norm (a grid of c),
  dropout + max-norm (the same grid), dropout + L2, unit-norm; each over many seeds, trained at
  once as one batched ensemble (``study_common.py``, shared with the moons study). The
  constraints act on every layer's kernel (one norm per unit: the incoming weights), through
  ``weight_constraints.adapters.torch``, after every optimizer step;
- a learning-rate sweep of dropout with and without max-norm: the final test error and the
  largest node norm reached;
- the same configuration trained with Keras and with JAX (``digits_backends.py``), compared with
  the PyTorch seeds.

Writes to --out: ``report.md`` (tables, the comparison with the paper, the set-up and timings),
``results.json`` (every seed's measurements, the trained models' final node norms), and the
figures ``errors.png``, ``learning_rates.png`` and ``norms.png``. ``--quick`` runs everything at
toy sizes in seconds (the tests use it).

Example: ``python examples/digits_study.py --out out/digits``
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

import weight_constraints as wc

from digits_data import Settings, cosine, digits, plot_errors, plot_learning_rates, plot_norm_curves
from digits_report import BASELINE, summary_lines, write_report
from study_common import (
    UsageError,
    constrain_ensemble,
    ensemble_forward,
    ensemble_node_norms,
    label_of,
    parse_numbers,
    positive_int,
    progress_bar,
    stack_parameter,
)

FULL = {"repeats": 20, "epochs": 100, "hidden": 256, "check_repeats": 5}
QUICK = {"repeats": 3, "epochs": 4, "hidden": 32, "check_repeats": 1}


@dataclass(frozen=True)
class Config:
    """One configuration: the regularisers, and the peak learning rate (None: the study's)."""

    dropout: bool = False
    l2: bool = False
    constraint: wc.Constraint | None = None
    lr: float | None = None

    @property
    def label(self) -> str:
        parts = ["dropout"] * self.dropout + ["l2"] * self.l2
        if self.constraint is not None:
            parts.append(label_of(self.constraint))
        return " + ".join(parts) or "none"


@dataclass
class Outcome:
    """What one configuration measured over its seeds (errors as fractions)."""

    config: Config
    lr: float
    test_error: np.ndarray  # (repeats,)
    train_error: np.ndarray  # (repeats,)
    largest_norm: np.ndarray = field(repr=False)  # (repeats, epochs), inf once not finite
    final_norms: list[np.ndarray] = field(repr=False)  # per layer, (repeats, units)
    dead_units: np.ndarray = field(repr=False)  # (repeats,): share of dead hidden units
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def diverged(self) -> np.ndarray:
        return ~np.isfinite(self.largest_norm[:, -1])


# -- the PyTorch ensemble ------------------------------------------------------------------------


def init_layers(seeds: list[int], sizes: tuple[int, ...]) -> list[tuple]:
    """Glorot-uniform kernels and zero biases, stacked: repeat r draws from its own generator
    seeded ``seeds[r]``, so a seed starts from the same weights in every configuration."""
    import torch

    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    layers = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        limit = (6.0 / (fan_in + fan_out)) ** 0.5
        weight = stack_parameter(
            torch.empty(fan_out, fan_in).uniform_(-limit, limit, generator=g) for g in generators
        )
        layers.append((weight, torch.nn.Parameter(torch.zeros(len(seeds), fan_out))))
    return layers


def largest_node_norm(weights: list) -> np.ndarray:
    """The largest per-node norm over all layers, per repeat (inf where a norm is not finite)."""
    import torch

    norms = [wc.node_norms(w.detach(), axis=2).amax(dim=1) for w in weights]
    return torch.nan_to_num(torch.stack(norms).amax(dim=0), nan=np.inf).numpy()


def dead_units(layers: list[tuple], x) -> np.ndarray:
    """Per repeat: the share of hidden units that are zero (ReLU) on every input of ``x``."""
    import torch

    dead = []
    with torch.no_grad():
        h = x.expand(layers[0][0].shape[0], *x.shape)
        for weight, bias in layers[:-1]:
            h = torch.baddbmm(bias[:, None], h, weight.transpose(1, 2)).relu_()
            dead.append(h.amax(dim=1) <= 0)
    return torch.cat(dead, dim=1).double().mean(dim=1).numpy()


def make_optimizer(config: Config, layers: list[tuple], settings: Settings):
    """SGD with momentum (weight decay on the kernels for L2), its cosine schedule, and the
    configuration's constraint attached to every kernel."""
    import torch

    weights, biases = [w for w, _ in layers], [b for _, b in layers]
    decay = settings.l2 if config.l2 else 0.0
    groups = [{"params": weights, "weight_decay": decay}, {"params": biases}]
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=settings.momentum)
    steps = settings.steps()
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine(step, steps))
    entries = [(f"layer{i}.weight", w, 2) for i, w in enumerate(weights)]
    constrain_ensemble(optimizer, config.constraint, entries)
    return optimizer, schedule


def train_ensemble(config: Config, seeds: list[int], settings: Settings, data, progress=None):
    """Train one model per seed at once; every seed sees its own batch order (from its own
    generator: the same in every configuration) and its own dropout masks."""
    import torch

    train_x, train_y, test_x, test_y = (torch.from_numpy(a) for a in data)
    layers = init_layers(seeds, settings.sizes(train_x.shape[1]))
    optimizer, schedule = make_optimizer(config, layers, settings)
    shufflers = [torch.Generator().manual_seed(seed) for seed in seeds]
    masks = torch.Generator().manual_seed(1_000_003 + seeds[0])
    keep = 1.0 - settings.dropout

    def dropout(h):
        return h * torch.empty_like(h).bernoulli_(keep, generator=masks).div_(keep)

    between = dropout if config.dropout else None
    n, batch = train_x.shape[0], settings.batch
    largest = np.empty((len(seeds), settings.epochs))
    started = time.perf_counter()
    for epoch in range(settings.epochs):
        order = torch.stack([torch.randperm(n, generator=g) for g in shufflers])
        for start in range(0, n - batch + 1, batch):
            index = order[:, start : start + batch]
            logits = ensemble_forward(layers, train_x[index], between=between)
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), train_y[index].flatten(), reduction="sum"
            )
            optimizer.zero_grad(set_to_none=True)
            (loss / batch).backward()  # each repeat's gradient is its own mean loss's
            optimizer.step()  # the constraint is projected right after the update
            schedule.step()
        largest[:, epoch] = largest_node_norm([w for w, _ in layers])
        if progress is not None:
            progress.update(len(seeds))
    with torch.no_grad():
        errors = [
            (ensemble_forward(layers, x).argmax(dim=-1) != y).double().mean(dim=1).numpy()
            for x, y in ((test_x, test_y), (train_x, train_y))
        ]
    final = [ensemble_node_norms(w) for w, _ in layers]
    dead, seconds = dead_units(layers, train_x), time.perf_counter() - started
    return Outcome(config, config.lr, errors[0], errors[1], largest, final, dead, seconds)


# -- the study -----------------------------------------------------------------------------------


def main_configs(max_norms: list[float]) -> list[Config]:
    """The configurations of the main table, in its order."""
    configs = [Config(), Config(l2=True), Config(dropout=True)]
    configs += [Config(constraint=wc.MaxNorm(c)) for c in max_norms]
    configs += [Config(dropout=True, constraint=wc.MaxNorm(c)) for c in max_norms]
    return [*configs, Config(dropout=True, l2=True), Config(constraint=wc.UnitNorm())]


def sweep_configs(rates: list[float], max_norms: list[float]) -> list[Config]:
    """The learning-rate sweep: dropout alone and with each max-norm value, at every rate."""
    kinds = [Config(dropout=True)]
    kinds += [Config(dropout=True, constraint=wc.MaxNorm(c)) for c in max_norms]
    return [replace(kind, lr=rate) for rate in rates for kind in kinds]


class Trainer:
    """Trains configurations once each (the sweep shares runs with the main table)."""

    def __init__(self, seeds: list[int], settings: Settings, data, progress) -> None:
        self.seeds, self.settings, self.data, self.progress = seeds, settings, data, progress
        self.done: dict[tuple[str, float], Outcome] = {}

    def __call__(self, config: Config) -> Outcome:
        config = replace(config, lr=config.lr if config.lr is not None else self.settings.lr)
        key = (config.label, config.lr)
        if key not in self.done:
            self.done[key] = train_ensemble(
                config, self.seeds, self.settings, self.data, self.progress
            )
        return self.done[key]


def check_backends(args, settings: Settings, data) -> list[dict]:
    """The check configuration trained with Keras and with JAX on the first seeds."""
    from digits_backends import BACKENDS

    seeds = list(range(args.seed, args.seed + args.check_repeats))
    checks = []
    for name, train in BACKENDS.items():
        started = time.perf_counter()
        result = train(seeds, settings, args.check_max_norm, data)
        result.update(backend=name, seconds=time.perf_counter() - started, seeds=seeds)
        checks.append(result)
    return checks


# -- command line --------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--out", type=Path, default=Path("out/digits"))
    add("--quick", action="store_true", help="toy sizes, for the tests: " + json.dumps(QUICK))
    add("--repeats", help=f"seeds per configuration (default {FULL['repeats']})")
    add("--epochs", help=f"default {FULL['epochs']}")
    add("--hidden", help=f"units per hidden layer (default {FULL['hidden']})")
    add("--seed", default="1", help="seed of the first repeat (default 1)")
    add("--lr", default=str(Settings.lr), help=f"peak learning rate (default {Settings.lr})")
    add("--max-norms", default="1,2,3,4", help="the grid of c for max_norm (default 1,2,3,4)")
    add("--lrs", default="0.01,0.1,0.3,1", help="the sweep's rates (default 0.01,0.1,0.3,1)")
    add("--sweep-max-norms", default="1,3", help="c for the sweep's max-norm runs (default 1,3)")
    add("--check-max-norm", default="1", help="c of the Keras and JAX check (default 1)")
    add("--check-repeats", help=f"seeds of that check, 0: none (default {FULL['check_repeats']})")
    add("--quiet", action="store_true", help="no progress and no summary")
    return parser


def resolve(args: argparse.Namespace) -> Settings:
    """Validate the arguments in place; return the training settings."""
    sizes = QUICK if args.quick else FULL
    for name, minimum in (("repeats", 1), ("epochs", 1), ("hidden", 1), ("check_repeats", 0)):
        value = getattr(args, name)
        option = name.replace("_", "-")
        setattr(args, name, sizes[name] if value is None else positive_int(option, value, minimum))
    args.seed = positive_int("seed", args.seed, 0)
    args.lr = one_number(args.lr, "--lr", positive=True)
    args.max_norms = parse_numbers(args.max_norms, "--max-norms", "1,2,3,4")
    args.lrs = parse_numbers(args.lrs, "--lrs", "0.01,0.1,1", positive=True)
    args.sweep_max_norms = parse_numbers(args.sweep_max_norms, "--sweep-max-norms", "1,3")
    args.check_max_norm = one_number(args.check_max_norm, "--check-max-norm")
    return Settings(epochs=args.epochs, hidden=args.hidden, lr=args.lr)


def one_number(text: str, option: str, positive: bool = False) -> float:
    values = parse_numbers(text, option, "1", positive=positive)
    if len(values) != 1:
        raise UsageError(f"{option} takes one number, got {text!r}")
    return values[0]


def run(args: argparse.Namespace) -> Path:
    settings = resolve(args)
    import torch

    torch.set_num_threads(1)  # small matrices, and the machine is shared
    args.out.mkdir(parents=True, exist_ok=True)
    data = digits()  # load the data (and scikit-learn) before anything is timed
    args.split = (len(data[0]), len(data[2]))
    args.chance = 1.0 - np.bincount(data[3]).max() / len(data[3])  # always the commonest class
    seeds = list(range(args.seed, args.seed + args.repeats))
    configs = main_configs(args.max_norms)
    sweep = sweep_configs(args.lrs, args.sweep_max_norms)
    check = Config(dropout=True, constraint=wc.MaxNorm(args.check_max_norm))
    runs = {(c.label, c.lr or settings.lr) for c in [*configs, *sweep, check]}
    start = time.perf_counter()
    total = len(runs) * args.repeats * settings.epochs
    with progress_bar(total, "digits", disable=args.quiet) as bar:
        trainer = Trainer(seeds, settings, data, bar)
        outcomes = [trainer(c) for c in configs]
        swept = [trainer(c) for c in sweep]
        reference = trainer(check)
    torch_seconds = time.perf_counter() - start
    if args.check_repeats and not args.quiet:
        print(f"digits: Keras and JAX, {args.check_repeats} seed(s) each", file=sys.stderr)
    checks = check_backends(args, settings, data) if args.check_repeats else []
    seconds = time.perf_counter() - start
    figures = draw_figures(args, outcomes, swept)
    times = (torch_seconds, seconds)
    report = write_report(args, settings, outcomes, swept, reference, checks, figures, times)
    write_results(args, settings, list(trainer.done.values()), checks)
    if not args.quiet:
        print("\n".join(summary_lines(outcomes, swept, checks)))
        print(f"report: {report}   ({seconds:.1f} s in all)")
    return report


def draw_figures(args, outcomes: list[Outcome], swept: list[Outcome]) -> list[str]:
    errors = {o.label: 100 * o.test_error for o in outcomes}
    title = f"digits: test error over {args.repeats} seeds (peak learning rate {args.lr:g})"
    plot_errors(errors, BASELINE, args.out / "errors.png", title)
    series: dict[str, tuple[list, list]] = {}
    curves: dict[float, dict[str, np.ndarray]] = {}
    for o in swept:
        errors_, norms = series.setdefault(o.label, ([], []))
        errors_.append(100 * o.test_error)
        norms.append(o.largest_norm.max(axis=1))
        curves.setdefault(o.lr, {})[o.label] = o.largest_norm
    series_arrays = {k: (np.stack(e), np.stack(n)) for k, (e, n) in series.items()}
    plot_learning_rates(args.lrs, series_arrays, args.out / "learning_rates.png", args.chance)
    plot_norm_curves(curves, args.out / "norms.png")
    return ["errors.png", "learning_rates.png", "norms.png"]


def write_results(args, settings: Settings, outcomes: list[Outcome], checks: list[dict]) -> Path:
    """Every seed's measurements, machine-readable (the tests read the final node norms)."""
    runs = []
    for o in outcomes:
        constraint = o.config.constraint
        runs.append(
            {
                "label": o.label,
                "lr": o.lr,
                "constraint": None if constraint is None else label_of(constraint),
                "test_error": o.test_error.tolist(),
                "train_error": o.train_error.tolist(),
                "largest_norm": np.max(o.largest_norm, axis=1).tolist(),
                "final_norms": [[_min_max(n) for n in layer] for layer in o.final_norms],
                "dead_units": o.dead_units.tolist(),
                "seconds": o.seconds,
            }
        )
    payload = {"settings": settings.__dict__, "seeds": args.repeats, "runs": runs, "checks": checks}
    path = args.out / "results.json"
    path.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    return path


def _min_max(norms: np.ndarray) -> list[float]:
    return [float(norms.min()), float(norms.max())]


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        run(args)
    except UsageError as error:
        print(f"digits_study.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

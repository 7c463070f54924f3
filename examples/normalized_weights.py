"""Normalized-weight training in one line: an EDM2-style conv net and an nGPT-style transformer
block, trained on the CPU with their weights kept on spheres after every step.

    python examples/normalized_weights.py           # 10 epochs each, under a minute on one thread
    python examples/normalized_weights.py --quick   # 2 short epochs each (the smoke test)

Needs ``weight-constraints[torch,examples]`` (scikit-learn's digits ship inside its wheel;
nothing is downloaded).

- EDM2's forced weight normalization (Karras et al., CVPR 2024): a small magnitude-preserving
  conv net denoises scikit-learn's 8x8 digits, every output channel of every conv and linear
  weight at norm sqrt(fan_in): ``constrain(net, optimizer, kernel=wc.MinMaxNorm("sqrt(fan_in)",
  "sqrt(fan_in)")).apply()``.
- nGPT's normalization (Loshchilov et al., ICLR 2025): a small transformer block learns
  next-token prediction on synthetic sequences (each counts up modulo the vocabulary in steps
  of its own), every matrix at unit norm along the embedding dimension: ``constrain(model,
  optimizer, kernel=wc.UnitNorm(), per_input=r".*\\.(attn_out|down)")``.

Each model is trained beside an identical copy without the constraint (same initial weights,
same batches), the two steps timed alternately, step by step. After each epoch the script
prints, for both: the loss, and the largest |norm - target| over every constrained matrix
(measured in float64 from the weights); and the median step time with and without the
constraint, and the overhead. Every number is measured.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import weight_constraints as wc
from weight_constraints.adapters.torch import audit, constrain

Batch = tuple[torch.Tensor, ...]
Targets = dict[str, tuple[tuple[int, ...], float]]
"""For each constrained weight: the axes of one norm and the norm it must have."""


def mp(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A magnitude-preserving layer, as EDM2's: the weight has norm sqrt(fan_in) per output
    channel, so its output is divided by sqrt(fan_in)."""
    return layer(x) / math.sqrt(layer.weight[0].numel())


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """EDM2's magnitude-preserving SiLU."""
    return F.silu(x) / 0.596


class Denoiser(nn.Module):
    """A small EDM2-style denoiser of 8x8 images: three convolutions and a noise-level
    embedding (a Linear on Fourier features of the noise level), no biases."""

    def __init__(self, channels: int = 32, features: int = 16) -> None:
        super().__init__()
        self.register_buffer("frequencies", torch.randn(features // 2))
        self.embed = nn.Linear(features, channels, bias=False)
        self.conv_in = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.conv_mid = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv_out = nn.Conv2d(channels, 1, 3, padding=1, bias=False)

    def forward(self, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        angles = sigma.log()[:, None] * self.frequencies
        features = torch.cat([angles.cos(), angles.sin()], dim=1) * math.sqrt(2)
        h = mp_silu(mp(self.conv_in, noisy))
        h = (h + mp(self.embed, features)[:, :, None, None]) / math.sqrt(2)
        h = mp_silu(mp(self.conv_mid, h))
        return noisy + mp(self.conv_out, h) * sigma[:, None, None, None]


class Block(nn.Module):
    """An nGPT-style block: causal attention (torch ops) and an MLP, hidden states kept at
    unit norm, no biases."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.up = nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            f(x).view(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)  # nGPT normalises q and k
        scores = q @ k.transpose(-2, -1) * math.sqrt(d // self.heads)
        future = torch.ones(t, t, dtype=torch.bool).triu(1)
        attention = scores.masked_fill(future, -math.inf).softmax(-1) @ v
        x = F.normalize(x + self.attn_out(attention.transpose(1, 2).reshape(b, t, d)), dim=-1)
        return F.normalize(x + self.down(F.silu(self.up(x))), dim=-1)


class TinyNGPT(nn.Module):
    """Token embedding, one block, output head; the logits scaled by a constant (nGPT learns
    this scale; a constant keeps every parameter in a layer the adapter knows)."""

    def __init__(self, vocab: int, d: int = 32, heads: int = 2, layers: int = 1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x) * 10.0


# -- the two recipes -------------------------------------------------------------------------


@dataclass
class Recipe:
    """A model, its data and loss, and the one call that constrains it."""

    title: str
    call: str
    make: Callable[[], nn.Module]
    batches: Callable[[torch.Generator], Iterator[Batch]]
    loss: Callable[[nn.Module, Batch], torch.Tensor]
    constrain: Callable[[nn.Module, torch.optim.Optimizer], object]
    targets: Callable[[nn.Module], Targets]
    steps: int


def digits_images() -> torch.Tensor:
    """scikit-learn's 1,797 digits, 1x8x8, pixels scaled to [-1, 1]."""
    from sklearn.datasets import load_digits

    x = load_digits().images.astype(np.float32) / 8.0 - 1.0
    return torch.from_numpy(x)[:, None]


def denoising_batches(images: torch.Tensor, steps: int) -> Callable[..., Iterator[Batch]]:
    def batches(generator: torch.Generator) -> Iterator[Batch]:
        for _ in range(steps):
            index = torch.randint(len(images), (64,), generator=generator)
            clean = images[index]
            sigma = torch.exp(torch.randn(64, generator=generator) * 0.8 - 0.8)  # log-normal
            noise = torch.randn(clean.shape, generator=generator) * sigma[:, None, None, None]
            yield clean + noise, sigma, clean

    return batches


def denoising_loss(net: nn.Module, batch: Batch) -> torch.Tensor:
    noisy, sigma, clean = batch
    return F.mse_loss(net(noisy, sigma), clean)


def counting_batches(vocab: int, steps: int) -> Callable[..., Iterator[Batch]]:
    """Sequences that count up modulo ``vocab`` from a random start, each in steps of its own
    (1 to 4): the next token follows from the ones before it."""

    def batches(generator: torch.Generator) -> Iterator[Batch]:
        for _ in range(steps):
            start = torch.randint(vocab, (32, 1), generator=generator)
            stride = torch.randint(1, 5, (32, 1), generator=generator)
            tokens = (start + stride * torch.arange(17)) % vocab
            yield tokens[:, :-1], tokens[:, 1:]

    return batches


def next_token_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    tokens, following = batch
    return F.cross_entropy(model(tokens).flatten(0, 1), following.flatten())


def edm2_targets(net: nn.Module) -> Targets:
    """Every conv and linear weight: one norm per output channel, sqrt(fan_in)."""
    return {
        f"{name}.weight": (tuple(range(1, m.weight.ndim)), math.sqrt(m.weight[0].numel()))
        for name, m in net.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def ngpt_targets(model: nn.Module) -> Targets:
    """Every matrix: unit norm along the embedding dimension (dim 0 of the matrices that map
    into the embedding space, dim 1 of the others)."""
    return {
        name: ((0,) if name.endswith(("attn_out.weight", "down.weight")) else (1,), 1.0)
        for name, _ in model.named_parameters()
    }


def recipes(quick: bool) -> list[Recipe]:
    vocab = 16
    steps = 5 if quick else 28
    return [
        Recipe(
            "EDM2-style forced weight normalization: a conv denoiser of scikit-learn's digits",
            'constrain(net, optimizer, kernel=wc.MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)"))'
            ".apply()",
            Denoiser,
            denoising_batches(digits_images(), steps),
            denoising_loss,
            lambda net, optimizer: constrain(
                net, optimizer, kernel=wc.MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)")
            ).apply(),
            edm2_targets,
            steps,
        ),
        Recipe(
            "nGPT-style normalization: a transformer block predicting the next token",
            'constrain(model, optimizer, kernel=wc.UnitNorm(), per_input=r".*\\.(attn_out|down)")'
            ".apply()",
            lambda: TinyNGPT(vocab),
            counting_batches(vocab, steps),
            next_token_loss,
            lambda model, optimizer: constrain(
                model, optimizer, kernel=wc.UnitNorm(), per_input=r".*\.(attn_out|down)"
            ).apply(),
            ngpt_targets,
            steps,
        ),
    ]


# -- measuring -------------------------------------------------------------------------------


def largest_distance(model: nn.Module, targets: Targets) -> tuple[float, float]:
    """The largest |norm - target| over every node of every matrix in ``targets``, measured in
    float64, and the largest relative to its target."""
    parameters = dict(model.named_parameters())
    largest = relative = 0.0
    with torch.no_grad():
        for name, (axes, target) in targets.items():
            norms = torch.linalg.vector_norm(parameters[name].double(), dim=axes)
            distance = float((norms - target).abs().max())
            largest, relative = max(largest, distance), max(relative, distance / target)
    return largest, relative


def timed_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: Callable[[nn.Module, Batch], torch.Tensor],
    batch: Batch,
) -> tuple[float, float]:
    """One training step (the constraint's hook, if any, runs inside ``optimizer.step()``):
    its seconds and loss."""
    start = time.perf_counter()
    value = loss(model, batch)
    value.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, float(value.detach())


def train(recipe: Recipe, epochs: int, seed: int) -> None:
    """Train the recipe's model with its constraint beside an unconstrained copy, printing one
    line per epoch."""
    torch.manual_seed(seed)
    models = {"with": recipe.make(), "without": recipe.make()}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-2) for name, m in models.items()}
    recipe.constrain(models["with"], optimizers["with"])  # the one call
    models["without"].load_state_dict(models["with"].state_dict())  # the same start, projected
    targets = recipe.targets(models["with"])
    weights = sum(dict(models["with"].named_parameters())[name].numel() for name in targets)
    print(f"\n{recipe.title}")
    print(f"  {recipe.call}")
    print(
        f"  {len(targets)} constrained matrices ({weights:,} weights), {recipe.steps} steps per "
        "epoch, Adam (lr 1e-2), float32, torch on 1 thread"
    )
    audit(models["with"], optimizers["with"], strict=True)  # every matrix on its sphere
    generator = torch.Generator().manual_seed(seed)
    overall: dict[str, list[float]] = {"with": [], "without": []}
    worst = 0.0
    for epoch in range(1, epochs + 1):
        times: dict[str, list[float]] = {"with": [], "without": []}
        losses: dict[str, list[float]] = {"with": [], "without": []}
        for step, batch in enumerate(recipe.batches(generator)):
            order = ("with", "without") if step % 2 == 0 else ("without", "with")
            for name in order:  # side by side, alternating which goes first
                seconds, value = timed_step(models[name], optimizers[name], recipe.loss, batch)
                times[name].append(seconds)
                losses[name].append(value)
        audit(models["with"], optimizers["with"], strict=True)
        largest, relative = largest_distance(models["with"], targets)
        drift, _ = largest_distance(models["without"], targets)
        worst = max(worst, relative)
        step_with, step_without = (statistics.median(times[n]) for n in ("with", "without"))
        for name in overall:
            overall[name] += times[name]
        print(
            f"epoch {epoch}/{epochs}: loss {statistics.mean(losses['with']):.4f}, "
            f"largest |norm - target| {largest:.3g} (relative {relative:.3g}); "
            f"without the constraint: loss {statistics.mean(losses['without']):.4f}, "
            f"largest |norm - target| {drift:.3g}; "
            f"step {step_with * 1e3:.3f} ms against {step_without * 1e3:.3f} ms, "
            f"overhead {100 * (step_with / step_without - 1):+.1f}%"
        )
    ratio = statistics.median(overall["with"]) / statistics.median(overall["without"])
    print(
        f"all epochs: largest |norm - target| relative to the target {worst:.3g} "
        f"(float32 spacing {torch.finfo(torch.float32).eps:.3g}); step-time overhead "
        f"{100 * (ratio - 1):+.1f}% (median of {len(overall['with'])} steps each)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 short epochs each (seconds)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per model (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 10)
    torch.set_num_threads(1)  # small matrices: one thread, as the benchmarks
    for recipe in recipes(args.quick):
        train(recipe, epochs, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

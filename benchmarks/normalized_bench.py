"""Normalized-weight training (issue 21): the projection over every matrix of a GPT-2-small-sized
transformer, once per step, nGPT-style and EDM2-style, against the hand-written loop of the same
normalisations that implementations write today.

The weights: ``count`` layers of width ``d`` (GPT-2 small: 12 layers, d = 768), each with q, k,
v and the attention output as four ``Linear(d, d)``, the MLP up-projection ``Linear(d, 4d)`` and
down-projection ``Linear(4d, d)``, without biases: 72 matrices, 85M weights. The token
embedding and the output head (50257 x 768 each in GPT-2) are left out: each is one more large
matrix of the same kind, whose cost is the one-tensor case of section 2.

- nGPT (Loshchilov et al., ICLR 2025): unit norm along the embedding dimension, one norm per
  output unit (dim 1 of ``(out, in)``) for q, k, v and up, one per input unit (dim 0) for the
  attention output and down. Ours: ``constrain(model, None, kernel=UnitNorm(),
  per_input=r".*\\.(attn_out|down)").apply()``.
- EDM2 (Karras et al., CVPR 2024): norm sqrt(fan_in) per output unit of every matrix. Ours:
  ``constrain(model, None, kernel=MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)")).apply()``.

:func:`normalized_rows` takes a device and a ``sync`` function, as ``torch_bench.registry_rows``
does, so that the same rows can run on CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from _timing import COMPILED, Row, compile_extra, interleaved_loops
from torch import nn

import weight_constraints as wc
from weight_constraints.adapters.torch import Constraints, constrain

SIZE = (12, 768)  # GPT-2 small: layers, width
QUICK_SIZE = (2, 32)
GOAL = 1.0  # ours / hand-written
INTO_EMBEDDING = ("attn_out", "down")  # nGPT's matrices with one norm per input unit
PER_INPUT = r".*\.(attn_out|down)"


class Layer(nn.Module):
    """The matrices of one GPT-2 layer, as nGPT writes them (q, k, v apart), no biases."""

    def __init__(self, d: int, device: str | torch.device) -> None:
        super().__init__()
        for name in ("q", "k", "v", "attn_out"):
            setattr(self, name, nn.Linear(d, d, bias=False, device=device))
        self.up = nn.Linear(d, 4 * d, bias=False, device=device)
        self.down = nn.Linear(4 * d, d, bias=False, device=device)


def gpt2_layers(count: int, d: int, device: str | torch.device = "cpu") -> nn.ModuleList:
    """``count`` layers of width ``d``, seeded (the default init)."""
    torch.manual_seed(0)
    return nn.ModuleList(Layer(d, device) for _ in range(count))


def _into_embedding(name: str) -> bool:
    return name.split(".")[-2] in INTO_EMBEDDING


def ngpt_by_hand(model: nn.Module) -> Callable[[], None]:
    """nGPT's ``normalize_matrices``: a loop over the matrices, each divided by its norms along
    the embedding dimension (dim 0 for the attention output and down, dim 1 for the others)."""
    matrices = [(w, 0 if _into_embedding(n) else 1) for n, w in model.named_parameters()]

    def loop() -> None:
        with torch.no_grad():
            for w, dim in matrices:
                w.div_(w.norm(dim=dim, keepdim=True))

    return loop


def edm2_by_hand(model: nn.Module) -> Callable[[], None]:
    """EDM2's forced weight normalization: a loop over the matrices, each scaled to norm
    sqrt(fan_in) per output unit."""
    matrices = list(model.parameters())

    def loop() -> None:
        with torch.no_grad():
            for w in matrices:
                w.mul_(math.sqrt(w.shape[1]) / w.norm(dim=1, keepdim=True))

    return loop


@dataclass(frozen=True)
class Recipe:
    """A normalisation recipe: our one call, and the loop it replaces."""

    constraint: wc.Constraint
    per_input: str | None
    written: str
    by_hand: Callable[[nn.Module], Callable[[], None]]


RECIPES: dict[str, Recipe] = {
    "nGPT-style": Recipe(
        wc.UnitNorm(),
        PER_INPUT,
        "w.div_(w.norm(dim=d, keepdim=True))",
        ngpt_by_hand,
    ),
    "EDM2-style": Recipe(
        wc.MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)"),
        None,
        "w.mul_(math.sqrt(w.shape[1]) / w.norm(dim=1, keepdim=True))",
        edm2_by_hand,
    ),
}


def _registry(model: nn.Module, recipe: Recipe, compile: bool) -> Constraints:
    return constrain(
        model, None, kernel=recipe.constraint, per_input=recipe.per_input, compile=compile
    )


def normalized_rows(
    count: int,
    d: int,
    *,
    device: str | torch.device = "cpu",
    repeats: int = 21,
    target_s: float = 0.02,
    compile: bool = True,
    sync: Callable[[], object] | None = None,
    section: str = "normalized",
) -> list[Row]:
    """For each recipe of :data:`RECIPES`: ``registry.apply()`` over every matrix of ``count``
    layers of width ``d``, against the hand-written loop over the same tensors.

    With ``compile``, a ``compile=True`` registry over the same tensors runs beside them
    (compiled before timing). All contenders project the same tensors in place (each call
    starts from weights already on their spheres, as every step but the first does after an
    update moved them slightly).
    """
    rows = []
    for name, recipe in RECIPES.items():
        model = gpt2_layers(count, d, device)
        matrices = list(model.parameters())
        weights = sum(w.numel() for w in matrices)
        contenders: dict[str, Callable[[], object]] = {
            "ours": _registry(model, recipe, compile=False).apply,
            "hand-written": recipe.by_hand(model),
        }
        if compile:
            torch.compiler.reset()  # compiled for these tensors alone, as in a fresh process
            compiled = _registry(model, recipe, compile=True)
            compiled.apply()  # compiles (seconds)
            contenders[COMPILED] = compiled.apply
        medians, _ = interleaved_loops(contenders, repeats, target_s=target_s, sync=sync)
        ratio = medians["ours"] / medians["hand-written"]
        extra = compile_extra(medians)
        rows.append(
            Row(
                section,
                f"{name}, {count} layer{'s' * (count != 1)} × d = {d} ({len(matrices)} matrices, "
                f"{weights / 1e6:.2f}M weights)",
                medians,
                "ours / hand-written",
                ratio,
                goal=f"≤ {GOAL:.1f}×",
                met=ratio <= GOAL,
                extra=extra,
                tensors=len(matrices),
            )
        )
    return rows

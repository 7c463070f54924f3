"""The normalized-weight recipes of issue 21 (docs/normalized-weights.md), each held after every
step in float32, bfloat16 and float16.

- EDM2's forced weight normalization (Karras et al., CVPR 2024): every output channel of every
  convolution and linear weight at norm sqrt(fan_in), one call on a small conv net:
  ``constrain(net, optimizer, kernel=MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)")).apply()``.
- nGPT's normalization (Loshchilov et al., ICLR 2025): every matrix of a small transformer on its
  unit sphere along the embedding dimension: one norm per output unit for the embedding, q/k/v,
  MLP up-projection and head; one per input unit for the attention-output and MLP
  down-projections (``per_input=``).

After every step: ``audit(..., strict=True)``, every node's norm measured directly in float64,
the projected weights against a float64 recomputation from the weights the optimizer wrote, and
against the hand-written per-layer loop that nGPT and EDM2 implementations write today, run on
the same weights. Half precision is accumulated in float32, so the result is within the
dtype's rounding of the exact float64 projection.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import weight_constraints as wc
from weight_constraints.adapters.torch import Constraints, audit, constrain

EDM2 = wc.MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
STEPS = 8
# How close to the exact (float64) projection a projected entry and a node's norm lie, in
# spacings of the weights' dtype (relative): half precision is accumulated in float32 and
# rounded once or twice at the end (within one spacing); float32 is accumulated in float32, so
# the norm over up to 256 entries adds a few roundings of its own.
SPACINGS = {torch.float32: 4.0, torch.bfloat16: 1.0, torch.float16: 1.0}
PER_INPUT = r".*\.(attn_out|down)"  # nGPT's matrices that map into the embedding space


class ConvNet(nn.Module):
    """A small conv net, as a user writes it: two Conv2d layers and a Linear head, without
    biases. Magnitude-preserving as in EDM2: each weight has norm sqrt(fan_in) per output
    channel, so each layer's output is divided by sqrt(fan_in) (EDM2's ``MPConv`` scales the
    weight instead)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.head = nn.Linear(16 * 4 * 4, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv1(x) / 3.0)  # sqrt(1 * 3 * 3)
        x = F.silu(self.conv2(x) / math.sqrt(8 * 3 * 3))
        return self.head(x.flatten(1)) / 16.0  # sqrt(16 * 4 * 4)


class Block(nn.Module):
    """A transformer block: causal attention (torch ops) and an MLP, no biases (as nGPT)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.up = nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            f(x).view(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
        future = torch.ones(t, t, dtype=torch.bool).triu(1)
        weights = scores.float().masked_fill(future, -math.inf).softmax(-1).to(x.dtype)
        return self.attn_out((weights @ v).transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x + self.attention(x), dim=-1)  # hidden states on the sphere (nGPT)
        return F.normalize(x + self.down(F.silu(self.up(x))), dim=-1)


class TinyGPT(nn.Module):
    """Token embedding, two blocks, output head."""

    def __init__(self, vocab: int = 16, d: int = 16, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


# -- what users write by hand today ---------------------------------------------------------


def edm2_by_hand(net: nn.Module) -> None:
    """EDM2's forced weight normalization, the per-layer loop: norm sqrt(fan_in) per output
    channel of every conv and linear weight."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                w = module.weight
                fan_in = w[0].numel()
                norm = torch.linalg.vector_norm(w, dim=tuple(range(1, w.ndim)), keepdim=True)
                w.mul_(math.sqrt(fan_in) / norm)


def ngpt_by_hand(model: TinyGPT) -> None:
    """nGPT's ``normalize_matrices``: unit norm along the embedding dimension."""
    with torch.no_grad():
        for w in (model.embed.weight, model.head.weight):
            w.div_(w.norm(dim=1, keepdim=True))
        for block in model.blocks:
            for w in (block.q.weight, block.k.weight, block.v.weight, block.up.weight):
                w.div_(w.norm(dim=1, keepdim=True))
            for w in (block.attn_out.weight, block.down.weight):
                w.div_(w.norm(dim=0, keepdim=True))


# -- what each recipe promises, matrix by matrix ---------------------------------------------


def edm2_targets(net: nn.Module) -> dict[str, tuple[tuple[int, ...], float]]:
    """Every conv and linear weight: (the axes of one norm, its target sqrt(fan_in))."""
    found = {}
    for name, module in net.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w = module.weight
            found[f"{name}.weight"] = (tuple(range(1, w.ndim)), math.sqrt(w[0].numel()))
    return found


def ngpt_targets(model: TinyGPT) -> dict[str, tuple[tuple[int, ...], float]]:
    """Every matrix: (the axis along the embedding dimension, 1)."""
    found = {}
    for name, _ in model.named_parameters():
        into_embedding = name.endswith(("attn_out.weight", "down.weight"))
        found[name] = ((0,) if into_embedding else (1,), 1.0)
    return found


def slack(dtype: torch.dtype) -> float:
    """:data:`SPACINGS` of ``dtype``, relative."""
    return SPACINGS[dtype] * torch.finfo(dtype).eps


def exact(w: torch.Tensor, axes: tuple[int, ...], target: float) -> torch.Tensor:
    """The projection onto the sphere of radius ``target``, in float64."""
    w = w.double()
    return w * (target / torch.linalg.vector_norm(w, dim=axes, keepdim=True))


def assert_on_spheres(model: nn.Module, targets: dict[str, tuple[tuple[int, ...], float]]) -> None:
    """Every node's norm, measured in float64, within rounding (:func:`slack`) of its target."""
    parameters = dict(model.named_parameters())
    for name, (axes, target) in targets.items():
        w = parameters[name].detach()
        norms = torch.linalg.vector_norm(w.double(), dim=axes)
        assert float((norms - target).abs().max()) <= slack(w.dtype) * target, (name, norms)


def check_on_spheres(
    model: nn.Module,
    hand: nn.Module,
    before: dict[str, torch.Tensor],
    targets: dict[str, tuple[tuple[int, ...], float]],
    by_hand: Callable[[nn.Module], None],
) -> float:
    """The weights of ``model`` after a step, against ``before`` (what the optimizer wrote,
    before the projection): every node on its sphere, the exact projection within rounding,
    and the hand-written loop, run on ``before`` in ``hand`` (an unconstrained copy of the
    model), within rounding.

    Returns:
        How far the update had taken a node from its sphere (the largest relative distance).
    """
    assert_on_spheres(model, targets)
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, w in hand.named_parameters():
            w.copy_(before[name])
    by_hand(hand)
    hand_weights = dict(hand.named_parameters())
    moved = 0.0
    for name, (axes, target) in targets.items():
        w = parameters[name].detach().double()
        reference = exact(before[name], axes, target)
        distance = torch.linalg.vector_norm(before[name].double(), dim=axes) - target
        moved = max(moved, float(distance.abs().max()) / target)
        eps = slack(parameters[name].dtype)
        floor = torch.finfo(parameters[name].dtype).smallest_normal * eps  # subnormals
        # The exact projection of what the optimizer wrote: every entry within rounding.
        error = (w - reference).abs()
        assert bool((error <= eps * reference.abs() + floor).all()), (name, float(error.max()))
        # The hand-written loop on the same weights: within twice that of the exact projection
        # (the norm and the factor are rounded to the weights' dtype too), so the same weights
        # as ours within rounding.
        written = hand_weights[name].detach().double()
        error = (written - reference).abs()
        assert bool((error <= 2 * eps * reference.abs() + floor).all()), (name, float(error.max()))
        difference = (w - written).abs()
        assert bool((difference <= 3 * eps * reference.abs() + floor).all()), (
            name,
            float(difference.max()),
        )
    return moved


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """What each step's update writes, before the projection: a step post-hook registered
    before the recipe's runs before it."""
    written: dict[str, torch.Tensor] = {}

    def hook(*_: object) -> None:
        written.update({n: p.detach().clone() for n, p in model.named_parameters()})

    optimizer.register_step_post_hook(hook)
    return written


def train(
    model: nn.Module,
    batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    after_step: Callable[[], None],
) -> None:
    """``STEPS`` steps, ``after_step()`` after each."""
    for step in range(STEPS):
        x, y = batches(step)
        loss(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        after_step()


def image_batches(dtype: torch.dtype) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)

    def batch(_: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(16, 1, 8, 8, generator=generator)
        return x.to(dtype), torch.randn(16, 10, generator=generator).to(dtype)

    return batch


def token_batches(vocab: int = 16) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)

    def batch(_: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.randint(vocab, (8, 13), generator=generator)
        return tokens[:, :-1], tokens[:, 1:]

    return batch


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.float(), y.float())


def next_token(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    # SGD with momentum in every dtype: Adam's eps (1e-8) is zero in float16, and a float16
    # Adam step overflows to inf by itself, whatever the constraint.
    return torch.optim.SGD(model.parameters(), lr=3.0, momentum=0.9)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_edm2_forced_weight_normalization_holds_after_every_step(dtype):
    torch.manual_seed(0)
    net = ConvNet().to(dtype)
    optimizer = sgd(net)
    before = snapshot(net, optimizer)
    hand = copy.deepcopy(net)
    registry = constrain(net, optimizer, kernel=wc.MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)"))
    registry.apply()  # EDM2 normalises the initial weights too
    targets = edm2_targets(net)
    assert [entry.name for entry in registry] == list(targets)
    assert_on_spheres(net, targets)

    moved = []

    def after_step() -> None:
        rows = audit(net, optimizer, strict=True)
        assert {row.name for row in rows if row.active} == set(targets)
        moved.append(check_on_spheres(net, hand, before, targets, edm2_by_hand))

    train(net, image_batches(dtype), mse, optimizer, after_step)
    assert max(moved) > 0.03  # the steps took nodes well off their spheres
    assert all(p.dtype == dtype for p in net.parameters())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ngpt_normalization_holds_after_every_step(dtype):
    torch.manual_seed(0)
    model = TinyGPT().to(dtype)
    optimizer = sgd(model)
    before = snapshot(model, optimizer)
    hand = copy.deepcopy(model)
    registry = constrain(model, optimizer, kernel=wc.UnitNorm(), per_input=PER_INPUT)
    registry.apply()
    targets = ngpt_targets(model)
    assert [entry.name for entry in registry] == list(targets)  # every matrix

    moved = []

    def after_step() -> None:
        rows = audit(model, optimizer, strict=True)
        axes = {row.name: row.axes for row in rows}
        assert axes == {name: axes for name, (axes, _) in targets.items()}
        assert all(row.active for row in rows)
        moved.append(check_on_spheres(model, hand, before, targets, ngpt_by_hand))

    train(model, token_batches(), next_token, optimizer, after_step)
    assert max(moved) > 0.03  # the steps took nodes well off their spheres
    assert all(p.dtype == dtype for p in model.parameters())


def test_audit_shows_the_rule_and_the_per_input_axes():
    net = ConvNet()
    constrain(net, None, kernel=EDM2)
    text = str(audit(net))
    assert "min_value='sqrt(fan_in)', max_value='sqrt(fan_in)'" in text
    model = TinyGPT()
    constrain(model, None, kernel=wc.UnitNorm(), per_input=PER_INPUT)
    rows = {row.name: row for row in audit(model)}
    assert rows["blocks.0.down.weight"].axes == (0,)
    assert rows["blocks.0.down.weight"].constraint == repr(wc.UnitNorm(axis=0))
    assert rows["blocks.1.attn_out.weight"].axes == (0,)
    assert rows["blocks.1.up.weight"].axes == (1,)
    assert rows["embed.weight"].axes == (1,)


def test_without_per_input_the_down_projections_take_the_per_node_axis():
    """``per_input=`` is never guessed: left out, every kernel takes one norm per output unit."""
    model = TinyGPT()
    constrain(model, None, kernel=wc.UnitNorm())
    rows = {row.name: row for row in audit(model)}
    assert rows["blocks.0.down.weight"].axes == (1,)
    assert rows["blocks.0.attn_out.weight"].axes == (1,)


def test_a_per_input_pattern_that_matches_no_module_raises():
    with pytest.raises(ValueError, match="o_proj"):
        constrain(TinyGPT(), None, kernel=wc.UnitNorm(), per_input=r".*\.o_proj")


@pytest.mark.parametrize(
    "request_",
    [
        {"kernel": wc.UnitNorm(), "per_input": "0"},  # an Embedding: no kernel
        {"bias": wc.MaxNorm(1.0), "per_input": "1"},  # a Linear, but no kernel constraint
        {"kernel": wc.NonNeg(), "per_input": "1"},  # entry by entry: no norm to move
    ],
    ids=["embedding", "bias only", "entry-wise"],
)
def test_a_per_input_pattern_that_changes_nothing_raises(request_):
    """A module chosen by per_input whose weights take no per-input norm was passed over
    silently (the pattern had matched a path, so no error)."""
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 8))
    with pytest.raises(ValueError, match="is chosen by per_input, but none of its weights"):
        constrain(model, None, **request_)
    registry = Constraints()
    with pytest.raises(ValueError, match="is chosen by per_input"):
        registry.add(model[1], bias=wc.MaxNorm(1.0), per_input=True)
    assert len(registry) == 0


@pytest.mark.parametrize(
    "recipe",
    [
        (ConvNet, dict(kernel=EDM2), edm2_by_hand, image_batches(torch.float32), mse),
        (
            TinyGPT,
            dict(kernel=wc.UnitNorm(), per_input=PER_INPUT),
            ngpt_by_hand,
            token_batches(),
            next_token,
        ),
    ],
    ids=["edm2", "ngpt"],
)
def test_one_call_trains_like_the_hand_written_loop(recipe):
    """Two copies of a model, trained side by side on the same batches in float32: one with the
    recipe's one call, one with the per-layer loop after every step. The same weights."""
    make, recipe_args, by_hand, batches, loss = recipe
    torch.manual_seed(0)
    ours = make()
    theirs = copy.deepcopy(ours)
    ours_optimizer, their_optimizer = sgd(ours), sgd(theirs)
    constrain(ours, ours_optimizer, **recipe_args).apply()
    by_hand(theirs)
    for step in range(STEPS):
        x, y = batches(step)
        for model, optimizer in ((ours, ours_optimizer), (theirs, their_optimizer)):
            loss(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        by_hand(theirs)
        for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)

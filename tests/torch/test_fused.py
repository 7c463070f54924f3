"""``attach(optimizer, fuse=True)``: the update and the projection in one pass. Its results are
those of torch's step followed by the hook, bit for bit, for every optimizer, mode and
constraint it fuses; everything it does not fuse takes the hook path with the same results."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import weight_constraints as wc
from tests.doctests import run_doctests
from weight_constraints.adapters.torch import Constraints, _fused, _native, audit, constrain
from weight_constraints.adapters.torch._probes import same_bits

OPTIMIZERS = {
    "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    "sgd-nesterov-wd": lambda ps: torch.optim.SGD(
        ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, foreach=True
    ),
    "sgd-plain-maximize": lambda ps: torch.optim.SGD(ps, lr=0.1, maximize=True),
    "sgd-fused": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, fused=True),
    "adam-single-wd": lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=0.01, foreach=False),
    "adam-fused": lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=0.01, fused=True),
    "adamw-foreach": lambda ps: torch.optim.AdamW(ps, lr=0.05, foreach=True),
    "adamw-fused": lambda ps: torch.optim.AdamW(ps, lr=0.05, fused=True),
}

CONSTRAINTS = {
    "maxnorm": wc.MaxNorm(0.5),
    "unitnorm": wc.UnitNorm(),
    "minmax": wc.MinMaxNorm(0.3, 0.6),
    "minmax-rate": wc.MinMaxNorm(0.3, 0.6, rate=0.5),
}


@pytest.fixture(autouse=True)
def kernels(monkeypatch):
    """The native library must be there (CI has a compiler); counts the fused updates."""
    monkeypatch.delenv("WEIGHT_CONSTRAINTS_NATIVE", raising=False)
    assert _native.library() is not None, _native.unavailable()
    calls: list[int] = []
    update = _fused.update

    def counted(*args, **kwargs):
        calls.append(len(args[3]))
        return update(*args, **kwargs)

    monkeypatch.setattr(_fused, "update", counted)
    return calls


def model(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Rows of 13, 21 (vector tails) and 7 entries; a zero row; biases of 21, 7 and 300."""
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Linear(13, 21), nn.Linear(21, 7), nn.Linear(7, 300)).to(dtype)
    with torch.no_grad():
        layers[0].weight.mul_(3.0)  # nodes outside the sets, and some inside
        layers[1].weight[2] = 0.0
    return layers


def gradients(layers: nn.Module, step: int) -> None:
    """Seeded gradients with a zero row (the zero weight row's), and a NaN at step 2."""
    generator = torch.Generator().manual_seed(step)
    for p in layers.parameters():
        p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
    layers[1].weight.grad[2] = 0.0
    if step == 2:
        layers[0].weight.grad[4, 3] = float("nan")


def train(make, constraint, fuse, steps=4, layers=None, **options):
    layers = model() if layers is None else layers
    optimizer = make(layers.parameters())
    constrain(layers, optimizer, kernel=constraint, bias=constraint, fuse=fuse, **options)
    for step in range(steps):
        gradients(layers, step)
        optimizer.step()
    return layers, optimizer


def assert_same(a: nn.Module, b: nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert same_bits(x.float(), y.float()), name


def test_docstring_examples():
    run_doctests("weight_constraints.adapters.torch._fused")


@pytest.mark.parametrize("constraint", CONSTRAINTS.values(), ids=CONSTRAINTS.keys())
@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_equals_the_step_then_the_hook_bit_for_bit(make, constraint, kernels):
    hooked, hooked_optimizer = train(make, constraint, fuse=False)
    fused, fused_optimizer = train(make, constraint, fuse=True)
    assert kernels == [6] * 4  # every step fused all six tensors
    assert_same(hooked, fused)
    for p, q in zip(hooked.parameters(), fused.parameters(), strict=True):
        theirs, ours = hooked_optimizer.state[p], fused_optimizer.state[q]
        assert theirs.keys() == ours.keys()
        for key, value in theirs.items():
            assert same_bits(value.float(), ours[key].float()), key
    nan = torch.isnan(fused[0].weight.detach())
    assert nan[4].any() and not nan[torch.arange(21) != 4].any()  # in its row only


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_nodes_inside_stay_as_the_optimizer_wrote_them(make):
    plain = model()
    optimizer = make(plain.parameters())
    fused, _ = train(make, wc.MaxNorm(1.0), fuse=True, steps=2)
    for step in range(2):
        gradients(plain, step)
        optimizer.step()
        if step == 0:  # the first step takes the hook path: project as it does
            constrain(plain, kernel=wc.MaxNorm(1.0), bias=wc.MaxNorm(1.0)).apply()
    weight, written = fused[0].weight.detach(), plain[0].weight.detach()
    inside = torch.linalg.vector_norm(written, dim=1) <= 1.0
    assert 0 < int(inside.sum()) < len(inside)
    assert same_bits(weight[inside], written[inside])
    assert same_bits(fused[1].weight[2].detach(), torch.zeros(21))  # the zero row stays zero


def test_gradients_are_given_back(kernels):
    layers, optimizer = train(OPTIMIZERS["adamw-foreach"], wc.MaxNorm(0.5), fuse=True, steps=1)
    gradients(layers, 1)
    before = [p.grad for p in layers.parameters()]
    seen = []
    optimizer.register_step_post_hook(lambda *_: seen.append([p.grad for p in layers.parameters()]))
    optimizer.step()
    assert kernels == [6, 6]
    assert all(p.grad is g for p, g in zip(layers.parameters(), before, strict=True))
    assert seen and all(g is not None for g in seen[0])  # hooks after ours see them too


def test_a_closure_is_evaluated_once(kernels):
    runs = {}
    for fuse in (False, True):
        layers = model()
        optimizer = torch.optim.Adam(layers.parameters(), lr=0.05)
        constrain(layers, optimizer, kernel=wc.UnitNorm(), fuse=fuse)
        calls = []
        x = torch.randn(5, 13, generator=torch.Generator().manual_seed(1))

        def closure(layers=layers, optimizer=optimizer, calls=calls, x=x):
            calls.append(1)
            optimizer.zero_grad()
            loss = layers(x).square().mean()
            loss.backward()
            return loss.detach()

        losses = [optimizer.step(closure) for _ in range(3)]
        runs[fuse] = layers, losses, len(calls)
    assert kernels
    assert_same(runs[False][0], runs[True][0])
    assert [v.item() for v in runs[False][1]] == [v.item() for v in runs[True][1]]
    assert runs[True][2] == 3


def test_parameters_without_gradient_are_left_alone(kernels):
    layers = model()
    optimizer = torch.optim.Adam(layers.parameters(), lr=0.05)
    constrain(layers, optimizer, kernel=wc.MaxNorm(0.5), fuse=True)
    frozen = layers[2].weight.detach().clone()
    for step in range(3):
        gradients(layers, step)
        layers[2].weight.grad = None
        optimizer.step()
    assert kernels
    assert same_bits(layers[2].weight.detach(), frozen)
    assert layers[2].weight not in optimizer.state


def test_what_is_not_fused_takes_the_hook_path(kernels):
    """float64, a NonNeg bias, a grouped ConvTranspose (a view), amsgrad: all by the hook."""

    def build():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Linear(6, 8), nn.Linear(8, 8).double(), nn.ConvTranspose1d(4, 4, 3, groups=2)
        )

    def run(fuse):
        layers = build()
        optimizer = torch.optim.Adam(
            [
                {"params": [*layers[0].parameters(), *layers[1].parameters()]},
                {"params": layers[2].parameters(), "amsgrad": True},
            ],
            lr=0.1,
        )
        registry = constrain(layers[:2], kernel=wc.MaxNorm(0.5), bias=wc.NonNeg())
        registry.add(layers[2], kernel=wc.UnitNorm())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            registry.attach(optimizer, fuse=fuse)
        for step in range(3):
            for p in layers.parameters():
                p.grad = torch.randn(
                    p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(step)
                )
            optimizer.step()
        return layers, optimizer, [str(w.message) for w in caught]

    hooked, _, _ = run(False)
    fused, optimizer, caught = run(True)
    assert_same(hooked, fused)
    assert kernels == [1] * 3  # layers[0].weight
    assert any("amsgrad=True" in message for message in caught)
    notes = {row.name: row.note for row in audit(fused, optimizer)}
    assert notes["0.weight"] == _fused.FUSED_NOTE
    assert "float64, not float32" in notes["1.weight"]
    assert "NonNeg is not" in notes["0.bias"]
    assert "view" in notes["2.weight"]


def test_non_contiguous_weights_and_gradients_take_the_hook_path(kernels):
    """A transposed weight is never fused; a transposed gradient is not, at that step."""
    runs = []
    for fuse in (False, True):
        torch.manual_seed(0)
        weight = nn.Parameter(torch.randn(9, 13).t())  # (13, 9), not contiguous
        layer = nn.Linear(9, 11)
        optimizer = torch.optim.SGD([weight, *layer.parameters()], lr=0.1, momentum=0.9)
        registry = Constraints().add(weight, wc.MaxNorm(0.5), dims=1)
        registry.add(layer, kernel=wc.UnitNorm()).attach(optimizer, fuse=fuse)
        for step in range(3):
            generator = torch.Generator().manual_seed(step)
            weight.grad = torch.randn(13, 9, generator=generator)
            layer.weight.grad = torch.randn(9, 11, generator=generator).t()  # at every step
            layer.bias.grad = torch.randn(11, generator=generator)
            optimizer.step()
        runs.append((weight.detach(), layer.weight.detach()))
        notes = [row.note for row in audit(layer, optimizer)]
    assert same_bits(runs[0][0], runs[1][0]) and same_bits(runs[0][1], runs[1][1])
    assert not kernels
    assert "gradient is not a contiguous tensor" in notes[0]


def test_an_optimizer_it_does_not_implement_warns_and_takes_the_hook_path(kernels):
    def make(ps):
        return torch.optim.RMSprop(ps, lr=0.01)

    hooked, _ = train(make, wc.MaxNorm(0.5), fuse=False)
    with pytest.warns(UserWarning, match="not RMSprop"):
        fused, optimizer = train(make, wc.MaxNorm(0.5), fuse=True)
    assert not kernels
    assert_same(hooked, fused)
    assert "not RMSprop" in audit(fused, optimizer)[0].note


def test_without_the_kernels_it_warns_with_the_reason(monkeypatch, kernels):
    monkeypatch.setenv("WEIGHT_CONSTRAINTS_NATIVE", "0")
    _fused._warn_once.cache_clear()
    with pytest.warns(UserWarning, match="WEIGHT_CONSTRAINTS_NATIVE=0"):
        fused, optimizer = train(OPTIMIZERS["adamw-foreach"], wc.MaxNorm(0.5), fuse=True)
    monkeypatch.delenv("WEIGHT_CONSTRAINTS_NATIVE")
    hooked, _ = train(OPTIMIZERS["adamw-foreach"], wc.MaxNorm(0.5), fuse=False)
    assert not kernels
    assert_same(hooked, fused)
    assert "WEIGHT_CONSTRAINTS_NATIVE=0" in audit(fused, optimizer)[0].note


def test_fuse_needs_an_optimizer():
    with pytest.raises(TypeError, match="needs the optimizer"):
        constrain(model(), kernel=wc.MaxNorm(1.0), fuse=True)


def test_a_replaced_parameter_is_bound_again(kernels):
    """load_state_dict(assign=True) and a new optimizer: the full check, then fused again."""
    runs = []
    for fuse in (False, True):
        layers, optimizer = train(OPTIMIZERS["sgd-momentum"], wc.MaxNorm(0.5), fuse, steps=2)
        state = {k: v.clone() * 2 for k, v in layers.state_dict().items()}
        layers.load_state_dict(state, assign=True)
        optimizer = torch.optim.SGD(layers.parameters(), lr=0.1, momentum=0.9)
        registry = constrain(layers, kernel=wc.MaxNorm(0.5), bias=wc.MaxNorm(0.5))
        registry.attach(optimizer, fuse=fuse)
        for step in range(3):
            gradients(layers, step)
            optimizer.step()
        runs.append(layers)
    assert_same(*runs)
    assert kernels == [6] * 5


def test_tied_weights_are_stepped_once(kernels):
    runs = []
    for fuse in (False, True):
        torch.manual_seed(0)
        embedding, head = nn.Embedding(10, 8), nn.Linear(8, 10, bias=False)
        head.weight = embedding.weight
        layers = nn.ModuleList([embedding, head])
        optimizer = torch.optim.AdamW(layers.parameters(), lr=0.1)
        constrain(layers, optimizer, kernel=wc.MaxNorm(0.5), fuse=fuse)
        for step in range(3):
            embedding.weight.grad = torch.randn(
                10, 8, generator=torch.Generator().manual_seed(step)
            )
            optimizer.step()
        runs.append(embedding.weight.detach())
    assert same_bits(*runs)
    assert kernels == [1] * 3


def test_state_dict_round_trip_continues_the_same(kernels):
    fused, optimizer = train(OPTIMIZERS["adamw-fused"], wc.UnitNorm(), fuse=True, steps=3)
    hooked, _ = train(OPTIMIZERS["adamw-fused"], wc.UnitNorm(), fuse=False, steps=3)
    plain = torch.optim.AdamW(hooked.parameters(), lr=0.05, fused=True)
    plain.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # the fused run's state
    constrain(hooked, plain, kernel=wc.UnitNorm(), bias=wc.UnitNorm())
    hooked.load_state_dict(fused.state_dict())
    for layers, stepper in ((fused, optimizer), (hooked, plain)):
        gradients(layers, 7)
        stepper.step()
    assert_same(fused, hooked)


def test_a_scheduler_changes_the_learning_rate_of_the_fused_step(kernels):
    runs = []
    for fuse in (False, True):
        layers = model()
        optimizer = torch.optim.SGD(layers.parameters(), lr=0.5, momentum=0.5)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        constrain(layers, optimizer, kernel=wc.MaxNorm(0.5), fuse=fuse)
        for step in range(3):
            gradients(layers, step)
            optimizer.step()
            scheduler.step()
        runs.append(layers)
    assert_same(*runs)


def test_removing_the_hook_removes_the_fused_step(kernels):
    layers = model()
    optimizer = torch.optim.SGD(layers.parameters(), lr=0.1)
    handle = constrain(layers, optimizer, kernel=wc.MaxNorm(0.01), fuse=True)._hooks[0].handle
    for step in range(2):
        gradients(layers, step)
        optimizer.step()
    handle.remove()
    gradients(layers, 3)
    optimizer.step()
    assert len(kernels) == 2
    assert not optimizer._optimizer_step_pre_hooks
    assert torch.linalg.vector_norm(layers[0].weight, dim=1).max() > 0.02


def test_a_compiled_optimizer_step_with_fuse(kernels):
    """torch.compile(optimizer.step): the fused pre-hook runs eagerly (a graph break), the
    compiled step updates the rest (the NonNeg biases), and the traced post-hook projects them."""
    torch._dynamo.reset()
    runs = []
    for compiled in (False, True):
        layers = model()
        optimizer = torch.optim.AdamW(layers.parameters(), lr=0.05, foreach=True)
        constrain(layers, optimizer, kernel=wc.MaxNorm(0.5), bias=wc.NonNeg(), fuse=True)
        step = torch.compile(optimizer.step) if compiled else optimizer.step
        for i in range(3):
            gradients(layers, i)
            step()
        runs.append(layers)
    torch._dynamo.reset()
    assert kernels == [3] * 6
    eager, compiled = runs
    for (name, x), y in zip(
        eager.state_dict().items(), compiled.state_dict().values(), strict=True
    ):
        if name.endswith("weight"):  # fused: bit for bit
            assert same_bits(x, y), name
        else:  # the compiled AdamW rounds otherwise than the eager one
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)
            assert (y >= 0).all()


def test_a_step_with_a_grad_scale_takes_the_hook_path(kernels):
    """GradScaler sets grad_scale and found_inf on a fused=True optimizer: its step unscales
    the gradients (and skips when found_inf is set), so such a step is not fused."""
    runs = []
    for fuse in (False, True):
        layers, optimizer = train(OPTIMIZERS["adamw-fused"], wc.MaxNorm(0.5), fuse, steps=1)
        optimizer.grad_scale = torch.tensor(4.0)
        optimizer.found_inf = torch.tensor(0.0)
        gradients(layers, 1)
        optimizer.step()
        runs.append(layers)
    assert_same(*runs)
    assert kernels == [6]  # the first step only


def test_a_step_that_raises_leaves_the_fused_tensors_as_they_were(kernels):
    """The fused tensors are updated after torch's step: when it raises (Adam and a sparse
    gradient elsewhere in the group), they are unchanged, and their gradients come back."""
    layers = model()
    extra = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([*layers.parameters(), extra], lr=0.05)
    constrain(layers, optimizer, kernel=wc.MaxNorm(0.5), fuse=True)
    gradients(layers, 0)
    optimizer.step()  # the first step: the full check
    before = copy.deepcopy(layers.state_dict())
    gradients(layers, 1)
    extra.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        optimizer.step()
    assert_same_state(before, layers.state_dict())
    extra.grad = torch.ones(3)
    gradients(layers, 1)
    optimizer.step()
    assert layers[0].weight.grad is not None
    assert kernels[-1] == 3  # the three weights fused again


def assert_same_state(a: dict, b: dict) -> None:
    for (name, x), y in zip(a.items(), b.values(), strict=True):
        assert same_bits(x, y), name


@pytest.mark.parametrize("fuse", [False, True])
def test_after_a_step_that_raised_the_new_gradients_are_used(fuse):
    """The hidden gradients of a step that raised are given back only to tensors that were not
    given a new gradient since: the next step uses the new ones, as without fuse=True."""
    runs = []
    for fused in (False, fuse):
        layers = model()
        extra = nn.Parameter(torch.ones(3))
        optimizer = torch.optim.Adam([*layers.parameters(), extra], lr=0.05)
        constrain(layers, optimizer, kernel=wc.MaxNorm(0.5), fuse=fused)
        gradients(layers, 0)
        extra.grad = torch.ones(3).to_sparse()
        with pytest.raises(RuntimeError, match="sparse"):
            optimizer.step()
        optimizer.zero_grad()
        gradients(layers, 1)  # a new batch
        extra.grad = torch.ones(3)
        optimizer.step()
        runs.append(layers)
    assert_same(*runs)


def test_clear_gives_hidden_gradients_back(kernels):
    layers = model()
    extra = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([*layers.parameters(), extra], lr=0.05)
    registry = constrain(layers, optimizer, kernel=wc.MaxNorm(0.5), fuse=True)
    gradients(layers, 0)
    extra.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        optimizer.step()
    assert layers[0].weight.grad is None  # hidden by the pre-hook of the step that raised
    registry.clear()
    assert layers[0].weight.grad is not None

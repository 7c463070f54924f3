"""``Constraints(compile=True)``: the projection through ``torch.compile``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import weight_constraints as wc
from weight_constraints.adapters.torch import Constraints, constrain, node_norms


@pytest.fixture(autouse=True)
def fresh_dynamo():
    # Every test compiles from scratch (and the recompile limit is never reached).
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    layers = nn.Sequential(
        nn.Linear(6, 8),
        nn.Conv1d(8, 6, 3),
        nn.ConvTranspose1d(6, 4, 3, groups=2),  # projected through a grouped view
        nn.LSTM(4, 5),
    )
    with torch.no_grad():
        for i, p in enumerate(layers.parameters()):
            p.mul_(1 + i)  # some nodes outside the balls, some inside
    return layers.to(dtype)


def registry(layers: nn.Module, compile: bool) -> Constraints:
    reg = Constraints(compile=compile)
    reg.add(layers[0], kernel=wc.MaxNorm(1.5), bias=wc.MinMaxNorm(0.5, 1.0))
    reg.add(layers[1], kernel=wc.UnitNorm())
    reg.add(layers[2], kernel=wc.MaxNorm(3.2))
    reg.add(layers[3], kernel=wc.MinMaxNorm(0.2, 0.9, rate=0.5), recurrent=wc.UnitNorm())
    reg.add(layers[3].bias_hh_l0, wc.NonNeg())
    return reg


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_compiled_projection_equals_eager(dtype):
    eager, compiled = model(dtype), model(dtype)
    before = copy.deepcopy(compiled.state_dict())
    registry(eager, compile=False).apply()
    registry(compiled, compile=True).apply()
    assert not counters["graph_break"], dict(counters["graph_break"])  # one graph, no breaks
    tolerance = {"rtol": 2 * torch.finfo(dtype).eps, "atol": 1e-7}
    for name, value in compiled.state_dict().items():
        torch.testing.assert_close(value, eager.state_dict()[name], **tolerance, msg=name)
    # Nodes inside the ball come back bit for bit.
    weight, old = compiled[2].weight, before["2.weight"]
    inside = node_norms(old.view(2, 3, 2, 3), (1, 3)).view(-1) <= 3.2
    assert inside.any() and (~inside).any()
    grouped, grouped_old = weight.view(2, 3, 2, 3), old.view(2, 3, 2, 3)
    for g, j in inside.view(2, 2).nonzero().tolist():
        assert torch.equal(grouped[g, :, j], grouped_old[g, :, j])


def test_half_precision_extremes_are_projected_not_zeroed():
    w = torch.full((4, 3), 65504.0, dtype=torch.float16)
    Constraints(compile=True).add(w, wc.MaxNorm(2.0), dims=1).apply()
    torch.testing.assert_close(node_norms(w, 1), torch.full((4,), 2.0), rtol=1e-3, atol=0)


def test_training_with_a_compiled_hook_matches_eager():
    eager, compiled = model(), model()
    optimizers = []
    for layers, compile in ((eager, False), (compiled, True)):
        optimizer = torch.optim.Adam(layers.parameters(), lr=0.1)
        constrain(layers, optimizer, kernel=wc.MaxNorm(1.0), recurrent="unit_norm", compile=compile)
        optimizers.append(optimizer)
    for step in range(3):
        x = torch.randn(7, 6, generator=torch.Generator().manual_seed(step))
        for layers, optimizer in zip((eager, compiled), optimizers, strict=True):
            optimizer.zero_grad()
            h = layers[1](layers[0](x).T.unsqueeze(0))
            layers[3](layers[2](h).transpose(1, 2).squeeze(0))[0].pow(2).sum().backward()
            optimizer.step()
    assert node_norms(compiled[0].weight, 1).max() <= 1.0 * (1 + 1e-6)
    for name, value in compiled.state_dict().items():
        torch.testing.assert_close(value, eager.state_dict()[name], rtol=1e-5, atol=1e-6, msg=name)


def test_tensors_added_later_are_projected():
    reg = Constraints(compile=True)
    first, second = torch.randn(5, 4) * 3, torch.randn(3, 6) * 3
    reg.add(first, wc.UnitNorm(), dims=1).apply()
    reg.add(second, wc.UnitNorm(), dims=1).apply()  # recompiled for the longer registry
    for t in (first, second):
        torch.testing.assert_close(node_norms(t, 1), torch.ones(len(t)))


def test_no_host_synchronisation_once_compiled(monkeypatch):
    layers = model()
    reg = registry(layers, compile=True)
    reg.apply()  # compiles

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation in the projection")

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    with torch.no_grad():
        layers[0].weight.mul_(5)
    reg.apply()
    monkeypatch.undo()
    assert node_norms(layers[0].weight, 1).max() <= 1.5 * (1 + 1e-6)


def test_a_compiled_optimizer_step_traces_the_hook():
    # torch.compile(optimizer.step) traces the step's hooks too: the eager registry's hook is
    # traced through its full path (the compiler guards the graph itself).
    eager, compiled = model(), model()
    steps = []
    for layers, compile_step in ((eager, False), (compiled, True)):
        optimizer = torch.optim.Adam(layers.parameters(), lr=0.1)
        constrain(layers, optimizer, kernel=wc.MaxNorm(1.0), recurrent="unit_norm")
        steps.append((layers, optimizer, torch.compile(optimizer.step) if compile_step else None))
    for step in range(3):
        x = torch.randn(7, 6, generator=torch.Generator().manual_seed(step))
        for layers, optimizer, compiled_step in steps:
            optimizer.zero_grad()
            h = layers[1](layers[0](x).T.unsqueeze(0))
            layers[3](layers[2](h).transpose(1, 2).squeeze(0))[0].pow(2).sum().backward()
            (compiled_step or optimizer.step)()
            if compiled_step is not None:  # projected after every compiled step
                assert node_norms(layers[0].weight, 1).max() <= 1.0 + 1e-6
                recurrent = node_norms(layers[3].weight_hh_l0, 1)
                torch.testing.assert_close(recurrent, torch.ones_like(recurrent))
    # the compiled Adam step rounds differently from the eager one (some 1e-5 after 3 steps)
    for name, value in compiled.state_dict().items():
        torch.testing.assert_close(value, eager.state_dict()[name], rtol=1e-4, atol=1e-4, msg=name)

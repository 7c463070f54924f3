"""``fuse=True`` off the CPU (:mod:`weight_constraints.adapters.torch._device`), tested on the CPU:
the CPU is made one of its devices here, so CPU tensors take the path CUDA tensors take. Its
update agrees with torch's to within rounding, eagerly and compiled (Inductor where its C++
backend builds the update, the "aot_eager" backend for the same graphs and recompiles
otherwise); a tensor whose compiled update fails its probe (before the step) takes torch's step
and the hook, one whose recompile fails later runs eagerly, with a warning and the audit's
note. Nothing here needs a GPU; CUDA itself is untested here."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import weight_constraints as wc
from tests.doctests import run_doctests
from tests.torch.test_fused import OPTIMIZERS, assert_same, gradients, model
from weight_constraints.adapters.torch import _device, _fused, audit, constrain

CONSTRAINTS = {
    "maxnorm": wc.MaxNorm(0.5),
    "unitnorm": wc.UnitNorm(),
    "minmax-rate": wc.MinMaxNorm(0.3, 0.6, rate=0.5),
    "nonneg": wc.NonNeg(),  # kinds the native kernels do not take: this path takes every kind
    "simplex": wc.Simplex(),
}


@pytest.fixture(autouse=True)
def on_the_cpu(monkeypatch):
    """The CPU is one of the path's devices (the native kernels take none of these tensors);
    eager unless a test compiles; each test probes afresh."""
    monkeypatch.setattr(_device, "DEVICES", frozenset({"cpu"}))
    monkeypatch.setattr(_device, "COMPILE", False)
    monkeypatch.setattr(_device, "_PROBED", {})
    monkeypatch.setattr(_fused, "update", _no_native_update)


def _no_native_update(*args, **kwargs):
    raise AssertionError("a tensor of the device path went to the native kernels")


def train(make, constraint, fuse, steps=4, layers=None):
    layers = model() if layers is None else layers
    optimizer = make(layers.parameters())
    constrain(layers, optimizer, kernel=constraint, bias=constraint, fuse=fuse)
    for step in range(steps):
        gradients(layers, step)
        optimizer.step()
    return layers, optimizer


def assert_close(a: nn.Module, b: nn.Module, tolerance: float) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(x, y, rtol=tolerance, atol=tolerance, equal_nan=True), name


def test_docstring_examples():
    run_doctests("weight_constraints.adapters.torch._device")


@pytest.mark.parametrize("constraint", CONSTRAINTS.values(), ids=CONSTRAINTS.keys())
@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_eagerly_it_agrees_with_the_step_then_the_hook(make, constraint):
    hooked, hooked_optimizer = train(make, constraint, fuse=False)
    fused, fused_optimizer = train(make, constraint, fuse=True)
    assert_close(hooked, fused, 1e-6)  # zero rows and the NaN as the hook leaves them
    for p, q in zip(hooked.parameters(), fused.parameters(), strict=True):
        theirs, ours = hooked_optimizer.state[p], fused_optimizer.state[q]
        assert theirs.keys() == ours.keys()
        for key, value in theirs.items():
            assert torch.allclose(value, ours[key], rtol=1e-6, atol=1e-6, equal_nan=True), key
    nan = torch.isnan(fused[0].weight.detach())
    assert nan[4].any() and not nan[torch.arange(21) != 4].any()
    assert "updated and projected in one pass" in str(audit(fused, fused_optimizer))


def test_capturable_adam_computes_its_bias_corrections_from_the_step_tensor():
    """torch refuses capturable=True on the CPU in its own step; here the path steps every
    tensor, so torch's step sees no gradient. Compared with the same Adam not capturable."""
    hooked, _ = train(OPTIMIZERS["adam-single-wd"], wc.MaxNorm(0.5), fuse=False)
    make = lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=0.01, capturable=True)  # noqa: E731
    fused, optimizer = train(make, wc.MaxNorm(0.5), fuse=True)
    assert_close(hooked, fused, 1e-5)  # float32 bias corrections, as torch's capturable Adam
    assert all(state["step"].item() == 4 for state in optimizer.state.values())


def test_parameters_without_gradient_are_left_alone():
    layers = model()
    optimizer = torch.optim.AdamW(layers.parameters(), lr=0.05)
    constrain(layers, optimizer, kernel=wc.MaxNorm(0.5), fuse=True)
    frozen = layers[2].weight.detach().clone()
    gradients(layers, 0)
    layers[2].weight.grad = None
    optimizer.step()
    assert torch.equal(layers[2].weight.detach(), frozen)
    assert layers[2].weight not in optimizer.state
    assert layers[0].weight.grad is not None  # given back after the step


def test_compiled_it_agrees_with_the_step_then_the_hook():
    """Compiled with Inductor: fused where the probe passes (SGD on this build), to within
    rounding; where torch.compile fails or disagrees (Adam on this build's C++ backend), the
    tensor takes the step and the hook, with a warning and the audit's reason. Either way the
    results are the hook's. (One weight per optimizer: each compile takes seconds.)"""
    _device.COMPILE = True
    for name, kind in (("sgd-plain-maximize", "sgd"), ("adamw-foreach", "adam")):
        runs = []
        for fuse in (False, True):
            torch.manual_seed(0)
            layer = nn.Linear(13, 21)
            optimizer = OPTIMIZERS[name]([layer.weight])
            constrain(layer, optimizer, kernel=wc.MaxNorm(0.5), fuse=fuse)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for step in range(3):
                    generator = torch.Generator().manual_seed(step)
                    layer.weight.grad = torch.randn(21, 13, generator=generator)
                    optimizer.step()
            runs.append(layer.weight.detach())
        assert torch.allclose(*runs, rtol=1e-5, atol=1e-6)
        note = str(audit(layer, optimizer))
        (reason,) = (r for key, r in _device._PROBED.items() if key[0] == kind)
        if reason:
            assert reason in note and any(reason in str(w.message) for w in caught)
        else:
            assert "updated and projected in one pass" in note
        assert kind != "sgd" or not reason  # plain SGD compiles on this build


def test_a_recompile_that_fails_runs_the_update_eagerly(monkeypatch):
    """The probe passed and a step ran compiled; the next call recompiles (a float's first
    change) and fails having written nothing: the update runs eagerly from then on."""
    calls: dict[tuple, int] = {}

    def compiled(kind, signature):
        def run(*args):
            calls[signature] = calls.get(signature, 0) + 1
            if calls[signature] > 2:  # the probe and the first step build; the next does not
                raise torch._dynamo.exc.Unsupported("recompile")
            _device._ONE[kind](*args)

        return run

    monkeypatch.setattr(_device, "COMPILE", True)
    monkeypatch.setattr(_device, "_compiled", compiled)
    hooked, _ = train(OPTIMIZERS["sgd-momentum"], wc.MaxNorm(0.5), fuse=False)
    with pytest.warns(UserWarning, match="Unsupported"):
        fused, optimizer = train(OPTIMIZERS["sgd-momentum"], wc.MaxNorm(0.5), fuse=True)
    assert_close(hooked, fused, 1e-6)
    assert "Unsupported" in str(audit(fused, optimizer))
    # the first step's signature (a new momentum buffer): probe and step; the next one's:
    # probe, one step, the failed call
    assert sorted(set(calls.values())) == [2, 3]


@pytest.mark.parametrize("failure", ["raises", "wrong"])
def test_a_compiled_update_that_fails_its_probe_takes_the_hook(monkeypatch, failure):
    """The probe runs in the pre-hook, on copies: a failure leaves the tensor to torch's step
    and the hook (bit for bit the unfused results), with a warning and the audit's reason."""

    def compiled(kind, signature):
        def run(p, *args):
            if failure == "raises":
                raise RuntimeError("the compiler failed")
            _device._ONE[kind](p, *args)
            p.add_(1e-3)  # a miscompiled kernel

        return run

    monkeypatch.setattr(_device, "COMPILE", True)
    monkeypatch.setattr(_device, "_compiled", compiled)
    hooked, _ = train(OPTIMIZERS["adamw-foreach"], wc.MaxNorm(0.5), fuse=False)
    with pytest.warns(UserWarning, match="not fused") as caught:
        fused, optimizer = train(OPTIMIZERS["adamw-foreach"], wc.MaxNorm(0.5), fuse=True)
    assert_same(hooked, fused)  # the probe wrote only copies
    expected = "RuntimeError" if failure == "raises" else "disagrees with the eager one by 0.001"
    assert any(expected in str(w.message) for w in caught)
    assert expected in str(audit(fused, optimizer))
    assert all(state["step"].item() == 4 for state in optimizer.state.values())


def test_what_the_path_does_not_take_goes_through_the_hook():
    layers = model(torch.float64)
    optimizer = torch.optim.Adam(layers.parameters(), lr=0.05, amsgrad=True)
    with pytest.warns(UserWarning, match="amsgrad"):
        constrain(layers, optimizer, kernel=wc.MaxNorm(0.5), fuse=True)
    gradients(layers, 0)
    optimizer.step()
    assert "float64, not float32" in str(audit(layers, optimizer))
    assert bool((torch.linalg.vector_norm(layers[0].weight, dim=1) <= 0.5 + 1e-12).all())


@pytest.mark.parametrize(
    "make",
    [OPTIMIZERS[name] for name in ("sgd-nesterov-wd", "adam-single-wd", "adamw-fused")],
    ids=["sgd-nesterov-wd", "adam-single-wd", "adamw-fused"],
)
def test_a_scheduler_does_not_recompile_at_every_step(monkeypatch, make):
    """Compiled graphs (the "aot_eager" backend: Inductor's C++ backend cannot build these on
    this build) over 12 steps of a scheduler that changes the learning rate, and of Adam's
    bias corrections that change at every step: a few graphs per weight, not one per step
    (dynamo's limit of 8 would be reached), no eager fallback, the hook's results."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(_device, "COMPILE", True)
    monkeypatch.setattr(_device, "BACKEND", "aot_eager")
    _device._compiled.cache_clear()
    counters.clear()
    runs = []
    for fuse in (False, True):
        layers = model()
        optimizer = make(layers.parameters())
        constrain(layers, optimizer, kernel=wc.MaxNorm(0.5), bias=wc.MaxNorm(0.5), fuse=fuse)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.9)
        for step in range(12):
            gradients(layers, step + 3)  # no NaN: a NaN would reach every later step
            optimizer.step()
            scheduler.step()
        runs.append(layers)
    assert_close(*runs, 1e-5)
    assert not any(_device._PROBED.values())  # every update compiled, none eager
    signatures = len(_device._PROBED)
    assert 6 <= signatures and counters["stats"]["unique_graphs"] <= 3 * signatures


def test_a_constraint_that_is_not_hashable_is_compiled_by_identity(monkeypatch):
    """A user's constraint class that is a plain (not frozen) dataclass cannot key a cache:
    its signature takes its identity, and the step goes on."""
    from dataclasses import dataclass

    @dataclass
    class Doubled(wc.Constraint):  # unhashable: eq=True without frozen=True
        axis: object = wc.DEFAULT_AXIS

        def __call__(self, w, *, out=None, xp=None):
            return wc.unit_norm(w * 2, self.axis, out=out)

    monkeypatch.setattr(_device, "COMPILE", True)
    monkeypatch.setattr(_device, "BACKEND", "aot_eager")
    layer = nn.Linear(6, 4)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    constrain(layer, optimizer, kernel=Doubled(), fuse=True)
    for _ in range(2):
        layer.weight.grad = torch.ones(4, 6)
        optimizer.step()
    assert torch.allclose(layer.weight.detach().norm(dim=1), torch.ones(4), atol=1e-6)
    assert "updated and projected in one pass" in str(audit(layer, optimizer))

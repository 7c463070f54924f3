"""What a registry can hold and what it refuses, so that no constraint is dropped silently: views
and detached copies of parameters, two registries on one tensor, one registry on two optimizers,
param groups edited in place, memory aliased after registration, parameters registered as tensors
and then replaced, and the audit of each (torch side of issue 11)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import weight_constraints as wc
from weight_constraints.adapters.torch import (
    Constraints,
    _hooks,
    _registry,
    audit,
    constrain,
    node_norms,
)


@pytest.fixture(params=["cpp", "python"])
def guard_kind(request, monkeypatch):
    """Every test runs with the C++ tensor check and with its pure-Python fallback."""
    if request.param == "python":
        monkeypatch.setattr(_hooks, "_tensor_guards", lambda tensors: None)
    return request.param


def layers(count=3, width=8):
    torch.manual_seed(0)
    return nn.Sequential(*(nn.Linear(width, width) for _ in range(count)))


def step(model, *optimizers, scale=10.0):
    for optimizer in optimizers:
        optimizer.zero_grad()
    (model(torch.randn(4, model[0].in_features)).pow(2).sum() * scale).backward()
    for optimizer in optimizers:
        optimizer.step()


def row_max(weight):
    return float(node_norms(weight, 1).max())


def within(weight, bound):
    return row_max(weight) <= bound * (1 + 1e-6)


# -- 1. a view, .data or .detach() of a parameter ------------------------------------------------

SHADOWS = {
    "a slice (not a leaf)": lambda w: w[:4],
    "computed (not a leaf)": lambda w: w * 1,
    ".data": lambda w: w.data,
    ".detach()": lambda w: w.detach(),
    ".detach() sliced": lambda w: w.detach()[2:5],
}


@pytest.mark.parametrize("make", SHADOWS.values(), ids=SHADOWS.keys())
def test_a_view_or_copy_of_a_parameter_cannot_be_attached(make):
    model = layers(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    registry = Constraints().add(make(model[0].weight), wc.MaxNorm(0.5), dims=1, name="rows")
    with pytest.raises(ValueError, match=r"rows .*Register the parameter itself.*apply\(\)"):
        registry.attach(optimizer)
    assert not optimizer._optimizer_step_post_hooks
    registry.apply()  # apply() projects it: it writes the parameter's memory


@pytest.mark.parametrize("make", SHADOWS.values(), ids=SHADOWS.keys())
def test_a_view_added_after_attaching_raises_at_the_next_step(make, guard_kind):
    model = layers(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    registry = Constraints().add(model[0].bias, wc.MaxNorm(0.5), dims=0)
    registry.attach(optimizer)
    for _ in range(2):
        step(model, optimizer)
    registry.add(make(model[0].weight), wc.MaxNorm(0.5), dims=1, name="rows")
    with pytest.raises(ValueError, match=r"rows .*no step would project it"):
        step(model, optimizer)


@pytest.mark.parametrize("make", list(SHADOWS.values())[2:], ids=list(SHADOWS)[2:])
def test_the_audit_shows_a_parameter_registered_through_a_view(make):
    model = layers(1)
    registry = Constraints().add(make(model[0].weight), wc.MaxNorm(0.5), dims=1, name="rows")
    row = audit(model)[0]
    assert row.name == "0.weight" and row.constraint == registry._registrations[0].constraint
    assert not row.active and "registered as rows" in row.note
    with pytest.raises(RuntimeError, match="not active"):
        audit(model, strict=True)


# -- 2. two registries on one tensor -------------------------------------------------------------


def test_two_registries_asking_different_things_of_one_tensor_raise():
    model = layers(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    with pytest.raises(ValueError, match=r"0\.weight, constrained by another registry"):
        Constraints().add(model[0], kernel=wc.MinMaxNorm(2.0, 3.0))
    with pytest.raises(ValueError, match=r"shares memory with 0\.weight, constrained by another"):
        Constraints().add(model[0].weight.detach()[:3], wc.MaxNorm(0.5), dims=1)
    # the same request twice is fine: both hooks leave it where the other put it
    again = (
        Constraints()
        .add(model[0], kernel=wc.MaxNorm(0.5))
        .add(model[1].weight.data, wc.MaxNorm(0.5), dims=1, name="same memory, same request")
    )
    assert len(again) == 2
    step(model, optimizer)
    assert within(model[0].weight, 0.5) and within(model[1].weight, 0.5)
    assert [row.active for row in audit(model, optimizer)][::2] == [True, True]


def test_clear_lets_another_registry_constrain_the_weights_differently():
    model = layers(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    registry = constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    with pytest.raises(ValueError, match=r"registry\.clear\(\)"):
        constrain(model, optimizer, kernel=wc.MaxNorm(0.2))
    registry.clear()
    assert len(registry) == 0 and not optimizer._optimizer_step_post_hooks
    assert all(row.constraint is None for row in audit(model))  # no stale marks either
    registry = constrain(model, optimizer, kernel=wc.MaxNorm(0.2))
    step(model, optimizer)
    assert within(model[0].weight, 0.2) and within(model[1].weight, 0.2)
    audit(model, optimizer, strict=True)


def test_memory_aliased_across_registries_after_registration_raises(guard_kind):
    a, b = nn.Parameter(torch.randn(4, 4) * 5), nn.Parameter(torch.randn(4, 4) * 5)
    optimizer = torch.optim.SGD([a, b], lr=0.1)
    first = Constraints().add(a, wc.MaxNorm(0.5), dims=1, name="a")
    second = Constraints().add(b, wc.MinMaxNorm(2.0, 3.0), dims=0, name="b")
    first.attach(optimizer)
    second.attach(optimizer)
    for _ in range(2):
        optimizer.zero_grad()
        (a.sum() + b.sum()).backward()
        optimizer.step()
    a.data = b.data
    optimizer.zero_grad()
    (a.sum() + b.sum()).backward()
    with pytest.raises(ValueError, match="a shares memory with b, constrained by another registry"):
        optimizer.step()


@pytest.mark.parametrize("through", ["apply", "hook"])
def test_memory_aliased_in_one_registry_after_warm_up_raises(through, guard_kind):
    a, b = nn.Parameter(torch.randn(4, 4) * 5), nn.Parameter(torch.randn(4, 4) * 5)
    optimizer = torch.optim.SGD([a, b], lr=0.1)
    registry = Constraints().add(a, wc.MaxNorm(0.5), dims=1, name="a")
    registry.add(b, wc.MinMaxNorm(2.0, 3.0), dims=0, name="b").attach(optimizer)

    def run():
        optimizer.zero_grad()
        (a.sum() + b.sum()).backward()
        optimizer.step() if through == "hook" else registry.apply()

    for _ in range(3):  # the fast path
        run()
    a.data = b.data  # same shape, strides and dtype: only the memory tells
    before = b.detach().clone()
    with pytest.raises(ValueError, match="shares memory with a, already constrained"):
        run()
    if through == "apply":
        assert torch.equal(b.detach(), before)  # nothing projected


def test_the_audit_flags_a_conflict_and_is_deterministic():
    model = layers(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    first = constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    new = nn.Parameter(torch.randn(8, 8))
    second = Constraints().add(new, wc.MinMaxNorm(2.0, 3.0), dims=1, name="new")
    second.attach(optimizer)
    model[0].weight = new  # first still asks MaxNorm of this place, second MinMaxNorm of new
    rows = [audit(model, optimizer)[0] for _ in range(5)]
    assert len({(repr(r.constraint), r.note) for r in rows}) == 1
    assert not rows[0].active and "conflicting constraints" in rows[0].note
    assert _registry.live_registries().index(first) < _registry.live_registries().index(second)


# -- 3. one registry, two optimizers, a replaced parameter ---------------------------------------


@pytest.mark.parametrize("order", ["o1", "o0 then o1"])
def test_the_optimizer_holding_the_old_tensor_raises_whichever_steps_first(order, guard_kind):
    model = layers(2)
    o0 = torch.optim.SGD(model[0].parameters(), lr=1.0)
    o1 = torch.optim.SGD(model[1].parameters(), lr=1.0)
    registry = constrain(model, None, kernel=wc.MaxNorm(0.5))
    registry.attach(o0)
    registry.attach(o1)
    optimizers = [o1] if order == "o1" else [o0, o1]
    for _ in range(2):
        step(model, *optimizers)
    old = model[1].weight
    model[1].weight = nn.Parameter(old.detach() * 10)  # o1 still holds the old tensor
    with pytest.raises(RuntimeError, match=r"1\.weight was replaced .* still holds the old one"):
        step(model, *optimizers)
    assert [e.parameter for e in registry][1] is old  # o0's hook did not adopt it
    assert within(model[0].weight, 0.5) or order == "o1"  # o0's step projected its own


def test_a_replaced_parameter_held_by_the_other_optimizer_is_adopted_by_its_hook(guard_kind):
    model = layers(2)
    o0 = torch.optim.SGD(model[0].parameters(), lr=1.0)
    o1 = torch.optim.SGD(model[1].parameters(), lr=1.0)
    registry = constrain(model, None, kernel=wc.MaxNorm(0.5))
    registry.attach(o0)
    registry.attach(o1)
    step(model, o0, o1)
    model[1].weight = nn.Parameter(model[1].weight.detach() * 10)
    o1.param_groups[0]["params"][0] = model[1].weight  # o1 now updates the new tensor
    for _ in range(2):
        step(model, o0, o1)
    assert [e.parameter for e in registry][1] is model[1].weight
    assert within(model[0].weight, 0.5) and within(model[1].weight, 0.5)


# -- 4. a param group's list edited in place -----------------------------------------------------


def test_a_param_group_edited_in_place_is_seen(guard_kind):
    model = layers(3)
    optimizer = torch.optim.SGD([*model[0].parameters(), *model[1].parameters()], lr=1.0)
    with pytest.warns(UserWarning, match=r"not in the optimizer's param groups.*: 2\.weight\."):
        constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    for _ in range(3):
        step(model, optimizer)
    group = optimizer.param_groups[0]["params"]
    place = next(i for i, p in enumerate(group) if p is model[1].weight)
    group[place] = model[2].weight  # the same length, another tensor
    with torch.no_grad():
        model[2].weight.mul_(10)
    for _ in range(2):
        step(model, optimizer)
    assert within(model[2].weight, 0.5)
    rows = {row.name: row for row in audit(model, optimizer)}
    assert rows["2.weight"].active and not rows["1.weight"].active


# -- 7. a parameter registered as a tensor, then replaced ----------------------------------------


def test_a_parameter_entry_replaced_with_a_new_optimizer_raises(guard_kind):
    model = layers(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    registry = Constraints().add(model[0].weight, wc.MaxNorm(0.5), dims=1, name="w")
    registry.attach(optimizer)
    for _ in range(2):
        step(model, optimizer)
    model.load_state_dict({k: v * 10 for k, v in model.state_dict().items()}, assign=True)
    del optimizer
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    registry.attach(optimizer)
    rows = audit(model, optimizer)
    assert rows[-1].name == "w" and not rows[-1].active
    assert "neither the model nor any optimizer" in rows[-1].note
    with pytest.raises(RuntimeError, match=r"w .*in none of the optimizers"):
        step(model, optimizer)
    with pytest.raises(RuntimeError, match="not active"):
        audit(model, optimizer, strict=True)


def test_a_parameter_entry_in_an_optimizer_not_attached_raises(guard_kind):
    model = layers(2)
    o0 = torch.optim.SGD(model[0].parameters(), lr=1.0)
    o1 = torch.optim.SGD(model[1].parameters(), lr=1.0)
    registry = Constraints().add(model[0].weight, wc.MaxNorm(0.5), dims=1)
    registry.add(model[1].weight, wc.MaxNorm(0.5), dims=1, name="second")
    registry.attach(o0)
    with pytest.raises(RuntimeError, match=r"second .*attach the registry to that one too"):
        step(model, o0, o1)
    registry.attach(o1)
    step(model, o0, o1)
    assert within(model[0].weight, 0.5) and within(model[1].weight, 0.5)


def test_a_parameter_entry_of_a_registry_without_hooks_is_only_not_attached():
    model = layers(1)
    extra = nn.Parameter(torch.randn(5, 5))
    registry = constrain(model, None, kernel=wc.MaxNorm(0.5)).add(extra, wc.MaxNorm(0.5), dims=1)
    rows = audit(model)
    assert [row.name for row in rows] == ["0.weight", "0.bias"]  # no row claims a step raises
    assert "attached to no optimizer" in rows[0].note
    registry.apply()
    assert within(extra, 0.5)


def test_tensors_nothing_trains_are_left_alone():
    model = layers(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loose = torch.randn(5, 5) * 10  # requires_grad=False: no step moves it
    frozen = nn.Parameter(torch.randn(5, 5) * 10, requires_grad=False)
    registry = constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    registry.add(loose, wc.MaxNorm(0.5), dims=1).add(frozen, wc.MaxNorm(0.5), dims=1)
    step(model, optimizer)
    assert within(model[0].weight, 0.5) and not within(loose, 0.5)


# -- 9. a weight frozen with its gradient kept ---------------------------------------------------


def test_a_frozen_weight_that_keeps_a_zero_gradient_is_active():
    model = layers(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    for _ in range(2):
        step(model, optimizer)
    model[0].weight.requires_grad_(False)
    optimizer.zero_grad(set_to_none=False)  # keeps a zero gradient: momentum still moves it
    model(torch.randn(4, 8)).pow(2).sum().backward()
    optimizer.step()
    assert within(model[0].weight, 0.5)
    row = audit(model, optimizer)[0]
    assert row.active and "keeps a gradient" in row.note
    model[0].weight.grad = None
    row = audit(model, optimizer)[0]
    assert not row.active and row.note.startswith("frozen")

"""Where the PyTorch adapter failed open (issue 17, torch side): bounds a weight's dtype cannot
represent, another model's optimizer, subclasses of known layers with weights of their own,
Hugging Face norm layers, pickled registries, and custom constraints with an axis."""

from __future__ import annotations

import copy
import io
import pickle
import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import weight_constraints as wc
from weight_constraints._checks import DEFAULT_AXIS
from weight_constraints.adapters.torch import (
    Constraints,
    audit,
    constrain,
    node_norms,
    project_,
)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5)
    return model


def step(model: nn.Module, optimizer: torch.optim.Optimizer, dtype=torch.float32) -> None:
    optimizer.zero_grad()
    model(torch.randn(4, 6, dtype=dtype)).float().pow(2).sum().backward()
    optimizer.step()


def within(weight: torch.Tensor, bound: float) -> bool:
    return float(node_norms(weight.detach(), 1).max()) <= bound * (1 + 1e-6)


def by_name(rows) -> dict:
    return {row.name: row for row in rows}


# -- 2. a bound the weights' dtype cannot represent ----------------------------------------------

BEYOND = r"beyond the range of float16 weights"


def test_a_bound_the_dtype_cannot_represent_raises_when_constrained():
    model = mlp().half()
    with pytest.raises(ValueError, match=rf"0\.weight: radius=100000\.0 is {BEYOND}"):
        constrain(model, None, kernel=wc.Simplex(radius=1e5))
    registry = Constraints()
    with pytest.raises(ValueError, match=rf"fc\.weight: max_value=100000\.0 is {BEYOND}"):
        registry.add(model[0], kernel=wc.MaxL1Norm(1e5), name="fc")
    with pytest.raises(ValueError, match=r"^w: max_value=1e\+39 is beyond .* float32"):
        registry.add(torch.zeros(3, 4), wc.MaxNorm(1e39), dims=1, name="w")
    assert len(registry) == 0
    w = torch.full((2, 3), 1e4, dtype=torch.float16)
    with pytest.raises(ValueError, match=rf"tensor: radius=100000\.0 is {BEYOND}"):
        project_(w, wc.Simplex(radius=1e5), dims=1)
    assert torch.equal(w, torch.full((2, 3), 1e4, dtype=torch.float16))


@pytest.mark.parametrize("through", ["apply", "hook"])
def test_after_a_dtype_change_nothing_is_projected_and_the_next_call_raises(through):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    registry = Constraints().add(model[0], kernel=wc.MaxNorm(0.5), name="first")
    registry.add(model[2], kernel=wc.Simplex(radius=1e5), name="second").attach(optimizer)
    step(model, optimizer)
    registry.apply()  # the fast path has run
    model.half()
    with torch.no_grad():
        model[0].weight.mul_(10)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=rf"second\.weight: radius=100000\.0 is {BEYOND}"):
        if through == "apply":
            registry.apply()
        else:
            for p in model.parameters():
                p.grad = torch.zeros_like(p)  # a step that changes nothing, then the hook
            optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    row = by_name(audit(model, optimizer))["2.weight"]
    assert not row.active and BEYOND.replace("\\", "") in row.note


# -- 4a. another model's optimizer ---------------------------------------------------------------


def test_an_optimizer_that_holds_none_of_the_tensors_raises_naming_them():
    model, other = mlp(), mlp()
    optimizer = torch.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"holds none of the 2 .* \(0\.weight, 2\.weight\)"):
        constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    assert not optimizer._optimizer_step_post_hooks
    assert all(row.constraint is None for row in audit(model))  # nothing registered


def test_an_optimizer_that_holds_some_warns_naming_the_others():
    model = mlp()
    head = torch.optim.SGD(model[2].parameters(), lr=0.1)
    with pytest.warns(UserWarning, match=r"1 of the 2 constrained tensors .*: 0\.weight\. If"):
        constrain(model, head, kernel=wc.MaxNorm(0.5))
    step(model, head)
    assert within(model[2].weight, 0.5)


def test_frozen_tensors_an_optimizer_does_not_hold_are_left_alone_and_audited():
    model = mlp()
    model[0].requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: a hook leaves frozen weights alone
        constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    row = by_name(audit(model, optimizer))["0.weight"]
    assert not row.active and "not in the optimizer's param groups" in row.note
    with pytest.raises(RuntimeError, match=r"0\.weight"):
        audit(model, optimizer, strict=True)


def test_an_accelerate_wrapper_of_another_models_optimizer_raises_too():
    accelerated = type("AcceleratedOptimizer", (), {"__module__": "accelerate.optimizer"})
    wrapper = accelerated()
    wrapper.optimizer = torch.optim.SGD(mlp().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="holds none of the 2 tensors"):
        constrain(mlp(), wrapper, kernel=wc.MaxNorm(0.5))


# -- 4b. subclasses of known layers with weights of their own ------------------------------------


class WithChild(nn.Linear):
    """A Linear that holds another Linear."""

    def __init__(self) -> None:
        super().__init__(4, 3)
        self.extra = nn.Linear(3, 3)


class WithWeight(nn.Linear):
    """A Linear with a raw (out, in) weight of its own."""

    def __init__(self) -> None:
        super().__init__(4, 3)
        self.gain = nn.Parameter(torch.randn(3, 4) * 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.gain, self.bias)


def test_the_layers_a_subclass_adds_are_walked():
    model = nn.Sequential(WithChild())
    registry = constrain(model, None, kernel=wc.MaxNorm(1.0), bias=wc.MaxNorm(1.0))
    assert [e.name for e in registry] == ["0.weight", "0.bias", "0.extra.weight", "0.extra.bias"]


def test_the_weights_a_subclass_adds_are_refused_by_name():
    model = nn.Sequential(WithWeight())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"module 0 \(WithWeight\) adds .* to Linear.*: 0\.gain;"):
        constrain(model, optimizer, kernel=wc.MaxNorm(1.0))
    assert not optimizer._optimizer_step_post_hooks
    with pytest.warns(UserWarning, match=r"0\.gain \(3x4: WithWeight adds it to Linear\)"):
        registry = constrain(model, optimizer, kernel=wc.MaxNorm(1.0), skip_unknown=True)
    assert [e.name for e in registry] == ["0.weight"]
    row = by_name(audit(model, optimizer))["0.gain"]
    assert not row.active and "passed over" in row.note and row.constraint == wc.MaxNorm(1.0)
    with pytest.raises(RuntimeError, match=r"0\.gain"):
        audit(model, optimizer, strict=True)  # never passes over it silently
    registry.add(model[0].gain, wc.MaxNorm(1.0), dims=1, name="gain")  # constrained now
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    audit(model, optimizer, strict=True)


def test_add_of_a_subclass_warns_naming_the_weights_it_leaves():
    with pytest.warns(UserWarning, match=r"fc\.gain \(3x4: WithWeight adds it to Linear\)"):
        registry = Constraints().add(WithWeight(), kernel=wc.MaxNorm(1.0), name="fc")
    assert [e.name for e in registry] == ["fc.weight"]


def test_parameters_a_known_type_has_without_a_role_are_not_extra():
    model = nn.Sequential(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry = constrain(model, None, kernel=wc.MaxNorm(1.0))
    assert [e.name for e in registry] == ["0.in_proj_weight", "0.out_proj.weight"]


# -- 4c. Hugging Face decoders and T5: norm layers recognised by their structure ------------------


def tiny(name: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if name == "t5":
        config = transformers.T5Config(
            vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
            decoder_start_token_id=0, pad_token_id=0,
        )  # fmt: skip
        return transformers.T5ForConditionalGeneration(config)
    kinds = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}
    config = getattr(transformers, f"{kinds[name]}Config")(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
    )  # fmt: skip
    return getattr(transformers, f"{kinds[name]}ForCausalLM")(config)


@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2", "t5"])
def test_hugging_face_models_constrain_in_one_line(name):
    model = tiny(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        registry = constrain(model, optimizer, kernel=wc.MaxNorm(1.0))
    names = [e.name for e in registry]
    assert names and not any("norm" in n for n in names)
    ids = torch.randint(1, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    rows = audit(model, optimizer, strict=True)
    norms = [row for row in rows if "norm" in row.name]
    assert norms and all(row.constraint is None for row in norms)


class Mixer(nn.Module):
    """A layer of a type the tables do not know: a 2-D weight, a 1-D scale and a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.randn(4, 4))
        self.scale = nn.Parameter(torch.ones(4))
        self.inner = nn.Linear(4, 4)


def test_skip_unknown_warns_listing_every_skipped_tensor_of_two_or_more_dims():
    model = nn.Sequential(Mixer(), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match=r"^1 tensor\(s\) .*: 0\.mix \(4x4: Mixer is not a supp"):
        registry = constrain(model, None, kernel=wc.MaxNorm(1.0), skip_unknown=True)
    assert [e.name for e in registry] == ["0.inner.weight", "1.weight"]


# -- 4d. pickled and copied registries -----------------------------------------------------------


def test_a_registry_saved_with_its_model_loads_detached_and_attaches_again():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.constraints = constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    step(model, optimizer)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    registry = loaded.constraints
    assert [e.parameter for e in registry] == [loaded[0].weight, loaded[2].weight]
    optimizer = torch.optim.SGD(loaded.parameters(), lr=0.5)
    row = by_name(audit(loaded, optimizer))["0.weight"]
    assert not row.active and "not attached to this optimizer" in row.note
    with pytest.raises(RuntimeError, match="not active"):
        audit(loaded, optimizer, strict=True)
    registry.attach(optimizer)
    for _ in range(2):
        step(loaded, optimizer)
    assert within(loaded[0].weight, 0.5) and within(loaded[2].weight, 0.5)
    audit(loaded, optimizer, strict=True)


def test_a_registry_pickles_and_copies():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    registry = constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    step(model, optimizer)
    for copied in (pickle.loads(pickle.dumps(registry)), copy.deepcopy(registry)):
        assert [e.name for e in copied] == ["0.weight", "2.weight"]
        assert all(c.parameter is not e.parameter for c, e in zip(copied, registry, strict=True))
        with torch.no_grad():
            for entry in copied:
                entry.parameter.mul_(10)
        copied.apply()  # projects its own tensors, attached to no optimizer
        assert all(within(e.parameter, 0.5) for e in copied)
        assert not copied._live_hooks()
    assert len(optimizer._optimizer_step_post_hooks) == 1


# -- 5. custom constraints with an axis ----------------------------------------------------------


class PlainAxis(wc.Constraint):
    """Not a dataclass: it has an axis but says nothing of how to take another one."""

    def __init__(self, limit: float = 0.5, axis=DEFAULT_AXIS) -> None:
        self.limit, self.axis = limit, axis

    def __call__(self, w, *, out=None, xp=None):
        return wc.max_norm(w, self.limit, self.axis, out=out, xp=xp)


class PlainWithAxis(PlainAxis):
    def with_axis(self, axis):
        return PlainWithAxis(self.limit, axis)


@dataclass(frozen=True)
class DataclassAxis(wc.Constraint):
    limit: float = 0.5
    axis: wc.Axis = DEFAULT_AXIS

    def __call__(self, w, *, out=None, xp=None):
        return wc.max_norm(w, self.limit, self.axis, out=out, xp=xp)


def test_a_custom_constraint_with_an_axis_and_no_with_axis_is_a_clear_type_error():
    model = mlp()
    with pytest.raises(TypeError, match=r"PlainAxis has an axis attribute but no with_axis\(\)"):
        constrain(model, None, kernel=PlainAxis())
    with pytest.raises(TypeError, match="with_axis"):
        Constraints().add(torch.randn(3, 4), PlainAxis(), dims=1)


@pytest.mark.parametrize("kind", [PlainWithAxis, DataclassAxis])
def test_a_custom_constraint_with_with_axis_or_a_dataclass_works(kind):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    registry = constrain(model, optimizer, kernel=kind())
    assert [e.constraint.axis for e in registry] == [(1,), (1,)]
    for _ in range(3):
        step(model, optimizer)  # the full check, then the fast path
        assert within(model[0].weight, 0.5) and within(model[2].weight, 0.5)

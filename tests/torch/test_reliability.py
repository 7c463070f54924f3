"""The PyTorch adapter never constrains silently nothing: computed weights, replaced, frozen and
tied parameters, argument mix-ups, tensors that cannot be written in place, the axis rule, and
transformers-style models (issue 11, torch side)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import weight_constraints as wc
from weight_constraints.adapters.torch import (
    Constraints,
    constrain,
    node_norms,
    per_node_dims,
    project_,
)


def inflated(model: nn.Module, factor: float = 5.0) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * factor)
    return model


def mlp() -> nn.Sequential:
    return inflated(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)))


def step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: int = 6) -> None:
    optimizer.zero_grad()
    model(torch.randn(8, inputs)).pow(2).mean().backward()
    optimizer.step()


def row_max(weight: torch.Tensor, dims: tuple[int, ...] = (1,)) -> float:
    return float(node_norms(weight.detach(), dims).max())


# -- 1. weights a module computes ----------------------------------------------------------------

COMPUTED = {
    "weight_norm": (
        lambda m: parametrizations.weight_norm(m),
        r"0\.weight is computed by a parametrization \(_WeightNorm\).*"
        r"constrain 0\.parametrizations\.weight\.original0 instead",
    ),
    "spectral_norm": (
        lambda m: parametrizations.spectral_norm(m),
        r"parametrization \(_SpectralNorm\).*0\.parametrizations\.weight\.original\)",
    ),
    "parametrize": (
        lambda m: parametrize.register_parametrization(m, "weight", nn.Tanh()),
        r"parametrization \(Tanh\).*remove_parametrizations",
    ),
    "old_weight_norm": (
        lambda m: torch.nn.utils.weight_norm(m),
        r"torch\.nn\.utils\.weight_norm from weight_g and weight_v.*constrain 0\.weight_g",
    ),
    "old_spectral_norm": (
        lambda m: torch.nn.utils.spectral_norm(m),
        r"computed by a SpectralNorm hook",
    ),
}


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("kind", COMPUTED)
def test_a_computed_weight_raises_with_what_to_constrain(kind):
    apply, message = COMPUTED[kind]
    model = mlp()
    apply(model[0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=message):
        constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    assert not optimizer._optimizer_step_post_hooks  # nothing attached
    registry = Constraints()
    with pytest.raises(ValueError, match="computed by"):
        registry.add(model[0], kernel=wc.MaxNorm(0.5), name="0")
    assert len(registry) == 0


def test_the_weight_norm_advice_makes_the_constraint_hold_on_the_computed_weight():
    model = mlp()
    parametrizations.weight_norm(model[0])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    g = model[0].parametrizations.weight.original0  # (5, 1): each row's norm
    Constraints().add(g, wc.MaxNorm(0.5), dims=(1,)).attach(optimizer)
    for _ in range(2):
        step(model, optimizer)
    assert row_max(model[0].weight) <= 0.5 * (1 + 1e-6)


def test_weight_norm_over_other_dims_says_it_cannot_be_moved():
    layer = nn.ConvTranspose2d(3, 4, 2)  # per-node dims (0, 2, 3); weight_norm(dim=0) keeps 0
    parametrizations.weight_norm(layer)
    with pytest.raises(ValueError, match=r"not over the per-node dims \(0, 2, 3\).*dim=1"):
        constrain(nn.Sequential(layer), None, kernel=wc.MaxNorm(1))


def test_a_parametrization_added_after_registration_raises_at_the_next_step():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    registry = constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    step(model, optimizer)
    parametrizations.weight_norm(model[0])
    with pytest.raises(
        ValueError, match=r"computed by a parametrization.*since it was constrained"
    ):
        step(model, optimizer)
    with torch.no_grad():
        model[2].weight.mul_(10)
        before = model[2].weight.detach().clone()
    with pytest.raises(ValueError, match="since it was constrained"):
        registry.apply()
    assert torch.equal(model[2].weight, before)  # nothing projected before the error


# -- 2. parameters replaced after registration ---------------------------------------------------


def test_load_state_dict_with_assign_raises_at_the_next_step():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    state = {k: v.clone() * 3 for k, v in mlp().state_dict().items()}
    model.load_state_dict(state, assign=True)  # new Parameter objects; the optimizer keeps the old
    with pytest.raises(RuntimeError, match=r"0\.weight was replaced .* still holds the old one"):
        step(model, optimizer)


def test_apply_projects_the_live_parameter_after_assign():
    model = mlp()
    registry = constrain(model, None, kernel=wc.MaxNorm(0.5))
    model.load_state_dict({k: v * 3 for k, v in mlp().state_dict().items()}, assign=True)
    registry.apply()
    assert row_max(model[0].weight) <= 0.5 * (1 + 1e-6)
    assert row_max(model[2].weight) <= 0.5 * (1 + 1e-6)


def test_a_replaced_parameter_the_optimizer_updates_is_constrained():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    old = model[0].weight
    model[0].weight = nn.Parameter(torch.randn(5, 6) * 10)
    params = optimizer.param_groups[0]["params"]
    params[next(i for i, p in enumerate(params) if p is old)] = model[0].weight
    for _ in range(2):
        step(model, optimizer)
        assert row_max(model[0].weight) <= 0.5 * (1 + 1e-6)


def test_a_replaced_parameter_the_optimizer_never_held_is_left_alone():
    model = mlp()
    optimizer = torch.optim.SGD(model[2].parameters(), lr=0.1)  # trains the head only
    with pytest.warns(UserWarning, match=r"0\.weight\. If another optimizer trains them"):
        constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    model[0].weight = nn.Parameter(torch.randn(5, 6) * 10)
    kept = model[0].weight.detach().clone()
    step(model, optimizer)  # neither the old nor the new one is this optimizer's: no error
    assert torch.equal(model[0].weight, kept)
    assert row_max(model[2].weight) <= 0.5 * (1 + 1e-6)


def test_dtype_and_device_moves_keep_the_registration():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    registry = constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    model.to(torch.float64)  # the same Parameter objects, new data
    optimizer.zero_grad()
    model(torch.randn(8, 6, dtype=torch.float64)).sum().backward()
    optimizer.step()
    assert model[0].weight.dtype == torch.float64
    assert row_max(model[0].weight) <= 0.5 * (1 + 1e-12)
    assert [e.parameter.dtype for e in registry] == [torch.float64] * 2


@pytest.mark.parametrize("change", ["expanded", "inference", "reshaped"])
def test_apply_checks_every_entry_before_projecting_any(change):
    first, second = nn.Parameter(torch.randn(4, 3) * 5), nn.Parameter(torch.randn(4, 3) * 5)
    registry = Constraints().add(first, wc.MaxNorm(1), dims=1).add(second, wc.MaxNorm(1), dims=1)
    if change == "expanded":
        second.data = torch.randn(1, 3).expand(4, 3)
    elif change == "inference":
        with torch.inference_mode():
            second.data = torch.randn(4, 3)
    else:
        second.data = torch.randn(3, 4)
    before = first.detach().clone()
    with pytest.raises(ValueError, match=r"share memory|inference tensor|changed shape"):
        registry.apply()
    assert torch.equal(first, before)


# -- 3. frozen weights ---------------------------------------------------------------------------


def test_a_hook_leaves_frozen_weights_alone():
    model = mlp()
    model[0].requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    registry = constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    frozen = model[0].weight.detach().clone()
    step(model, optimizer)
    assert torch.equal(model[0].weight, frozen)  # as Keras does with non-trainable weights
    assert row_max(model[2].weight) <= 0.5 * (1 + 1e-6)
    registry.apply()  # apply() projects everything registered
    assert row_max(model[0].weight) <= 0.5 * (1 + 1e-6)


def test_a_hook_projects_only_what_its_optimizer_updated():
    model = mlp()
    head = torch.optim.SGD(model[2].parameters(), lr=0.1)
    with pytest.warns(UserWarning, match=r"not in the optimizer's param groups.*: 0\.weight\."):
        constrain(model, head, kernel=wc.MaxNorm(0.5))
    body = model[0].weight.detach().clone()
    step(model, head)
    assert torch.equal(model[0].weight, body)  # not in this optimizer's param groups
    assert row_max(model[2].weight) <= 0.5 * (1 + 1e-6)
    # a parameter that got no gradient in a step is not updated, so not projected
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    optimizer.zero_grad()
    model[0](torch.randn(2, 6)).sum().backward()  # no gradient for model[2]
    model[2].weight.data.mul_(100)
    head_weight = model[2].weight.detach().clone()
    optimizer.step()
    assert torch.equal(model[2].weight, head_weight)
    assert row_max(model[0].weight) <= 0.5 * (1 + 1e-6)


# -- 4. tied weights and shared memory -----------------------------------------------------------


class TiedLM(nn.Module):
    def __init__(self, vocab: int = 11, width: int = 6) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.body = nn.Linear(width, width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.tanh(self.body(self.wte(tokens))))


def test_a_tied_weight_is_constrained_once():
    model = inflated(TiedLM())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    registry = constrain(model, optimizer, kernel=wc.MaxNorm(1.0))
    assert [e.name for e in registry] == ["wte.weight", "body.weight"]
    optimizer.zero_grad()
    model(torch.randint(0, 11, (4, 3))).logsumexp(-1).sum().backward()
    optimizer.step()
    assert row_max(model.wte.weight) <= 1.0 + 1e-6
    assert model.lm_head.weight is model.wte.weight


def test_conflicting_requests_for_a_tied_weight_name_both_places():
    model = TiedLM()
    with pytest.raises(ValueError, match=r"lm_head\.weight is the same tensor as wte\.weight"):
        constrain(model, None, kernel=wc.MaxNorm(1.0), embedding=wc.UnitNorm())
    registry = Constraints().add(model.wte, embedding=wc.MaxNorm(1), name="wte")
    registry.add(model.lm_head, kernel=wc.MaxNorm(1), name="lm_head")  # the same request: once
    assert len(registry) == 1
    with pytest.raises(ValueError, match="already constrained"):
        registry.add(model.lm_head, kernel=wc.MaxNorm(2), name="lm_head")
    assert len(registry) == 1


def test_the_same_memory_through_data_or_views_is_refused():
    linear = nn.Linear(6, 5)
    registry = Constraints().add(linear, kernel=wc.MaxNorm(1), name="fc")
    for other in (linear.weight.data, linear.weight.detach()[1:3], linear.weight.detach().T):
        with pytest.raises(ValueError, match=r"shares memory with fc\.weight"):
            registry.add(other, wc.MaxNorm(1), dims=0)
    assert len(registry) == 1
    w = torch.randn(6, 4)
    columns = (
        Constraints().add(w[:, :2], wc.MaxNorm(1), dims=1).add(w[:, 2:], wc.MaxNorm(2), dims=1)
    )
    assert len(columns) == 2  # interleaved in memory but disjoint: fine
    with pytest.raises(ValueError, match="shares memory"):
        Constraints().add(w[0:3], wc.MaxNorm(1), dims=1).add(w[2:5], wc.MaxNorm(1), dims=1)


# -- 5. argument mix-ups -------------------------------------------------------------------------


def test_a_constraint_in_the_optimizer_place_is_a_clear_type_error():
    model = mlp()
    with pytest.raises(TypeError, match=r"expects a torch\.optim\.Optimizer.*kernel=MaxNorm"):
        constrain(model, wc.MaxNorm(3))
    with pytest.raises(TypeError, match="got str"):
        constrain(model, "sgd")
    with pytest.raises(TypeError, match="positional"):
        constrain(model, None, wc.MaxNorm(3))  # roles are keyword-only
    with pytest.raises(TypeError, match="Optimizer"):
        Constraints().attach(model)


# -- 6. tensors that cannot be written in place --------------------------------------------------


def inference_tensor() -> torch.Tensor:
    with torch.inference_mode():
        return torch.randn(4, 3) * 5


UNWRITABLE = {
    "inference": (inference_tensor, ValueError, "inference tensor"),
    "expanded": (lambda: (torch.randn(1, 3) * 5).expand(4, 3), ValueError, "share memory"),
    "zero_stride": (lambda: torch.randn(12).as_strided((4, 3), (1, 1)), ValueError, "share"),
    "sparse_coo": (lambda: (torch.randn(4, 3) * 5).to_sparse(), TypeError, "sparse_coo"),
    "sparse_csr": (lambda: (torch.randn(4, 3) * 5).to_sparse_csr(), TypeError, "sparse_csr"),
}


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("kind", UNWRITABLE)
def test_unwritable_tensors_raise_before_anything_is_written(kind):
    make, error, message = UNWRITABLE[kind]
    tensor = make()
    before = tensor.to_dense().clone() if tensor.layout != torch.strided else tensor.clone()
    with pytest.raises(error, match=message):
        project_(tensor, wc.MaxNorm(1), dims=1)
    after = tensor.to_dense() if tensor.layout != torch.strided else tensor
    assert torch.equal(after, before)
    registry = Constraints().add(torch.randn(2, 2), wc.MaxNorm(1), dims=1)
    with pytest.raises(error, match=message):
        registry.add(tensor, wc.MaxNorm(1), dims=1)
    assert len(registry) == 1


def test_an_inference_tensor_is_projected_inside_inference_mode():
    with torch.inference_mode():
        w = torch.full((2, 2), 3.0)
        project_(w, wc.MaxNorm(1), dims=1)
    assert row_max(w) <= 1 + 1e-6


# -- 16. the axis rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, axis",
    [
        (nn.Linear(6, 5), 1),
        (nn.Linear(6, 5), -1),
        (nn.Conv2d(3, 4, 3), (1, 2, 3)),
        (nn.ConvTranspose2d(3, 4, 3), [0, 2, 3]),
    ],
    ids=str,
)
def test_an_explicit_axis_naming_the_per_node_dims_is_honoured(module, axis):
    inflated(module)
    Constraints().add(module, kernel=wc.MaxNorm(1.0, axis=axis)).apply()
    assert row_max(module.weight, per_node_dims(module, "weight")) <= 1 + 1e-6


@pytest.mark.parametrize(
    "module, axis, message",
    [
        (nn.Linear(6, 5), 0, r"explicit axis=0, but one norm per output unit of Linear\.weight"),
        (nn.Conv2d(3, 4, 3), (0, 1, 2), "explicit axis"),
        (nn.ConvTranspose2d(4, 6, 3, groups=2), (1, 3), "grouped view"),
    ],
    ids=str,
)
def test_an_explicit_axis_elsewhere_is_rejected(module, axis, message):
    with pytest.raises(ValueError, match=message):
        Constraints().add(module, kernel=wc.MaxNorm(1.0, axis=axis))


def test_embedding_tables_have_their_own_role():
    model = inflated(nn.Sequential(nn.Embedding(9, 4), nn.Linear(4, 3)))
    registry = constrain(model, None, kernel=wc.MaxNorm(1.0), embedding=wc.UnitNorm())
    assert [repr(e.constraint) for e in registry] == [
        "UnitNorm(axis=1)",
        "MaxNorm(max_value=1.0, axis=1)",
    ]
    registry.apply()
    torch.testing.assert_close(node_norms(model[0].weight, 1), torch.ones(9))
    # without embedding=, tables take the kernel constraint; only tables is fine for kernel=
    only_tables = constrain(nn.Sequential(nn.EmbeddingBag(9, 4)), None, kernel=wc.MaxNorm(1))
    assert [e.name for e in only_tables] == ["0.weight"]
    with pytest.raises(ValueError, match="has no embedding weights"):
        Constraints().add(nn.Linear(3, 4), embedding=wc.MaxNorm())
    with pytest.raises(ValueError, match="has embedding weights"):
        constrain(nn.Sequential(nn.Linear(3, 4)), None, embedding=wc.MaxNorm())


# -- transformers' Conv1D and a GPT-2 shaped model -----------------------------------------------


class Conv1D(nn.Module):
    """A stand-in for transformers.pytorch_utils.Conv1D: weight (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.5)
        self.bias = nn.Parameter(torch.randn(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return out.reshape(*x.shape[:-1], self.nf)


Conv1D.__module__ = "transformers.pytorch_utils"


OtherConv1D = type("Conv1D", (nn.Module,), {"__module__": "mylib.layers"})  # not transformers


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.Module()
        self.attn.c_attn, self.attn.c_proj = Conv1D(3 * d, d), Conv1D(d, d)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = Conv1D(4 * d, d), Conv1D(d, 4 * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.attn.c_attn(self.ln_1(x)).chunk(3, dim=-1)
        x = x + self.attn.c_proj(torch.softmax(q @ k.transpose(-1, -2), -1) @ v)
        return x + self.mlp.c_proj(torch.relu(self.mlp.c_fc(self.ln_2(x))))


class GPT2Like(nn.Module):
    """The structure of GPT2LMHeadModel: wte tied to lm_head, Conv1D blocks, LayerNorms."""

    def __init__(self, vocab: int = 13, d: int = 8, layers: int = 2, positions: int = 5) -> None:
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(vocab, d)
        self.transformer.wpe = nn.Embedding(positions, d)
        self.transformer.h = nn.ModuleList(Block(d) for _ in range(layers))
        self.transformer.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = self.transformer
        x = t.wte(tokens) + t.wpe(torch.arange(tokens.shape[-1]))
        for block in t.h:
            x = block(x)
        return self.lm_head(t.ln_f(x))


def test_transformers_conv1d_is_recognised_by_name():
    assert per_node_dims(Conv1D(5, 3), "weight") == (0,)
    assert per_node_dims(Conv1D(5, 3), "bias") == (0,)
    with pytest.raises(TypeError, match="Conv1D is not a supported module type"):
        per_node_dims(OtherConv1D(), "weight")
    layer = inflated(Conv1D(5, 3))
    Constraints().add(layer, kernel=wc.MaxNorm(1.0), bias=wc.MaxNorm(0.5)).apply()
    assert row_max(layer.weight, (0,)) <= 1 + 1e-6  # one norm per output unit (column)
    assert float(layer.bias.detach().norm()) <= 0.5 + 1e-6


def test_a_gpt2_shaped_model_is_constrained_in_one_line():
    torch.manual_seed(0)
    model = GPT2Like()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.5)
    registry = constrain(model, optimizer, kernel=wc.MaxNorm(1))
    names = [e.name for e in registry]
    assert names[:2] == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert len(names) == len(set(names)) == 2 + 4 * 2  # every kernel once; lm_head is wte
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randint(0, 13, (3, 5))).logsumexp(-1).sum().backward()
        optimizer.step()
    for entry in registry:
        assert row_max(entry.parameter, entry.dims) <= 1 + 1e-6, entry.name
    assert row_max(model.lm_head.weight) <= 1 + 1e-6


def test_the_hook_checks_without_host_synchronisation(monkeypatch):
    model = mlp()
    model[0].bias.requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    registry = constrain(model, optimizer, kernel=wc.MaxNorm(0.5), bias=wc.MaxNorm(1.0))
    model(torch.randn(4, 6)).sum().backward()
    (hook,) = optimizer._optimizer_step_post_hooks.values()

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation in the hook")

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    hook(optimizer, (), {})  # what optimizer.step() runs after the update
    registry.apply()
    monkeypatch.undo()
    assert row_max(model[0].weight) <= 0.5 * (1 + 1e-6)

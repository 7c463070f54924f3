"""The PyTorch adapter: per-node dims by module type, the registry, the optimizer hook."""

from __future__ import annotations

import copy
import io
import pkgutil

import numpy as np
import pytest
import torch
from torch import nn

import weight_constraints as wc
import weight_constraints.adapters.torch as adapter
from tests.doctests import run_doctests
from weight_constraints.adapters.torch import (
    Constraints,
    constrain,
    node_norms,
    per_node_dims,
    project_,
)

torch.manual_seed(0)


MODULES = ["", *(f".{m.name}" for m in pkgutil.iter_modules(adapter.__path__))]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module):
    run_doctests(f"weight_constraints.adapters.torch{module}")


# -- per-node dims ------------------------------------------------------------------------------

DIMS = [
    (nn.Linear(3, 4), "weight", (1,)),
    (nn.Linear(3, 4), "bias", (0,)),
    (nn.Bilinear(3, 5, 4), "weight", (1, 2)),
    (nn.Conv1d(3, 4, 5), "weight", (1, 2)),
    (nn.Conv2d(3, 4, 5), "weight", (1, 2, 3)),
    (nn.Conv3d(3, 4, 5), "weight", (1, 2, 3, 4)),
    (nn.Conv2d(4, 6, 3, groups=2), "weight", (1, 2, 3)),
    (nn.ConvTranspose1d(3, 4, 5), "weight", (0, 2)),
    (nn.ConvTranspose2d(3, 4, 5), "weight", (0, 2, 3)),
    (nn.ConvTranspose3d(3, 4, 5), "weight", (0, 2, 3, 4)),
    (nn.Embedding(10, 4), "weight", (1,)),
    (nn.EmbeddingBag(10, 4), "weight", (1,)),
    (nn.LSTM(3, 4, num_layers=2, bidirectional=True), "weight_ih_l1_reverse", (1,)),
    (nn.GRU(3, 4), "weight_hh_l0", (1,)),
    (nn.RNN(3, 4), "bias_ih_l0", (0,)),
    (nn.LSTMCell(3, 4), "weight_hh", (1,)),
    (nn.MultiheadAttention(8, 2), "in_proj_weight", (1,)),
    (nn.MultiheadAttention(8, 2), "out_proj.weight", (1,)),
    (nn.MultiheadAttention(8, 2, kdim=3, vdim=5), "k_proj_weight", (1,)),
]


@pytest.mark.parametrize("module, name, dims", DIMS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_per_node_dims(module, name, dims):
    assert per_node_dims(module, name) == dims


def test_per_node_dims_errors():
    with pytest.raises(ValueError, match="no constrainable parameter 'weight_hh'"):
        per_node_dims(nn.Linear(2, 2), "weight_hh")
    with pytest.raises(TypeError, match="BatchNorm1d is not a supported module type"):
        per_node_dims(nn.BatchNorm1d(3), "weight")
    with pytest.raises(ValueError, match="grouped view"):
        per_node_dims(nn.ConvTranspose2d(4, 6, 3, groups=2), "weight")


def output_unit_norms(module: nn.Module, name: str) -> torch.Tensor:
    """One norm per output unit, computed by hand for each layout."""
    w = dict(module.named_parameters())[name].detach().double()
    if w.ndim == 1:
        return w.norm().reshape(1)
    if isinstance(module, nn.modules.conv._ConvNd) and module.transposed:
        g = module.groups
        w = w.reshape(g, w.shape[0] // g, *w.shape[1:])  # (g, in/g, out/g, *k)
        w = w.transpose(1, 2).reshape(g * w.shape[2], -1)  # (out, in/g * prod(k))
        return w.norm(dim=1)
    return w.reshape(w.shape[0], -1).norm(dim=1)


ROLE_MODULES = {
    "Linear": lambda: nn.Linear(6, 5),
    "Bilinear": lambda: nn.Bilinear(3, 4, 5),
    "Conv1d": lambda: nn.Conv1d(3, 5, 3),
    "Conv2d": lambda: nn.Conv2d(3, 5, 3),
    "Conv2d_groups": lambda: nn.Conv2d(4, 6, 3, groups=2),
    "ConvTranspose2d": lambda: nn.ConvTranspose2d(3, 5, 3),
    "ConvTranspose2d_groups": lambda: nn.ConvTranspose2d(4, 6, 3, groups=2),
    "ConvTranspose3d": lambda: nn.ConvTranspose3d(2, 3, 2),
    "Embedding": lambda: nn.Embedding(7, 4),
    "LSTM": lambda: nn.LSTM(3, 4, num_layers=2, bidirectional=True),
    "LSTM_proj": lambda: nn.LSTM(3, 4, proj_size=2),
    "GRU": lambda: nn.GRU(3, 4),
    "RNNCell": lambda: nn.RNNCell(3, 4),
    "MultiheadAttention": lambda: nn.MultiheadAttention(8, 2),
    "MultiheadAttention_kv": lambda: nn.MultiheadAttention(8, 2, kdim=3, vdim=5),
}


def inflate(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 3)


@pytest.mark.parametrize("kind", ROLE_MODULES)
def test_roles_constrain_every_output_unit(kind):
    module = ROLE_MODULES[kind]()
    inflate(module)
    has_recurrent = isinstance(module, (nn.RNNBase, nn.RNNCellBase))
    registry = Constraints().add(
        module,
        kernel=wc.MaxNorm(1.0),
        recurrent=wc.UnitNorm() if has_recurrent else None,
        bias=wc.MaxNorm(0.5) if any("bias" in n for n, _ in module.named_parameters()) else None,
    )
    registry.apply()
    names = {e.name.partition(".")[2] for e in registry}
    for name, _ in module.named_parameters():
        if name not in names:
            assert name in {"bias_k", "bias_v"}, f"{name} of {kind} was not constrained"
            continue
        norms = output_unit_norms(module, name)
        if "bias" in name:
            assert norms.max() <= 0.5 * (1 + 1e-6)
        elif "weight_hh" in name or "weight_hr" in name:
            torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-6, atol=0)
        else:
            assert norms.max() <= 1.0 * (1 + 1e-6)
            assert norms.max() >= 0.999  # inflated weights were projected onto the boundary


# -- parity with the Keras layout --------------------------------------------------------------


def keras_layout(module: nn.Module, name: str) -> tuple[np.ndarray, tuple[int, ...], callable]:
    """The Keras kernel equivalent to a torch weight, its Keras per-node axes, and the way back."""
    w = dict(module.named_parameters())[name].detach().numpy().copy()
    if isinstance(module, nn.Linear) or isinstance(module, nn.LSTM):
        return w.T, (0,), lambda k: k.T  # (out, in) -> (in, out)
    if isinstance(module, nn.ConvTranspose2d):  # (in, out, kh, kw) -> (kh, kw, out, in)
        return w.transpose(2, 3, 1, 0), (0, 1, 3), lambda k: k.transpose(3, 2, 0, 1)
    if isinstance(module, nn.Conv2d):  # (out, in, kh, kw) -> (kh, kw, in, out)
        return w.transpose(2, 3, 1, 0), (0, 1, 2), lambda k: k.transpose(3, 2, 0, 1)
    raise AssertionError(module)


PARITY = [
    (lambda: nn.Linear(20, 12), "weight", "kernel"),
    (lambda: nn.Conv2d(5, 7, 3), "weight", "kernel"),
    (lambda: nn.ConvTranspose2d(5, 7, 3), "weight", "kernel"),
    (lambda: nn.LSTM(6, 5), "weight_ih_l0", "kernel"),
    (lambda: nn.LSTM(6, 5), "weight_hh_l0", "recurrent"),
]


@pytest.mark.parametrize("make, name, role", PARITY)
@pytest.mark.parametrize(
    "constraint", [wc.MaxNorm(1.5), wc.UnitNorm(), wc.MinMaxNorm(0.5, 1.0, 0.7)], ids=repr
)
def test_parity_with_the_core_on_the_keras_layout(make, name, role, constraint):
    module = make()
    inflate(module)
    kernel, axes, back = keras_layout(module, name)
    expected = back(type(constraint)(**{**constraint.get_config(), "axis": axes})(kernel))
    Constraints().add(module, **{role: constraint}).apply()
    got = dict(module.named_parameters())[name].detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


# -- project_ and node_norms --------------------------------------------------------------------


def test_project_refuses_an_axis_that_differs_from_dims():
    w = torch.randn(4, 3, 2)
    before = w.clone()
    with pytest.raises(ValueError, match=r"explicit axis that differs from dims=1"):
        project_(w, wc.MaxNorm(0.1, axis=(1, 2)), dims=1)
    assert torch.equal(w, before)
    project_(w, wc.MaxNorm(0.1, axis=-2), dims=1)  # the same dim: fine
    assert node_norms(w, 1).max() <= 0.1 + 1e-7
    project_(w, wc.MaxNorm(0.05), dims=(0, 2))  # the default axis=0 means "per node": dims decide
    assert node_norms(w, (0, 2)).max() <= 0.05 + 1e-7


def test_project_in_place_returns_the_tensor():
    w = nn.Parameter(torch.randn(5, 4) * 3)
    pointer = w.data_ptr()
    assert project_(w, wc.MaxNorm(1.0), dims=1) is w
    assert w.data_ptr() == pointer and w.requires_grad
    assert node_norms(w, 1).max() <= 1 + 1e-6
    assert project_(w, "non_neg", dims=None).min() >= 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_accumulated_in_float32(dtype):
    big = 65504.0 if dtype == torch.float16 else 1e18  # squares overflow float16 / are 1e36
    # float16 is scaled in float32 and rounded once: exact here. bfloat16 is scaled in
    # bfloat16 on the CPU (the factor rounded once more): within one bfloat16 step.
    tolerance = {"rtol": 0, "atol": 0} if dtype == torch.float16 else {"rtol": 2**-7, "atol": 0}
    w = torch.full((3, 4), big, dtype=dtype)
    project_(w, wc.UnitNorm(), dims=1)
    assert w.dtype == dtype
    torch.testing.assert_close(w, torch.full((3, 4), 0.5, dtype=dtype), **tolerance)
    w = torch.full((3, 4), 1000.0, dtype=dtype)
    project_(w, wc.MaxNorm(3.0), dims=1)
    torch.testing.assert_close(w, torch.full((3, 4), 1.5, dtype=dtype), **tolerance)
    assert node_norms(w, 1).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_training(dtype):
    model = nn.Linear(8, 4).to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(16, 8, dtype=dtype)).float().sum().backward()
        optimizer.step()
    assert model.weight.dtype == dtype
    assert torch.isfinite(model.weight).all()
    assert node_norms(model.weight, 1).max() <= 0.5 * (1 + 2 * torch.finfo(dtype).eps)


def test_no_host_synchronisation(monkeypatch):
    model = nn.Sequential(nn.Linear(6, 5), nn.Conv1d(5, 4, 1), nn.LSTM(4, 3))
    registry = constrain(
        model, None, kernel=wc.MinMaxNorm(0.5, 1.0), recurrent="unit_norm", bias=wc.MaxNorm(1)
    )

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation in the projection")

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    registry.apply()
    project_(torch.randn(3, 3), wc.MaxNorm(1), dims=1)


# -- the registry ---------------------------------------------------------------------------------


def test_add_a_tensor_with_dims():
    extra = nn.Parameter(torch.randn(5, 6) * 3)
    registry = Constraints().add(extra, wc.MaxNorm(1.0), dims=0, name="extra")
    (entry,) = registry
    assert entry.name == "extra" and entry.dims == (0,) and entry.parameter is extra
    registry.apply()
    assert node_norms(extra, 0).max() <= 1 + 1e-6
    assert "extra: MaxNorm(max_value=1.0, axis=0)" in repr(registry)
    # NonNeg needs no dims; an explicit axis that agrees with dims is fine
    Constraints().add(torch.randn(3), wc.NonNeg())
    Constraints().add(torch.randn(3, 4), wc.MaxNorm(1, axis=1), dims=-1)


def bad_adds():
    linear = nn.Linear(3, 4)
    return [
        (nn.Linear(3, 4), dict(recurrent=wc.UnitNorm()), ValueError, "Linear .* has no recurrent"),
        (nn.Linear(3, 4, bias=False), dict(bias=wc.MaxNorm()), ValueError, "has no bias"),
        (nn.BatchNorm1d(4), dict(kernel=wc.MaxNorm()), TypeError, "BatchNorm1d is not a supported"),
        (linear, dict(kernel=wc.MaxNorm(3, axis=0)), ValueError, r"explicit axis=0, but one norm"),
        (
            torch.ones(3, 4, dtype=torch.int64),
            dict(constraint=wc.MaxNorm(), dims=1),
            TypeError,
            "int64",
        ),
        (torch.ones(3, dtype=torch.bool), dict(constraint=wc.NonNeg()), TypeError, "bool"),
        (torch.randn(3, 4), dict(constraint=wc.MaxNorm(), dims=2), ValueError, r"shape \(3, 4\)"),
        (torch.randn(3, 4), dict(constraint=wc.MaxNorm(), dims=(0, -2)), ValueError, "repeats"),
        (torch.randn(3, 4), dict(constraint=wc.MaxNorm()), ValueError, "needs dims="),
        (torch.randn(3, 4), dict(constraint=wc.MaxNorm(axis=1), dims=0), ValueError, "differs"),
        (torch.randn(3, 4), dict(constraint="maxnorm", dims=0), ValueError, "known names"),
        (nn.Linear(3, 4), dict(constraint=wc.MaxNorm()), TypeError, "kernel=, recurrent=, bias=,"),
        (torch.randn(3), dict(kernel=wc.MaxNorm()), TypeError, "need a module"),
        (nn.LazyLinear(3), dict(kernel=wc.MaxNorm()), ValueError, "forward pass"),
        ("weights", dict(constraint=wc.MaxNorm(), dims=0), TypeError, "nn.Module or a tensor"),
    ]


@pytest.mark.parametrize("target, kwargs, error, message", bad_adds())
def test_bad_add_attaches_nothing(target, kwargs, error, message):
    registry = Constraints().add(nn.Linear(2, 2), kernel=wc.MaxNorm())
    with pytest.raises(error, match=message):
        registry.add(target, **kwargs)
    assert len(registry) == 1


def test_a_module_with_two_roles_fails_whole():
    registry = Constraints()
    with pytest.raises(ValueError, match="no recurrent"):
        registry.add(nn.Linear(3, 4), kernel=wc.MaxNorm(), recurrent=wc.UnitNorm())
    assert len(registry) == 0


def test_the_same_parameter_twice_is_refused():
    linear = nn.Linear(3, 4)
    registry = Constraints().add(linear, kernel=wc.MaxNorm())
    with pytest.raises(ValueError, match="already constrained"):
        registry.add(linear.weight, wc.UnitNorm(), dims=1)
    assert len(registry) == 1


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.inner = nn.Linear(4, 4)

    def forward(self, x):
        return self.inner(x) * self.scale


def test_constrain_walks_nested_models():
    model = nn.Sequential(
        nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU()),
        nn.BatchNorm1d(8),
        nn.ModuleDict({"head": nn.Linear(8, 2)}),
    )
    registry = constrain(model, None, kernel=wc.MaxNorm(2), bias=wc.MaxNorm(1))
    assert [e.name for e in registry] == ["0.0.weight", "0.0.bias", "2.head.weight", "2.head.bias"]
    with pytest.raises(ValueError, match="has recurrent weights"):
        constrain(model, None, recurrent=wc.UnitNorm())


def test_constrain_refuses_unknown_modules_unless_told():
    model = nn.Sequential(Custom(), nn.Linear(4, 1))
    with pytest.raises(TypeError, match=r"module 0 \(Custom\)"):
        constrain(model, None, kernel=wc.MaxNorm())
    registry = constrain(model, None, kernel=wc.MaxNorm(), skip_unknown=True)
    assert [e.name for e in registry] == ["0.inner.weight", "1.weight"]


def test_multihead_attention_owns_its_out_proj():
    model = nn.Sequential(nn.MultiheadAttention(8, 2))
    registry = constrain(model, None, kernel=wc.MaxNorm(), bias=wc.MaxNorm())
    assert [e.name for e in registry] == [
        "0.in_proj_weight",
        "0.out_proj.weight",
        "0.in_proj_bias",
        "0.out_proj.bias",
    ]


# -- the optimizer hook -------------------------------------------------------------------------


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(16, 6)).pow(2).sum().backward()
        optimizer.step()


def small_model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def max_node_norm(model: nn.Module) -> float:
    return max(float(node_norms(m.weight, 1).max()) for m in model if isinstance(m, nn.Linear))


OPTIMIZERS = [
    (torch.optim.SGD, {"lr": 10.0}),
    (torch.optim.SGD, {"lr": 10.0, "foreach": True}),
    (torch.optim.SGD, {"lr": 10.0, "fused": True}),
    (torch.optim.Adam, {"lr": 1.0}),
    (torch.optim.Adam, {"lr": 1.0, "foreach": True}),
    (torch.optim.Adam, {"lr": 1.0, "fused": True}),
    (torch.optim.AdamW, {"lr": 1.0}),
    (torch.optim.AdamW, {"lr": 1.0, "foreach": True}),
    (torch.optim.AdamW, {"lr": 1.0, "fused": True}),
    (torch.optim.RMSprop, {"lr": 1.0}),
    (torch.optim.RMSprop, {"lr": 1.0, "foreach": True}),
    # RMSprop has no fused implementation in PyTorch.
]


@pytest.mark.parametrize("optimizer_class, kwargs", OPTIMIZERS, ids=str)
def test_optimizers(optimizer_class, kwargs):
    model = small_model()
    optimizer = optimizer_class(model.parameters(), **kwargs)
    constrain(model, optimizer, kernel=wc.MaxNorm(0.3))
    before = copy.deepcopy(model.state_dict())
    train(model, optimizer)
    assert max_node_norm(model) <= 0.3 * (1 + 1e-6)
    assert not torch.equal(before["0.weight"], model[0].weight)
    # the same steps without the hook leave the ball: the hook did the work
    free = small_model()
    free.load_state_dict(before)
    free_optimizer = optimizer_class(free.parameters(), **kwargs)
    torch.manual_seed(1)
    train(free, free_optimizer)
    assert max_node_norm(free) > 0.3


def test_every_step_is_projected_and_the_handle_detaches():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=10.0)
    registry = constrain(model, None, kernel=wc.MaxNorm(0.3))
    handle = registry.attach(optimizer)
    train(model, optimizer, steps=1)
    assert max_node_norm(model) <= 0.3 * (1 + 1e-6)
    handle.remove()
    train(model, optimizer, steps=1)
    assert max_node_norm(model) > 0.3


def test_a_skipped_amp_step_projects_nothing():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    constrain(model, optimizer, kernel=wc.MaxNorm(0.3))
    with torch.no_grad():
        model[0].weight.mul_(100)  # violates the constraint, as if loaded from elsewhere
    violating = model[0].weight.detach().clone()
    scaler = torch.amp.GradScaler("cpu")
    optimizer.zero_grad()
    loss = model(torch.randn(4, 6)).sum() * float("inf")  # inf gradients: the step is skipped
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    torch.testing.assert_close(model[0].weight.detach(), violating, rtol=0, atol=0)
    # a step that happens is projected
    optimizer.zero_grad()
    scaler.scale(model(torch.randn(4, 6)).sum()).backward()
    scaler.step(optimizer)
    assert max_node_norm(model) <= 0.3 * (1 + 1e-6)


def test_torch_compile():
    model = small_model()
    compiled = torch.compile(model)
    optimizer = torch.optim.Adam(compiled.parameters(), lr=1.0)
    registry = constrain(compiled, optimizer, kernel=wc.MaxNorm(0.3), bias=wc.MaxNorm(0.1))
    assert len(registry) == 4
    for _ in range(3):
        optimizer.zero_grad()
        compiled(torch.randn(16, 6)).pow(2).sum().backward()
        optimizer.step()
    assert max_node_norm(model) <= 0.3 * (1 + 1e-6)
    assert float(model[2].bias.norm()) <= 0.1 * (1 + 1e-6)


def test_state_dict_keys_and_parameter_objects_survive():
    model = small_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
    registry = constrain(model, optimizer, kernel=wc.MaxNorm(0.3))
    keys = list(model.state_dict())
    parameters = [id(p) for p in model.parameters()]
    pointers = [p.data_ptr() for p in model.parameters()]
    train(model, optimizer)
    assert list(model.state_dict()) == keys
    assert [id(p) for p in model.parameters()] == parameters
    assert [p.data_ptr() for p in model.parameters()] == pointers
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == parameters
    # save, load into a fresh model whose weights violate the constraint, re-project
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    with torch.no_grad():
        model[0].weight.mul_(50)
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    assert max_node_norm(model) <= 0.3 * (1 + 1e-6)
    with torch.no_grad():
        model[0].weight.mul_(50)  # e.g. a checkpoint written without the constraint
    registry.apply()
    assert max_node_norm(model) <= 0.3 * (1 + 1e-6)
    train(model, optimizer, steps=1)  # the hook still acts on the same objects
    assert max_node_norm(model) <= 0.3 * (1 + 1e-6)


def test_apply_after_swapping_in_averaged_weights():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    constrain(model, optimizer, kernel=wc.UnitNorm())
    averaged = torch.optim.swa_utils.AveragedModel(model)
    for _ in range(4):
        train(model, optimizer, steps=1)
        averaged.update_parameters(model)
    norms = node_norms(averaged.module[0].weight, 1)
    assert norms.min() < 1 - 1e-3  # an average of unit vectors is shorter than a unit vector
    registry = constrain(averaged.module, None, kernel=wc.UnitNorm())
    registry.apply()
    norms = node_norms(averaged.module[0].weight, 1)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-6, atol=0)

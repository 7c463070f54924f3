"""The registry's fast path: entries bound once to a projection plan, checked by a guard.

The first call of ``apply()`` or a hook checks every entry in full (the reliability rules of
``test_reliability.py``) and projects through the core; later calls check a guard in O(1) per
entry and run the plan bound to what they project. These tests warm the fast path up first, then
check that it gives the core's results bit for bit, that every change the full check handles
still reaches it, and that the hook projects what its optimizer updated and nothing else.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import weight_constraints as wc
import weight_constraints.adapters.torch as adapter
from weight_constraints.adapters.torch import (
    Constraints,
    _hooks,
    _project,
    audit,
    constrain,
    node_norms,
)
from weight_constraints.adapters.torch._plan import Plan


@pytest.fixture(params=["cpp", "python"])
def guard_kind(request, monkeypatch):
    """Every test runs with the C++ tensor check and with its pure-Python fallback."""
    if request.param == "python":
        monkeypatch.setattr(_hooks, "_tensor_guards", lambda tensors: None)
    return request.param


def model(dtype=torch.float32):
    torch.manual_seed(0)
    layers = nn.Sequential(
        nn.Linear(6, 8),
        nn.Linear(8, 8),
        nn.Conv1d(8, 6, 3),
        nn.ConvTranspose1d(6, 4, 3, groups=2),  # projected through a grouped view
        nn.ConvTranspose1d(4, 4, 3),  # norms over leading dims: the core's own reduction
        nn.LSTM(4, 5),
        nn.Linear(5, 300),  # large enough to take one norm per tensor instead of a stack
    )
    with torch.no_grad():
        for i, p in enumerate(layers.parameters()):
            p.mul_(1 + i % 4)  # some nodes outside the sets, some inside
    return layers.to(dtype)


def register(layers):
    reg = Constraints()
    reg.add(layers[0], kernel=wc.MaxNorm(1.5), bias=wc.MinMaxNorm(0.5, 1.0))
    reg.add(layers[1], kernel=wc.MaxNorm(1.5), bias=wc.NonNeg())
    reg.add(layers[2], kernel=wc.UnitNorm(), bias=wc.Clip(-0.2, 0.2))
    reg.add(layers[3], kernel=wc.MaxNorm(3.2))
    reg.add(layers[4], kernel=wc.MinMaxNorm(0.2, 0.9, rate=0.5))
    reg.add(layers[5], kernel=wc.Simplex(), recurrent=wc.MaxL1Norm(1.0))
    reg.add(layers[6], kernel=wc.MaxNorm(0.3), bias=wc.BoxMaxNorm(-0.1, 0.1, max_value=0.5))
    return reg


def expected_after(reg):
    """Each entry projected through the core, one by one, on copies."""
    result = []
    for entry in reg:
        copy_ = entry.parameter.detach().clone()
        target = copy_ if entry.view is None else copy_.view(entry.view)
        entry.constraint(target, out=target)
        result.append(copy_)
    return result


def assert_same_bits(reg, expected):
    for entry, e in zip(reg, expected, strict=True):
        actual = entry.parameter.detach()
        assert actual.dtype == e.dtype, entry.name
        assert torch.equal(actual.isnan(), e.isnan()), entry.name
        assert torch.equal(actual.nan_to_num(7.0), e.nan_to_num(7.0)), entry.name


def perturb(layers, scale=3.0):
    with torch.no_grad():
        for p in layers.parameters():
            p.mul_(scale).add_(0.01)


class Counter:
    """Counts the full checks (the slow path), plan runs and plan builds of every registry."""

    def __init__(self, monkeypatch):
        self.full = self.runs = self.builds = 0
        full, run, init = Constraints._select, Plan.run, Plan.__init__

        def counted_full(registry, members):
            self.full += 1
            return full(registry, members)

        def counted_run(plan, **kwargs):
            self.runs += 1
            return run(plan, **kwargs)

        def counted_init(plan, items):
            self.builds += 1
            return init(plan, items)

        monkeypatch.setattr(Constraints, "_select", counted_full)
        monkeypatch.setattr(Plan, "run", counted_run)
        monkeypatch.setattr(Plan, "__init__", counted_init)

    def counts(self):
        return self.full, self.runs, self.builds


# -- results -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str
)
def test_every_call_equals_the_core_bit_for_bit(dtype, guard_kind):
    layers = model(dtype)
    reg = register(layers)
    for _ in range(4):  # the first call checks in full, the others run the plan
        perturb(layers)
        expected = expected_after(reg)
        reg.apply()
        assert_same_bits(reg, expected)


def test_the_hook_equals_the_core_bit_for_bit(guard_kind):
    layers = model()
    optimizer = torch.optim.SGD(layers.parameters(), lr=0.0)  # the step changes nothing
    reg = register(layers)
    reg.attach(optimizer)
    for p in layers.parameters():
        p.grad = torch.zeros_like(p)
    for _ in range(3):
        perturb(layers)
        expected = expected_after(reg)
        optimizer.step()
        assert_same_bits(reg, expected)


def test_calls_after_the_first_run_the_plan_built_once(monkeypatch, guard_kind):
    layers = model()
    reg = register(layers)
    optimizer = torch.optim.SGD(layers.parameters(), lr=0.1)
    reg.attach(optimizer)
    layers[0](torch.randn(2, 6)).sum().backward()
    count = Counter(monkeypatch)
    for _ in range(3):
        reg.apply()
    assert count.counts() == (1, 2, 1)  # one full check, then the plan: built once, run twice
    for _ in range(3):
        optimizer.step()
    assert count.counts() == (1, 5, 2)  # the hook projects another selection: its own plan
    reg.add(nn.Parameter(torch.randn(3, 4)), wc.MaxNorm(1.0), dims=1)  # entries change
    reg.apply()
    reg.apply()
    optimizer.step()
    assert count.counts() == (2, 7, 4)


@pytest.mark.parametrize("grouped", [True, False])  # with a view (whose memory is checked)
def test_the_plan_is_rebuilt_after_a_dtype_change(grouped, monkeypatch, guard_kind):
    layers = model()
    if not grouped:
        layers[3] = nn.ConvTranspose1d(6, 4, 3)
    reg = register(layers)
    reg.apply()
    reg.apply()
    layers.to(torch.float64)
    perturb(layers)
    expected = expected_after(reg)
    count = Counter(monkeypatch)
    reg.apply()  # the guard fails: a full check binds the entries again
    assert count.counts() == (1, 0, 0)
    assert_same_bits(reg, expected)
    perturb(layers)
    expected = expected_after(reg)
    reg.apply()
    assert count.counts() == (1, 1, 1)
    assert_same_bits(reg, expected)
    assert all(entry.parameter.dtype == torch.float64 for entry in reg)


# -- changes after the fast path has run --------------------------------------------------------


def warm(optimizer, layers, steps=2):
    for _ in range(steps):
        optimizer.zero_grad()
        layers(torch.randn(4, 6)).sum().backward()
        optimizer.step()


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def test_a_replaced_parameter_the_optimizer_does_not_hold_raises(guard_kind):
    layers = mlp()
    optimizer = torch.optim.SGD(layers.parameters(), lr=0.1)
    constrain(layers, optimizer, kernel=wc.MaxNorm(0.5))
    warm(optimizer, layers)
    state = {k: v.clone() * 10 for k, v in layers.state_dict().items()}
    layers.load_state_dict(state, assign=True)
    layers(torch.randn(4, 6)).sum().backward()
    with pytest.raises(RuntimeError, match="replaced"):
        optimizer.step()


def test_a_replaced_parameter_the_optimizer_holds_is_adopted(guard_kind):
    layers = mlp()
    first = torch.optim.SGD(layers.parameters(), lr=0.1)
    reg = constrain(layers, first, kernel=wc.MaxNorm(0.5))
    warm(first, layers)
    layers[2].weight = nn.Parameter(torch.randn(3, 8) * 5)
    second = torch.optim.SGD(layers.parameters(), lr=0.1)
    reg.attach(second)
    warm(second, layers, steps=3)
    assert node_norms(layers[2].weight, 1).max() <= 0.5 * (1 + 1e-6)
    assert [e.parameter for e in reg][1] is layers[2].weight


def test_a_parametrization_added_later_raises_and_modifies_nothing(guard_kind):
    layers = mlp()
    optimizer = torch.optim.SGD(layers.parameters(), lr=0.1)
    reg = constrain(layers, optimizer, kernel=wc.MaxNorm(0.5))
    reg.apply()
    reg.apply()
    parametrize.register_parametrization(layers[2], "weight", nn.Identity())
    with torch.no_grad():
        layers[0].weight.mul_(10)
    before = layers[0].weight.detach().clone()
    with pytest.raises(ValueError, match="parametrization"):
        reg.apply()
    assert torch.equal(layers[0].weight.detach(), before)


def test_a_new_layout_is_bound_again(monkeypatch, guard_kind):
    layers = mlp()
    reg = constrain(layers, None, kernel=wc.MaxNorm(0.5))
    reg.apply()
    reg.apply()
    layers[0].weight.data = (torch.randn(6, 8) * 5).t()  # same shape, transposed strides
    count = Counter(monkeypatch)
    reg.apply()  # the guard notices: a full check binds the entry again
    assert count.counts() == (1, 0, 0)
    assert node_norms(layers[0].weight, 1).max() <= 0.5 * (1 + 1e-6)
    with torch.no_grad():
        layers[0].weight.mul_(3)
    reg.apply()
    assert count.counts() == (1, 1, 1)
    assert node_norms(layers[0].weight, 1).max() <= 0.5 * (1 + 1e-6)


def test_new_memory_behind_a_grouped_view_is_projected(guard_kind):
    conv = nn.ConvTranspose1d(6, 4, 3, groups=2)
    reg = Constraints().add(conv, kernel=wc.MaxNorm(0.1))
    reg.apply()
    reg.apply()
    conv.weight.data = torch.randn(6, 2, 3) * 5  # same shape, dtype and strides: new memory
    reg.apply()
    assert node_norms(conv.weight.detach().view(2, 3, 2, 3), (1, 3)).max() <= 0.1 * (1 + 1e-6)


def test_an_inference_tensor_set_later_raises(guard_kind):
    layers = mlp()
    reg = constrain(layers, None, kernel=wc.MaxNorm(0.5))
    reg.apply()
    reg.apply()
    with torch.inference_mode():
        frozen = torch.randn(8, 6)
    layers[0].weight.data = frozen
    with pytest.raises(ValueError, match="inference"):
        reg.apply()


def test_the_hook_leaves_frozen_and_foreign_weights_alone(guard_kind):
    layers = nn.Sequential(*(nn.Linear(6, 6) for _ in range(4)))
    with torch.no_grad():
        for layer in layers:
            layer.weight.mul_(20)
    layers[1].weight.requires_grad_(False)  # frozen: no gradient, not updated
    optimizer = torch.optim.SGD([p for i, m in enumerate(layers) if i != 3 for p in m.parameters()])
    with pytest.warns(UserWarning, match=r"1 of the 4 .*: 3\.weight\."):  # 1 is frozen
        reg = constrain(layers, optimizer, kernel=wc.MaxNorm(0.5))
    before = {i: layers[i].weight.detach().clone() for i in (1, 3)}
    for _ in range(3):
        optimizer.zero_grad()
        layers(torch.randn(4, 6)).sum().backward()
        optimizer.step()
        for i in (1, 3):  # frozen, and not in the optimizer
            assert torch.equal(layers[i].weight.detach(), before[i])
        for i in (0, 2):
            assert node_norms(layers[i].weight, 1).max() <= 0.5 * (1 + 1e-6)
    reg.apply()  # apply() projects them all
    assert all(node_norms(m.weight, 1).max() <= 0.5 * (1 + 1e-6) for m in layers)


def test_a_weight_frozen_later_is_left_alone(guard_kind):
    layers = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
    optimizer = torch.optim.SGD(layers.parameters(), lr=0.1)
    constrain(layers, optimizer, kernel=wc.MaxNorm(0.5))
    warm(optimizer, nn.Sequential(layers))
    layers[0].weight.requires_grad_(False)
    layers[0].weight.grad = None
    with torch.no_grad():
        layers[0].weight.mul_(20)
    before = layers[0].weight.detach().clone()
    for _ in range(2):
        optimizer.zero_grad()
        layers(torch.randn(4, 6)).sum().backward()
        optimizer.step()
    assert torch.equal(layers[0].weight.detach(), before)


def test_what_does_not_matter_keeps_the_fast_path(monkeypatch, guard_kind):
    layers = mlp()
    optimizer = torch.optim.SGD(layers.parameters(), lr=0.1)
    reg = constrain(layers, optimizer, kernel=wc.MaxNorm(0.5))
    warm(optimizer, layers)
    reg.apply()
    count = Counter(monkeypatch)
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):  # other dispatch keys in effect
            optimizer.step()
        reg.apply()
        layers[2].weight.requires_grad_(not layers[2].weight.requires_grad)
        reg.apply()
    assert count.counts() == (0, 6, 0)


def test_no_host_synchronisation_on_the_fast_path(monkeypatch, guard_kind):
    layers = model(torch.bfloat16)
    optimizer = torch.optim.SGD(layers.parameters(), lr=0.1)
    reg = register(layers)
    reg.attach(optimizer)
    for i, p in enumerate(layers.parameters()):
        if i % 3:
            p.grad = torch.zeros_like(p)
    (hook,) = optimizer._optimizer_step_post_hooks.values()
    reg.apply()
    hook(optimizer, (), {})
    count = Counter(monkeypatch)

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation in the projection")

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for _ in range(2):
        hook(optimizer, (), {})
        reg.apply()
    monkeypatch.undo()
    assert count.counts() == (0, 4, 1)  # the hook's plan was built before


@pytest.mark.parametrize("compile", [False, True])
def test_compile_keeps_its_own_path(compile, monkeypatch):
    layers = mlp()
    reg = constrain(layers, None, kernel=wc.MaxNorm(0.5), compile=compile)
    calls = []
    monkeypatch.setattr(_project, "_compiled_projection", lambda: calls.append)
    reg.apply()  # the full check
    reg.apply()  # the fast path
    assert [len(items) for items in calls] == ([2, 2] if compile else [])


# -- optimizer wrappers ------------------------------------------------------------------------


class Wrapper(torch.optim.Optimizer):
    """An Optimizer subclass that is never initialised and steps the optimizer it holds (the
    shape of accelerate's AcceleratedOptimizer, and of Lookahead)."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def step(self, closure=None):
        return self.optimizer.step(closure)

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none)


# accelerate's wrapper, told by its exact type name and module (no import)
Accelerated = type("AcceleratedOptimizer", (Wrapper,), {"__module__": "accelerate.optimizer"})
# accelerate's DeepSpeed wrapper subclasses it, and its step does nothing
DeepSpeedLike = type(
    "DeepSpeedOptimizerWrapper", (Accelerated,), {"step": lambda self, c=None: None}
)


class PlainWrapper:
    def __init__(self, optimizer):
        self.optimizer = optimizer


class Lookahead(Wrapper):
    """Lookahead as pytorch_optimizer and lookahead.pytorch write it: every ``k`` steps the
    weights are moved halfway back towards slow weights, after the inner step."""

    def __init__(self, optimizer, k=2):
        super().__init__(optimizer)
        self.k, self.count, self.slow = k, 0, {}

    def step(self, closure=None):
        loss = self.optimizer.step(closure)
        self.count += 1
        if self.count % self.k == 0:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        slow = self.slow.setdefault(p, p.detach().clone() * 0.1)
                        slow.add_(p.detach() - slow, alpha=0.5)
                        p.copy_(slow)
        return loss


class InitialisedLookahead(torch.optim.Optimizer):
    """The same, initialised as a torch optimizer: its step hooks run after its whole step."""

    def __init__(self, optimizer, k=2):
        super().__init__([p for g in optimizer.param_groups for p in g["params"]], {})
        self.inner = Lookahead(optimizer, k)

    def step(self, closure=None):
        return self.inner.step(closure)

    def zero_grad(self, set_to_none=True):
        self.inner.zero_grad(set_to_none)


def lookahead_steps(layers, optimizer, check, steps=4):
    for _ in range(steps):
        optimizer.zero_grad()
        layers(torch.randn(4, 6)).pow(2).sum().backward()
        optimizer.step()
        check()


@pytest.mark.parametrize("wrap", [Accelerated, lambda o: Accelerated(Accelerated(o))])
def test_accelerates_wrapper_is_unwrapped(wrap):
    layers = mlp()
    inner = torch.optim.SGD(layers.parameters(), lr=0.5)
    wrapper = wrap(inner)
    reg = constrain(layers, wrapper, kernel=wc.MaxNorm(0.2))
    assert len(inner._optimizer_step_post_hooks) == 1
    for _ in range(2):
        layers(torch.randn(4, 6)).sum().backward()
        wrapper.step()
    assert node_norms(layers[2].weight, 1).max() <= 0.2 * (1 + 1e-6)
    assert all(row.active for row in audit(layers, wrapper) if row.constraint is not None)
    handle = reg.attach(wrapper)
    assert len(inner._optimizer_step_post_hooks) == 2
    handle.remove()


@pytest.mark.parametrize("wrap", [Wrapper, PlainWrapper, Lookahead, DeepSpeedLike], ids=str)
def test_other_wrappers_raise_and_apply_after_their_step_holds(wrap):
    layers = mlp()
    inner = torch.optim.SGD(layers.parameters(), lr=0.5)
    wrapper = wrap(inner)
    with pytest.raises(TypeError, match=r"registry\.apply\(\) after each wrapper\.step\(\)"):
        constrain(layers, wrapper, kernel=wc.UnitNorm())
    with pytest.raises(TypeError, match="wrapper"):
        audit(layers, wrapper)
    assert not inner._optimizer_step_post_hooks
    if wrap is PlainWrapper:
        return
    registry = constrain(layers, None, kernel=wc.UnitNorm())  # the advice: apply() after step()

    def check():
        registry.apply()
        for layer in (layers[0], layers[2]):
            assert torch.allclose(node_norms(layer.weight, 1), torch.ones(()), atol=1e-6)

    lookahead_steps(layers, wrapper, check)


def test_a_hook_on_the_inner_optimizer_of_lookahead_would_be_undone():
    """Why wrappers are refused: a hook on the inner step runs before Lookahead's write."""
    layers = mlp()
    inner = torch.optim.SGD(layers.parameters(), lr=0.5)
    constrain(layers, inner, kernel=wc.UnitNorm())
    norms = []
    lookahead_steps(layers, Lookahead(inner), lambda: norms.append(node_norms(layers[0].weight, 1)))
    assert not torch.allclose(norms[1], torch.ones(()), atol=1e-3)  # the second step's write


def test_an_initialised_wrapper_takes_the_hook_after_its_whole_step():
    layers = mlp()
    wrapper = InitialisedLookahead(torch.optim.SGD(layers.parameters(), lr=0.5))
    constrain(layers, wrapper, kernel=wc.UnitNorm())

    def check():
        for layer in (layers[0], layers[2]):
            assert torch.allclose(node_norms(layer.weight, 1), torch.ones(()), atol=1e-6)

    lookahead_steps(layers, wrapper, check)
    audit(layers, wrapper, strict=True)


def test_an_uninitialised_optimizer_without_one_inside_raises_clearly():
    class Broken(torch.optim.Optimizer):
        def __init__(self):
            pass

    with pytest.raises(TypeError, match="not initialised"):
        constrain(mlp(), Broken(), kernel=wc.MaxNorm(1.0))
    with pytest.raises(TypeError, match=r"expects a torch\.optim\.Optimizer"):
        Constraints().attach(PlainWrapper(object()))


def test_accelerate_optimizer():
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState

    try:
        accelerator = accelerate.Accelerator(cpu=True)
        layers = mlp()
        layers, optimizer = accelerator.prepare(layers, torch.optim.SGD(layers.parameters(), 0.5))
        assert not hasattr(optimizer, "_optimizer_step_post_hooks")  # why it needs unwrapping
        constrain(layers, optimizer, kernel=wc.MaxNorm(0.2))
        for _ in range(2):
            layers(torch.randn(4, 6)).sum().backward()
            optimizer.step()
        assert node_norms(layers[0].weight, 1).max() <= 0.2 * (1 + 1e-6)
        audit(layers, optimizer, strict=True, tol=1e-5)
    finally:
        AcceleratorState._reset_state(True)


# -- the box, simplex and L1 kinds -------------------------------------------------------------

NEW_KINDS = [
    wc.Clip(-0.05, 0.05),
    wc.BoxMaxNorm(-0.2, 0.3, max_value=0.5),
    wc.Simplex(radius=2.0),
    wc.MaxL1Norm(0.7),
]


def holds(constraint, weight, dims, dtype):
    """The constraint holds on ``weight`` to the rounding of its dtype (checked from its
    definition, not through the projection); box bounds as the dtype rounds them."""
    w = weight.detach()
    eps = 4 * torch.finfo(dtype).eps
    if isinstance(constraint, wc.Clip | wc.BoxMaxNorm):
        lower, upper = (torch.tensor(b, dtype=dtype) for b in (constraint.lower, constraint.upper))
        if not bool(((w >= lower) & (w <= upper)).all()):
            return False
    w = w.double()
    if isinstance(constraint, wc.BoxMaxNorm):
        norms = torch.linalg.vector_norm(w, dim=dims)
        return bool((norms <= constraint.max_value * (1 + eps)).all())
    if isinstance(constraint, wc.Simplex):
        sums = w.sum(dim=dims)
        return bool((w >= 0).all() and torch.allclose(sums, torch.full_like(sums, 2.0), 0, 4 * eps))
    if isinstance(constraint, wc.MaxL1Norm):
        return bool((w.abs().sum(dim=dims) <= constraint.max_value * (1 + eps)).all())
    return True


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("constraint", NEW_KINDS, ids=repr)
def test_new_kinds_through_the_hook(constraint, dtype, guard_kind):
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Linear(6, 8), nn.Conv2d(2, 3, 3), nn.Linear(8, 4)).to(dtype)
    optimizer = torch.optim.SGD(layers.parameters(), lr=0.5)
    reg = Constraints().add(layers[0], kernel=constraint).add(layers[1], kernel=constraint)
    reg.add(layers[2].weight, constraint, dims=1)  # a tensor with dims
    reg.attach(optimizer)
    for _ in range(3):
        optimizer.zero_grad()
        x = torch.randn(2, 6, dtype=dtype)
        out = layers[2](layers[0](x)).sum() + layers[1](torch.randn(1, 2, 5, 5, dtype=dtype)).sum()
        out.backward()
        optimizer.step()
        for weight, dims in [(layers[0].weight, 1), (layers[1].weight, (1, 2, 3))]:
            assert weight.dtype == dtype
            assert holds(constraint, weight, dims, dtype), (constraint, weight)
        assert holds(constraint, layers[2].weight, 1, dtype)
    rows = [row for row in audit(layers, optimizer) if row.constraint is not None]
    assert len(rows) == 3 and all(row.active for row in rows)
    tol = 4 * torch.finfo(dtype).eps * max(1.0, float(getattr(constraint, "max_value", 1.0)))
    assert all(row.violation <= tol for row in rows), rows


@pytest.mark.parametrize("constraint", NEW_KINDS, ids=repr)
def test_new_kinds_through_constrain_project_and_the_audit(constraint):
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Linear(6, 8), nn.Conv1d(8, 4, 3))
    with torch.no_grad():
        for p in layers.parameters():
            p.mul_(4)
    bound = [
        constraint.with_axis(dims) if hasattr(constraint, "axis") else constraint
        for dims in ((1,), (1, 2))
    ]
    # projected twice through the core: the fast path's second call must give the same bits
    expected = [c(c(m.weight.detach().clone())) for c, m in zip(bound, layers, strict=True)]
    reg = constrain(layers, None, kernel=constraint)
    violated = audit(layers)
    assert all(row.violation > 0 for row in violated if row.constraint is not None)
    reg.apply()
    reg.apply()  # the fast path: the plan sends these kinds through the core
    assert torch.equal(layers[0].weight.detach(), expected[0])
    assert torch.equal(layers[1].weight.detach(), expected[1])
    rows = [row for row in audit(layers) if row.constraint is not None]
    assert len(rows) == 2 and all(row.violation <= 1e-6 for row in rows)
    w = torch.randn(5, 7) * 3
    reference = constraint.with_axis((1,)) if hasattr(constraint, "axis") else constraint
    assert torch.equal(adapter.project_(w.clone(), constraint, dims=1), reference(w))


@pytest.mark.parametrize("kind", [wc.BoxMaxNorm, wc.Simplex, wc.MaxL1Norm])
def test_new_kinds_follow_the_axis_rule(kind):
    arguments = {
        wc.BoxMaxNorm: {"lower": -1.0, "upper": 1.0, "max_value": 1.0},
        wc.Simplex: {},
        wc.MaxL1Norm: {"max_value": 1.0},
    }[kind]
    reg = Constraints().add(nn.Linear(3, 4), kernel=kind(**arguments, axis=1))
    assert [entry.dims for entry in reg] == [(1,)]
    with pytest.raises(ValueError, match="explicit axis"):
        Constraints().add(nn.Linear(3, 4), kernel=kind(**arguments, axis=0))
    with pytest.raises(ValueError, match="needs dims"):
        Constraints().add(torch.zeros(3, 4), kind(**arguments))


def test_a_subclass_of_a_norm_constraint_is_called_not_planned():
    class Halving(wc.MaxNorm):
        def __call__(self, w, *, out=None, xp=None):
            return torch.mul(w, 0.5, out=out)

    weights = [nn.Parameter(torch.ones(3, 4)) for _ in range(3)]
    reg = Constraints()
    for w in weights:
        reg.add(w, Halving(100.0), dims=1)
    reg.apply()
    reg.apply()  # the fast path calls it too
    assert all(torch.equal(w.detach(), torch.full((3, 4), 0.25)) for w in weights)


def test_a_registry_kept_on_a_module_still_copies():
    layers = mlp()
    optimizer = torch.optim.SGD(layers.parameters(), lr=0.1)
    layers.constraints = constrain(layers, optimizer, kernel=wc.MaxNorm(0.5))
    warm(optimizer, layers)  # the guard and the plans exist now
    copied = copy.deepcopy(layers)
    with torch.no_grad():
        copied[0].weight.mul_(10)
    copied.constraints.apply()
    copied.constraints.apply()
    assert node_norms(copied[0].weight, 1).max() <= 0.5 * (1 + 1e-6)
    assert node_norms(layers[0].weight, 1).max() <= 0.5 * (1 + 1e-6)

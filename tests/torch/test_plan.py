"""The batched projection plans of the PyTorch adapter: the core's results, bit for bit; a
registry binds a new plan when its tensors change.

The native per-row kernel is turned off here (the steps named are torch's), except in the tests
parametrized over ``native_kernel``, which run both (see also test_native.py)."""

from __future__ import annotations

import pytest
import torch

import weight_constraints as wc
import weight_constraints.adapters.torch._plan as tp
from tests.doctests import run_doctests
from weight_constraints.adapters.torch import Constraints, _native
from weight_constraints.adapters.torch._plan import Plan

NORM_CONSTRAINTS = [
    wc.MaxNorm(1.0),
    wc.MaxNorm(0.0),
    wc.UnitNorm(),
    wc.MinMaxNorm(0.5, 1.5),
    wc.MinMaxNorm(0.5, 1.5, rate=0.3),
]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

# (shape, dims, view, the step that projects a group of such tensors on the CPU)
LAYOUTS = [
    ((8, 6), (1,), None, "_Stack"),  # Linear weights
    ((5, 4, 3, 3), (1, 2, 3), None, "_Stack"),  # Conv2d weights
    ((7,), (0,), None, "_Stack"),  # biases
    ((4, 6, 3), (1, 3), (2, 2, 6, 3), "_Stack"),  # ConvTranspose1d(4, 12, 3, groups=2)
    ((200, 100), (1,), None, "_Norms"),  # larger than STACK_MAX_BYTES
    ((6, 5), (0,), None, "_Core"),  # the core's blocked CPU reduction over leading dims
    ((4, 6, 3), (0, 2), None, "_Core"),  # ConvTranspose1d(4, 6, 3)
    ((5, 7), (), None, "_Core"),  # every entry its own node
]


@pytest.fixture(autouse=True)
def native_kernel(request, monkeypatch):
    """Whether the native kernel projects in this test: off unless parametrized on (and it is
    available here; test_native.py says whether it must be)."""
    if not getattr(request, "param", False):
        monkeypatch.setenv("WEIGHT_CONSTRAINTS_NATIVE", "0")
        return False
    return _native.library() is not None


BOTH_PATHS = pytest.mark.parametrize(
    "native_kernel", [False, True], ids=["torch", "native"], indirect=True
)


def native_step(step, dtype, view, native_kernel):
    """The step a plan takes for a layout: the native one for float32 trailing rows when the
    kernel is on, else ``step``."""
    native = native_kernel and dtype == torch.float32 and view is None
    return "_NativeRows" if native and step in ("_Stack", "_Norms") else step


def bound(constraint, dims):
    return constraint.with_axis(dims)


def weights(shape, dtype, count=4, seed=0):
    """Random tensors with nodes inside and outside the sets, a zero tensor, zero nodes."""
    generator = torch.Generator().manual_seed(seed)
    tensors = [
        (torch.randn(shape, generator=generator) * scale).to(dtype)
        for scale in (0.05, 0.7, 3.0, 40.0)[:count]
    ]
    tensors[0].zero_()
    tensors[1].view(-1)[: max(1, tensors[1].numel() // 3)] = 0.0
    return tensors


def core(tensors, views, constraint, dims):
    """The per-tensor core path: ``constraint(t, out=t)`` on copies."""
    copies = [t.detach().clone() for t in tensors]
    for t, view in zip(copies, views, strict=True):
        target = t if view is None else t.view(view)
        constraint(target, out=target)
    return copies


def assert_same_bits(actual, expected):
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        assert torch.equal(a.isnan(), e.isnan())
        assert torch.equal(a.nan_to_num(7.0), e.nan_to_num(7.0))


def step_names(plan):
    return sorted(type(step).__name__ for step in plan._steps)


def test_docstring_examples():
    run_doctests("weight_constraints.adapters.torch._plan")


@BOTH_PATHS
@pytest.mark.parametrize("keeps_buffer", [True, False])  # False: as on a GPU
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("constraint", NORM_CONSTRAINTS, ids=repr)
@pytest.mark.parametrize(("shape", "dims", "view", "step"), LAYOUTS)
def test_equals_the_core_bit_for_bit(
    shape, dims, view, step, constraint, dtype, keeps_buffer, monkeypatch, native_kernel
):
    monkeypatch.setattr(tp, "_keeps_buffer", lambda device: keeps_buffer)
    tensors = weights(shape, dtype)
    views = [view] * len(tensors)
    c = bound(constraint, dims)
    expected = core(tensors, views, c, dims)
    plan = Plan([(t, view, c, dims) for t in tensors])
    assert step_names(plan) == [native_step(step, dtype, view, native_kernel)]
    plan.run()
    assert_same_bits(tensors, expected)


@BOTH_PATHS
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("constraint", NORM_CONSTRAINTS, ids=repr)
def test_a_nan_stays_in_its_node_and_its_tensor(constraint, dtype, native_kernel):
    for shape, dims, view, _ in LAYOUTS[:5]:
        tensors = weights(shape, dtype)
        tensors[2].view(view or shape)[(0,) * len(view or shape)] = float("nan")
        c = bound(constraint, dims)
        expected = core(tensors, [view] * 4, c, dims)
        clean = core(
            [t.nan_to_num(0.0) if i == 2 else t for i, t in enumerate(tensors)], [view] * 4, c, dims
        )
        Plan([(t, view, c, dims) for t in tensors]).run()
        assert_same_bits(tensors, expected)
        assert_same_bits([tensors[i] for i in (0, 1, 3)], [clean[i] for i in (0, 1, 3)])
        assert tensors[2].isnan().sum() == 1


@BOTH_PATHS
@pytest.mark.parametrize("constraint", [wc.MaxNorm(1.0), wc.MinMaxNorm(0.0, 1.0)], ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "dims", "view", "step"), LAYOUTS[:5])
def test_nodes_inside_the_set_come_back_bit_for_bit(
    shape, dims, view, step, dtype, constraint, native_kernel
):
    tensors = weights(shape, dtype)
    c = bound(constraint, dims)
    Plan([(t, view, c, dims) for t in tensors]).run()
    for t in tensors:
        t.mul_(0.5)  # now every node is well inside the ball
    before = [t.clone() for t in tensors]
    Plan([(t, view, c, dims) for t in tensors]).run()
    for t, b in zip(tensors, before, strict=True):
        assert torch.equal(t.view(torch.uint8), b.view(torch.uint8))


def test_mixed_registry_one_step_per_group():
    linears = [torch.nn.Linear(6, 8) for _ in range(3)]
    big = torch.nn.Linear(100, 200)
    items = [(m.weight, None, bound(wc.MaxNorm(1.0), (1,)), (1,)) for m in (*linears, big)]
    items += [(m.bias, None, wc.NonNeg(), ()) for m in linears]
    items += [(big.bias, None, bound(wc.MaxNorm(1.0), (0,)), (0,))]
    expected = [core([t], [v], c, d)[0] for t, v, c, d in items]
    plan = Plan(items)
    # three Linear weights stacked; the large one and the lone bias (other shape and dims, same
    # factor) in one group by norms; the three biases clamped at once
    assert step_names(plan) == ["_EntryWise", "_Norms", "_Stack"]
    assert len(plan) == len(items)
    plan.run()
    assert_same_bits([item[0] for item in items], expected)


def test_non_contiguous_tensors():
    base = [torch.randn(6, 8) * 3 for _ in range(3)]
    tensors = [b.t() for b in base]  # (8, 6), not contiguous
    c = bound(wc.MaxNorm(1.0), (0,))
    expected = core(tensors, [None] * 3, c, (0,))
    Plan([(t, None, c, (0,)) for t in tensors]).run()
    assert_same_bits(tensors, expected)


@pytest.mark.parametrize("keeps_buffer", [True, False])  # False: as on a GPU
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("constraint", NORM_CONSTRAINTS, ids=repr)
@pytest.mark.parametrize(
    ("shape", "dims", "layout"),
    [
        ((4, 3, 3, 3), (1, 2, 3), lambda t: t.contiguous(memory_format=torch.channels_last)),
        ((4, 6, 3, 3), (1, 2, 3), lambda t: t.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)),
        ((8, 6), (1,), lambda t: t.t().contiguous().t()),
    ],
    ids=["channels_last", "channels_last-by-hand", "transposed"],
)
def test_other_layouts_are_not_stacked_and_equal_the_core(
    shape, dims, layout, constraint, dtype, keeps_buffer, monkeypatch
):
    """A stack is contiguous, so its norms add in another order than a ``channels_last``
    tensor's own (the core's): such tensors take one norm each."""
    monkeypatch.setattr(tp, "_keeps_buffer", lambda device: keeps_buffer)
    generator = torch.Generator().manual_seed(3)
    tensors = [layout((torch.randn(shape, generator=generator) * 3).to(dtype)) for _ in range(6)]
    assert not tensors[0].is_contiguous()
    c = bound(constraint, dims)
    expected = core(tensors, [None] * len(tensors), c, dims)
    plan = Plan([(t, None, c, dims) for t in tensors])
    assert step_names(plan) == ["_Norms"]
    plan.run()
    assert_same_bits(tensors, expected)


def registered(tensors, constraint, dims):
    """A registry of ``tensors`` whose fast path has run: its plan is bound."""
    registry = Constraints()
    for t in tensors:
        registry.add(t, constraint, dims=dims)
    registry.apply()  # the full check
    registry.apply()  # the fast path: the plan is built
    return registry


def test_a_new_layout_in_the_same_memory_gets_a_new_plan():
    """A plan is bound to its tensors' layout: the registry's guard sees the change and the
    next fast-path call binds a new one."""
    tensors = [torch.nn.Parameter(torch.randn(4, 3, 3, 3) * 3) for _ in range(3)]
    c = bound(wc.MaxNorm(1.0), (1, 2, 3))
    registry = registered(tensors, wc.MaxNorm(1.0), (1, 2, 3))
    assert step_names(registry._selection._plan) == ["_Stack"]
    for t in tensors:  # the same memory, transposed strides
        t.data = t.data.transpose(2, 3)
    for _ in range(2):  # the full check, then a new plan
        with torch.no_grad():
            for t in tensors:
                t.mul_(4)
        expected = core(tensors, [None] * 3, c, (1, 2, 3))
        registry.apply()
        assert_same_bits([t.detach() for t in tensors], expected)
    assert step_names(registry._selection._plan) == ["_Norms"]


def test_empty_tensors():
    tensors = [torch.empty(0, 4), torch.empty(0, 4), torch.empty(3, 0)]
    c = bound(wc.UnitNorm(), (1,))
    expected = core(tensors, [None] * 3, c, (1,))
    Plan([(t, None, c, (1,)) for t in tensors]).run()
    assert_same_bits(tensors, expected)


def test_non_neg_equals_the_core():
    tensors = [torch.tensor([-1.0, -0.0, 0.0, float("nan"), 2.0, -3e-40])] * 1
    tensors += [torch.randn(5, 3, dtype=dtype) for dtype in DTYPES]
    expected = [wc.non_neg(t.clone()) for t in tensors]
    plan = Plan([(t, None, wc.NonNeg(), ()) for t in tensors])
    assert step_names(plan) == ["_EntryWise"] * 4
    plan.run()
    assert_same_bits(tensors, expected)
    assert torch.equal(tensors[0].signbit(), expected[0].signbit())


@pytest.mark.parametrize("count", [2, 40])
def test_chunks(count, monkeypatch):
    monkeypatch.setitem(tp.STACK_CHUNK_BYTES, "cpu", 3 * 8 * 6 * 4)  # three (8, 6) float32
    monkeypatch.setattr(tp, "NORMS_CHUNK_BYTES", 1)  # one tensor per group
    small = [torch.randn(8, 6) * 2 for _ in range(count)]
    large = [torch.randn(200, 100) for _ in range(3)]
    c = bound(wc.MaxNorm(1.0), (1,))
    expected = core(small + large, [None] * (count + 3), c, (1,))
    plan = Plan([(t, None, c, (1,)) for t in small + large])
    assert step_names(plan).count("_Stack") == -(-count // 3)
    assert step_names(plan).count("_Norms") == 3
    plan.run()
    assert_same_bits(small + large, expected)


# -- parameters, gradients, autograd -----------------------------------------------------------


def test_parameters_under_autograd():
    model = torch.nn.Sequential(*(torch.nn.Linear(6, 6) for _ in range(3)))
    items = [(m.weight, None, bound(wc.MaxNorm(0.1), (1,)), (1,)) for m in model]
    expected = core([m.weight.detach() for m in model], [None] * 3, items[0][2], (1,))
    plan = Plan(items)
    plan.run()  # no torch.no_grad() needed around it
    assert_same_bits([m.weight.detach() for m in model], expected)
    assert all(m.weight.grad_fn is None and m.weight.requires_grad for m in model)
    model(torch.randn(2, 6)).sum().backward()  # the graph still works


@pytest.mark.parametrize(("shape", "dims"), [((8, 6), (1,)), ((200, 100), (1,)), ((6, 5), (0,))])
def test_with_grad_only(shape, dims):
    params = [torch.nn.Parameter(torch.randn(shape) * 5) for _ in range(4)]
    items = [(p, None, bound(wc.MaxNorm(1.0), dims), dims) for p in params]
    items.append((torch.nn.Parameter(-torch.ones(3)), None, wc.NonNeg(), ()))
    tensors = [item[0] for item in items]
    expected = [core([t.detach()], [None], c, d)[0] for t, _, c, d in items]
    before = [t.detach().clone() for t in tensors]
    plan = Plan(items)
    plan.run(with_grad_only=True)  # no gradients yet: nothing is projected
    assert_same_bits([t.detach() for t in tensors], before)
    for i in (1, 3, 4):
        tensors[i].grad = torch.zeros_like(tensors[i])
    plan.run(with_grad_only=True)  # a partial group
    assert_same_bits(
        [t.detach() for t in tensors],
        [expected[i] if i in (1, 3, 4) else before[i] for i in range(5)],
    )
    for t in tensors:
        t.grad = torch.zeros_like(t)
    expected = [core([t.detach()], [None], c, d)[0] for t, _, c, d in items]
    plan.run(with_grad_only=True)  # the whole group
    assert_same_bits([t.detach() for t in tensors], expected)


def test_no_host_synchronisation(monkeypatch):
    items = []
    for shape, dims, view, _ in LAYOUTS:
        c = bound(wc.MinMaxNorm(0.5, 1.0), dims)
        items += [(torch.nn.Parameter(t), view, c, dims) for t in weights(shape, torch.bfloat16)]
    items.append((torch.nn.Parameter(torch.randn(4)), None, wc.NonNeg(), ()))
    for item in items[::3]:
        item[0].grad = torch.zeros_like(item[0])
    plan = Plan(items)

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation in the projection")

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    plan.run()
    plan.run(with_grad_only=True)


# -- rebuilding -----------------------------------------------------------------------------------


def test_a_replaced_or_converted_tensor_gets_a_new_plan():
    model = torch.nn.Sequential(*(torch.nn.Linear(6, 6) for _ in range(3)))
    registry = registered([m.weight for m in model], wc.UnitNorm(), 1)
    plan = registry._selection._plan
    new = torch.randn(6, 6) * 4
    model[1].weight.data = new.clone()
    registry.apply()
    assert_same_bits(
        [model[1].weight.detach()], core([new], [None], bound(wc.UnitNorm(), (1,)), (1,))
    )
    registry.apply()
    assert registry._selection._plan is not plan
    model.to(torch.float64)
    registry.apply()
    registry.apply()
    norms = torch.linalg.vector_norm(model[0].weight.detach(), dim=1)
    assert model[0].weight.dtype == torch.float64 and torch.allclose(
        norms, torch.ones(6, dtype=torch.float64)
    )


def test_a_shape_the_dims_no_longer_fit_raises_and_modifies_nothing():
    params = [torch.nn.Parameter(torch.randn(6, 6) * 4) for _ in range(3)]
    registry = registered(params, wc.MaxNorm(1.0), 1)
    params[2].data = torch.randn(6) * 4
    with torch.no_grad():
        params[0].mul_(4)
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="axis"):
        registry.apply()
    assert_same_bits([p.detach() for p in params], before)


@pytest.mark.parametrize(
    ("tensor", "dims", "error"),
    [(torch.ones(3, 2, dtype=torch.int64), (1,), TypeError), (torch.ones(3, 2), (2,), ValueError)],
)
def test_bad_items_are_refused(tensor, dims, error):
    with pytest.raises(error):
        Plan([(tensor, None, wc.MaxNorm(1.0), dims)])


# -- the math is the core's -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", [wc.MaxNorm, wc.UnitNorm, wc.MinMaxNorm])
def test_the_factor_is_the_core_constraints_own(kind, monkeypatch):
    calls = []

    def factor(self, n, acc, xp):
        calls.append((type(self), acc, xp))
        return xp.ones_like(n)  # every node left as it is

    monkeypatch.setattr(kind, "factor", factor)
    tensors = weights((8, 6), torch.bfloat16) + weights((200, 100), torch.float64)
    before = [t.clone() for t in tensors]
    Plan([(t, None, bound(kind(), (1,)), (1,)) for t in tensors]).run()
    assert_same_bits(tensors, before)
    assert sorted(calls, key=str) == [(kind, "float32", torch), (kind, "float64", torch)]


class Doubled(wc.MaxNorm):
    """A subclass with its own projection: called, never replaced by the factor path."""

    def __call__(self, w, *, out=None, xp=None):
        return torch.mul(w, 2.0, out=out)


@pytest.mark.parametrize(
    "constraint",
    [
        Doubled(1.0),
        wc.Clip(-0.1, 0.2),
        wc.BoxMaxNorm(-0.2, 0.3, max_value=0.5),
        wc.Simplex(),
        wc.MaxL1Norm(0.7),
    ],
    ids=repr,
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_constraints_without_a_factor_go_through_their_own_call(constraint, dtype):
    tensors = weights((8, 6), dtype)
    c = bound(constraint, (1,)) if hasattr(constraint, "axis") else constraint
    expected = core(tensors, [None] * len(tensors), c, (1,))
    plan = Plan([(t, None, c, (1,)) for t in tensors])
    assert step_names(plan) == ["_Core"]
    plan.run()
    assert_same_bits(tensors, expected)

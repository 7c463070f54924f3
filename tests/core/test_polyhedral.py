"""The box, simplex and L1 kinds: clip, box_max_norm, simplex, max_l1_norm and their objects.

Property tests over 1-4-d arrays and every axis form (feasibility, idempotence, identity inside
the set bit for bit, optimality through the variational inequality, agreement with independent
reference solvers, node independence, NaN isolation, out=w), then the objects, the errors and the
other front ends (torch, keras.ops, jax.numpy).
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import weight_constraints as wc
from tests.ids import stable_repr
from tests.reference import axes_of, nodes

DTYPES = [np.float16, np.float32, np.float64]
INF = math.inf

# (kind, parameters): the node-wise kinds with a spread of sets, degenerate ones included.
CASES = {
    "box": ("box_max_norm", (-0.5, 0.5, 1.0)),
    "box_nonneg": ("box_max_norm", (0.0, INF, 1.5)),
    "box_open": ("box_max_norm", (-INF, INF, 2.0)),
    "box_skew": ("box_max_norm", (-1.0, 0.25, 0.7)),
    "box_half": ("box_max_norm", (-INF, 0.0, 0.3)),
    "box_point": ("box_max_norm", (-0.5, 0.5, 0.0)),
    "simplex": ("simplex", (1.0,)),
    "simplex_3": ("simplex", (2.5,)),
    "simplex_0": ("simplex", (0.0,)),
    "l1": ("max_l1_norm", (1.0,)),
    "l1_3": ("max_l1_norm", (3.0,)),
    "l1_0": ("max_l1_norm", (0.0,)),
}


def project(case: str, w, axis, **kw):
    kind, params = CASES[case]
    return getattr(wc, kind)(w, *params, axis, **kw)


def acc_eps(dtype) -> float:
    return float(np.finfo(np.float64 if np.dtype(dtype) == np.float64 else np.float32).eps)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


def node_size(w: np.ndarray, axis) -> int:
    return int(np.prod([w.shape[a] for a in axes_of(axis, w.ndim)]))


def rtol(w: np.ndarray, axis) -> float:
    """Rounding of the output plus sums over a node in the accumulation dtype."""
    return 4 * float(np.finfo(w.dtype).eps) + 8 * node_size(w, axis) * acc_eps(w.dtype)


# -- independent float64 references, one node at a time -----------------------------------------


def simplex_reference(y: np.ndarray, r: float) -> np.ndarray:
    """Duchi et al. (2008), figure 1: the largest rho with u_rho > (S_rho - r) / rho."""
    u = sorted(y.tolist(), reverse=True)
    rho, theta = 1, u[0] - r
    for j in range(1, len(u) + 1):
        t = (math.fsum(u[:j]) - r) / j
        if u[j - 1] - t > 0:
            rho, theta = j, t
    assert rho >= 1
    return np.maximum(y - theta, 0.0)


def l1_reference(y: np.ndarray, c: float) -> np.ndarray:
    if math.fsum(np.abs(y).tolist()) <= c:
        return y.copy()
    return np.sign(y) * simplex_reference(np.abs(y), c)


def box_reference(y: np.ndarray, low: float, high: float, c: float) -> np.ndarray:
    """Bisection on the scale s = 1 / (1 + λ) of ``clip(s·y)``, whose norm grows with s."""

    def norm(s: float) -> float:
        return math.hypot(*np.clip(s * y, low, high).tolist())

    if norm(1.0) <= c:
        return np.clip(y, low, high)
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if norm(mid) <= c else (lo, mid)
    return np.clip(lo * y, low, high)


def reference(case: str, y: np.ndarray) -> np.ndarray:
    kind, params = CASES[case]
    return {
        "box_max_norm": box_reference,
        "simplex": simplex_reference,
        "max_l1_norm": l1_reference,
    }[kind](y, *params)


def set_scale(case: str) -> float:
    """The largest finite parameter of the set (a bound, a radius)."""
    return max(abs(p) for p in CASES[case][1] if math.isfinite(p))


def in_set(case: str, x: np.ndarray, tol: float, scale: float) -> bool:
    """Whether the float64 node ``x`` lies in the set, to ``tol`` times ``scale`` (the input
    node's largest magnitude or the set's own scale: a threshold subtracted from entries of
    magnitude s is exact to about eps·s, whatever the output's magnitude)."""
    kind, params = CASES[case]
    slack = tol * scale
    if kind == "simplex":
        return x.min() >= 0 and abs(math.fsum(x.tolist()) - params[0]) <= slack * x.size
    if kind == "max_l1_norm":
        return math.fsum(np.abs(x).tolist()) <= params[0] + slack * x.size
    low, high, c = params
    inside_box = (x >= low - slack).all() and (x <= high + slack).all()
    return inside_box and math.hypot(*x.tolist()) <= c + slack


def feasible_points(case: str, m: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Points of the set: for the polytopes, every vertex (the variational inequality need only
    hold there); for the box-ball intersection, random points and the scaled box corners."""
    kind, params = CASES[case]
    eye = np.eye(m)
    if kind == "simplex":
        return list(params[0] * eye)
    if kind == "max_l1_norm":
        return list(params[0] * eye) + list(-params[0] * eye)
    low, high, c = params
    points = [np.zeros(m)]
    for v in rng.uniform(-3, 3, (16, m)):
        v = np.clip(v, low, high)
        n = math.hypot(*v.tolist())
        points.append(v * (min(1.0, c / n) if n > 0 else 1.0))
    return points


# -- strategies ------------------------------------------------------------------------------


@st.composite
def axis_forms(draw, ndim: int):
    """Every way of naming axes: int (also negative), tuple, list, None, the empty tuple."""
    form = draw(st.sampled_from(["int", "tuple", "list", "none", "empty"]))
    if form == "none":
        return None
    if form == "empty":
        return ()
    if form == "int":
        return draw(st.integers(-ndim, ndim - 1))
    chosen = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    spelled = [a - ndim if draw(st.booleans()) else a for a in chosen]
    return tuple(spelled) if form == "tuple" else spelled


@st.composite
def weights(draw, dtypes=tuple(DTYPES), max_side: int = 4):
    """An array of 1-4 dims, an axis form, whole nodes set to zero and nodes of various scales
    (entries 0 or of magnitude 1e-3 to 1e3 times the node's scale, so no square underflows)."""
    dtype = draw(st.sampled_from(dtypes))
    width = np.dtype(dtype).itemsize * 8
    magnitude = 30.0 if dtype == np.float16 else 1e3
    elements = st.one_of(
        st.floats(-magnitude, magnitude, width=width).filter(lambda v: v == 0 or abs(v) >= 1e-3),
        st.sampled_from([0.0, -0.0, 1.0, -3.0, 0.5, 0.25]),
    )
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=max_side))
    w = draw(hnp.arrays(dtype, shape, elements=elements))
    axis = draw(axis_forms(w.ndim))
    columns, back = nodes(w, axis)
    n = columns.shape[1]
    zero = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    columns[:, zero] = 0.0
    scale = np.array(
        draw(st.lists(st.sampled_from([1.0, 0.01, 0.25, 4.0]), min_size=n, max_size=n))
    )
    return back(columns * scale).astype(dtype), axis


def each_node(w: np.ndarray, result: np.ndarray, axis):
    """Pairs (input node, output node) as float64 vectors."""
    ins, _ = nodes(w, axis)
    outs, _ = nodes(result, axis)
    return [(ins[:, j], outs[:, j]) for j in range(ins.shape[1])]


# -- properties of the node-wise kinds ---------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@given(data=weights())
def test_feasible_and_finite_and_same_dtype(case, data):
    w, axis = data
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # finite input: no 0/0, no overflow
        result = project(case, w, axis)
    assert result.dtype == w.dtype and result.shape == w.shape
    assert np.isfinite(result).all()
    tol = rtol(w, axis)
    for x, y in each_node(w, result, axis):
        assert in_set(case, y, tol, max(np.abs(x).max(), set_scale(case))), (x, y)


@pytest.mark.parametrize("case", CASES)
@given(data=weights())
def test_agrees_with_an_independent_reference(case, data):
    w, axis = data
    result = project(case, w, axis)
    tol = rtol(w, axis)
    for x, y in each_node(w, result, axis):
        want = reference(case, x)
        scale = max(np.abs(x).max(), 1.0)
        np.testing.assert_allclose(y, want, rtol=0, atol=tol * scale * 4)


@pytest.mark.parametrize("case", CASES)
@given(data=weights(), seed=st.integers(0, 2**32 - 1))
def test_variational_inequality(case, data, seed):
    """<x − P(x), z − P(x)> <= 0 for every z in the set: P(x) is the nearest point."""
    w, axis = data
    result = project(case, w, axis)
    rng = np.random.default_rng(seed)
    tol = rtol(w, axis)
    for x, y in each_node(w, result, axis):
        g = x - y
        # y is exact to the rounding of the input's magnitude (a threshold subtracted from
        # large entries, as in test_idempotent), not of its own: |g| · |x| eps, even where y is
        # small (x = [513, 513, 513] onto the unit L1 ball in float32 gives 0.333313).
        size = max(np.abs(x).max(), np.abs(y).max()) + 1.0
        scale = size * size * x.size
        for z in feasible_points(case, x.size, rng):
            assert float(g @ (z - y)) <= tol * scale * 4, (x, y, z)


@pytest.mark.parametrize("case", CASES)
@given(data=weights())
def test_idempotent(case, data):
    w, axis = data
    once = project(case, w, axis)
    twice = project(case, once, axis)
    # The first projection is exact to the rounding of the input's magnitude (a threshold
    # subtracted from large entries); the second one moves the result by no more than that.
    scale = float(np.abs(w).max()) + set_scale(case) + 1.0
    np.testing.assert_allclose(twice, once, rtol=0, atol=rtol(w, axis) * scale)


def as_dtype(w: np.ndarray, dtype: str) -> np.ndarray:
    """``w`` in ``dtype``; bfloat16 through ml_dtypes (NumPy has no bfloat16 of its own)."""
    if dtype == "bfloat16":
        import ml_dtypes

        return w.astype(ml_dtypes.bfloat16)
    return w.astype(dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][0] != "box_max_norm"])
@given(data=weights(dtypes=(np.float64,)))
def test_simplex_and_l1_are_idempotent_bit_for_bit(case, dtype, data):
    """P(P(x)) == P(x) bit for bit: the sum of a projected node is the radius only to rounding,
    and a node within that rounding of the radius comes back as it is (a second threshold that
    is slightly negative would turn exact zeros into ~1e-8)."""
    w, axis = data
    w = as_dtype(w / 30.0 if dtype == "float16" else w, dtype)  # float16: entries up to ~130
    once = project(case, w, axis)
    assert np.array_equal(bits(project(case, once, axis)), bits(once))


def test_simplex_of_a_projected_linear_weight_is_the_same_bits():
    """The review's case: Linear(6, 8)-shaped float32 weights scaled by 4 onto the simplex of
    radius 2, projected a second time."""
    w = (np.random.default_rng(0).standard_normal((8, 6)) * 4).astype(np.float32)
    once = wc.simplex(w, 2.0, axis=1)
    assert (once == 0).any()
    assert np.array_equal(bits(wc.simplex(once, 2.0, axis=1)), bits(once))


@pytest.mark.parametrize("case", CASES)
@given(data=weights(dtypes=(np.float16,)))  # drawn in float16, none discarded
def test_half_precision_is_computed_in_float32(case, data):
    w, axis = data
    assert w.dtype == np.float16
    wide = project(case, w.astype(np.float32), axis)
    assert np.array_equal(bits(project(case, w, axis)), bits(wide.astype(np.float16)))


@given(data=weights(), margin=st.sampled_from([1.0, 1.5]))
def test_identity_inside_the_set(data, margin):
    w, axis = data
    columns, _ = nodes(w, axis)
    l1 = np.abs(columns).sum(axis=0)
    l2 = np.sqrt((columns**2).sum(axis=0))
    top = float(np.abs(w).max(initial=0.0)) * margin
    tol = rtol(w, axis)
    # Every node inside: the whole array comes back bit for bit.
    c1 = float(l1.max(initial=0.0)) * (1 + tol) * margin
    assert np.array_equal(bits(wc.max_l1_norm(w, c1, axis)), bits(w))
    c2 = float(l2.max(initial=0.0)) * (1 + tol) * margin
    assert np.array_equal(bits(wc.box_max_norm(w, -top, top, c2, axis)), bits(w))
    assert np.array_equal(bits(wc.box_max_norm(w, -INF, INF, c2, axis)), bits(w))
    assert np.array_equal(bits(wc.clip(w, -top, top)), bits(w))
    # A set that cuts through the data: the nodes inside come back bit for bit.
    for c, norms, fn in [
        (float(np.median(l1)), l1, lambda c: wc.max_l1_norm(w, c, axis)),
        (float(np.median(l2)), l2, lambda c: wc.box_max_norm(w, -top, top, c, axis)),
    ]:
        inside = norms <= c * (1 - tol)
        got, _ = nodes(fn(c), axis)
        assert np.array_equal(bits(got[:, inside]), bits(columns[:, inside]))


@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5),
    dtype=st.sampled_from(DTYPES),
    radius=st.sampled_from([1.0, 2.0, 0.5]),
    seed=st.integers(0, 2**32 - 1),
)
def test_simplex_identity_on_the_simplex(shape, dtype, radius, seed):
    """Nodes on the simplex (entries >= 0 that sum exactly to the radius: multiples of 2**-10)
    come back bit for bit; -0.0 entries included."""
    rng = np.random.default_rng(seed)
    m = shape[0]
    counts = rng.multinomial(1024, rng.dirichlet(np.ones(m)), size=shape[1:])  # (*rest, m)
    w = np.moveaxis(counts / 1024 * radius, -1, 0).astype(dtype)
    w[w == 0] = -0.0
    assert np.array_equal(bits(wc.simplex(w, radius, 0)), bits(w))


@pytest.mark.parametrize("case", CASES)
@given(data=weights(), pick=st.integers(0, 10**6), factor=st.sampled_from([0.0, 3.0, 1e-2]))
def test_nodes_are_independent(case, data, pick, factor):
    w, axis = data
    columns, back = nodes(w, axis)
    j = pick % columns.shape[1]
    columns[:, j] *= factor
    changed = back(columns).astype(w.dtype)
    before, _ = nodes(project(case, w, axis), axis)
    after, _ = nodes(project(case, changed, axis), axis)
    others = np.arange(columns.shape[1]) != j
    assert np.array_equal(bits(after[:, others]), bits(before[:, others]))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf - inf inside the poisoned node
@pytest.mark.parametrize("case", CASES)
@given(
    data=weights(), poison=st.sampled_from([np.nan, np.inf, -np.inf]), pick=st.integers(0, 10**6)
)
def test_nan_or_inf_stays_in_its_node_which_comes_back_unchanged(case, data, poison, pick):
    w, axis = data
    columns, back = nodes(w, axis)
    j = pick % columns.shape[1]
    columns[pick % columns.shape[0], j] = poison
    dirty = back(columns).astype(w.dtype)
    clean_out, _ = nodes(project(case, w, axis), axis)
    dirty_out, _ = nodes(project(case, dirty, axis), axis)
    dirty_in, _ = nodes(dirty, axis)
    others = np.arange(columns.shape[1]) != j
    assert np.array_equal(bits(dirty_out[:, others]), bits(clean_out[:, others]))
    assert np.array_equal(bits(dirty_out[:, j]), bits(dirty_in[:, j]))


@pytest.mark.parametrize("case", CASES)
@given(data=weights())
def test_out_writes_in_place(case, data):
    w, axis = data
    copy = w.copy()
    expected = project(case, w, axis)
    assert project(case, copy, axis, out=copy) is copy
    assert np.array_equal(bits(copy), bits(expected))
    separate = np.empty_like(w)
    assert project(case, w, axis, out=separate) is separate
    assert np.array_equal(bits(separate), bits(expected))


def test_zero_nodes():
    w = np.zeros((4, 3))
    np.testing.assert_array_equal(wc.simplex(w, 2.0), np.full((4, 3), 0.5))  # the centre
    for result in (wc.max_l1_norm(w, 1.0), wc.box_max_norm(w, -1, 1, 1.0), wc.clip(w, 1, 2)):
        assert result.shape == w.shape
    assert not wc.max_l1_norm(w, 1.0).any() and not wc.box_max_norm(w, -1, 1, 1.0).any()
    np.testing.assert_array_equal(wc.clip(w, 1, 2), np.ones((4, 3)))


@pytest.mark.parametrize(
    "shape, axis", [((0, 3), 0), ((3, 0), 0), ((0, 2, 2), (0, 2)), ((2, 0), 1)]
)
@pytest.mark.parametrize("kind", ["box_max_norm", "simplex", "max_l1_norm"])
def test_empty_arrays(kind, shape, axis):
    w = np.zeros(shape, np.float32)
    fn = {
        "box_max_norm": lambda w, **kw: wc.box_max_norm(w, -1, 1, 1.0, axis, **kw),
        "simplex": lambda w, **kw: wc.simplex(w, 1.0, axis, **kw),
        "max_l1_norm": lambda w, **kw: wc.max_l1_norm(w, 1.0, axis, **kw),
    }[kind]
    assert fn(w).shape == shape
    assert fn(w, out=w) is w


# -- the special cases the docs state -------------------------------------------------------


@given(data=weights())
def test_clip_is_min_max_and_nonneg_is_clip_0_inf(data):
    w, _ = data
    w = w.copy()
    w.flat[::3] = np.nan
    low, high = -0.3, 0.7
    expected = np.minimum(np.maximum(w, w.dtype.type(low)), w.dtype.type(high))
    np.testing.assert_array_equal(wc.clip(w, low, high), expected)  # NaN where w is NaN
    assert np.isnan(wc.clip(w, low, high)[np.isnan(w)]).all()
    np.testing.assert_array_equal(wc.clip(w, 0.0, INF), wc.non_neg(w))
    np.testing.assert_array_equal(wc.Clip(0, INF)(w), wc.NonNeg()(w))
    inside = (w >= low) & (w <= high)
    assert np.array_equal(bits(wc.clip(w, low, high)[inside]), bits(w[inside]))


@given(data=weights(dtypes=(np.float32, np.float64)), c=st.sampled_from([0.5, 1.0, 3.0]))
def test_box_special_cases(data, c):
    w, axis = data
    tol = rtol(w, axis)
    scale = float(np.abs(w).max(initial=0.0)) + 1.0
    # lower = 0, upper = inf: clamp, then scale into the ball.
    np.testing.assert_allclose(
        wc.box_max_norm(w, 0.0, INF, c, axis),
        wc.max_norm(wc.non_neg(w), c, axis),
        rtol=0,
        atol=tol * scale,
    )
    # An unbounded box is max_norm; a ball that holds the box is clip.
    np.testing.assert_allclose(
        wc.box_max_norm(w, -INF, INF, c, axis), wc.max_norm(w, c, axis), rtol=0, atol=tol * scale
    )
    big = 10.0 * math.sqrt(node_size(w, axis))
    np.testing.assert_array_equal(wc.box_max_norm(w, -c, c, big, axis), wc.clip(w, -c, c))
    # The L1 ball of a non-negative node that is outside it is the simplex of that radius.
    positive = np.abs(w) + c  # every node outside the ball or on its face
    np.testing.assert_allclose(
        wc.max_l1_norm(positive, c, axis), wc.simplex(positive, c, axis), rtol=0, atol=tol * scale
    )


def scipy_projection(kind: str, params: tuple, x: np.ndarray) -> np.ndarray:
    """The projection as a generic constrained least-squares problem for scipy's SLSQP (status 8,
    "positive directional derivative for linesearch", is SLSQP stalling at the optimum; the
    point is still compared)."""
    from scipy.optimize import minimize

    m = x.size
    if kind == "max_l1_norm":  # y = p − q with p, q >= 0 and Σ(p + q) <= c
        solved = minimize(
            lambda pq: 0.5 * np.sum((pq[:m] - pq[m:] - x) ** 2),
            np.zeros(2 * m),
            method="SLSQP",
            bounds=[(0, None)] * (2 * m),
            constraints=[{"type": "ineq", "fun": lambda pq: params[0] - pq.sum()}],
            options={"ftol": 1e-12, "maxiter": 1000},
        )
        assert solved.status in (0, 8), solved.message
        return solved.x[:m] - solved.x[m:]
    if kind == "simplex":
        bounds = [(0, None)] * m
        constraints = [{"type": "eq", "fun": lambda y: y.sum() - params[0]}]
    else:
        bounds = [(params[0], params[1])] * m
        constraints = [{"type": "ineq", "fun": lambda y: params[2] ** 2 - y @ y}]
    solved = minimize(
        lambda y: 0.5 * np.sum((y - x) ** 2),
        np.zeros(m),
        method="SLSQP",
        bounds=bounds,
        constraints=constraints,
        options={"ftol": 1e-12, "maxiter": 1000},
    )
    assert solved.status in (0, 8), solved.message
    return solved.x


@pytest.mark.parametrize(
    "kind, params",
    [
        ("box_max_norm", (-1.0, 1.0, 1.0)),
        ("box_max_norm", (0.0, 2.0, 1.5)),
        ("simplex", (1.0,)),
        ("max_l1_norm", (1.0,)),
    ],
)
@pytest.mark.parametrize("seed", range(10))
def test_agrees_with_scipy_on_small_nodes(kind, params, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 2, rng.integers(1, 6))
    got = getattr(wc, kind)(x, *params, axis=None)
    np.testing.assert_allclose(got, scipy_projection(kind, params, x), atol=1e-6)


def test_worked_examples():
    # box ∩ ball: clip(x / 2) = (1, 0.75) has norm 1.25 exactly.
    np.testing.assert_allclose(wc.box_max_norm(np.array([3.0, 1.5]), -1, 1, 1.25, 0), [1, 0.75])
    # simplex: τ = 0.5 for (2, 0.5, -1) onto radius 1.5.
    np.testing.assert_array_equal(wc.simplex(np.array([2.0, 0.5, -1.0]), 1.5), [1.5, 0.0, 0.0])
    np.testing.assert_array_equal(wc.simplex(np.array([1.0, 1.0, 0.0]), 1.0), [0.5, 0.5, 0.0])
    # L1: τ = 1 for (3, -2, 0.5) onto radius 3; signs kept, small entries zeroed.
    np.testing.assert_array_equal(wc.max_l1_norm(np.array([3.0, -2.0, 0.5]), 3.0), [2, -1, 0])
    # Each entry its own node (axis=()): the simplex of one entry is the radius itself.
    np.testing.assert_array_equal(wc.simplex(np.array([[-4.0, 9.0]]), 2.0, ()), [[2.0, 2.0]])
    np.testing.assert_array_equal(wc.max_l1_norm(np.array([-4.0, 0.5]), 1.0, ()), [-1.0, 0.5])


def test_extreme_magnitudes_stay_finite_and_feasible():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for dtype, big in [(np.float16, 65504.0), (np.float32, 1e17), (np.float64, 1e150)]:
            w = np.array([[big, -big], [big / 3, 1.0], [0.0, -big]], dtype)
            top = float(np.finfo(dtype).max)
            for result in (
                wc.box_max_norm(w, -2.0, 3.0, 2.5),
                wc.simplex(w, 2.0),
                wc.max_l1_norm(w, 2.0),
                wc.box_max_norm(w, -INF, INF, top),
            ):
                assert result.dtype == dtype and np.isfinite(result).all()
            assert (np.abs(wc.max_l1_norm(w, 2.0).astype(np.float64)).sum(0) <= 2.01).all()
        # A radius beyond every node's norm holds every finite node.
        w = np.array([[1e150, -1e150], [1e150 / 3, 1.0], [0.0, -1e150]])
        np.testing.assert_array_equal(wc.max_l1_norm(w, 1e300), w)
        np.testing.assert_array_equal(
            wc.clip(np.array([1.0, -7.0], np.float16), -65504.0, 65504.0), [1.0, -7.0]
        )


# -- objects -----------------------------------------------------------------------------------

OBJECTS = [
    (wc.Clip(-0.01, 0.01), lambda w, **kw: wc.clip(w, -0.01, 0.01, **kw)),
    (wc.Clip(0, INF), lambda w, **kw: wc.clip(w, 0, INF, **kw)),
    (wc.BoxMaxNorm(-0.5, 0.5, 1.0), lambda w, **kw: wc.box_max_norm(w, -0.5, 0.5, 1.0, **kw)),
    (
        wc.BoxMaxNorm(0, INF, 2, axis=(0, 2)),
        lambda w, **kw: wc.box_max_norm(w, 0, INF, 2, (0, 2), **kw),
    ),
    (wc.Simplex(), lambda w, **kw: wc.simplex(w, 1.0, 0, **kw)),
    (wc.Simplex(3, axis=None), lambda w, **kw: wc.simplex(w, 3, None, **kw)),
    (wc.MaxL1Norm(5), lambda w, **kw: wc.max_l1_norm(w, 5, **kw)),
    (wc.MaxL1Norm(0.5, axis=[1, 2]), lambda w, **kw: wc.max_l1_norm(w, 0.5, [1, 2], **kw)),
]


@pytest.mark.parametrize("constraint, function", OBJECTS, ids=stable_repr)
def test_objects_call_their_function(constraint, function):
    w = np.random.default_rng(0).standard_normal((3, 4, 2)).astype(np.float32)
    np.testing.assert_array_equal(constraint(w), function(w))
    copy = w.copy()
    assert constraint(copy, out=copy) is copy
    np.testing.assert_array_equal(copy, function(w))


@pytest.mark.parametrize("constraint", [c for c, _ in OBJECTS], ids=repr)
def test_config_round_trip_through_json(constraint):
    config = json.loads(json.dumps(constraint.get_config()))
    again = type(constraint).from_config(config)
    assert again == constraint and hash(again) == hash(constraint)
    assert repr(again) == repr(constraint)
    assert wc.get({"class_name": type(constraint).__qualname__, "config": config}) == constraint
    assert wc.get({"class_name": type(constraint).__name__, "config": config}) == constraint
    assert wc.get({"class_name": constraint.name, "config": config}) == constraint
    namespace = {
        cls.__qualname__: cls for cls in (wc.Clip, wc.BoxMaxNorm, wc.Simplex, wc.MaxL1Norm)
    }
    assert eval(repr(constraint), {**namespace, "inf": INF}) == constraint


def test_objects_are_immutable_and_readable():
    import dataclasses

    constraint = wc.BoxMaxNorm(-1, 1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        constraint.max_value = 3  # type: ignore[misc]
    assert repr(constraint) == "BoxMaxNorm(lower=-1.0, upper=1.0, max_value=2.0, axis=0)"
    assert repr(wc.Clip(-1, 1)) == "Clip(lower=-1.0, upper=1.0)"
    assert repr(wc.Simplex()) == "Simplex(radius=1.0, axis=0)"
    assert repr(wc.MaxL1Norm(2, axis=[0, 1])) == "MaxL1Norm(max_value=2.0, axis=(0, 1))"
    assert wc.Simplex() == wc.Simplex(1, 0) and wc.MaxL1Norm(1) != wc.MaxL1Norm(1, axis=1)
    assert wc.Simplex().get_config() == {"radius": 1.0, "axis": 0}
    assert not hasattr(wc.Clip(0, 1), "axis")  # entry-wise, like NonNeg
    assert [
        c.name for c in (wc.Clip(0, 1), wc.BoxMaxNorm(0, 1, 1), wc.Simplex(), wc.MaxL1Norm(1))
    ] == [
        "clip",
        "box_max_norm",
        "simplex",
        "max_l1_norm",
    ]


def test_default_axis_is_told_apart_from_an_explicit_zero():
    from weight_constraints._checks import is_default_axis

    for default, explicit in [
        (wc.BoxMaxNorm(0, 1, 1), wc.BoxMaxNorm(0, 1, 1, axis=0)),
        (wc.Simplex(), wc.Simplex(axis=0)),
        (wc.MaxL1Norm(1), wc.MaxL1Norm(1, axis=0)),
    ]:
        assert is_default_axis(default.axis) and not is_default_axis(explicit.axis)
        assert default == explicit
        restored = type(default).from_config(json.loads(json.dumps(default.get_config())))
        assert restored.get_config()["axis"] == 0


# -- errors ------------------------------------------------------------------------------------

BAD_REALS = [float("nan"), "3", None, True, [1.0], 1 + 2j]
BAD_RADII = [-1, -0.5, float("nan"), float("inf"), "3", None, True]


def pattern(value) -> str:
    import re

    return re.escape(repr(value))


@pytest.mark.parametrize("value", BAD_REALS, ids=repr)
def test_bad_bounds(value):
    for name, make in [
        ("lower", lambda v: wc.Clip(v, 1.0)),
        ("upper", lambda v: wc.Clip(-1.0, v)),
        ("lower", lambda v: wc.clip(np.ones(2), v, 1.0)),
        ("lower", lambda v: wc.BoxMaxNorm(v, 1.0, 1.0)),
        ("upper", lambda v: wc.box_max_norm(np.ones(2), -1.0, v, 1.0)),
    ]:
        with pytest.raises(ValueError, match=f"{name} .*got {pattern(value)}"):
            make(value)


@pytest.mark.parametrize(
    "lower, upper, message",
    [
        (1.0, -1.0, "lower must be <= upper, got lower=1.0, upper=-1.0"),
        (INF, INF, "lower and upper cannot both be inf"),
        (-INF, -INF, "lower and upper cannot both be -inf"),
        (INF, 0.0, "lower must be <= upper, got lower=inf, upper=0.0"),
    ],
)
def test_clip_bounds_out_of_order(lower, upper, message):
    with pytest.raises(ValueError, match=message):
        wc.Clip(lower, upper)
    w = np.full(3, 7.0)
    with pytest.raises(ValueError, match=message):
        wc.clip(w, lower, upper, out=w)
    assert (w == 7.0).all()


@pytest.mark.parametrize(
    "lower, upper, message",
    [
        (0.5, 1.0, r"lower must be <= 0 \(the box must contain 0\), got lower=0.5"),
        (-1.0, -0.25, r"upper must be >= 0 \(the box must contain 0\), got upper=-0.25"),
        (1.0, -1.0, "lower must be <= upper"),
    ],
)
def test_box_must_contain_zero(lower, upper, message):
    with pytest.raises(ValueError, match=message):
        wc.BoxMaxNorm(lower, upper, 1.0)
    w = np.full((3, 2), 7.0)
    with pytest.raises(ValueError, match=message):
        wc.box_max_norm(w, lower, upper, 1.0, out=w)
    assert (w == 7.0).all()


@pytest.mark.parametrize("value", BAD_RADII, ids=repr)
def test_bad_radius_and_max_value(value):
    for name, make in [
        ("radius", lambda v: wc.Simplex(v)),
        ("radius", lambda v: wc.simplex(np.ones(2), v)),
        ("max_value", lambda v: wc.MaxL1Norm(v)),
        ("max_value", lambda v: wc.max_l1_norm(np.ones(2), v)),
        ("max_value", lambda v: wc.BoxMaxNorm(-1, 1, v)),
        ("max_value", lambda v: wc.box_max_norm(np.ones(2), -1, 1, v)),
    ]:
        with pytest.raises(ValueError, match=f"{name} .*got {pattern(value)}"):
            make(value)


@pytest.mark.parametrize("axis", [1.5, "0", True, (0, 0), [1, 1]], ids=repr)
def test_bad_axis_at_construction(axis):
    for make in (
        lambda: wc.BoxMaxNorm(-1, 1, 1, axis=axis),
        lambda: wc.Simplex(axis=axis),
        lambda: wc.MaxL1Norm(1, axis=axis),
    ):
        with pytest.raises(ValueError, match="axis"):
            make()


@pytest.mark.parametrize("kind", ["box_max_norm", "simplex", "max_l1_norm", "clip"])
def test_nothing_is_modified_on_error(kind):
    fn = {
        "box_max_norm": lambda w, **kw: wc.box_max_norm(w, -1, 1, 1.0, **kw),
        "simplex": lambda w, **kw: wc.simplex(w, 1.0, **kw),
        "max_l1_norm": lambda w, **kw: wc.max_l1_norm(w, 1.0, **kw),
        "clip": lambda w, axis=None, **kw: wc.clip(w, -1, 1, **kw),
    }[kind]
    w = np.full((3, 2), 7.0, dtype=np.float32)
    if kind != "clip":
        with pytest.raises(ValueError, match=r"axis .* weights of shape \(3, 2\)"):
            fn(w, axis=2, out=w)
    with pytest.raises(ValueError, match="out"):
        fn(w, out=np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="dtype int64"):
        fn(np.ones((3, 2), np.int64))
    assert (w == 7.0).all()


# -- other front ends --------------------------------------------------------------------------

FRONT_CASES = {
    "clip": lambda w, **kw: wc.clip(w, -0.4, 0.3, **kw),
    "box": lambda w, **kw: wc.box_max_norm(w, -0.5, 0.5, 0.8, (0, 2), **kw),
    "box_nonneg": lambda w, **kw: wc.box_max_norm(w, 0.0, INF, 1.0, -1, **kw),
    "simplex": lambda w, **kw: wc.simplex(w, 1.0, 1, **kw),
    "simplex_all": lambda w, **kw: wc.simplex(w, 2.0, None, **kw),
    "l1": lambda w, **kw: wc.max_l1_norm(w, 1.0, (0, 1), **kw),
    "l1_entries": lambda w, **kw: wc.max_l1_norm(w, 0.5, (), **kw),
}


def sample(dtype=np.float64) -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 4, 3)) * rng.uniform(0.1, 2.0, (1, 4, 1))
    w[:, 1, :] = 0.0  # zero nodes
    w[0, 2, 0] = 0.05  # some nodes inside
    return w.astype(dtype)


def close(got: np.ndarray, want: np.ndarray, dtype: str) -> None:
    eps = {"float64": 1e-12, "float32": 4e-7, "float16": 2e-3, "bfloat16": 1.6e-2}[dtype]
    np.testing.assert_allclose(got, want, rtol=4 * eps, atol=4 * eps)


@pytest.mark.parametrize("name", FRONT_CASES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_torch_matches_numpy(name, dtype):
    torch = pytest.importorskip("torch")
    tensor = torch.tensor(sample(), dtype=getattr(torch, dtype))
    exact = tensor.double().numpy()
    result = FRONT_CASES[name](tensor)
    assert isinstance(result, torch.Tensor) and result.dtype == tensor.dtype
    close(result.double().numpy(), FRONT_CASES[name](exact), dtype)
    expected = result.clone()
    pointer = tensor.data_ptr()
    assert FRONT_CASES[name](tensor, out=tensor) is tensor and tensor.data_ptr() == pointer
    assert torch.equal(tensor, expected)


@pytest.mark.parametrize("name", FRONT_CASES)
def test_torch_without_data_no_host_synchronisation(name):
    """On the meta device tensors have no values: any .item(), bool() or Python ``if`` on a
    value would raise, so this runs only if the code never reads a value on the host."""
    torch = pytest.importorskip("torch")
    w = torch.empty((5, 4, 3), device="meta")
    assert FRONT_CASES[name](w).shape == w.shape
    assert FRONT_CASES[name](w, out=w) is w


def test_torch_keeps_autograd_and_compiles():
    torch = pytest.importorskip("torch")
    w = torch.tensor(sample(), requires_grad=True)
    sum(FRONT_CASES[name](w).sum() for name in FRONT_CASES).backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()

    def all_kinds(w):
        return [FRONT_CASES[name](w) for name in FRONT_CASES]

    compiled = torch.compile(all_kinds, fullgraph=True, dynamic=False)
    x = torch.tensor(sample(np.float32))
    for got, want in zip(compiled(x), all_kinds(x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def keras_ops():
    keras = pytest.importorskip("keras")
    return keras, keras.ops


@pytest.mark.parametrize("name", FRONT_CASES)
def test_keras_ops_matches_numpy(name):
    keras, ops = keras_ops()
    w = sample(np.float32)
    result = FRONT_CASES[name](ops.convert_to_tensor(w), xp=ops)
    assert keras.backend.standardize_dtype(result.dtype) == "float32"
    close(ops.convert_to_numpy(result), FRONT_CASES[name](w), "float32")
    half = ops.convert_to_tensor(w.astype(np.float16))
    got = ops.convert_to_numpy(FRONT_CASES[name](half, xp=ops))
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, FRONT_CASES[name](w.astype(np.float16)))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_keras_ops_inside_the_backends_compiled_function(jit_compile):
    """No Python branching on values: the kinds trace into tf.function (XLA with jit_compile),
    jax.jit or torch.compile, whichever backend Keras runs on."""
    keras, ops = keras_ops()
    w = sample(np.float32)

    def step(x):
        return [FRONT_CASES[name](x, xp=ops) for name in FRONT_CASES]

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        variable = tf.Variable(w)
        results = tf.function(lambda: step(variable), jit_compile=jit_compile)()
    elif backend == "jax":
        import jax

        results = (jax.jit(step) if jit_compile else step)(ops.convert_to_tensor(w))
    else:
        import torch

        results = (torch.compile(step, fullgraph=True) if jit_compile else step)(
            ops.convert_to_tensor(w)
        )
    for name, got in zip(FRONT_CASES, results, strict=True):
        close(ops.convert_to_numpy(got), FRONT_CASES[name](w), "float32")


def test_keras_nan_node_unchanged_on_the_current_backend():
    _, ops = keras_ops()
    w = sample(np.float32)
    w[3, 0, 0] = np.nan  # node (0, 0) of the simplex over axis 1 ... and others
    for name in FRONT_CASES:
        got = ops.convert_to_numpy(FRONT_CASES[name](ops.convert_to_tensor(w), xp=ops))
        np.testing.assert_array_equal(got, FRONT_CASES[name](w))  # NaN where NumPy has NaN


@pytest.mark.parametrize("name", FRONT_CASES)
def test_jax_numpy_matches_numpy_also_under_jit(name):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    w = sample(np.float32)
    array = jnp.asarray(w)
    eager = FRONT_CASES[name](array)  # the namespace is inferred from the jax array
    assert isinstance(eager, jax.Array) and eager.dtype == jnp.float32
    close(np.asarray(eager), FRONT_CASES[name](w), "float32")
    jitted = jax.jit(lambda a: FRONT_CASES[name](a, xp=jnp))(array)
    close(np.asarray(jitted), FRONT_CASES[name](w), "float32")
    half = FRONT_CASES[name](jnp.asarray(w, dtype=jnp.bfloat16))
    assert half.dtype == jnp.bfloat16


@pytest.mark.parametrize("kind", ["simplex", "max_l1_norm"])
def test_agrees_with_optax_projections_per_node(kind):
    """optax projects a whole pytree as one vector; vmapped over the nodes it gives ours."""
    jax = pytest.importorskip("jax")
    projections = pytest.importorskip("optax.projections")
    w = sample(np.float32).reshape(5, 12)  # 12 nodes of 5 entries (axis 0)
    theirs = {
        "simplex": projections.projection_simplex,
        "max_l1_norm": projections.projection_l1_ball,
    }
    by_node = jax.vmap(lambda node: theirs[kind](node, 1.5), in_axes=1, out_axes=1)
    np.testing.assert_allclose(
        getattr(wc, kind)(w, 1.5), np.asarray(by_node(jax.numpy.asarray(w))), atol=2e-6
    )

"""Property tests: the projections against their mathematical definition, over arrays of 1-4
dimensions, every axis form, float16/32/64, zero nodes, tiny and large magnitudes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import weight_constraints as wc
from tests.reference import (
    EPS,
    accumulation_eps,
    axes_of,
    node_norms_reference,
    nodes,
    reference,
)

DTYPES = [np.float16, np.float32, np.float64]
# The largest magnitude drawn per dtype: the squared norm of a 625-entry node must stay finite in
# the accumulation dtype (float32 for float16 and float32, float64 for float64).
LARGE = {np.float16: 65504.0, np.float32: float(np.float32(1e17)), np.float64: 1e150}
TINY = {np.float16: 2.0**-24, np.float32: float(np.float32(1e-30)), np.float64: 1e-30}


@st.composite
def axis_forms(draw, ndim: int):
    """Every way of naming axes: int (also negative), tuple, list, None, the empty tuple."""
    kind = draw(st.sampled_from(["int", "tuple", "list", "none", "empty"]))
    if kind == "none":
        return None
    if kind == "empty":
        return ()
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    chosen = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    spelled = [a - ndim if draw(st.booleans()) else a for a in chosen]
    return tuple(spelled) if kind == "tuple" else spelled


@st.composite
def weights(draw, dtypes=tuple(DTYPES)):
    """An array, an axis form, and some whole nodes set to zero."""
    dtype = draw(st.sampled_from(dtypes))
    bits = np.dtype(dtype).itemsize * 8
    large, tiny = LARGE[dtype], TINY[dtype]
    elements = st.one_of(
        st.floats(-large, large, width=bits),
        st.sampled_from([0.0, -0.0, tiny, -tiny, large, -large, 1.0, -3.0]),
    )
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5))
    w = draw(hnp.arrays(dtype, shape, elements=elements))
    axis = draw(axis_forms(w.ndim))
    columns, back = nodes(w, axis)
    zero = np.array(
        draw(st.lists(st.booleans(), min_size=columns.shape[1], max_size=columns.shape[1]))
    )
    columns[:, zero] = 0.0
    return back(columns).astype(dtype), axis


def rtol(dtype, w: np.ndarray, axis) -> float:
    """Relative tolerance from machine epsilon: rounding of the output plus the norm's sum."""
    node_size = int(np.prod([w.shape[a] for a in axes_of(axis, w.ndim)]))
    return 4 * EPS[np.dtype(dtype)] + 2 * node_size * accumulation_eps(dtype)


def atol(dtype) -> float:
    """Absolute slack of a few subnormal steps of the output dtype."""
    return 4 * float(np.finfo(dtype).smallest_subnormal)


def representable(w: np.ndarray, axis) -> np.ndarray:
    """Nodes whose squared norm is a normal number in the accumulation dtype, with room to spare
    (for smaller nodes the squares underflow and the library documents that they stay as is)."""
    acc = np.float64 if w.dtype == np.float64 else np.float32
    n = node_norms_reference(w, axis)
    return n**2 >= float(np.finfo(acc).tiny) / float(np.finfo(acc).eps)


def bits(a: np.ndarray) -> np.ndarray:
    """The bytes of ``a``, for bit-for-bit comparisons (NaN and -0.0 included)."""
    return np.ascontiguousarray(a).view(np.uint8)


def out_norms(result: np.ndarray, axis) -> np.ndarray:
    return node_norms_reference(result, axis)


CONSTRAINTS = {
    "max_norm": (lambda w, a: wc.max_norm(w, 1.5, a), lambda n: min(n, 1.5)),
    "max_norm_0": (lambda w, a: wc.max_norm(w, 0.0, a), lambda n: 0.0),
    "unit_norm": (lambda w, a: wc.unit_norm(w, a), lambda n: 1.0),
    "min_max_norm": (
        lambda w, a: wc.min_max_norm(w, 0.5, 2.0, 1.0, a),
        lambda n: min(max(n, 0.5), 2.0),
    ),
    "min_max_rate": (
        lambda w, a: wc.min_max_norm(w, 0.5, 2.0, 0.3, a),
        lambda n: 0.3 * min(max(n, 0.5), 2.0) + 0.7 * n,
    ),
}


@pytest.mark.parametrize("name", CONSTRAINTS)
@given(data=weights())
def test_agrees_with_naive_loop(name, data):
    w, axis = data
    project, target = CONSTRAINTS[name]
    result = project(w, axis)
    assert result.dtype == w.dtype
    assert result.shape == w.shape
    expected = reference(w, axis, target)
    ok = representable(w, axis)
    got_cols, _ = nodes(result, axis)
    want_cols, _ = nodes(expected, axis)
    tol = rtol(w.dtype, w, axis)
    for j in np.flatnonzero(ok):
        scale = np.abs(want_cols[:, j]).max()
        np.testing.assert_allclose(
            got_cols[:, j], want_cols[:, j], rtol=tol, atol=tol * scale + atol(w.dtype)
        )


@pytest.mark.parametrize("name", CONSTRAINTS)
@given(data=weights())
def test_bounds_and_finite(name, data):
    w, axis = data
    project, target = CONSTRAINTS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # finite input: no overflow, no 0/0
        result = project(w, axis)
    assert np.isfinite(result).all()
    n_in = node_norms_reference(w, axis)
    n_out = out_norms(result, axis)
    ok = representable(w, axis)
    tol = rtol(w.dtype, w, axis)
    for j in range(n_in.size):
        if not ok[j]:
            continue
        want = target(n_in[j])
        assert abs(n_out[j] - want) <= tol * want + 4 * atol(w.dtype), (n_in[j], n_out[j], want)
    if name == "max_norm":
        assert (n_out <= 1.5 * (1 + tol)).all()
    if name in ("unit_norm", "min_max_norm"):
        low, high = (1.0, 1.0) if name == "unit_norm" else (0.5, 2.0)
        nonzero = ok & (n_in > 0)
        assert (n_out[nonzero] >= low * (1 - tol)).all()
        assert (n_out[nonzero] <= high * (1 + tol)).all()


@pytest.mark.parametrize("name", CONSTRAINTS)
@given(data=weights())
def test_zero_nodes_stay_zero_and_direction_is_kept(name, data):
    w, axis = data
    project, _ = CONSTRAINTS[name]
    result = project(w, axis)
    in_cols, _ = nodes(w, axis)
    out_cols, _ = nodes(result, axis)
    for j in range(in_cols.shape[1]):
        x, y = in_cols[:, j], out_cols[:, j]
        if not x.any():
            assert not y.any()
            continue
        # y = lam * x with lam >= 0: no sign flips, and y / x constant where x is not tiny.
        assert (np.sign(y) * np.sign(x) >= 0).all()
        big = (np.abs(x) >= np.abs(x).max() * 1e-3) & (x != 0)
        ratios = y[big] / x[big]
        assert (ratios >= 0).all()
        np.testing.assert_allclose(ratios, ratios[0], rtol=rtol(w.dtype, w, axis) * 1e3)


@pytest.mark.parametrize("name", CONSTRAINTS)
@given(data=weights())
def test_idempotent(name, data):
    w, axis = data
    project, _ = CONSTRAINTS[name]
    if name == "min_max_rate":
        return  # a partial step is not meant to be idempotent
    once = project(w, axis)
    twice = project(once, axis)
    tol = rtol(w.dtype, w, axis)
    scale = np.abs(once).max() if once.size else 0.0
    np.testing.assert_allclose(twice, once, rtol=tol, atol=tol * scale + atol(w.dtype))


@given(data=weights())
def test_identity_inside_the_set(data):
    w, axis = data
    n = node_norms_reference(w, axis)
    tol = rtol(w.dtype, w, axis)
    # max_norm: every node at least a few rounding errors inside the ball comes back bit for bit.
    c = float(np.max(n, initial=0.0)) * (1 + 4 * tol) + 1e-300
    # A bound beyond the weights' dtype is refused (float16 nodes may have norms above 65504).
    assume(np.isfinite(c) and c <= float(np.finfo(w.dtype).max))
    assert np.array_equal(bits(wc.max_norm(w, c, axis)), bits(w))
    # Per node, for a ball that cuts through the data.
    c = float(np.median(n)) if n.size else 1.0
    result = wc.max_norm(w, c, axis)
    in_cols, _ = nodes(w, axis)
    out_cols, _ = nodes(result, axis)
    inside = n <= c * (1 - 4 * tol)
    assert np.array_equal(bits(out_cols[:, inside]), bits(in_cols[:, inside]))
    # min_max_norm with any rate: nodes inside [low, high] unchanged bit for bit.
    low, high = float(np.min(n, initial=0.0)), float(np.max(n, initial=0.0))
    for rate in (1.0, 0.25):
        result = wc.min_max_norm(w, low / (1 + 4 * tol), high * (1 + 4 * tol), rate, axis)
        assert np.array_equal(bits(result), bits(w))


@given(data=weights())
def test_node_norms(data):
    w, axis = data
    n = wc.node_norms(w, axis)
    expected = node_norms_reference(w, axis)
    acc = np.float64 if w.dtype == np.float64 else np.float32
    assert n.dtype == acc
    kept = tuple(s for i, s in enumerate(w.shape) if i not in axes_of(axis, w.ndim))
    assert n.shape == kept
    ok = representable(w, axis)
    np.testing.assert_allclose(n.reshape(-1)[ok], expected[ok], rtol=rtol(w.dtype, w, axis), atol=0)
    keep = wc.node_norms(w, axis, keepdims=True)
    assert keep.shape == tuple(
        1 if i in axes_of(axis, w.ndim) else s for i, s in enumerate(w.shape)
    )


@given(data=weights())
def test_non_neg(data):
    w, _ = data
    result = wc.non_neg(w)
    assert result.dtype == w.dtype
    expected = np.where(w < 0, np.zeros_like(w), w)
    np.testing.assert_array_equal(result, expected)  # NaN where w is NaN, values otherwise
    assert not (result < 0).any()
    positive = w > 0
    assert np.array_equal(bits(result[positive]), bits(w[positive]))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf · 0 in the poisoned node
@pytest.mark.parametrize("name", [*CONSTRAINTS, "non_neg"])
@given(
    data=weights(), poison=st.sampled_from([np.nan, np.inf, -np.inf]), pick=st.integers(0, 10**6)
)
def test_nan_or_inf_stays_in_its_node(name, data, poison, pick):
    w, axis = data
    project = (lambda w, a: wc.non_neg(w)) if name == "non_neg" else CONSTRAINTS[name][0]
    columns, back = nodes(w, axis)
    j = pick % columns.shape[1]
    columns[pick % columns.shape[0], j] = poison
    dirty = back(columns).astype(w.dtype)
    clean_out, _ = nodes(project(w, axis), axis)
    dirty_out, _ = nodes(project(dirty, axis), axis)
    others = np.arange(columns.shape[1]) != j
    if name == "non_neg":  # entry-wise: only the poisoned entry may differ
        others = np.ones(columns.shape[1], dtype=bool)
        others[j] = False
    assert np.array_equal(dirty_out[:, others], clean_out[:, others])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scaling a node may overflow to inf
@pytest.mark.parametrize("name", CONSTRAINTS)
@given(data=weights(), pick=st.integers(0, 10**6), factor=st.sampled_from([0.0, 3.0, 1e-3]))
def test_nodes_are_independent(name, data, pick, factor):
    w, axis = data
    project = CONSTRAINTS[name][0]
    columns, back = nodes(w, axis)
    j = pick % columns.shape[1]
    columns[:, j] *= factor
    changed = back(columns).astype(w.dtype)
    before, _ = nodes(project(w, axis), axis)
    after, _ = nodes(project(changed, axis), axis)
    others = np.arange(columns.shape[1]) != j
    assert np.array_equal(after[:, others], before[:, others])


@pytest.mark.parametrize("name", [*CONSTRAINTS, "non_neg"])
@given(data=weights())
def test_out_writes_in_place(name, data):
    w, axis = data
    w = w.copy()  # the same memory layout for both calls: sums may round differently otherwise
    copy = w.copy()
    if name == "non_neg":
        expected = wc.non_neg(w)
        returned = wc.non_neg(copy, out=copy)
    else:
        fn = {
            "max_norm": lambda x, **kw: wc.max_norm(x, 1.5, axis, **kw),
            "max_norm_0": lambda x, **kw: wc.max_norm(x, 0.0, axis, **kw),
            "unit_norm": lambda x, **kw: wc.unit_norm(x, axis, **kw),
            "min_max_norm": lambda x, **kw: wc.min_max_norm(x, 0.5, 2.0, 1.0, axis, **kw),
            "min_max_rate": lambda x, **kw: wc.min_max_norm(x, 0.5, 2.0, 0.3, axis, **kw),
        }[name]
        expected = fn(w)
        returned = fn(copy, out=copy)
    assert returned is copy
    np.testing.assert_array_equal(copy, expected)

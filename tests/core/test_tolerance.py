"""When a node is on its set: the sum kinds (simplex, L1 ball) in every dtype and node size, and
bounds the weights' dtype cannot represent.

A node counts as on the simplex (inside the L1 ball) when its sum (L1 norm) is within
``SUM_ROUNDINGS · eps · radius`` of the radius, ``eps`` of the weights' dtype, whatever the
node's size: before, the slack was ``m · eps · radius`` (8x the radius for bfloat16 and m = 1024),
so nodes far off the set came back untouched and small steps walked them to the slack's edge.
"""

from __future__ import annotations

import math
import warnings

import ml_dtypes
import numpy as np
import pytest

import weight_constraints as wc
from weight_constraints._polyhedral import SUM_ROUNDINGS

DTYPES = ["float16", "bfloat16", "float32", "float64"]
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}
SIZES = [1, 3, 1024, 2**16, 2**20]


def as_dtype(w: np.ndarray, dtype: str) -> np.ndarray:
    return w.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


def sums(w: np.ndarray) -> np.ndarray:
    """Column sums, correctly rounded (``math.fsum`` of the entries widened exactly)."""
    wide = w.astype(np.float64)
    return np.array([math.fsum(wide[:, j]) for j in range(wide.shape[1])])


def l1(w: np.ndarray) -> np.ndarray:
    return sums(np.abs(w.astype(np.float64)))


def random_nodes(m: int, dtype: str, seed: int) -> np.ndarray:
    """Two nodes of ``m`` entries: one far outside both sets, one near the centre."""
    rng = np.random.default_rng(seed)
    w = np.stack([rng.standard_normal(m) * 3, rng.uniform(0.5, 1.5, m) / m], axis=1)
    return as_dtype(w, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", SIZES)
def test_a_projected_node_is_within_a_few_roundings_whatever_its_size(m, dtype):
    w = random_nodes(m, dtype, seed=m)
    for radius in (1.0, 2.5):
        slack = SUM_ROUNDINGS * EPS[dtype] * radius
        once = wc.simplex(w, radius)
        assert (once.astype(np.float64) >= 0).all()
        assert (np.abs(sums(once) - radius) <= slack).all(), sums(once) - radius
        again = wc.simplex(once, radius)
        assert np.array_equal(again.view(np.uint8), once.view(np.uint8))  # idempotent
        ball = wc.max_l1_norm(w, radius)
        assert (l1(ball) <= radius + slack).all(), l1(ball) - radius
        assert np.array_equal(wc.max_l1_norm(ball, radius).view(np.uint8), ball.view(np.uint8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [2, 1024, 2**20])
def test_an_all_zero_node_becomes_the_centre_in_every_dtype(m, dtype):
    w = as_dtype(np.zeros((m, 2)), dtype)
    got = wc.simplex(w, 1.0)
    centre = as_dtype(np.full((m, 2), 1.0 / m), dtype)
    assert np.array_equal(got.view(np.uint8), centre.view(np.uint8))
    np.testing.assert_array_equal(wc.max_l1_norm(w, 1.0), w)  # inside the ball: unchanged


def test_the_issue_cases():
    x = np.full((1024, 1), 0.0088, ml_dtypes.bfloat16)  # L1 norm 9
    assert l1(wc.max_l1_norm(x, 1.0))[0] <= 1.0 + SUM_ROUNDINGS * 2.0**-7
    s = wc.simplex(np.full(2**20, 0.9 / 2**20, np.float32), axis=None).astype(np.float64).sum()
    assert abs(s - 1.0) <= SUM_ROUNDINGS * 2.0**-23


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["simplex", "max_l1_norm"])
def test_small_steps_never_walk_a_node_off_the_set(kind, dtype):
    """Half-precision training in miniature: a small positive step after every projection.
    Before, the nodes stayed untouched up to a sum of 1 + m · eps (9 for bfloat16, m = 1024)."""
    project = getattr(wc, kind)
    m = 1024
    w = project(as_dtype(np.random.default_rng(0).uniform(0, 2.0 / m, (m, 4)), dtype), 1.0)
    step = np.linspace(1e-4, 4e-4, 4)  # per node
    for _ in range(60):
        w = project(as_dtype(w.astype(np.float64) + step, dtype), 1.0)
        measured = sums(w) if kind == "simplex" else l1(w)
        assert (np.abs(measured - 1.0) <= SUM_ROUNDINGS * EPS[dtype]).all(), measured


@pytest.mark.parametrize(
    "call",
    [
        lambda w: wc.max_norm(w, 1e39, out=w),
        lambda w: wc.min_max_norm(w, 0.0, 1e39, out=w),
        lambda w: wc.MinMaxNorm(1e39, 1e39)(w, out=w),
        lambda w: wc.clip(w, -1e39, 1.0, out=w),
        lambda w: wc.Clip(0.0, 1e39)(w, out=w),
        lambda w: wc.box_max_norm(w, -1.0, 1.0, 1e39, out=w),
        lambda w: wc.BoxMaxNorm(-1e39, 0.0, 1.0)(w, out=w),
        lambda w: wc.simplex(w, 1e39, out=w),
        lambda w: wc.MaxL1Norm(1e39)(w, out=w),
    ],
)
@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_a_bound_the_dtype_cannot_represent_raises_naming_it(call, library):
    w = np.full((4, 3), 2.0, np.float32)
    if library == "torch":
        import torch

        w = torch.from_numpy(w)
    with pytest.raises(ValueError, match=r"=-?1e\+39 is beyond the range of float32 weights"):
        call(w)
    assert (w == 2.0).all()


def test_a_radius_beyond_float16_raises_and_fits_float32():
    import torch

    with pytest.raises(ValueError, match=r"radius=100000.0 .* float16"):
        wc.simplex(torch.zeros(1, 3, dtype=torch.float16), radius=1e5)
    assert torch.isfinite(wc.simplex(torch.zeros(1, 3), radius=1e5)).all()
    with pytest.raises(ValueError, match=r"radius=1e\+39 .* float32"):
        wc.simplex(np.zeros(4, np.float32), radius=1e39)
    with pytest.raises(ValueError, match="float16"):
        wc.Simplex(1e5).check_dtype("float16")
    wc.Simplex(1e5).check_dtype("float32")
    wc.Clip(-math.inf, math.inf).check_dtype("float16")  # infinite bounds fit every dtype


def test_max_norm_at_the_top_of_the_range_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        top = float(np.finfo(np.float32).max)
        w = np.array([[3.0, 1e18], [4.0, 1e18]], np.float32)
        np.testing.assert_array_equal(wc.max_norm(w, top), w)


@pytest.mark.parametrize("kind", ["simplex", "max_l1_norm"])
def test_no_numpy_warnings_for_inf_nodes_and_huge_entries(kind):
    project = getattr(wc, kind)
    w = np.array([[np.inf, 1.0, 3e38], [1.0, 2.0, 3e38], [-np.inf, 0.5, -3e38]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = project(w, 1.0)
    np.testing.assert_array_equal(got[:, 0], w[:, 0])  # ±inf: the node comes back as it is
    assert np.isfinite(got[:, 1:]).all()
    measured = sums(got[:, 1:]) if kind == "simplex" else l1(got[:, 1:])
    np.testing.assert_allclose(measured, 1.0, rtol=SUM_ROUNDINGS * 2.0**-23)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float64"])
@pytest.mark.parametrize("m", [1024, 2**20])
def test_torch_sums_within_a_few_roundings_without_a_newton_step(m, dtype):
    """torch's running sums are accurate (float64 accumulation on the CPU): its projections
    skip the threshold's Newton step and still land within the slack, idempotent."""
    torch = pytest.importorskip("torch")
    w = torch.from_numpy(random_nodes(m, "float64", seed=m)).to(getattr(torch, dtype))
    slack = SUM_ROUNDINGS * EPS[dtype] * 2.5
    once = wc.simplex(w, 2.5)
    assert (np.abs(sums(once.double().numpy()) - 2.5) <= slack).all()
    assert torch.equal(wc.simplex(once, 2.5), once)
    ball = wc.max_l1_norm(w, 2.5)
    assert (l1(ball.double().numpy()) <= 2.5 + slack).all()
    assert torch.equal(wc.max_l1_norm(ball, 2.5), ball)


@pytest.mark.parametrize("kind", ["simplex", "max_l1_norm"])
def test_torch_compile_projects_the_sum_kinds_in_place(kind):
    """A Newton step on the threshold made TorchInductor's CPU loop fusion fail (KeyError
    'buf12') when the result is written in place, as compile=True registries do."""
    torch = pytest.importorskip("torch")
    project = getattr(wc, kind)
    w = torch.rand(3, 64, generator=torch.Generator().manual_seed(0)) * 4
    want = project(w, 1.0, 1)
    compiled = torch.compile(lambda x: x.copy_(project(x, 1.0, 1)), fullgraph=True)
    torch.testing.assert_close(compiled(w.clone()), want, rtol=1e-6, atol=1e-6)

"""JAX arrays take the generic backend with ``jax.numpy``, eagerly and under ``jax.jit``."""

from __future__ import annotations

import numpy as np
import pytest

import weight_constraints as wc
from weight_constraints import _backends

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

CASES = {
    "max_norm": lambda w, **kw: wc.max_norm(w, 1.0, (0, 2), **kw),
    "max_norm_0": lambda w, **kw: wc.max_norm(w, 0.0, 1, **kw),
    "unit_norm": lambda w, **kw: wc.unit_norm(w, -1, **kw),
    "min_max_norm": lambda w, **kw: wc.min_max_norm(w, 0.5, 1.5, 0.5, None, **kw),
    "non_neg": lambda w, **kw: wc.non_neg(w, **kw),
    "node_norms": lambda w, **kw: wc.node_norms(w, (1, 2), keepdims=True, **kw),
    "object": lambda w, **kw: wc.MinMaxNorm(0.5, 1.5, axis=(0, 1))(w, **kw),
}


def sample() -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 4, 3)) * rng.uniform(0.1, 2.0, (1, 4, 1))
    w[:, 1, :] = 0.0  # a zero node
    return w


def test_jax_arrays_get_the_generic_backend_with_jax_numpy():
    backend = _backends.infer(jnp.zeros(2))
    assert backend.name == "generic" and backend.xp is jnp


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("jit", [False, True])
def test_jax_matches_numpy_and_keeps_dtype(name, dtype, jit):
    w = jnp.asarray(sample(), dtype=dtype)
    project = jax.jit(CASES[name]) if jit else CASES[name]
    result = project(w)
    assert isinstance(result, jax.Array)
    wide = "float32" if name == "node_norms" else dtype
    assert result.dtype == jnp.dtype(wide)
    expected = CASES[name](np.asarray(w.astype(jnp.float32)))
    eps = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(np.asarray(result, np.float64), expected, rtol=2 * eps, atol=2 * eps)


def test_jax_inside_the_ball_bit_for_bit_under_jit():
    w = jnp.asarray(sample() * 0.01, dtype=jnp.float32)
    assert jnp.array_equal(jax.jit(lambda x: wc.max_norm(x, 1.0))(w), w)


def test_jax_explicit_namespace_and_no_out():
    w = jnp.asarray(sample(), dtype=jnp.float32)
    assert jnp.array_equal(wc.unit_norm(w, xp=jnp), wc.unit_norm(w))
    with pytest.raises(TypeError, match="out= needs NumPy arrays or torch tensors"):
        wc.max_norm(w, 1.0, out=w)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_subnormal_nodes_inside_come_back_bit_for_bit(dtype, jit):
    """XLA flushes subnormals to zero (``w * 1.0`` is 0 for ``w = 1e-43``): nodes that the
    projection keeps must not go through the product."""
    tiny = np.finfo(np.float32).smallest_subnormal * 76  # 1.06e-43
    w = jnp.asarray([[tiny, 0.5], [-tiny, 0.25]], dtype=dtype)
    assert float(jnp.asarray(w * jnp.asarray(1.0, dtype))[0, 0]) == 0.0 or dtype == "bfloat16"
    for project in (
        lambda a: wc.max_norm(a, 1.0, xp=jnp),
        lambda a: wc.min_max_norm(a, 0.0, 1.0, xp=jnp),
        lambda a: wc.MaxNorm(2.0, axis=1)(a, xp=jnp),
    ):
        got = (jax.jit(project) if jit else project)(w)
        np.testing.assert_array_equal(
            np.asarray(got).view(np.uint16 if dtype == "bfloat16" else np.uint32),
            np.asarray(w).view(np.uint16 if dtype == "bfloat16" else np.uint32),
        )

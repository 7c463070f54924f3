"""Issue 17, case 1: Simplex, MaxL1Norm and BoxMaxNorm held in float16 and bfloat16 through
constrained(...): training loops of 50 steps (10 on nodes of 2**20 entries) whose gradients push
every node off its set, the landed parameters (what optax.apply_updates gives, not the
projection) checked after every step, on nodes of up to 2**20 entries. The sum kinds used to keep
nodes within m·eps·radius of their sum (8x the radius for bfloat16 and m = 1024), so the sums
walked away step after step."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weight_constraints as wc
from weight_constraints.adapters._audit import tolerance
from weight_constraints.adapters.optax import audit, constrained

HALF = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}
KINDS = {
    "Simplex": wc.Simplex(),
    "MaxL1Norm": wc.MaxL1Norm(1.0),
    "BoxMaxNorm": wc.BoxMaxNorm(-(2.0**-6), 2.0**-6, 1.0),  # bounds both dtypes hold
}
STEPS = 50
# A step on a node of 2**20 entries sorts them (about 0.4 s on a CPU core). There every step
# pushes the node's sum up by 0.05-0.06 radii from 0.8 (measured without a constraint): with the
# former slack of m·eps·radius (4096 radii) the simplex check fails after the first step and the
# L1 one after the fourth, so ten steps show the set held step after step.
LONG_STEPS = 10


def check_on_set(constraint, kernel, dtype_name: str) -> None:
    """The nodes (columns) of ``kernel``, in float64 on the host: non-negative for Simplex,
    inside the box for BoxMaxNorm, and, where their entries are normal numbers of the dtype,
    with sums / L1 norms / L2 norms within the projections' own keep test (the kind's
    roundings of the dtype, relative to the radius). Float16 entries of a node of 2**20 entries
    and radius 1 are subnormal, their spacing (not eps) bounds the sum: the audit's distance
    still holds them on the set."""
    w = np.asarray(kernel, np.float64)
    assert np.isfinite(w).all()
    tol = tolerance(constraint, dtype_name, 0.0)
    normal = np.abs(w).mean() >= float(jnp.finfo(dtype_name).smallest_normal)
    if isinstance(constraint, wc.Simplex):
        assert w.min() >= 0.0
        assert not normal or np.abs(w.sum(axis=0) - constraint.radius).max() <= tol
    elif isinstance(constraint, wc.MaxL1Norm):
        assert not normal or np.abs(w).sum(axis=0).max() <= constraint.max_value + tol
    else:
        assert constraint.lower <= w.min() and w.max() <= constraint.upper
        assert np.sqrt((w * w).sum(axis=0)).max() <= constraint.max_value + tol


def pushing_grads(shape, seed: int, dtype):
    """Gradients that push every entry up (SGD then raises every sum), with some noise."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(-(1.0 + 0.5 * rng.standard_normal(shape)), dtype)


# Every kind and dtype at 1024 entries per node, the sum kinds (whose slack grew with the
# node's size) at 2**16, and each of them in one dtype at 2**20 (a step sorts 2**20 entries).
SIZES = [
    *((1024, kind, dtype) for kind in KINDS for dtype in HALF),
    *((2**16, kind, dtype) for kind in ("Simplex", "MaxL1Norm") for dtype in HALF),
    (2**20, "Simplex", "bfloat16"),
    (2**20, "MaxL1Norm", "float16"),
]


@pytest.mark.parametrize("m, kind, dtype", SIZES, ids=[f"{m}-{k}-{d}" for m, k, d in SIZES])
def test_dense_layout_stays_on_the_set_every_step(m, kind, dtype):
    constraint, name, dtype = KINDS[kind], dtype, HALF[dtype]
    rng = np.random.default_rng(m)
    nodes = 2 if m < 2**20 else 1
    kernel = jnp.asarray(np.abs(rng.standard_normal((m, nodes))) / m, dtype)
    params = {"Dense_0": {"kernel": kernel}}
    tx = constrained(optax.sgd(0.05 / m), kernel=constraint)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(STEPS if m < 2**20 else LONG_STEPS):
        grads = {"Dense_0": {"kernel": pushing_grads((m, nodes), t, dtype)}}
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)  # the landed parameters
        assert params["Dense_0"]["kernel"].dtype == dtype
        audit(params, kernel=constraint, strict=True, tol=0.0)
        check_on_set(constraint, params["Dense_0"]["kernel"], name)


class Model(nn.Module):
    dtype: object

    @nn.compact
    def __call__(self, x):
        hidden = nn.Dense(16, param_dtype=self.dtype, dtype=jnp.float32)(x)
        return nn.Dense(1, param_dtype=self.dtype, dtype=jnp.float32)(nn.relu(hidden))


@pytest.mark.parametrize("dtype", HALF.values(), ids=HALF.keys())
@pytest.mark.parametrize("constraint", KINDS.values(), ids=KINDS.keys())
def test_flax_model_stays_on_the_set_every_step(constraint, dtype):
    model = Model(dtype)
    rng = np.random.default_rng(1)
    x = jnp.asarray(np.abs(rng.standard_normal((32, 512))), jnp.float32)
    params = model.init(jax.random.key(0), x)["params"]
    tx = constrained(optax.sgd(1e-2, momentum=0.9), kernel=constraint)  # Adam overflows float16
    state = tx.init(params)

    @jax.jit
    def train(params, state):
        grads = jax.grad(lambda p: -jnp.mean(model.apply({"params": p}, x)))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(STEPS):
        params, state = train(params, state)
        rows = audit(params, kernel=constraint, strict=True, tol=0.0)
        assert {row.name for row in rows if row.active} == {"Dense_0/kernel", "Dense_1/kernel"}
        for layer in ("Dense_0", "Dense_1"):
            assert params[layer]["kernel"].dtype == dtype
            check_on_set(constraint, params[layer]["kernel"], np.dtype(dtype).name)

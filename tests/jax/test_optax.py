"""project(): an optax transformation whose updates land on the projected parameters; a Flax MLP,
a small CNN (linen) and an NNX model trained with optax, every node inside its set after every
step."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from flax import nnx

import weight_constraints as wc
from weight_constraints.adapters.optax import audit, constrained, project, projection


def random_tree(seed: int, dtype) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "Dense_0": {
            "kernel": jnp.asarray(rng.standard_normal((6, 5)) * 0.5, dtype),
            "bias": jnp.asarray(rng.standard_normal(5), dtype),
        },
        "Conv_0": {
            "kernel": jnp.asarray(rng.standard_normal((3, 3, 2, 4)) * 0.3, dtype),
            "bias": jnp.asarray(rng.standard_normal(4), dtype),
        },
        "LayerNorm_0": {"scale": jnp.ones(5, dtype), "bias": jnp.zeros(5, dtype)},
    }


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_updates_land_on_the_projected_parameters(seed, dtype):
    params = random_tree(seed, dtype)
    raw = jax.tree.map(lambda p: p * 0 + 0.7, random_tree(seed + 10, dtype))  # big steps
    roles = dict(kernel=wc.MaxNorm(1.0), bias=wc.NonNeg())
    tx = project(**roles)
    updates, _ = jax.jit(tx.update)(raw, tx.init(params), params)
    landed = optax.apply_updates(params, updates)
    target = projection(**roles)(optax.apply_updates(params, raw))
    eps = float(jnp.finfo(dtype).eps)
    for path, got in jax.tree_util.tree_leaves_with_path(landed):
        want = target
        step, before, moved = raw, params, updates
        for key in path:
            want, step, before, moved = (t[key.key] for t in (want, step, before, moved))
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        np.testing.assert_allclose(got, want, rtol=2 * eps, atol=2 * eps)  # one rounding
        unchanged = np.asarray(optax.apply_updates(before, step), np.float64) == want
        same_step = np.asarray(moved, np.float64) == np.asarray(step, np.float64)
        assert np.all(same_step[unchanged])  # the optimizer's own update where nothing moved
        if "bias" in path[-1].key and "LayerNorm" not in path[0].key:
            assert np.all(got >= 0)  # NonNeg lands exactly
    for name in ("scale", "bias"):  # no role: the updates as they came
        np.testing.assert_array_equal(updates["LayerNorm_0"][name], raw["LayerNorm_0"][name])
    assert audit(landed, **roles).problems(tol=4 * eps) == []


def test_needs_params():
    tx = optax.chain(optax.sgd(0.1), project(kernel=wc.MaxNorm(1.0)))
    params = {"Dense_0": {"kernel": jnp.ones((2, 2))}}
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"needs the parameters: call tx.update\(grads, state"):
        tx.update(params, state)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        x = nn.LayerNorm()(x)
        return nn.Dense(2)(x)


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
        x = nn.DenseGeneral((2, 3))(x.reshape(x.shape[0], -1))  # a kernel (in, 2, 3)
        return x.reshape(x.shape[0], -1)


@pytest.mark.parametrize(
    "model, x",
    [(MLP(), np.zeros((16, 4), np.float32)), (CNN(), np.zeros((8, 6, 6, 3), np.float32))],
    ids=["mlp", "cnn"],
)
def test_linen_training_keeps_every_node_inside_its_set(model, x):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    y = jnp.asarray(rng.standard_normal((x.shape[0], 6 if isinstance(model, CNN) else 2)))
    params = model.init(jax.random.key(0), x)["params"]
    roles = dict(kernel=wc.MaxNorm(0.3), bias=wc.MinMaxNorm(0.0, 0.1))
    tx = optax.chain(optax.adam(3e-2), project(**roles))
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        loss = lambda p: jnp.mean((model.apply({"params": p}, x) - y) ** 2)  # noqa: E731
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    before = audit(params, **roles)
    assert before.problems()  # Glorot-initialised kernels start outside the ball
    for _ in range(4):
        params, state = step(params, state)
        rows = audit(params, **roles)
        assert rows.problems(tol=1e-6) == [], str(rows)
    assert {r.note for r in rows if r.active} == {"kernel", "bias"}
    assert [r.name for r in rows if not r.active] == [
        n for n in (r.name for r in rows) if n.startswith("LayerNorm")
    ]


class NNXModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(10, 8, rngs=rngs)
        self.hidden = nnx.Linear(8, 16, rngs=rngs)
        self.norm = nnx.LayerNorm(16, rngs=rngs)
        self.out = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, ids):
        return self.out(self.norm(nnx.relu(self.hidden(self.embed(ids)))))


def test_nnx_optimizer_keeps_every_node_inside_its_set():
    model = NNXModel(nnx.Rngs(0))
    roles = dict(kernel=wc.MaxNorm(0.5), embedding=wc.UnitNorm(), bias=wc.NonNeg())
    optimizer = nnx.Optimizer(model, optax.chain(optax.adam(1e-2), project(**roles)), wrt=nnx.Param)
    ids = jnp.arange(10) % 7
    y = jnp.ones((10, 3))

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean((m(ids) - y) ** 2))(model)
        optimizer.update(model, grads)

    for _ in range(4):
        step(model, optimizer)
        rows = audit(nnx.state(model, nnx.Param), **roles)
        assert rows.problems(tol=1e-6) == [], str(rows)
    active = {r.name: r for r in rows if r.active}
    assert sorted(active) == [
        "embed/embedding",
        "hidden/bias",
        "hidden/kernel",
        "out/bias",
        "out/kernel",
    ]
    assert active["embed/embedding"].axes == (1,)


def test_projection_applied_after_the_update_lands_on_the_set():
    """The exact route: projection() on the new parameters; projecting again moves nothing but
    the last bits (the rounding of the scaling, on any device)."""
    params = random_tree(3, jnp.float32)
    roles = dict(kernel=wc.UnitNorm(), bias=wc.MaxNorm(0.5))
    tx = optax.adam(0.5)
    constrain = jax.jit(projection(**roles))
    state = tx.init(params)
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    params = constrain(optax.apply_updates(params, updates))
    eps = float(jnp.finfo(jnp.float32).eps)
    assert audit(params, **roles).problems(tol=2 * eps) == []
    again = constrain(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=4 * eps, atol=0)


def test_bfloat16_parameters_stay_bfloat16():
    params = random_tree(4, jnp.bfloat16)
    tx = optax.chain(optax.sgd(0.1), project(kernel=wc.MaxNorm(1.0)))
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert {leaf.dtype for leaf in jax.tree.leaves(new)} == {np.dtype(ml_dtypes.bfloat16)}


HALF = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}


@pytest.mark.parametrize("dtype", HALF.values(), ids=HALF.keys())
@pytest.mark.parametrize("far", [10.0, 100.0])
@pytest.mark.parametrize("constraint", [wc.MaxNorm(1.0), wc.UnitNorm()], ids=repr)
def test_half_precision_updates_land_exactly_on_the_projection(constraint, far, dtype):
    """Old weights 10 to 100 times outside the ball: the update comes back in float32 and
    apply_updates rounds once, onto the projected value, bit for bit (in the parameters'
    dtype, the difference used to round and miss by a rounding of the old entry)."""
    rng = np.random.default_rng(int(far))
    params = {"Dense_0": {"kernel": jnp.asarray(rng.standard_normal((64, 8)) * far, dtype)}}
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params)
    raw, _ = optax.sgd(1e-2).update(grads, optax.sgd(1e-2).init(params), params)
    want = projection(kernel=constraint)(optax.apply_updates(params, raw))["Dense_0"]["kernel"]
    for tx in (
        optax.chain(optax.sgd(1e-2), project(kernel=constraint)),
        constrained(optax.sgd(1e-2), kernel=constraint),
    ):
        updates, _ = tx.update(grads, tx.init(params), params)  # eager: the same roundings
        assert updates["Dense_0"]["kernel"].dtype == jnp.float32
        landed = optax.apply_updates(params, updates)["Dense_0"]["kernel"]
        assert landed.dtype == dtype
        np.testing.assert_array_equal(np.asarray(landed, np.float32), np.asarray(want, np.float32))
        assert audit({"Dense_0": {"kernel": landed}}, kernel=constraint).problems() == []


@pytest.mark.parametrize("far", [1.0, 1e2, 1e4])
def test_float32_updates_land_within_half_an_ulp_of_the_larger_entry(far):
    """The documented bound of project() in float32: one float32 addition cannot land on every
    target, so a moved entry lands within half a unit in the last place of
    max(|old|, |projected|); projection() after the update is exact."""
    rng = np.random.default_rng(7)
    params = {"Dense_0": {"kernel": jnp.asarray(rng.standard_normal((64, 8)) * far, jnp.float32)}}
    grads = jax.tree.map(jnp.ones_like, params)
    tx = constrained(optax.sgd(1e-3), kernel=wc.UnitNorm())
    updates, _ = tx.update(grads, tx.init(params), params)
    landed = np.asarray(optax.apply_updates(params, updates)["Dense_0"]["kernel"], np.float64)
    stepped = optax.apply_updates(params, jax.tree.map(lambda g: -1e-3 * g, grads))
    want = np.asarray(projection(kernel=wc.UnitNorm())(stepped)["Dense_0"]["kernel"], np.float64)
    old = np.abs(np.asarray(params["Dense_0"]["kernel"], np.float64))
    half_ulp = np.spacing(np.maximum(old, np.abs(want)).astype(np.float32)) / 2
    assert np.all(np.abs(landed - want) <= half_ulp)


def test_constrained_wraps_the_optimizer_and_keeps_its_state():
    params = random_tree(5, jnp.float32)
    roles = dict(kernel=wc.MaxNorm(0.5), bias=wc.NonNeg())
    grads = jax.tree.map(jnp.ones_like, params)
    adam = optax.inject_hyperparams(optax.adam)(learning_rate=0.3)
    wrapped, chained = constrained(adam, **roles), optax.chain(adam, project(**roles))
    state, chain_state = wrapped.init(params), chained.init(params)
    assert state.hyperparams["learning_rate"] == jnp.float32(0.3)  # tx's own state
    p, q = params, params
    for _ in range(3):
        u, state = jax.jit(wrapped.update)(grads, state, p)
        v, chain_state = jax.jit(chained.update)(grads, chain_state, q)
        p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q), strict=True):
            np.testing.assert_array_equal(a, b)
        assert audit(p, **roles).problems() == []
    with pytest.raises(ValueError, match=r"constrained\(...\) needs the parameters"):
        wrapped.update(grads, state)


def test_constrained_in_an_nnx_optimizer():
    model = NNXModel(nnx.Rngs(1))
    roles = dict(kernel=wc.MaxNorm(0.5), embedding=wc.UnitNorm(), bias=wc.NonNeg())
    optimizer = nnx.Optimizer(model, constrained(optax.adam(1e-1), **roles), wrt=nnx.Param)
    ids = jnp.arange(10) % 7

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean((m(ids) - 1.0) ** 2))(model)
        optimizer.update(model, grads)

    for _ in range(3):
        step(model, optimizer)
        assert audit(nnx.state(model, nnx.Param), **roles).problems() == []


def test_audit_allows_the_rounding_of_the_dtype():
    """An exact bfloat16 projection is inside its set up to bfloat16's rounding: the audit rows
    carry the dtype, and its default tolerance is the dtype's."""
    rng = np.random.default_rng(3)
    params = {"Dense_0": {"kernel": jnp.asarray(rng.standard_normal((64, 8)) * 10, jnp.bfloat16)}}
    projected = projection(kernel=wc.UnitNorm())(params)
    rows = audit(projected, kernel=wc.UnitNorm())
    assert rows[0].dtype == jnp.bfloat16 and rows[0].violation > 1e-5
    assert rows.problems() == []
    assert audit(params, kernel=wc.UnitNorm()).problems()  # the raw weights are flagged

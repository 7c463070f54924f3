"""Issue 21, JAX recipes: EDM2's forced weight normalization of a small Flax conv net, and
nGPT's normalization of a small transformer-like block, each in one or two calls on an existing
model, trained with optax in float32 and bfloat16; after every step every matrix is checked on
its sphere twice: by ``audit(..., strict=True)`` and by norms computed here in float64."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weight_constraints as wc
from weight_constraints.adapters.optax import audit, constrained, projection

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
STEPS = 12


def norms(x, axes):
    return np.sqrt(np.sum(np.asarray(x, np.float64) ** 2, axis=axes))


def assert_on_sphere(leaf, axes, radius, dtype):
    """Every node of ``leaf`` (norms over ``axes``) within four roundings of ``dtype`` of
    ``radius``, in float64 on the host (a float32 projection lands within a few roundings: up
    to 2.7 measured for these nodes; the audit's tolerance is ``tol=1e-5`` there)."""
    eps = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(norms(leaf, axes), radius, rtol=4 * eps, atol=0)


def train(loss, params, tx, batches, check):
    """``STEPS`` jitted steps of ``tx``; ``check(params)`` after each; the losses."""
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    losses = []
    for x, y in batches:
        params, state, value = step(params, state, x, y)
        check(params)
        losses.append(float(value))
    return params, losses


def in_dtype(params, dtype):
    return jax.tree.map(lambda p: p.astype(dtype), params)


# -- EDM2: forced weight normalization of a conv net -----------------------------------------------


class ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.silu(nn.Conv(8, (3, 3))(x))
        x = nn.silu(nn.Conv(16, (3, 3), strides=2)(x))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


def image_batches(seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(STEPS):
        yield (
            jnp.asarray(rng.standard_normal((8, 8, 8, 3)), jnp.float32),
            jnp.asarray(rng.integers(0, 10, 8)),
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_edm2_forced_weight_normalization(dtype):
    model = ConvNet()
    x0 = jnp.zeros((1, 8, 8, 3))
    params = in_dtype(model.init(jax.random.key(0), x0)["params"], DTYPES[dtype])

    def loss(params, x, y):
        logits = model.apply({"params": params}, x).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    # The recipe: one constraint, sqrt(fan_in) resolved for each kernel.
    forced = wc.MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)")
    params = projection(kernel=forced)(params)  # once, at init
    tx = constrained(optax.adam(1e-2), kernel=forced)  # after every step

    kernels = {  # path: (axes of one node, fan_in)
        "Conv_0": ((0, 1, 2), 3 * 3 * 3),
        "Conv_1": ((0, 1, 2), 3 * 3 * 8),
        "Dense_0": ((0,), 16),
    }

    def check(params):
        audit(params, kernel=forced, strict=True)
        for name, (axes, fan_in) in kernels.items():
            kernel = params[name]["kernel"]
            assert kernel.dtype == DTYPES[dtype]
            assert_on_sphere(kernel, axes, math.sqrt(fan_in), DTYPES[dtype])

    check(params)
    start = jax.tree.map(np.asarray, params)
    params, losses = train(loss, params, tx, image_batches(), check)
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), start, params)
    assert all(moved["Conv_0"].values()) and all(moved["Dense_0"].values())  # it trains
    assert all(map(math.isfinite, losses))
    rows = {row.name: row for row in audit(params, kernel=forced)}
    assert rows["Conv_1/kernel"].constraint.resolved(rows["Conv_1/kernel"].shape).max_value == (
        math.sqrt(72)
    )


# -- nGPT: every matrix on its unit sphere along the embedding dimension ---------------------------

VOCAB, D, SEQ = 32, 16, 8


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        q = nn.Dense(D, use_bias=False, name="q")(x)
        k = nn.Dense(D, use_bias=False, name="k")(x)
        v = nn.Dense(D, use_bias=False, name="v")(x)
        causal = jnp.tril(jnp.ones((SEQ, SEQ), bool))
        scores = jnp.where(causal, q @ k.swapaxes(-1, -2) * math.sqrt(D), -1e9)
        x = x + nn.Dense(D, use_bias=False, name="out")(nn.softmax(scores) @ v)
        h = nn.silu(nn.Dense(4 * D, use_bias=False, name="up")(x))
        return x + nn.Dense(D, use_bias=False, name="down")(h)


class TinyGPT(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(VOCAB, D, name="embed")(tokens)
        for i in range(2):
            x = Block(name=f"block_{i}")(x)
        return nn.Dense(VOCAB, use_bias=False, name="head")(x)


def token_batches(seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(STEPS):
        tokens = jnp.asarray(rng.integers(0, VOCAB, (4, SEQ + 1)))
        yield tokens[:, :-1], tokens[:, 1:]


# The axis of each matrix that runs along the embedding dimension (D): nodes per output unit
# for the embedding, q/k/v, up and the head; per input unit for out and down.
EMBEDDING_AXIS = {
    "embed/embedding": 1,
    **{f"block_{i}/{n}/kernel": 0 for i in range(2) for n in ("q", "k", "v", "up")},
    **{f"block_{i}/{n}/kernel": 1 for i in range(2) for n in ("out", "down")},
    "head/kernel": 0,
}


@pytest.mark.parametrize("dtype", DTYPES)
def test_ngpt_normalization(dtype):
    model = TinyGPT()
    tokens0 = jnp.zeros((1, SEQ), jnp.int32)
    params = in_dtype(model.init(jax.random.key(0), tokens0)["params"], DTYPES[dtype])

    def loss(params, x, y):
        logits = model.apply({"params": params}, x).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    # The recipe: unit norm along the embedding dimension, one norm per input unit for the
    # projections into the embedding space (the embedding table takes the kernel's UnitNorm).
    ngpt = dict(kernel=wc.UnitNorm(), per_input=r".*/(out|down)/kernel")
    params = projection(**ngpt)(params)
    tx = constrained(optax.adam(1e-2), **ngpt)

    def check(params):
        audit(params, **ngpt, strict=True)
        for path, axis in EMBEDDING_AXIS.items():
            leaf = params
            for name in path.split("/"):
                leaf = leaf[name]
            assert leaf.dtype == DTYPES[dtype] and leaf.shape[axis] == D, path
            assert_on_sphere(leaf, axis, 1.0, DTYPES[dtype])

    check(params)
    rows = {row.name: row for row in audit(params, **ngpt)}
    assert {path: rows[path].axes for path in EMBEDDING_AXIS} == {
        path: (axis,) for path, axis in EMBEDDING_AXIS.items()
    }
    assert len(rows) == len(EMBEDDING_AXIS)  # every matrix is constrained
    params, losses = train(loss, params, tx, token_batches(), check)
    assert all(map(math.isfinite, losses)) and losses[-1] != losses[0]  # it trains

"""Issue 21, JAX: ``per_input=`` (one norm per input unit for the kernels it names, never
guessed) and bounds given as rules of each leaf's shape (``"sqrt(fan_in)"``) through
projection, constrained, project, audit and norm_stats: per leaf, under jax.jit, in float32,
bfloat16, float16 and NumPy, stacked layers read one layer at a time."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from flax import nnx

import weight_constraints as wc
from tests.jax.test_layers import leaf_at, randomised
from weight_constraints.adapters.optax import (
    audit,
    constrained,
    norm_stats,
    project,
    projection,
)

KEY = jax.random.key(0)
EDM2 = wc.MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)")
DOWN = r".*/(out|down)/kernel"


def core(constraint, axes):
    """``constraint`` over ``axes``: the NumPy core's projection, to check against."""
    return constraint.with_axis(axes)


def norms(x, axes):
    return np.sqrt(np.sum(np.asarray(x, np.float64) ** 2, axis=axes))


def mlp_tree(dtype=jnp.float32):
    """A block as Flax linen lays it out: ``block/{up,out,down}/kernel`` beside their biases."""
    rng = np.random.default_rng(0)
    shapes = {"up": (4, 8), "out": (4, 4), "down": (8, 4)}
    return {
        "block": {
            name: {
                "kernel": jnp.asarray(3 * rng.standard_normal(shape), dtype),
                "bias": jnp.asarray(rng.standard_normal(shape[1]), dtype),
            }
            for name, shape in shapes.items()
        }
    }


# -- per_input -------------------------------------------------------------------------------------


def test_per_input_kernels_take_one_norm_per_input_unit_under_jit():
    params = mlp_tree()
    out = jax.jit(projection(kernel=wc.UnitNorm(), per_input=DOWN))(params)
    for name, axis in (("up", 0), ("out", 1), ("down", 1)):
        kernel = np.asarray(params["block"][name]["kernel"])
        want = core(wc.UnitNorm(), axis)(kernel)
        np.testing.assert_allclose(out["block"][name]["kernel"], want, rtol=1e-6)
        np.testing.assert_array_equal(out["block"][name]["bias"], params["block"][name]["bias"])
    rows = {row.name: row for row in audit(out, kernel=wc.UnitNorm(), per_input=DOWN)}
    assert rows["block/down/kernel"].axes == (1,)
    assert rows["block/down/kernel"].constraint == wc.UnitNorm(axis=1)
    assert rows["block/down/kernel"].note == "kernel, per input"
    assert rows["block/up/kernel"].axes == (0,) and rows["block/up/kernel"].note == "kernel"
    stats = norm_stats(out, kernel=wc.UnitNorm(), per_input=DOWN)
    assert stats["block/down/kernel/norm_min"] == pytest.approx(1.0, abs=1e-6)
    assert stats["block/down/kernel/norm_max"] == pytest.approx(1.0, abs=1e-6)
    unprojected = norm_stats(params, kernel=wc.UnitNorm(), per_input=DOWN)
    kernel = params["block"]["down"]["kernel"]
    assert unprojected["block/down/kernel/norm_max"] == pytest.approx(norms(kernel, 1).max())


@pytest.mark.parametrize("how", ["constrained", "project"])
def test_per_input_through_the_optax_transformations(how):
    params = mlp_tree()
    roles = dict(kernel=wc.UnitNorm(), per_input=[r".*/out/kernel", r".*/down/kernel"])
    if how == "constrained":
        tx = constrained(optax.sgd(0.1), **roles)
    else:
        tx = optax.chain(optax.sgd(0.1), project(**roles))
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(3):
        grads = jax.tree.map(lambda p, t=t: jnp.full_like(p, t + 1.0), params)
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        for name, axis in (("up", 0), ("out", 1), ("down", 1)):
            np.testing.assert_allclose(norms(params["block"][name]["kernel"], axis), 1, atol=1e-6)
    audit(params, **roles, strict=True)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        h = nn.relu(nn.Dense(16, name="up")(x))
        return x + nn.Dense(x.shape[-1], name="down")(h), None


def scanned_mlp(layers=3, d=4):
    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            scan = nn.scan(
                MLP, variable_axes={"params": 0}, split_rngs={"params": True}, length=layers
            )
            return scan(name="blocks")(x, None)[0]

    return randomised(Stack().init(KEY, jnp.ones((2, d)))["params"])


def test_stacked_per_input_is_read_on_each_layers_own_kernel():
    params = scanned_mlp(layers=3, d=4)  # blocks/down/kernel (3, 16, 4), blocks/up (3, 4, 16)
    roles = dict(kernel=EDM2, per_input=DOWN, stacked={"blocks/.*": 1})
    with pytest.raises(ValueError, match=r"blocks/down/kernel .*stacked"):
        projection(kernel=EDM2, per_input=DOWN)(params)  # an undeclared stack still raises
    out = jax.jit(projection(**roles))(params)
    down, up = out["blocks"]["down"]["kernel"], out["blocks"]["up"]["kernel"]
    # One norm per input unit of each layer: over the layer's out axis (2), sqrt(4) each; never
    # over the stacked axis (0), which would give sqrt(3 * 4), nor one norm per (layer, out).
    np.testing.assert_allclose(norms(down, 2), 2.0, rtol=1e-6)
    assert norms(down, 2).shape == (3, 16)
    np.testing.assert_allclose(norms(up, 1), 2.0, rtol=1e-6)  # per node: over in = 4
    for layer in range(3):  # each layer is what the core gives for that layer alone
        kernel = np.asarray(params["blocks"]["down"]["kernel"][layer])
        want = core(EDM2, 1)(kernel)
        np.testing.assert_allclose(down[layer], want, rtol=1e-6)
    rows = {row.name: row for row in audit(out, **roles, strict=True)}
    row = rows["blocks/down/kernel"]
    assert row.axes == (2,) and row.note == "kernel, stacked, per input"
    assert row.constraint.resolved(row.shape).max_value == 2.0  # fan_in 4: the layer's out
    assert rows["blocks/up/kernel"].constraint.resolved((3, 4, 16)).min_value == 2.0


def test_per_input_on_nnx_state():
    class Block(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.up = nnx.Linear(4, 8, use_bias=False, rngs=rngs)
            self.down = nnx.Linear(8, 4, use_bias=False, rngs=rngs)

    model = Block(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    out = projection(kernel=wc.UnitNorm(), per_input=r"down/kernel")(state)
    nnx.update(model, out)
    np.testing.assert_allclose(norms(model.down.kernel[...], 1), 1, rtol=1e-6)
    np.testing.assert_allclose(norms(model.up.kernel[...], 0), 1, rtol=1e-6)


def test_per_input_on_recurrent_kernels():
    cell = nn.LSTMCell(4)
    carry = cell.initialize_carry(jax.random.key(1), (1, 3))
    params = randomised(cell.init(KEY, carry, jnp.ones((1, 3)))["params"])
    roles = dict(kernel=wc.UnitNorm(), recurrent=wc.MaxNorm(0.5), per_input=r"h./kernel")
    out = projection(**roles)(params)
    for gate in "ifgo":  # hidden (4, 4): one norm per input unit; input (3, 4): per output
        want = core(wc.MaxNorm(0.5), 1)(np.asarray(params[f"h{gate}"]["kernel"]))
        np.testing.assert_allclose(out[f"h{gate}"]["kernel"], want, rtol=1e-6)
        np.testing.assert_allclose(norms(out[f"i{gate}"]["kernel"], 0), 1, rtol=1e-6)
    rows = {row.name: row for row in audit(out, **roles, strict=True)}
    assert rows["hf/kernel"].note == "recurrent, per input"


def test_a_per_input_pattern_that_matches_no_leaf_raises():
    params = mlp_tree()
    with pytest.raises(ValueError, match=r"per_input pattern '.\*/proj/kernel' matches no param"):
        projection(kernel=wc.UnitNorm(), per_input=r".*/proj/kernel")(params)
    with pytest.raises(ValueError, match=r"pattern 'Down' matches no parameter"):
        audit(params, kernel=wc.UnitNorm(), per_input=[DOWN, "Down"])
    # Matching is fresh on each tree: a pattern that matched one tree raises on a tree it misses.
    constrain = projection(kernel=wc.UnitNorm(), per_input=DOWN)
    constrain(params)
    with pytest.raises(ValueError, match="matches no parameter"):
        constrain({"Dense_0": {"kernel": jnp.ones((3, 4))}})


def test_per_input_on_a_kernel_that_is_not_2d_raises_naming_it():
    conv = {"Conv_0": {"kernel": jnp.ones((3, 3, 2, 8)), "bias": jnp.ones(8)}}
    with pytest.raises(
        ValueError, match=r"Conv_0/kernel: one norm per input unit .*\(3, 3, 2, 8\)"
    ):
        projection(kernel=wc.UnitNorm(), per_input="Conv_0/kernel")(conv)
    stacked = {"blocks": {"Conv_0": {"kernel": jnp.ones((2, 3, 3, 2, 8))}}}
    with pytest.raises(ValueError, match=r"blocks/Conv_0/kernel: .*stacked axis is removed"):
        projection(kernel=wc.UnitNorm(), per_input=".*kernel", stacked={"blocks/.*": 1})(stacked)


@pytest.mark.parametrize(
    "roles, pattern, message",
    [
        (dict(kernel=wc.UnitNorm(), bias=wc.MaxNorm(1.0)), r".*/down/.*", "has the role bias"),
        (dict(kernel=wc.UnitNorm()), r".*/down/bias", "has the role bias"),
        (dict(bias=wc.MaxNorm(1.0)), DOWN, r"no constraint is asked for its role \(kernel=\)"),
        (dict(kernel=wc.UnitNorm()), r"Embed_0/embedding", "has the role embedding"),
        (dict(kernel=wc.UnitNorm()), r"LayerNorm_0/scale", "has no role"),
        (dict(kernel=wc.UnitNorm()), r"step", "is not floating-point"),
        (
            dict(kernel=wc.UnitNorm(), rules={r".*/down/kernel": (wc.UnitNorm(), 1)}),
            DOWN,
            "is given its axes by the rule",
        ),
    ],
)
def test_per_input_on_a_leaf_that_is_not_a_constrained_kernel_raises(roles, pattern, message):
    params = {
        **mlp_tree(),
        "Embed_0": {"embedding": jnp.ones((10, 4))},
        "LayerNorm_0": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
        "step": jnp.zeros((), jnp.int32),
    }
    with pytest.raises(ValueError, match=rf"is matched by per_input but {message}"):
        projection(**roles, per_input=pattern)(params)


def test_an_explicit_axis_must_name_the_per_input_axis():
    params = mlp_tree()
    for axis in (1, -1, (1,)):
        only_down = dict(per_input=r".*/down/kernel", rules={r".*/(up|out)/kernel": None})
        out = projection(kernel=wc.UnitNorm(axis=axis), **only_down)(params)
        np.testing.assert_allclose(norms(out["block"]["down"]["kernel"], 1), 1, rtol=1e-6)
    with pytest.raises(ValueError, match=r"explicit axis=0, but one norm per input unit of"):
        projection(kernel=wc.UnitNorm(axis=0), per_input=DOWN)(params)


def test_malformed_per_input_raises_when_built():
    with pytest.raises(TypeError, match="per_input= takes the paths"):
        projection(kernel=wc.UnitNorm(), per_input=True)
    with pytest.raises(ValueError, match="not a regular expression"):
        constrained(optax.sgd(0.1), kernel=wc.UnitNorm(), per_input="(down")
    with pytest.raises(ValueError, match="nothing to project"):
        projection(per_input=DOWN)


# -- bounds given as rules of the leaf's shape -----------------------------------------------------

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def conv_net_tree(dtype):
    """A Conv (3, 3, 2, 8), a Dense (16, 4) and an Embed (10, 6): three fan_ins (18, 16, 6)."""
    rng = np.random.default_rng(1)
    leaf = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)  # noqa: E731
    return {
        "Conv_0": {"kernel": leaf(3, 3, 2, 8), "bias": leaf(8)},
        "Dense_0": {"kernel": leaf(16, 4), "bias": leaf(4)},
        "Embed_0": {"embedding": leaf(10, 6)},
    }


FAN_INS = {"Conv_0/kernel": ((0, 1, 2), 18), "Dense_0/kernel": (0, 16), "Embed_0/embedding": (1, 6)}


@pytest.mark.parametrize("dtype", DTYPES)
def test_rules_resolve_per_leaf_under_jit(dtype):
    params = conv_net_tree(DTYPES[dtype])
    out = jax.jit(projection(kernel=EDM2))(params)
    eps = float(jnp.finfo(DTYPES[dtype]).eps)
    for path, (axes, fan_in) in FAN_INS.items():
        leaf = leaf_at(out, path)
        assert leaf.dtype == DTYPES[dtype]
        np.testing.assert_allclose(norms(leaf, axes), math.sqrt(fan_in), rtol=2 * eps)
    np.testing.assert_array_equal(out["Dense_0"]["bias"], params["Dense_0"]["bias"])
    rows = {row.name: row for row in audit(out, kernel=EDM2, strict=True)}
    for path, (_, fan_in) in FAN_INS.items():  # shown as the rule, measured as resolved
        assert rows[path].constraint.rules() == {
            "min_value": "sqrt(fan_in)",
            "max_value": "sqrt(fan_in)",
        }
        assert rows[path].constraint.resolved(rows[path].shape).max_value == math.sqrt(fan_in)
    assert "sqrt(fan_in)" in str(audit(out, kernel=EDM2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("how", ["constrained", "project"])
def test_rules_hold_after_every_step(dtype, how):
    params = conv_net_tree(DTYPES[dtype])
    if how == "constrained":
        tx = constrained(optax.adam(0.05), kernel=EDM2)
    else:
        tx = optax.chain(optax.adam(0.05), project(kernel=EDM2))
    state = tx.init(params)
    step = jax.jit(tx.update)
    rng = np.random.default_rng(2)
    for _ in range(5):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        audit(params, kernel=EDM2, strict=True)  # every node within the dtype's rounding
    assert all(leaf.dtype == DTYPES[dtype] for leaf in jax.tree.leaves(params))


def test_half_precision_rules_accumulate_in_float32():
    # Nodes of 1024 entries of 16: a sum of squares of 262144, beyond float16's 65504. The
    # projection onto sqrt(1024) = 32 gives entries of 1 exactly when it sums in float32.
    params = {"Dense_0": {"kernel": jnp.full((1024, 4), 16.0, jnp.float16)}}
    out = jax.jit(projection(kernel=EDM2))(params)["Dense_0"]["kernel"]
    assert out.dtype == jnp.float16
    np.testing.assert_array_equal(np.asarray(out, np.float32), 1.0)
    tx = constrained(optax.sgd(1.0), kernel=EDM2)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    landed = optax.apply_updates(params, updates)["Dense_0"]["kernel"]
    np.testing.assert_array_equal(np.asarray(landed, np.float32), 1.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, ml_dtypes.bfloat16])
def test_rules_on_numpy_leaves(dtype):
    rng = np.random.default_rng(3)
    params = {
        "Dense_0": {"kernel": rng.standard_normal((9, 3)).astype(dtype)},
        "blocks": {"down": {"kernel": rng.standard_normal((2, 8, 4)).astype(dtype)}},
    }
    roles = dict(kernel=EDM2, per_input=DOWN, stacked={"blocks/.*": 1})
    out = projection(**roles)(params)
    dense, down = out["Dense_0"]["kernel"], out["blocks"]["down"]["kernel"]
    assert isinstance(dense, np.ndarray) and dense.dtype == dtype and down.dtype == dtype
    rtol = 1e-12 if dtype == np.float64 else 2 * float(ml_dtypes.finfo(dtype).eps)
    np.testing.assert_allclose(norms(dense, 0), 3.0, rtol=rtol)  # sqrt(9)
    np.testing.assert_allclose(norms(down, 2), 2.0, rtol=rtol)  # sqrt(4), per input, per layer
    audit(out, **roles, strict=True)


def test_the_audit_measures_against_the_resolved_bound():
    params = {"Dense_0": {"kernel": jnp.asarray(np.eye(16, 4), jnp.float32)}}  # node norms 1
    rows = audit(params, kernel=EDM2)
    assert rows[0].violation == pytest.approx(3.0)  # sqrt(16) - 1
    with pytest.raises(RuntimeError, match=r"Dense_0/kernel .*sqrt\(fan_in\)"):
        audit(params, kernel=EDM2, strict=True)
    stats = norm_stats(params, kernel=EDM2)
    assert stats["Dense_0/kernel/violation"] == pytest.approx(3.0)
    assert stats["Dense_0/kernel/norm_max"] == pytest.approx(1.0)


def test_rules_in_rules_resolve_over_the_rules_axes():
    params = {"encoder": {"w": jnp.ones((3, 3, 5))}}
    out = projection(rules={"encoder/w": (EDM2, (0, 1))})(params)
    np.testing.assert_allclose(norms(out["encoder"]["w"], (0, 1)), 3.0, rtol=1e-6)  # sqrt(9)


def test_a_resolved_bound_beyond_the_dtype_raises_naming_the_leaf():
    huge = wc.MaxNorm("1000 * fan_in")  # 128000 on 128 entries: beyond float16's 65504
    params = {"Dense_0": {"kernel": jnp.ones((128, 4), jnp.float16)}}
    with pytest.raises(ValueError, match=r"Dense_0/kernel: max_value=128000.0 .* float16"):
        projection(kernel=huge)(params)
    tx = constrained(optax.sgd(0.1), kernel=huge)
    with pytest.raises(ValueError, match=r"Dense_0/kernel: max_value=128000.0"):
        jax.jit(tx.update)(params, tx.init(params), params)
    with pytest.raises(ValueError, match=r"Dense_0/kernel: max_value=128000.0"):
        audit(params, kernel=huge)
    wide = {"Dense_0": {"kernel": jnp.ones((128, 4), jnp.float32)}}
    assert projection(kernel=huge)(wide)["Dense_0"]["kernel"].dtype == jnp.float32
    # Stacked axes are not part of fan_in: 70 layers of (1000, 4) have fan_in 1000, whose
    # bound fits float16 (70000 would not), and 0.01 * fan_in = 10 (not 700) is their norm.
    stack = {"blocks": {"Dense_0": {"kernel": jnp.ones((70, 1000, 4), jnp.float16)}}}
    projection(kernel=wc.MaxNorm("fan_in"), stacked={"blocks/.*": 1})(stack)
    out = projection(kernel=wc.MaxNorm("0.01 * fan_in"), stacked={"blocks/.*": 1})(stack)
    np.testing.assert_allclose(norms(out["blocks"]["Dense_0"]["kernel"], 1), 10.0, rtol=2e-3)

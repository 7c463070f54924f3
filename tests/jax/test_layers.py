"""Per-node axes of every Flax layer type, linen and NNX: the axes the adapter picks are the ones
whose slices each feed exactly one output unit (checked by zeroing nodes and watching the output),
and the projection constrains each such node."""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import weight_constraints as wc
from weight_constraints.adapters.optax import audit, project, projection

KEY = jax.random.key(0)


def path_of(key_path) -> str:
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in key_path]
    if names and names[-1] == "value":  # nnx.Variable
        names = names[:-1]
    return "/".join(names)


def leaf_at(tree, path: str):
    found = [x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if path_of(p) == path]
    assert len(found) == 1, path
    return found[0]


def replace_at(tree, path: str, value):
    return jax.tree_util.tree_map_with_path(lambda p, x: value if path_of(p) == path else x, tree)


def randomised(tree):
    """Every floating leaf drawn from N(0, 1) on the host (no bias or weight is zero); shapes
    may come from ``jax.eval_shape``, so building a case compiles nothing."""
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda x: (
            jnp.asarray(rng.standard_normal(x.shape), x.dtype)
            if jnp.issubdtype(x.dtype, jnp.floating)
            else x
        ),
        tree,
    )


class Wrap(nn.Module):
    """One layer, made inside a compact method, so that linen names it as it does in a model
    (``Dense_0``, ``Conv_0``...)."""

    make: object

    @nn.compact
    def __call__(self, x):
        return self.make()(x)


def linen_case(make, x):
    module = Wrap(make)
    params = randomised(jax.eval_shape(module.init, KEY, x)["params"])
    return params, jax.jit(lambda p: module.apply({"params": p}, x))


def nnx_case(make, x):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: make(rngs=nnx.Rngs(0))))
    state = randomised(state)
    return state, jax.jit(lambda s: nnx.merge(graphdef, s)(x))


X2 = jax.random.normal(jax.random.key(1), (2, 3))
X_PAIRS = jax.random.normal(jax.random.key(2), (2, 2, 4))
X1D = jax.random.normal(jax.random.key(3), (1, 6, 2))
X2D = jax.random.normal(jax.random.key(4), (1, 5, 5, 2))
X3D = jax.random.normal(jax.random.key(5), (1, 4, 4, 4, 2))

# (id, builder, path of the weight, its per-node axes). Each node of the weight feeds the output
# unit indexed by the node's trailing output index.
LAYERS = [
    ("Dense", partial(linen_case, partial(nn.Dense, 5), X2), "Dense_0/kernel", (0,)),
    (
        "Dense-no-bias",
        partial(linen_case, partial(nn.Dense, 5, use_bias=False), X2),
        "Dense_0/kernel",
        (0,),
    ),
    (
        "DenseGeneral-out",
        partial(linen_case, partial(nn.DenseGeneral, (2, 4)), X2),
        "DenseGeneral_0/kernel",
        (0,),
    ),
    (
        "DenseGeneral-in",
        partial(linen_case, partial(nn.DenseGeneral, 3, axis=(-2, -1)), X_PAIRS),
        "DenseGeneral_0/kernel",
        (0, 1),
    ),
    ("Conv1D", partial(linen_case, partial(nn.Conv, 4, (3,)), X1D), "Conv_0/kernel", (0, 1)),
    ("Conv2D", partial(linen_case, partial(nn.Conv, 4, (3, 3)), X2D), "Conv_0/kernel", (0, 1, 2)),
    (
        "Conv2D-no-bias",
        partial(linen_case, partial(nn.Conv, 4, (3, 3), use_bias=False), X2D),
        "Conv_0/kernel",
        (0, 1, 2),
    ),
    (
        "Conv3D",
        partial(linen_case, partial(nn.Conv, 3, (2, 2, 2)), X3D),
        "Conv_0/kernel",
        (0, 1, 2, 3),
    ),
    (
        "ConvTranspose",
        partial(linen_case, partial(nn.ConvTranspose, 4, (3, 3)), X2D),
        "ConvTranspose_0/kernel",
        (0, 1, 2),
    ),
    (
        "ConvTranspose-transpose_kernel",  # (*k, out, in), told apart by its bias (out,)
        partial(linen_case, partial(nn.ConvTranspose, 4, (3, 3), transpose_kernel=True), X2D),
        "ConvTranspose_0/kernel",
        (0, 1, 3),
    ),
    (
        "Conv1D-named-query",  # not an attention projection: no key, value, out beside it
        partial(linen_case, partial(nn.Conv, 4, (3,), name="query"), X1D),
        "query/kernel",
        (0, 1),
    ),
    (
        "ConvLocal",
        partial(linen_case, partial(nn.ConvLocal, 3, (2,)), X1D),
        "ConvLocal_0/kernel",
        (1,),
    ),
    ("nnx.Linear", partial(nnx_case, partial(nnx.Linear, 3, 5), X2), "kernel", (0,)),
    (
        "nnx.LinearGeneral",
        partial(nnx_case, partial(nnx.LinearGeneral, 3, (2, 4)), X2),
        "kernel",
        (0,),
    ),
    ("nnx.Conv", partial(nnx_case, partial(nnx.Conv, 2, 4, (3, 3)), X2D), "kernel", (0, 1, 2)),
    (
        "nnx.ConvTranspose",
        partial(nnx_case, partial(nnx.ConvTranspose, 2, 4, (3,)), X1D),
        "kernel",
        (0, 1),
    ),
]


@pytest.mark.parametrize("build, path, axes", [c[1:] for c in LAYERS], ids=[c[0] for c in LAYERS])
def test_nodes_feed_one_output_unit_each(build, path, axes):
    params, apply = build()
    kernel = leaf_at(params, path)
    kept = [i for i in range(kernel.ndim) if i not in axes]
    base = np.asarray(apply(params))
    nodes = list(np.ndindex(*(kernel.shape[i] for i in kept)))
    for node in (nodes[0], nodes[len(nodes) // 2], nodes[-1]):
        index = [slice(None)] * kernel.ndim
        for i, value in zip(kept, node, strict=True):
            index[i] = value
        changed = np.asarray(apply(replace_at(params, path, kernel.at[tuple(index)].set(0.0))))
        changed = changed != base
        expected = np.zeros_like(changed)
        expected[(..., *node)] = True
        assert changed.any() and not (changed & ~expected).any(), node


ROLE_CONSTRAINTS = [wc.MaxNorm(0.5), wc.UnitNorm(), wc.MinMaxNorm(1.0, 2.0)]


@pytest.mark.parametrize(
    "build, path, axes, constraint",
    [(*c[1:], ROLE_CONSTRAINTS[i % 3]) for i, c in enumerate(LAYERS)],
    ids=[c[0] for c in LAYERS],
)
def test_projection_uses_the_per_node_axes(build, path, axes, constraint):
    params, _ = build()
    rows = {row.name: row for row in audit(params, kernel=constraint)}
    assert rows[path].axes == axes and rows[path].note == "kernel"
    projected = jax.jit(projection(kernel=constraint))(params)
    bound = type(constraint).from_config({**constraint.get_config(), "axis": axes})
    expected = bound(np.asarray(leaf_at(params, path)))
    np.testing.assert_allclose(leaf_at(projected, path), expected, rtol=2e-6, atol=1e-7)
    assert audit(projected, kernel=constraint).problems(tol=1e-5) == []


def test_embed_one_norm_per_embedding_vector():
    ids = jnp.array([0, 3, 3, 7])
    for params, path in (
        (Wrap(lambda: nn.Embed(10, 4)).init(KEY, ids)["params"], "Embed_0/embedding"),
        (nnx.state(nnx.Embed(10, 4, rngs=nnx.Rngs(0)), nnx.Param), "embedding"),
    ):
        table = leaf_at(projection(kernel=wc.UnitNorm())(params), path)  # embedding <- kernel
        np.testing.assert_allclose(wc.node_norms(np.asarray(table), axis=1), 1.0, rtol=1e-6)
        separate = projection(embedding=wc.MaxNorm(0.1))(params)
        assert np.all(wc.node_norms(np.asarray(leaf_at(separate, path)), axis=1) <= 0.1 + 1e-7)
        with pytest.raises(ValueError, match="no parameter has the role kernel"):
            projection(kernel=wc.MaxNorm(9.0), embedding=wc.MaxNorm(0.1))(params)


@pytest.mark.parametrize("flavour", ["linen", "nnx"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_attention_projections(flavour, use_bias):
    if flavour == "linen":
        module = nn.MultiHeadDotProductAttention(num_heads=2, use_bias=use_bias)
        params = module.init(KEY, jnp.ones((1, 3, 8)))["params"]
    else:
        module = nnx.MultiHeadAttention(
            num_heads=2, in_features=8, use_bias=use_bias, decode=False, rngs=nnx.Rngs(0)
        )
        params = nnx.state(module, nnx.Param)
    bias = wc.MaxNorm(1.0) if use_bias else None
    rows = {row.name: row for row in audit(params, kernel=wc.MaxNorm(1.0), bias=bias)}
    for name in ("query", "key", "value"):
        assert rows[f"{name}/kernel"].axes == (0,)  # (in, heads, head_dim)
    assert rows["out/kernel"].axes == (0, 1)  # (heads, head_dim, out)
    if use_bias:
        assert rows["query/bias"].axes == (0, 1) and rows["out/bias"].axes == (0,)


CELLS = [
    ("LSTMCell", lambda: nn.LSTMCell(4)),
    ("GRUCell", lambda: nn.GRUCell(4)),
    ("OptimizedLSTMCell", lambda: nn.OptimizedLSTMCell(4)),
    ("SimpleCell", lambda: nn.SimpleCell(4)),
    ("MGUCell", lambda: nn.MGUCell(4)),
    ("nnx.LSTMCell", lambda: nnx.LSTMCell(3, 4, rngs=nnx.Rngs(0))),
    ("nnx.GRUCell", lambda: nnx.GRUCell(3, 4, rngs=nnx.Rngs(0))),
    ("nnx.OptimizedLSTMCell", lambda: nnx.OptimizedLSTMCell(3, 4, rngs=nnx.Rngs(0))),
    ("nnx.SimpleCell", lambda: nnx.SimpleCell(3, 4, rngs=nnx.Rngs(0))),
]


@pytest.mark.parametrize("make", [c[1] for c in CELLS], ids=[c[0] for c in CELLS])
def test_recurrent_cells_split_input_and_recurrent_kernels(make):
    if isinstance(cell := make(), nn.Module):
        x = jnp.ones((1, 3))
        carry = jax.eval_shape(lambda: cell.initialize_carry(KEY, x.shape))
        params = randomised(jax.eval_shape(cell.init, KEY, carry, x)["params"])
    else:
        params = randomised(nnx.state(cell, nnx.Param))
    kernel, recurrent = wc.MaxNorm(0.5), wc.UnitNorm()
    rows = [r for r in audit(params, kernel=kernel, recurrent=recurrent) if "kernel" in r.name]
    for row in rows:
        layer = row.name.split("/")[-2]
        hidden = layer.startswith("h") or layer == "dense_h"
        assert row.note == ("recurrent" if hidden else "kernel"), row
        assert type(row.constraint) is type(recurrent if hidden else kernel)
        assert row.axes == (0,)
    assert {r.note for r in rows} == {"kernel", "recurrent"}
    projected = projection(kernel=kernel, recurrent=recurrent)(params)
    for row in rows:
        norms = wc.node_norms(np.asarray(leaf_at(projected, row.name)), axis=0)
        if row.note == "recurrent":
            np.testing.assert_allclose(norms, 1.0, rtol=1e-6)
        else:
            assert np.all(norms <= 0.5 * (1 + 1e-6))


@pytest.mark.parametrize(
    "layer, x",
    [
        (nn.LayerNorm(), jnp.ones((2, 3))),
        (nn.GroupNorm(1), jnp.ones((2, 3))),
        (nn.RMSNorm(), jnp.ones((2, 3))),
        (nn.PReLU(), jnp.ones((2, 3))),
    ],
    ids=lambda v: type(v).__name__,
)
def test_normalisation_and_activation_parameters_have_no_role(layer, x):
    params = {"Dense_0": {"kernel": jnp.full((3, 3), 5.0), "bias": jnp.full(3, 5.0)}}
    params["norm"] = randomised(jax.eval_shape(layer.init, KEY, x)["params"])  # a user's name
    projected = projection(kernel=wc.MaxNorm(1.0), bias=wc.MaxNorm(1.0))(params)
    for a, b in zip(
        jax.tree.leaves(projected["norm"]), jax.tree.leaves(params["norm"]), strict=True
    ):
        assert a is b
    assert float(jnp.linalg.norm(projected["Dense_0"]["bias"])) == pytest.approx(1.0, rel=1e-6)


def test_batch_norm_state_and_rng_state_pass_through():
    model = nnx.Sequential(
        nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
        nnx.BatchNorm(4, rngs=nnx.Rngs(0)),
        nnx.Dropout(0.5, rngs=nnx.Rngs(1)),
    )
    _, state = nnx.split(model)  # parameters, batch statistics, RNG keys and counters
    state = jax.tree.map(lambda a: a + 9 if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
    projected = projection(kernel=wc.MaxNorm(1.0), bias=wc.NonNeg())(state)
    rows = {row.name: row for row in audit(state, kernel=wc.MaxNorm(1.0), bias=wc.NonNeg())}
    assert rows["layers/0/kernel"].active and rows["layers/0/bias"].active
    for name in ("layers/1/mean", "layers/1/var", "layers/1/scale", "layers/1/bias"):
        assert not rows[name].active
        assert leaf_at(projected, name) is leaf_at(state, name)
    assert rows["layers/2/rngs/count"].note == "not floating-point"
    assert type(projected) is type(state)


# -- names are not proof: a recurrent cell by its whole structure (issue 17, case 3b) ------------


class NamedLikeACell(nn.Module):
    """A block of one's own whose Dense layers are named like a SimpleCell's."""

    hidden_bias: bool = True
    hidden_in: int = 8

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(8, name="i")(x))
        return nn.Dense(8, use_bias=self.hidden_bias, name="h")(x[..., : self.hidden_in])


LOOKALIKES = {
    "i and h, both with a bias": lambda: NamedLikeACell().init(KEY, jnp.ones((1, 3))),
    "h without a bias, not square": lambda: NamedLikeACell(False, 5).init(KEY, jnp.ones((1, 3))),
    "GRU gate names, one missing": lambda: {
        "params": {
            name: {"kernel": jnp.ones((4 if name.startswith("h") else 3, 4))}
            for name in ("ir", "iz", "in", "hr", "hz")
        }
    },
    "LSTM gate names, square input layers of another width": lambda: {
        "params": {
            **{name: {"kernel": jnp.ones((3, 4))} for name in ("ii", "if", "ig", "io")},
            **{
                name: {"kernel": jnp.ones((5, 5)), "bias": jnp.ones(5)}
                for name in ("hi", "hf", "hg", "ho")
            },
        }
    },
}


@pytest.mark.parametrize("build", LOOKALIKES.values(), ids=LOOKALIKES.keys())
def test_layers_named_like_a_cell_are_kernels(build):
    params = randomised(build()["params"])
    params = jax.tree.map(lambda a: a * 10, params)  # every node far outside the ball
    kernel = wc.MaxNorm(0.1)
    rows = [row for row in audit(params, kernel=kernel) if row.name.endswith("kernel")]
    assert rows and all(row.note == "kernel" and row.active for row in rows), rows
    projected = projection(kernel=kernel)(params)
    assert audit(projected, kernel=kernel).problems() == []
    with pytest.raises(ValueError, match="no parameter has the role recurrent"):
        projection(kernel=kernel, recurrent=wc.UnitNorm())(params)


def test_a_cell_whose_structure_optax_masked_hides_is_refused():
    cell = nn.LSTMCell(4)
    x = jnp.ones((1, 3))
    params = randomised(cell.init(KEY, cell.initialize_carry(KEY, x.shape), x)["params"])
    mask = jax.tree.map(lambda _: True, params)
    mask["ii"]["kernel"] = False  # the input layers' shapes prove the hidden ones
    tx = optax.masked(project(kernel=wc.MaxNorm(1.0), recurrent=wc.UnitNorm()), mask)
    with pytest.raises(ValueError, match=r"hi/kernel \(4, 4\): the layers of a LSTMCell\?"):
        tx.update(params, tx.init(params), params)

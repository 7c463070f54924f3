"""Layouts the adapter must not guess: stacked layers (nn.scan, nn.vmap, nnx.vmap), bias-free
kernels under names of one's own, transposed ConvTranspose kernels, leaves hidden by
optax.masked, normalisation layers without a scale, WeightNorm and SpectralNorm, NumPy leaves.
Each is either read exactly (checked against the NumPy core, layer by layer) or refused with an
error naming the path; never read as something else."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import weight_constraints as wc
from tests.jax.test_layers import leaf_at, randomised
from weight_constraints.adapters.optax import audit, constrained, project, projection

KEY = jax.random.key(0)


def per_layer(constraint, stack, axes):
    """The NumPy core's projection of each layer of ``stack`` (leading axis) over ``axes`` of
    the layer."""
    bound = type(constraint).from_config({**constraint.get_config(), "axis": axes})
    return np.stack([bound(np.asarray(layer)) for layer in np.asarray(stack)])


# -- stacked layers --------------------------------------------------------------------------------


def scanned(block, x, name="layers"):
    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            scan = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True}, length=4
            )
            return scan(name=name)(x, None)[0]

    params = Stack().init(KEY, x)["params"]
    return jax.tree.map(lambda a: a * 10 + 1, params)  # every node far outside the ball


class DenseBlock(nn.Module):
    use_bias: bool = True

    @nn.compact
    def __call__(self, x, _):
        return nn.Dense(x.shape[-1], use_bias=self.use_bias)(x), None


class BiasFreeDenseBlock(DenseBlock):
    use_bias: bool = False


class ConvBlock(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return nn.Conv(x.shape[-1], (3, 3), use_bias=False)(x), None


STACKS = {
    "scan Dense": (lambda: scanned(DenseBlock, jnp.ones((2, 8))), "layers/Dense_0"),
    "scan Dense, in == layers": (lambda: scanned(DenseBlock, jnp.ones((2, 4))), "layers/Dense_0"),
    "scan bias-free Dense": (
        lambda: scanned(BiasFreeDenseBlock, jnp.ones((2, 8))),
        "layers/Dense_0",
    ),
    "scan bias-free Conv, unnamed scan": (
        lambda: scanned(ConvBlock, jnp.ones((1, 5, 5, 3)), name=None),
        "ScanConvBlock_0/Conv_0",
    ),
}


@pytest.mark.parametrize("build, layer", STACKS.values(), ids=STACKS.keys())
def test_linen_stacks_raise_unless_declared_then_one_norm_per_layer(build, layer):
    params = build()
    roles = dict(kernel=wc.UnitNorm(), bias=wc.MaxNorm(0.5))
    if "bias" not in jax.tree_util.tree_leaves_with_path(params)[0][0][-1].key:
        roles.pop("bias")
    with pytest.raises(ValueError, match=rf"{layer}/kernel .*stacked=\{{path_regex"):
        projection(**roles)(params)
    top = layer.split("/")[0]
    out = projection(**roles, stacked={f"{top}/.*": 1})(params)
    kernel = np.asarray(leaf_at(params, f"{layer}/kernel"))
    axes = tuple(range(kernel.ndim - 2))  # of one layer: (in,) or (kh, kw, in)
    np.testing.assert_allclose(
        leaf_at(out, f"{layer}/kernel"), per_layer(roles["kernel"], kernel, axes), rtol=1e-6
    )
    if "bias" in roles:  # one norm per layer's bias, not one for the whole stack
        bias = np.asarray(leaf_at(params, f"{layer}/bias"))
        np.testing.assert_allclose(
            leaf_at(out, f"{layer}/bias"), per_layer(roles["bias"], bias, (0,)), rtol=1e-6
        )
    rows = {r.name: r for r in audit(out, **roles, stacked={f"{top}/.*": 1})}
    assert rows[f"{layer}/kernel"].axes == tuple(a + 1 for a in axes)
    assert rows[f"{layer}/kernel"].note == "kernel, stacked"


def test_linen_vmap_of_a_layer_is_seen_by_its_name():
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            dense = nn.vmap(
                nn.Dense, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=0
            )
            return dense(3, use_bias=False)(x)

    params = Model().init(KEY, jnp.ones((2, 5, 8)))["params"]  # VmapDense_0/kernel (2, 8, 3)
    with pytest.raises(ValueError, match=r"VmapDense_0/kernel .*VmapDense_0 holds stacked"):
        projection(kernel=wc.MaxNorm(1.0))(params)
    out = projection(kernel=wc.MaxNorm(1.0), stacked={"VmapDense_0/.*": 1})(params)
    kernel = params["VmapDense_0"]["kernel"]
    want = per_layer(wc.MaxNorm(1.0), kernel, (0,))
    np.testing.assert_allclose(out["VmapDense_0"]["kernel"], want, rtol=1e-6)


class Linear(nnx.Module):
    def __init__(self, use_bias: bool, rngs: nnx.Rngs) -> None:
        self.linear = nnx.Linear(8, 8, use_bias=use_bias, rngs=rngs)


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("layers", [3, 8])  # 8: as many layers as input features
def test_nnx_vmap_stack_raises_unless_declared_then_one_norm_per_layer(use_bias, layers):
    @nnx.split_rngs(splits=layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
        return Linear(use_bias, rngs)

    state = randomised(nnx.state(make(nnx.Rngs(0)), nnx.Param))
    roles = dict(kernel=wc.UnitNorm(), bias=wc.MaxNorm(0.1) if use_bias else None)
    with pytest.raises(ValueError, match=r"linear/kernel \(\d, 8, 8\)"):
        projection(**roles)(state)
    out = projection(**roles, stacked={"linear/.*": 1})(state)
    kernel = leaf_at(state, "linear/kernel")
    np.testing.assert_allclose(
        leaf_at(out, "linear/kernel"), per_layer(wc.UnitNorm(), kernel, (0,)), rtol=1e-6
    )
    if use_bias:
        bias = leaf_at(state, "linear/bias")
        want = per_layer(wc.MaxNorm(0.1), bias, (0,))
        np.testing.assert_allclose(leaf_at(out, "linear/bias"), want, rtol=1e-6)


STACKED_ERRORS = [
    ({"nothing/.*": 1}, ValueError, r"stacked \['nothing/\.\*'\] match no parameter"),
    ({"Dense_0/.*": 0}, ValueError, "must be the number of stacked leading axes"),
    ({"Dense_0/.*": True}, ValueError, "must be the number of stacked leading axes"),
    ({"Dense_0/.*": 2}, ValueError, r"stacked\['Dense_0/\.\*'\] = 2 leading axes, but"),
    ({"(": 1}, ValueError, "is not a regular expression"),
    ([("Dense_0", 1)], TypeError, "stacked must map"),
]


@pytest.mark.parametrize("stacked, error, message", STACKED_ERRORS)
def test_stacked_declarations_are_checked(stacked, error, message):
    params = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    with pytest.raises(error, match=message):
        projection(kernel=wc.MaxNorm(1.0), stacked=stacked)(params)


# -- layouts the shapes do not prove ---------------------------------------------------------------


def linen_params(make, x):
    class Wrap(nn.Module):
        @nn.compact
        def __call__(self, x):
            return make()(x)

    return Wrap().init(KEY, x)["params"]


REFUSED = {
    "bias-free nnx.LinearGeneral": (
        lambda: nnx.state(nnx.LinearGeneral(8, (2, 4), use_bias=False, rngs=nnx.Rngs(0))),
        "kernel (8, 2, 4): a kernel of rank 3 without a bias, under a name of your own",
    ),
    "bias-free DenseGeneral named proj": (
        lambda: linen_params(
            lambda: nn.DenseGeneral(7, axis=(-2, -1), use_bias=False, name="proj"),
            jnp.ones((1, 6, 3)),
        ),
        "proj/kernel (6, 3, 7): a kernel of rank 3 without a bias",
    ),
    "bias-free ConvTranspose, transpose_kernel": (
        lambda: linen_params(
            lambda: nn.ConvTranspose(4, (3, 3), transpose_kernel=True, use_bias=False),
            jnp.ones((1, 5, 5, 3)),
        ),
        "ConvTranspose_0/kernel (3, 3, 4, 3): a bias-free ConvTranspose kernel",
    ),
    "ConvTranspose with as many inputs as outputs": (
        lambda: linen_params(lambda: nn.ConvTranspose(3, (3, 3)), jnp.ones((1, 5, 5, 3))),
        "ConvTranspose_0/kernel (3, 3, 3, 3): a kernel (3, 3, 3, 3) beside a bias (3,): a "
        "ConvTranspose kernel with as many inputs as outputs",
    ),
    "bias-free nnx.Conv": (
        lambda: nnx.state(nnx.Conv(2, 4, (3, 3), use_bias=False, rngs=nnx.Rngs(0))),
        "kernel (3, 3, 2, 4): a kernel of rank 4 without a bias",
    ),
    "LinearGeneral or a stack of two": (
        lambda: nnx.state(nnx.LinearGeneral(2, (2, 4), rngs=nnx.Rngs(0))),
        "a stacked layer's or a batched layer's",
    ),
}


@pytest.mark.parametrize("build, message", REFUSED.values(), ids=REFUSED.keys())
def test_layouts_the_shapes_do_not_prove_are_refused(build, message):
    params = build()
    with pytest.raises(ValueError, match="cannot tell the per-node axes") as error:
        projection(kernel=wc.MaxNorm(1.0))(params)
    assert message in str(error.value)
    assert "give it a rule" in str(error.value)


def test_a_transposed_conv_transpose_kernel_is_read_from_its_bias():
    params = linen_params(
        lambda: nn.ConvTranspose(4, (3, 3), transpose_kernel=True), jnp.ones((1, 5, 5, 2))
    )  # kernel (3, 3, 4, 2): (*k, out, in), bias (4,)
    rows = {r.name: r for r in audit(params, kernel=wc.MaxNorm(1.0))}
    assert rows["ConvTranspose_0/kernel"].axes == (0, 1, 3)


@pytest.mark.parametrize("siblings", [(), ("key", "value", "out")])
def test_attention_names_need_attention_siblings(siblings):
    params = {"query": {"kernel": jnp.ones((1, 3, 8)), "bias": jnp.ones(8)}}  # a 1-D conv
    params |= {name: {"kernel": jnp.ones((8, 2, 4)), "bias": jnp.ones((2, 4))} for name in siblings}
    if siblings == ("key", "value", "out"):
        params["out"] = {"kernel": jnp.ones((2, 4, 8)), "bias": jnp.ones(8)}
    rows = {r.name: r for r in audit(params, kernel=wc.MaxNorm(1.0), skip_unknown=True)}
    if siblings:  # an attention: a query kernel must be (in, heads, head_dim)
        assert not rows["query/kernel"].active and "attention 'query'" in rows["query/kernel"].note
        assert rows["key/kernel"].axes == (0,) and rows["out/kernel"].axes == (0, 1)
    else:  # a layer of one's own named query: a Conv (*k, in, out)
        assert rows["query/kernel"].axes == (0, 1)


# -- optax.masked ----------------------------------------------------------------------------------


def test_masked_siblings_are_not_read_but_refused():
    params = {"proj": {"kernel": jnp.ones((8, 2, 4)) * 3, "bias": jnp.zeros((2, 4))}}
    assert audit(params, kernel=wc.UnitNorm())[1].axes == (0,)  # a LinearGeneral, from its bias
    kernels_only = {"proj": {"kernel": True, "bias": False}}
    tx = optax.chain(optax.sgd(0.1), optax.masked(project(kernel=wc.UnitNorm()), kernels_only))
    grads = jax.tree.map(jnp.zeros_like, params)
    with pytest.raises(ValueError, match=r"proj/kernel \(8, 2, 4\): .*which optax.masked hides"):
        tx.update(grads, tx.init(params), params)
    biases_only = {"proj": {"kernel": False, "bias": True}}
    tx = optax.masked(project(bias=wc.MaxNorm(1.0)), biases_only)
    with pytest.raises(ValueError, match=r"proj/bias \(2, 4\): .*whose kernel optax.masked hides"):
        tx.update(grads, tx.init(params), params)
    dense = {"Dense_0": {"kernel": jnp.ones((3, 2)) * 3, "bias": jnp.zeros(2)}}
    tx = optax.masked(project(kernel=wc.UnitNorm()), {"Dense_0": {"kernel": True, "bias": False}})
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, dense), tx.init(dense), dense)
    new = optax.apply_updates(dense, updates)["Dense_0"]["kernel"]  # rank 2: no sibling needed
    np.testing.assert_allclose(wc.node_norms(np.asarray(new)), 1.0, rtol=1e-6)


def test_a_role_masked_out_entirely_names_the_mask():
    params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    tx = optax.masked(
        constrained(optax.sgd(0.1), kernel=wc.MaxNorm(1.0), bias=wc.NonNeg()),
        {"Dense_0": {"kernel": True, "bias": False}},
    )
    with pytest.raises(ValueError, match=r"no parameter has the role bias \(optax.masked hides"):
        tx.update(params, tx.init(params), params)


# -- normalisation layers, WeightNorm, SpectralNorm ------------------------------------------------


class Normed(nnx.Module):
    def __init__(self, norm: str, rngs: nnx.Rngs) -> None:
        self.linear = nnx.Linear(3, 3, rngs=rngs)
        if norm == "batch":
            self.norm = nnx.BatchNorm(3, use_scale=False, rngs=rngs)
        else:
            self.norm = nnx.LayerNorm(3, use_scale=False, rngs=rngs)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_normalisation_biases_without_scale_are_never_constrained(norm):
    model = Normed(norm, nnx.Rngs(0))
    params = jax.tree.map(lambda a: a + 5.0, nnx.state(model, nnx.Param))
    roles = dict(kernel=wc.MaxNorm(1.0), bias=wc.MaxNorm(0.5))
    with pytest.raises(ValueError, match=r"norm/bias \(3,\): a bias with no kernel beside it"):
        projection(**roles)(params)  # nothing tells a LayerNorm bias from a layer's own
    out = projection(**roles, rules={"norm/bias": None})(params)
    assert leaf_at(out, "norm/bias") is leaf_at(params, "norm/bias")
    if norm == "batch":  # with its statistics beside it, a BatchNorm is known
        full = jax.tree.map(lambda a: a + 5.0, nnx.state(model))
        rows = {r.name: r for r in audit(full, **roles)}
        assert rows["norm/bias"].note == "no role" and rows["linear/bias"].active


class WeightNormed(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.WeightNorm(nn.Dense(4))(x)


def test_weight_norm_points_to_its_scale_and_the_hint_holds():
    x = jnp.ones((2, 8))
    params = jax.tree.map(lambda a: a * 5, WeightNormed().init(KEY, x)["params"])
    with pytest.raises(ValueError) as error:
        projection(kernel=wc.MaxNorm(0.5))(params)
    message = str(error.value)
    assert "Dense_0/kernel (8, 4): normalised by WeightNorm_0/Dense_0/kernel/scale" in message
    assert "constrain the scale entry by entry, rules={path_regex: (constraint, ())}" in message
    rules = {"Dense_0/kernel": None, "WeightNorm_0/.*": (wc.MaxNorm(0.5), ())}
    params = projection(rules=rules)(params)
    apply = lambda p, x: WeightNormed().apply({"params": p}, x)  # noqa: E731
    effective = apply(params, jnp.eye(8)) - apply(params, jnp.zeros((1, 8)))
    norms = wc.node_norms(np.asarray(effective), axis=0)
    np.testing.assert_allclose(norms, 0.5, rtol=1e-5)  # every unit's scale was 5: now at 0.5


class SpectralNormed(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.SpectralNorm(nn.Dense(4))(x, update_stats=True)


def test_spectral_norm_statistics_are_passed_over_and_its_kernel_refused():
    variables = SpectralNormed().init(KEY, jnp.ones((2, 8)))
    with pytest.raises(ValueError, match=r"params/Dense_0/kernel \(8, 4\): normalised by"):
        projection(kernel=wc.MaxNorm(0.5))(variables)
    notes = {r.name: r.note for r in audit(variables, bias=wc.MaxNorm(1.0))}
    assert notes["batch_stats/SpectralNorm_0/Dense_0/kernel/u"] == "statistics"
    assert notes["batch_stats/SpectralNorm_0/Dense_0/kernel/sigma"] == "statistics"
    assert notes["params/Dense_0/bias"] == "bias"
    assert notes["params/Dense_0/kernel"].startswith("unknown (normalised by")


def test_spectral_norm_params_alone_read_as_a_dense_and_the_full_variables_flag_it():
    """linen's SpectralNorm keeps everything it adds in batch_stats: its params are a plain
    Dense's, so nothing in them can tell (docs/jax.md lists it among the layouts the leaves
    cannot reveal); the full variables show it, and the audit of them raises, naming it."""
    variables = SpectralNormed().init(KEY, jnp.ones((2, 8)))
    plain = nn.Dense(4).init(KEY, jnp.ones((2, 8)))["params"]
    assert jax.tree.structure(variables["params"]) == jax.tree.structure({"Dense_0": plain})
    kernel = wc.MaxNorm(0.1)
    rows = {row.name: row for row in audit(variables["params"], kernel=kernel)}
    assert rows["Dense_0/kernel"].note == "kernel"  # read as a Dense: undetectable
    for strict in (False, True):
        with pytest.raises(
            ValueError,
            match=r"params/Dense_0/kernel \(8, 4\): normalised by "
            r"batch_stats/SpectralNorm_0/Dense_0/kernel/",
        ):
            audit(variables, kernel=kernel, strict=strict)


def test_a_masked_weight_norm_scale_still_shows_its_kernel():
    params = jax.tree.map(lambda a: a * 5, WeightNormed().init(KEY, jnp.ones((2, 8)))["params"])
    mask = jax.tree.map(lambda _: True, params)
    mask["WeightNorm_0"]["Dense_0/kernel/scale"] = False
    tx = optax.masked(project(kernel=wc.MaxNorm(0.5)), mask)
    with pytest.raises(ValueError, match=r"Dense_0/kernel \(8, 4\): normalised by WeightNorm_0"):
        tx.update(params, tx.init(params), params)


def test_a_parameter_name_among_statistics_is_not_passed_over():
    """Flax keeps no kernel, bias or embedding in batch_stats or cache: a leaf so named there is
    a layer of one's own, never silently left alone."""
    params = {"cache": {"kernel": jnp.ones((3, 2))}, "Dense_0": {"kernel": jnp.ones((3, 2))}}
    with pytest.raises(ValueError, match=r"cache/kernel \(3, 2\): a kernel among statistics"):
        projection(kernel=wc.MaxNorm(1.0))(params)
    rows = {r.name: r for r in audit(params, kernel=wc.MaxNorm(1.0), rules={"cache/.*": None})}
    assert rows["Dense_0/kernel"].active and not rows["cache/kernel"].active


# -- NumPy leaves ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_numpy_leaves_stay_numpy_in_their_dtype(dtype):
    kernel = np.random.default_rng(0).standard_normal((4, 3)).astype(dtype) * 3
    out = projection(kernel=wc.MaxNorm(1.0))({"Dense_0": {"kernel": kernel}})["Dense_0"]["kernel"]
    assert type(out) is np.ndarray and out.dtype == dtype
    np.testing.assert_array_equal(out, wc.MaxNorm(1.0, axis=0)(kernel))

"""The Keras adapter in models: fit on every backend, constrain() on existing models, saving,
mixed precision, EMA, and parity with keras.constraints after training."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers, ops

import weight_constraints as wc
from tests.ids import stable_repr
from weight_constraints.adapters import keras as wk

BACKEND = keras.backend.backend()
# jit_compile=True is XLA on TensorFlow and jax.jit on JAX; on the torch backend it would be
# torch.compile, which is the PyTorch adapter's business, so the torch backend runs the eager
# train step.
JIT = {"tensorflow": [False, True], "jax": [False, True], "torch": [False]}[BACKEND]
LARGE_LR = 5.0


def norms(variable, axes) -> np.ndarray:
    return np.asarray(wc.node_norms(ops.convert_to_numpy(variable), axes))


def data(shape=(32, 8), outputs=1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype("float32")
    y = rng.standard_normal((shape[0], outputs)).astype("float32")
    return x, y


@pytest.mark.parametrize("jit_compile", JIT)
def test_the_tutorial_code_with_only_the_import_changed(jit_compile):
    from weight_constraints.adapters.keras import max_norm  # was: from keras.constraints ...

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            layers.Dense(32, kernel_constraint=max_norm(3), bias_constraint=max_norm(3)),
            layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.SGD(LARGE_LR), "mse", jit_compile=jit_compile)
    model.fit(*data(), epochs=3, verbose=0)
    dense = model.layers[0]
    assert norms(dense.kernel, 0).max() <= 3 * (1 + 1e-6)
    assert norms(dense.kernel, 0).max() >= 2.99  # the step went out and was projected back
    assert norms(dense.bias, 0).max() <= 3 * (1 + 1e-6)


@pytest.mark.parametrize("jit_compile", JIT)
def test_conv2d_and_lstm_with_kernel_recurrent_and_bias(jit_compile):
    keras.utils.set_random_seed(0)
    conv = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            layers.Conv2D(4, 3, kernel_constraint=wk.MaxNorm(1.0, axis=[0, 1, 2])),
            layers.Flatten(),
            layers.Dense(1),
        ]
    )
    conv.compile(keras.optimizers.SGD(LARGE_LR), "mse", jit_compile=jit_compile)
    conv.fit(*data((16, 8, 8, 3)), epochs=2, verbose=0)
    assert norms(conv.layers[0].kernel, (0, 1, 2)).max() <= 1 + 1e-6

    lstm = keras.Sequential(
        [
            keras.Input((5, 3)),
            layers.LSTM(
                4,
                kernel_constraint=wk.MaxNorm(0.5),
                recurrent_constraint=wk.UnitNorm(),
                bias_constraint=wk.MaxNorm(0.2),
            ),
            layers.Dense(1),
        ]
    )
    lstm.compile(keras.optimizers.SGD(LARGE_LR), "mse", jit_compile=jit_compile)
    lstm.fit(*data((16, 5, 3)), epochs=2, verbose=0)
    cell = lstm.layers[0].cell
    assert norms(cell.kernel, 0).max() <= 0.5 * (1 + 1e-6)
    np.testing.assert_allclose(norms(cell.recurrent_kernel, 0), 1.0, rtol=1e-6)
    assert norms(cell.bias, 0).max() <= 0.2 * (1 + 1e-6)


@pytest.mark.parametrize("jit_compile", JIT)
def test_a_core_object_as_a_layer_constraint(jit_compile, tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8,)), layers.Dense(16, kernel_constraint=wc.MaxNorm(0.5)), layers.Dense(1)]
    )
    model.compile(keras.optimizers.SGD(LARGE_LR), "mse", jit_compile=jit_compile)
    model.fit(*data(), epochs=2, verbose=0)
    assert norms(model.layers[0].kernel, 0).max() <= 0.5 * (1 + 1e-6)
    model.save(tmp_path / "core.keras")
    loaded = keras.saving.load_model(tmp_path / "core.keras")
    assert loaded.layers[0].kernel_constraint == wc.MaxNorm(0.5)


def test_save_and_load_restore_the_constraints_and_training_resumes(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            layers.Dense(16, kernel_constraint=wk.UnitNorm(), bias_constraint=wk.MaxNorm(0.3)),
            layers.Dense(1, kernel_constraint=wk.MinMaxNorm(0.5, 1.0, 0.9)),
        ]
    )
    model.compile(keras.optimizers.SGD(LARGE_LR), "mse")
    model.fit(*data(), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")  # no custom_objects
    first, second = loaded.layers
    assert type(first.kernel_constraint) is wk.UnitNorm
    assert first.bias_constraint == wk.MaxNorm(0.3)
    assert second.kernel_constraint == wk.MinMaxNorm(0.5, 1.0, 0.9)
    assert first.kernel.constraint == wk.UnitNorm()
    with pytest.MonkeyPatch.context() as patch:  # check that the loaded constraints are used
        calls = []
        original = wk.UnitNorm.__call__
        patch.setattr(wk.UnitNorm, "__call__", lambda self, w: calls.append(1) or original(self, w))
        loaded.fit(*data(seed=1), epochs=2, verbose=0)
        assert calls
    np.testing.assert_allclose(norms(first.kernel, 0), 1.0, rtol=1e-6)
    assert norms(first.bias, 0).max() <= 0.3 * (1 + 1e-6)


# -- per-node axes and constrain() ----------------------------------------------------------------


def built(layer, input_shape):
    layer.build(input_shape)
    return layer


AXES = [
    (lambda: built(layers.Dense(4), (None, 3)), "kernel", (0,)),
    (lambda: built(layers.Dense(4), (None, 3)), "bias", (0,)),
    (lambda: built(layers.EinsumDense("ab,bc->ac", output_shape=4), (None, 3)), "kernel", (0,)),
    (
        lambda: built(layers.EinsumDense("abc,cde->abde", output_shape=(None, 2, 4)), (None, 5, 3)),
        "kernel",
        (0,),
    ),
    (
        lambda: built(layers.EinsumDense("abcd,cde->abe", output_shape=(None, 4)), (None, 5, 2, 3)),
        "kernel",
        (0, 1),
    ),
    (lambda: built(layers.Conv1D(4, 3), (None, 9, 2)), "kernel", (0, 1)),
    (lambda: built(layers.Conv2D(4, 3), (None, 9, 9, 2)), "kernel", (0, 1, 2)),
    (lambda: built(layers.Conv3D(4, 3), (None, 5, 5, 5, 2)), "kernel", (0, 1, 2, 3)),
    (lambda: built(layers.Conv2D(4, 3, groups=2), (None, 9, 9, 2)), "kernel", (0, 1, 2)),
    (lambda: built(layers.Conv1DTranspose(4, 3), (None, 9, 2)), "kernel", (0, 2)),
    (lambda: built(layers.Conv2DTranspose(4, 3), (None, 9, 9, 2)), "kernel", (0, 1, 3)),
    (lambda: built(layers.Conv3DTranspose(4, 3), (None, 5, 5, 5, 2)), "kernel", (0, 1, 2, 4)),
    (lambda: built(layers.DepthwiseConv1D(3, depth_multiplier=2), (None, 9, 2)), "kernel", (0,)),
    (lambda: built(layers.DepthwiseConv2D(3), (None, 9, 9, 2)), "kernel", (0, 1)),
    (lambda: built(layers.SeparableConv2D(4, 3), (None, 9, 9, 2)), "depthwise_kernel", (0, 1)),
    (lambda: built(layers.SeparableConv2D(4, 3), (None, 9, 9, 2)), "pointwise_kernel", (0, 1, 2)),
    (lambda: built(layers.SeparableConv1D(4, 3), (None, 9, 2)), "pointwise_kernel", (0, 1)),
    (lambda: built(layers.Embedding(10, 4), (None, 3)), "embeddings", (1,)),
    (lambda: built(layers.SimpleRNN(4), (None, 5, 3)), "kernel", (0,)),
    (lambda: built(layers.LSTM(4), (None, 5, 3)), "recurrent_kernel", (0,)),
    (lambda: built(layers.GRU(4), (None, 5, 3)), "bias", (0, 1)),  # (2, 3 units), reset_after
]


@pytest.mark.parametrize("make, weight, axes", AXES)
def test_per_node_axis(make, weight, axes):
    layer = make()
    assert wk.per_node_axes(layer, weight) == axes
    assert wk.per_node_axis(layer, weight) == axes  # the former name, kept


def test_per_node_axis_is_the_former_name_of_per_node_axes():
    assert wk.per_node_axis is wk.per_node_axes
    assert "per_node_axes" in wk.__all__ and "per_node_axis" in wk.__all__


def test_per_node_axis_errors():
    with pytest.raises(ValueError, match="not built"):
        wk.per_node_axis(layers.Dense(3), "kernel")
    with pytest.raises(ValueError, match="has no weight 'recurrent_kernel'"):
        wk.per_node_axis(built(layers.Dense(3), (None, 2)), "recurrent_kernel")
    with pytest.raises(ValueError, match="unknown weight layout"):
        wk.per_node_axis(built(layers.BatchNormalization(), (None, 2)), "gamma")
    with pytest.raises(ValueError, match="contracts no kernel axis"):
        wk.per_node_axis(built(layers.EinsumDense("ab,b->ab", output_shape=3), (None, 3)), "kernel")


def test_keras_conv_transpose_advice_normalises_per_input_channel():
    """Keras's docstring advice axis=[0, 1, 2] on a Conv2DTranspose kernel (rows, cols, out, in)
    gives one norm per *input* channel; the per-node axes give one per output channel."""
    layer = built(layers.Conv2DTranspose(6, 3), (None, 8, 8, 4))
    kernel = ops.convert_to_numpy(layer.kernel)
    advice = ops.convert_to_numpy(wk.UnitNorm(axis=[0, 1, 2])(layer.kernel))
    per_node = ops.convert_to_numpy(wk.UnitNorm(axis=wk.per_node_axis(layer, "kernel"))(kernel))
    np.testing.assert_allclose(wc.node_norms(advice, (0, 1, 2)), np.ones(4), rtol=1e-6)
    assert not np.allclose(wc.node_norms(advice, (0, 1, 3)), 1.0)
    np.testing.assert_allclose(wc.node_norms(per_node, (0, 1, 3)), np.ones(6), rtol=1e-6)


class Scale(layers.Layer):
    """A custom layer with a weight of its own."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


def big_model():
    inner = keras.Sequential(
        [layers.Dense(6, name="hidden"), layers.LayerNormalization(name="norm")], name="inner"
    )
    inputs = keras.Input((5, 3))
    lstm = layers.LSTM(4, return_sequences=True, name="lstm")
    x = layers.Bidirectional(lstm, name="bidirectional")(inputs)
    x = layers.TimeDistributed(layers.Dense(3, name="dense"), name="time")(x)
    x = layers.Conv1D(4, 2, name="conv")(x)
    x = layers.Conv1DTranspose(4, 2, name="deconv")(x)
    x = layers.BatchNormalization(name="batch_norm")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.1, name="dropout")(x)
    x = inner(x)
    outputs = layers.Dense(1, name="head")(x)
    return keras.Model(inputs, outputs)


def test_constrain_an_existing_model_with_per_node_axes():
    keras.utils.set_random_seed(0)
    model = big_model()
    attached = wk.constrain(
        model, kernel=wk.MaxNorm(0.5), recurrent=wc.UnitNorm(), bias=keras.constraints.MaxNorm(0.2)
    )
    table = {f"{a.layer}.{a.weight}": a.constraint for a in attached}
    cell = "bidirectional/forward_lstm/lstm_cell"
    assert table[f"{cell}.kernel"] == wk.MaxNorm(0.5, axis=0)
    assert table[f"{cell}.recurrent_kernel"] == wk.UnitNorm(axis=0)
    assert table[f"{cell}.bias"] == wk.MaxNorm(0.2, axis=0)
    assert table["time/dense.kernel"] == wk.MaxNorm(0.5, axis=0)
    assert table["conv.kernel"] == wk.MaxNorm(0.5, axis=(0, 1))
    assert table["deconv.kernel"] == wk.MaxNorm(0.5, axis=(0, 2))
    assert table["deconv.bias"] == wk.MaxNorm(0.2, axis=(0,))
    assert table["inner/hidden.kernel"] == wk.MaxNorm(0.5, axis=0)
    assert table["head.kernel"] == wk.MaxNorm(0.5, axis=0)
    # 2 LSTM cells x (kernel, recurrent, bias) + 5 layers x (kernel, bias)
    assert len(table) == 16
    model.compile(keras.optimizers.SGD(LARGE_LR), "mse")
    model.fit(*data((16, 5, 3)), epochs=2, verbose=0)
    constrained = [v for v in model.variables if v.constraint is not None]
    assert len(constrained) == len(attached)
    for v in constrained:
        n = norms(v, v.constraint.axis)
        if isinstance(v.constraint, wk.UnitNorm):
            np.testing.assert_allclose(n, 1.0, rtol=1e-6)
        else:
            assert n.max() <= v.constraint.max_value * (1 + 1e-6)


def test_constrain_keeps_the_constraints_through_save_and_load(tmp_path):
    model = big_model()
    wk.constrain(model, kernel=wk.MaxNorm(0.5), bias="max_norm")
    model.save(tmp_path / "big.keras")
    loaded = keras.saving.load_model(tmp_path / "big.keras")
    conv = loaded.get_layer("deconv")
    assert conv.kernel_constraint == wk.MaxNorm(0.5, axis=(0, 2))
    assert conv.kernel.constraint == wk.MaxNorm(0.5, axis=(0, 2))
    assert conv.bias_constraint == wk.MaxNorm(2, axis=(0,))


@pytest.mark.parametrize(
    "constraint",
    [
        wk.MaxNorm(3, axis=[0, 1]),
        wk.MaxNorm(3, axis=0),  # an explicit 0 is not the default: it was silently replaced
        wc.UnitNorm(axis=0),
        keras.constraints.MaxNorm(3),  # Keras cannot tell its default: counts as given
    ],
    ids=stable_repr,
)
def test_constrain_refuses_an_explicit_axis_that_is_not_per_node(constraint):
    model = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(4, 3, name="conv")])
    with pytest.raises(ValueError, match=r"explicit axis=.* conv\.kernel .*axes \(0, 1, 2\)"):
        wk.constrain(model, kernel=constraint)
    assert model.layers[0].kernel_constraint is None  # nothing attached
    assert model.layers[0].kernel.constraint is None


@pytest.mark.parametrize(
    "constraint, axis",
    [
        (wk.MaxNorm(3), (0, 1, 2)),  # the default: the per-node axes
        (wk.MaxNorm(3, axis=[0, 1, 2]), (0, 1, 2)),  # explicit and per-node: honoured
        (wk.MaxNorm(3, axis=(-4, -3, -2)), (0, 1, 2)),
        ("max_norm", (0, 1, 2)),
        (wc.MaxNorm(3), (0, 1, 2)),
    ],
    ids=str,
)
def test_constrain_binds_by_the_shared_rule(constraint, axis):
    model = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(4, 3)])
    (attached,) = wk.constrain(model, kernel=constraint)
    assert attached.constraint.axis == axis
    assert model.layers[0].kernel.constraint.axis == axis


def test_constrain_honours_an_explicit_axis_0_where_it_is_per_node():
    model = keras.Sequential([keras.Input((3,)), layers.Dense(4, name="fc")])
    (attached,) = wk.constrain(model, kernel=keras.constraints.UnitNorm(axis=0))
    assert attached.constraint == wk.UnitNorm(axis=0)


def test_constrain_takes_the_roles_by_keyword_only():
    model = keras.Sequential([keras.Input((3,)), layers.Dense(4)])
    with pytest.raises(TypeError, match=r"takes the roles by keyword; .*: MaxNorm\.$"):
        wk.constrain(model, wk.MaxNorm(3))
    optimizer = keras.optimizers.SGD()
    with pytest.raises(TypeError, match=r": SGD\. Keras optimizers .* pass no optimizer\.$"):
        wk.constrain(model, optimizer, kernel=wk.MaxNorm(3))  # the PyTorch adapter's order
    assert model.layers[0].kernel.constraint is None


def embedding_model():
    return keras.Sequential(
        [
            keras.Input((3,), dtype="int32"),
            layers.Embedding(10, 4, name="embed"),
            layers.Dense(2, name="fc"),
        ],
        name="tied",
    )


def test_embedding_tables_take_the_kernel_constraint_unless_embedding_is_given():
    model = embedding_model()
    table = {str(a) for a in wk.constrain(model, kernel=wk.MaxNorm(2))}
    assert table == {
        "embed.embeddings: MaxNorm(max_value=2.0, axis=1)",
        "fc.kernel: MaxNorm(max_value=2.0, axis=0)",
    }
    model = embedding_model()
    table = {str(a) for a in wk.constrain(model, kernel=wk.MaxNorm(2), embedding=wk.UnitNorm())}
    assert table == {
        "embed.embeddings: UnitNorm(axis=1)",
        "fc.kernel: MaxNorm(max_value=2.0, axis=0)",
    }
    model = embedding_model()
    (attached,) = wk.constrain(model, embedding="unit_norm")
    assert str(attached) == "embed.embeddings: UnitNorm(axis=1)"
    assert model.get_layer("fc").kernel.constraint is None
    dense = keras.Sequential([keras.Input((3,)), layers.Dense(2)])
    with pytest.raises(ValueError, match="has embedding weights"):
        wk.constrain(dense, kernel=wk.MaxNorm(), embedding=wk.UnitNorm())
    assert dense.layers[0].kernel.constraint is None


def test_constrain_never_replaces_a_different_constraint_silently():
    model = keras.Sequential(
        [
            keras.Input((3,)),
            layers.Dense(4, name="first"),
            layers.Dense(4, kernel_constraint=wk.NonNeg(), name="second"),
        ]
    )
    with pytest.raises(
        ValueError,
        match=r"second\.kernel already has the constraint NonNeg\(\); constrain\(\) would "
        r"replace it with MaxNorm\(max_value=3\.0, axis=0\)\. Pass replace=True",
    ):
        wk.constrain(model, kernel=wk.MaxNorm(3))
    first, second = model.layers
    assert first.kernel.constraint is None and first.kernel_constraint is None  # nothing attached
    assert second.kernel.constraint == wk.NonNeg() and second.kernel_constraint == wk.NonNeg()
    attached = wk.constrain(model, kernel=wk.MaxNorm(3), replace=True)
    assert [a.constraint for a in attached] == [wk.MaxNorm(3, axis=0)] * 2
    assert second.kernel.constraint == wk.MaxNorm(3, axis=0) == second.kernel_constraint


@pytest.mark.parametrize(
    "existing",
    [
        keras.constraints.MaxNorm(3),  # Keras's own: not the exact projection
        wk.MaxNorm(3, axis=1),
        wk.MaxNorm(4),
        wc.UnitNorm(),
    ],
    ids=stable_repr,
)
def test_constrain_refuses_any_other_constraint(existing):
    model = keras.Sequential([keras.Input((3,)), layers.Dense(4, name="fc")])
    model.layers[0].kernel.constraint = existing  # on the variable only
    with pytest.raises(ValueError, match=r"fc\.kernel already has the constraint"):
        wk.constrain(model, kernel=wk.MaxNorm(3))
    assert model.layers[0].kernel.constraint is existing


@pytest.mark.parametrize(
    "existing",
    [wk.MaxNorm(3), wk.MaxNorm(3, axis=0), wk.MaxNorm(3, axis=-2), wc.MaxNorm(3, axis=[0])],
    ids=repr,
)
def test_the_same_constraint_already_there_is_fine(existing):
    model = keras.Sequential(
        [keras.Input((3,)), layers.Dense(4, kernel_constraint=existing, name="fc")]
    )
    (attached,) = wk.constrain(model, kernel=wk.MaxNorm(3))
    assert attached.constraint == wk.MaxNorm(3, axis=0)


def test_constrain_errors():
    with pytest.raises(ValueError, match="not built"):
        wk.constrain(keras.Sequential([layers.Dense(2)]), kernel=wk.MaxNorm())
    custom = keras.Sequential([keras.Input((3,)), Scale(), layers.Dense(2)])
    with pytest.raises(ValueError, match=r"\(Scale\) has weights of its own"):
        wk.constrain(custom, kernel=wk.MaxNorm())
    assert custom.layers[1].kernel_constraint is None
    attached = wk.constrain(custom, kernel=wk.MaxNorm(), skip_unknown=True)
    assert [a.layer for a in attached] == [custom.layers[1].name]
    with pytest.raises(ValueError, match="has recurrent weights"):
        wk.constrain(custom, recurrent=wk.UnitNorm(), skip_unknown=True)


def test_embedding_rows_are_the_nodes():
    model = keras.Sequential([keras.Input((3,), dtype="int32"), layers.Embedding(10, 4)])
    wk.constrain(model, kernel=wk.UnitNorm())
    wk.apply_constraints(model)
    np.testing.assert_allclose(norms(model.layers[0].embeddings, 1), np.ones(10), rtol=1e-6)


# -- precision, EMA, parity after training --------------------------------------------------------


def test_mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((8,)),
                layers.Dense(16, kernel_constraint=wk.MaxNorm(0.5)),
                layers.Dense(1, dtype="float32"),
            ]
        )
        model.compile(keras.optimizers.SGD(LARGE_LR), "mse")
        model.fit(*data(), epochs=2, verbose=0)
        kernel = model.layers[0].kernel
        assert keras.backend.standardize_dtype(kernel.dtype) == "float32"
        assert model.layers[0].compute_dtype == "float16"
        assert norms(kernel, 0).max() <= 0.5 * (1 + 1e-6)
        assert norms(kernel, 0).max() >= 0.49
    finally:
        keras.mixed_precision.set_global_policy("float32")


def ema_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8,)), layers.Dense(16, kernel_constraint=wk.UnitNorm()), layers.Dense(1)]
    )
    model.compile(keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5), "mse")
    return model


def test_use_ema_breaks_the_constraint_and_the_callback_fixes_it():
    model = ema_model()
    model.fit(*data(), epochs=4, verbose=0)
    assert norms(model.layers[0].kernel, 0).min() < 1 - 1e-3  # Keras copied the averages in
    model = ema_model()
    model.fit(*data(), epochs=4, verbose=0, callbacks=[wk.ApplyConstraints()])
    np.testing.assert_allclose(norms(model.layers[0].kernel, 0), 1.0, rtol=1e-6)


def train_tutorial_mlp(constraint):
    keras.utils.set_random_seed(42)
    model = keras.Sequential(
        [
            keras.Input((2,)),
            layers.Dense(64, activation="relu", kernel_constraint=constraint),
            layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(keras.optimizers.Adam(0.3), "binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 2)).astype("float32") * 3
    y = (x[:, :1] * x[:, 1:] > 0).astype("float32")
    model.fit(x, y, epochs=30, batch_size=32, verbose=0)
    return [ops.convert_to_numpy(v) for v in model.weights]


def test_training_matches_keras_max_norm():
    ours = train_tutorial_mlp(wk.MaxNorm(3))
    theirs = train_tutorial_mlp(keras.constraints.MaxNorm(3))
    assert norms(ours[0], 0).max() >= 2.99  # the constraint was active
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# -- the box, simplex and L1 kinds in models -------------------------------------------------------


def sums(variable, axes) -> np.ndarray:
    return np.sum(ops.convert_to_numpy(variable).astype(np.float64), axis=axes)


def new_kinds_model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            layers.Conv2D(4, 3, kernel_constraint=wk.MaxL1Norm(0.5, axis=[0, 1, 2]), name="conv"),
            layers.Flatten(),
            layers.Dense(
                6,
                kernel_constraint=wk.Simplex(),
                bias_constraint=wk.Clip(-0.05, 0.05),
                name="mix",
            ),
            layers.Dense(1, kernel_constraint=wk.box_max_norm(-0.2, 0.2, 0.3), name="head"),
        ]
    )


def check_new_kinds(model):
    conv, mix, head = (model.get_layer(n) for n in ("conv", "mix", "head"))
    l1 = np.sum(np.abs(ops.convert_to_numpy(conv.kernel).astype(np.float64)), axis=(0, 1, 2))
    assert l1.max() <= 0.5 * (1 + 1e-6)
    kernel = ops.convert_to_numpy(mix.kernel)
    assert kernel.min() >= 0
    np.testing.assert_allclose(sums(mix.kernel, 0), 1.0, rtol=1e-5)
    bias = ops.convert_to_numpy(mix.bias)
    assert np.abs(bias).max() <= 0.05
    head_kernel = ops.convert_to_numpy(head.kernel)
    assert np.abs(head_kernel).max() <= 0.2
    assert norms(head.kernel, 0).max() <= 0.3 * (1 + 1e-6)


@pytest.mark.parametrize("jit_compile", JIT)
def test_the_new_kinds_hold_after_compiled_train_steps(jit_compile):
    keras.utils.set_random_seed(0)
    model = new_kinds_model()
    model.compile(keras.optimizers.SGD(LARGE_LR), "mse", jit_compile=jit_compile)
    before = ops.convert_to_numpy(model.get_layer("mix").bias)
    model.fit(*data((16, 8, 8, 3)), epochs=2, verbose=0)
    check_new_kinds(model)
    after = ops.convert_to_numpy(model.get_layer("mix").bias)
    assert np.abs(after).max() == 0.05 and not np.array_equal(before, after)  # clipped


def test_the_new_kinds_are_saved_and_loaded_without_custom_objects(tmp_path):
    keras.utils.set_random_seed(0)
    model = new_kinds_model()
    model.compile(keras.optimizers.SGD(LARGE_LR), "mse")
    model.fit(*data((16, 8, 8, 3)), epochs=1, verbose=0)
    model.save(tmp_path / "kinds.keras")
    loaded = keras.saving.load_model(tmp_path / "kinds.keras")  # no custom_objects
    conv, mix, head = (loaded.get_layer(n) for n in ("conv", "mix", "head"))
    assert type(conv.kernel_constraint) is wk.MaxL1Norm
    assert conv.kernel.constraint == wk.MaxL1Norm(0.5, axis=(0, 1, 2))
    assert mix.kernel_constraint == wk.Simplex(axis=0)
    assert mix.bias.constraint == wk.Clip(-0.05, 0.05)
    assert head.kernel_constraint == wk.BoxMaxNorm(-0.2, 0.2, 0.3, axis=0)
    loaded.fit(*data((16, 8, 8, 3), seed=1), epochs=1, verbose=0)
    check_new_kinds(loaded)


def simplex_model():
    return keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            layers.Embedding(10, 4, name="embed"),
            layers.Reshape((6, 4, 1)),
            layers.Conv2D(3, 2, name="conv"),
            layers.Flatten(),
            layers.Dense(2, name="fc"),
        ]
    )


def test_constrain_binds_the_new_kinds_to_the_per_node_axes():
    model = simplex_model()
    attached = wk.constrain(model, kernel=wk.Simplex(), bias=wc.Clip(-0.1, 0.1))
    table = {f"{a.layer}.{a.weight}": a.constraint for a in attached}
    assert table == {
        "embed.embeddings": wk.Simplex(axis=(1,)),
        "conv.kernel": wk.Simplex(axis=(0, 1, 2)),
        "conv.bias": wk.Clip(-0.1, 0.1),
        "fc.kernel": wk.Simplex(axis=(0,)),
        "fc.bias": wk.Clip(-0.1, 0.1),
    }
    wk.apply_constraints(model)
    np.testing.assert_allclose(sums(model.get_layer("embed").embeddings, 1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(sums(model.get_layer("conv").kernel, (0, 1, 2)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(sums(model.get_layer("fc").kernel, 0), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match=r"explicit axis=0, .* embed\.embeddings .*axes \(1,\)"):
        wk.constrain(simplex_model(), kernel=wc.MaxL1Norm(1.0, axis=0))
    (fc,) = wk.constrain(
        keras.Sequential([keras.Input((3,)), layers.Dense(2, name="fc")]),
        kernel=wc.BoxMaxNorm(-1, 1, 2),
    )
    assert fc.constraint == wk.BoxMaxNorm(-1, 1, 2, axis=(0,))


# -- what constrain() refuses or warns about ----------------------------------------------------


LORA_LAYERS = {
    "dense": (lambda: layers.Dense(4, name="fc"), (8,), "float32", "kernel"),
    "einsum": (
        lambda: layers.EinsumDense("ab,bc->ac", output_shape=4, name="fc"),
        (8,),
        "float32",
        "kernel",
    ),
    "embedding": (lambda: layers.Embedding(20, 6, name="fc"), (3,), "int32", "embeddings"),
}


@pytest.mark.parametrize("name", LORA_LAYERS)
def test_constrain_refuses_the_base_weight_of_a_lora_layer(name):
    """The layer uses base + LoRA product: a constraint on the base would not hold for it (Keras
    refuses constraints on LoRA layers itself)."""
    make, shape, dtype, attribute = LORA_LAYERS[name]
    model = keras.Sequential([keras.Input(shape, dtype=dtype), make()])
    layer = model.layers[0]
    layer.enable_lora(2)
    with pytest.raises(ValueError, match=rf"fc\.{attribute} cannot be constrained: LoRA"):
        wk.constrain(model, kernel=wk.MaxNorm(0.5))
    assert getattr(layer, f"_{attribute}").constraint is None
    assert getattr(layer, f"{attribute}_constraint") is None
    # set behind constrain()'s back, audit says why it does not hold
    getattr(layer, f"_{attribute}").constraint = wk.MaxNorm(0.5)
    (row,) = [r for r in wk.audit(model) if r.constraint is not None]
    assert "LoRA is enabled" in row.note


def test_constrain_refuses_a_quantized_kernel():
    model = keras.Sequential([keras.Input((8,)), layers.Dense(4, name="fc")])
    model.quantize("int8")
    layer = model.layers[0]
    with pytest.raises(ValueError, match=r"fc\.kernel cannot be constrained: quantized \(int8"):
        wk.constrain(model, kernel=wk.MaxNorm(1.0))
    assert layer._kernel.constraint is None and layer.kernel_constraint is None
    layer._kernel.constraint = wk.MaxNorm(1.0)  # behind constrain()'s back
    table = {row.name: row for row in wk.audit(model)}
    (row,) = [r for r in table.values() if r.constraint is not None]
    assert row.violation is None and "quantized (int8, stored as int8)" in row.note
    with pytest.raises(RuntimeError, match="not active or not satisfied"):
        wk.audit(model, strict=True)


def test_constrain_marks_and_warns_about_frozen_weights():
    model = keras.Sequential(
        [keras.Input((8,)), layers.Dense(4, name="base"), layers.Dense(2, name="head")]
    )
    model.layers[0].trainable = False
    with pytest.warns(UserWarning, match=r"base\.kernel is frozen \(trainable=False\)"):
        attached = wk.constrain(model, kernel=wk.MaxNorm(0.5))
    assert {f"{a.layer}.{a.weight}": a.frozen for a in attached} == {
        "base.kernel": True,
        "head.kernel": False,
    }
    assert "frozen" in str(attached[0]) and "frozen" not in str(attached[1])
    assert model.layers[0].kernel.constraint == wk.MaxNorm(0.5, axis=0)  # attached all the same


def test_constrain_names_an_unbuilt_sublayer_and_attaches_nothing():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.used = layers.Dense(4, name="used")
            self.unused = layers.Dense(4, name="unused")

        def call(self, x):
            return self.used(x)

    net = Net()
    net(np.ones((1, 3), "float32"))
    with pytest.raises(ValueError, match=r"layer unused \(Dense\) is not built"):
        wk.constrain(net, kernel=wk.MaxNorm(1.0))
    assert net.used.kernel.constraint is None and net.used.kernel_constraint is None
    assert [row.name for row in wk.audit(net)] == [v.path for v in net.weights]

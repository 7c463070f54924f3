"""Layers that failed open (issue 17, items 4 and 5): weights a subclass adds to a known layer,
``ReversibleEmbedding``'s untied output head, normalisation layers of other libraries, and core
constraints of the user's own."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from keras import layers, ops

import weight_constraints as wc
from weight_constraints.adapters import keras as wk


class HubReversibleEmbedding(layers.Embedding):
    """keras-hub's ``ReversibleEmbedding`` before Keras had one (a subclass of ``Embedding``):
    with ``tie_weights=False`` it adds the output head ``reverse_embeddings``."""

    def __init__(self, input_dim, output_dim, tie_weights=True, **kwargs):
        super().__init__(input_dim, output_dim, **kwargs)
        self.tie_weights = tie_weights

    def build(self, inputs_shape=None):
        super().build(inputs_shape)
        if not self.tie_weights:
            self.reverse_embeddings = self.add_weight(
                name="reverse_embeddings",
                trainable=True,
                shape=(self.output_dim, self.input_dim),
                initializer=self.embeddings_initializer,
                dtype=self.dtype,
            )

    def call(self, inputs, reverse=False):
        if reverse:
            if self.tie_weights:
                kernel = ops.transpose(ops.convert_to_tensor(self.embeddings))
            else:
                kernel = self.reverse_embeddings
            return ops.matmul(inputs, kernel)
        return super().call(inputs)


class LanguageModel(keras.Model):
    """Token ids -> embedding -> a hidden layer -> logits through the embedding's reverse."""

    def __init__(self, embedding, **kwargs):
        super().__init__(**kwargs)
        self.embed = embedding
        self.hidden = layers.Dense(6, name="hidden")

    def call(self, tokens):
        return self.embed(self.hidden(self.embed(tokens)), reverse=True)


def language_model(embedding):
    model = LanguageModel(embedding, name="lm")
    model(np.zeros((2, 5), "int32"))
    return model


def tokens(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 20, (16, 5)).astype("int32")
    return x, keras.utils.to_categorical(rng.integers(0, 20, (16, 5)), 20).astype("float32")


def head_norms(model):
    head = ops.convert_to_numpy(model.embed.reverse_embeddings).astype(np.float64)
    return wc.node_norms(head, 0)  # (hidden, vocab): one norm per logit


# -- a subclass of a known layer with weights of its own ------------------------------------------


def test_a_subclass_adding_weights_to_a_known_layer_is_refused_by_name():
    model = language_model(HubReversibleEmbedding(20, 6, tie_weights=False, name="embed"))
    with pytest.raises(
        ValueError,
        match=r"layer embed \(HubReversibleEmbedding, a subclass of Embedding\) has weights "
        r"beyond the known ones: lm/embed/reverse_embeddings \(6x20\)\. Their layout is unknown",
    ):
        wk.constrain(model, kernel=wk.MaxNorm(0.5))
    assert all(v.constraint is None for v in model.weights)  # nothing attached
    tied = language_model(HubReversibleEmbedding(20, 6, name="embed"))
    assert len(wk.constrain(tied, kernel=wk.MaxNorm(0.5))) == 2  # nothing beyond: as before


def test_skip_unknown_warns_and_a_strict_audit_does_not_pass_over_the_extra_weight():
    """Before: reverse_embeddings was left unconstrained with no word, and audit(strict=True)
    passed while its node norms grew past the bound."""
    keras.utils.set_random_seed(0)
    model = language_model(HubReversibleEmbedding(20, 6, tie_weights=False, name="embed"))
    with pytest.warns(UserWarning, match=r"left weights .* unconstrained: lm/embed/reverse_emb"):
        attached = wk.constrain(model, kernel=wk.MaxNorm(0.5), skip_unknown=True)
    assert {f"{a.layer}.{a.weight}" for a in attached} == {"embed.embeddings", "hidden.kernel"}
    model.compile(keras.optimizers.SGD(5.0), "categorical_crossentropy")
    model.fit(*tokens(), epochs=2, verbose=0)
    assert head_norms(model).max() > 0.5  # unconstrained, as the warning said
    rows = {row.name: row for row in wk.audit(model)}
    row = rows["lm/embed/reverse_embeddings"]
    assert row.constraint is None and "adds to a known layer (layout unknown)" in row.note
    assert [r.name for r in wk.audit(model).problems()] == ["lm/embed/reverse_embeddings"]
    with pytest.raises(RuntimeError, match=r"1 weight\(s\) are not constrained") as error:
        wk.audit(model, strict=True)
    assert "lm/embed/reverse_embeddings" in str(error.value)


def test_an_extra_weight_constrained_by_hand_is_not_refused():
    model = language_model(HubReversibleEmbedding(20, 6, tie_weights=False, name="embed"))
    model.embed.reverse_embeddings.constraint = wk.MaxNorm(0.5, axis=0)
    wk.constrain(model, kernel=wk.MaxNorm(0.5))
    wk.apply_constraints(model)
    assert head_norms(model).max() <= 0.5 * (1 + 1e-6)
    wk.audit(model, strict=True)


class GatedDense(layers.Dense):
    """A Dense holding a Dense of its own (a sublayer the known layout does not cover)."""

    def build(self, input_shape):
        super().build(input_shape)
        self.gate = layers.Dense(self.units, name="gate")
        self.gate.build(input_shape)

    def call(self, x):
        return super().call(x) * ops.sigmoid(self.gate(x))


def test_a_sublayer_of_a_known_layer_is_walked():
    """Before: a known layer was never descended into, so the gate stayed unconstrained."""
    model = keras.Sequential([keras.Input((4,)), GatedDense(3, name="gated")])
    attached = wk.constrain(model, kernel=wk.MaxNorm(0.5))
    assert {f"{a.layer}.{a.weight}" for a in attached} == {"gated.kernel", "gated/gate.kernel"}
    assert model.layers[0].gate.kernel.constraint == wk.MaxNorm(0.5, axis=0)


# -- Keras's own ReversibleEmbedding: a known layout -----------------------------------------------


def test_keras_reversible_embedding_constrains_its_untied_head_per_logit():
    """Before: reverse_embeddings (hidden, vocab) was never constrained and audit(strict=True)
    passed while its node norms grew past the bound."""
    keras.utils.set_random_seed(0)
    embedding = layers.ReversibleEmbedding(20, 6, tie_weights=False, name="embed")
    model = language_model(embedding)
    with pytest.warns(UserWarning, match=r"Keras saves no constraint for embed\.reverse_emb"):
        attached = wk.constrain(model, kernel=wk.MaxNorm(0.5))
    table = {f"{a.layer}.{a.weight}": a.constraint for a in attached}
    assert table == {
        "embed.embeddings": wk.MaxNorm(0.5, axis=1),
        "embed.reverse_embeddings": wk.MaxNorm(0.5, axis=0),  # one norm per logit
        "hidden.kernel": wk.MaxNorm(0.5, axis=0),
    }
    assert wk.per_node_axes(embedding, "reverse_embeddings") == (0,)
    model.compile(keras.optimizers.SGD(5.0), "categorical_crossentropy")
    model.fit(*tokens(), epochs=2, verbose=0)
    assert 0.49 <= head_norms(model).max() <= 0.5 * (1 + 1e-6)
    wk.audit(model, strict=True)
    row = {r.name: r for r in wk.audit(model)}["lm/embed/reverse_embeddings"]
    assert row.axes == (0,) and "model.save() drops it" in row.note
    only = language_model(layers.ReversibleEmbedding(20, 6, tie_weights=False, name="embed"))
    with pytest.warns(UserWarning, match="Keras saves no constraint"):
        attached = wk.constrain(only, embedding=wk.UnitNorm())  # the head is an embedding
    assert {a.weight for a in attached} == {"embeddings", "reverse_embeddings"}


def test_a_loaded_reversible_embedding_is_flagged_until_constrained_again(tmp_path):
    embedding = layers.ReversibleEmbedding(20, 6, tie_weights=False, name="embed")
    model = keras.Sequential([keras.Input((5,), dtype="int32"), embedding], name="seq")
    with pytest.warns(UserWarning, match="Keras saves no constraint"):
        wk.constrain(model, kernel=wk.MaxNorm(0.5))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    with pytest.raises(
        RuntimeError, match=r"embed/reverse_embeddings .*config keeps no constraint"
    ):
        wk.audit(loaded, strict=True)
    with pytest.warns(UserWarning, match="Keras saves no constraint"):
        wk.constrain(loaded, kernel=wk.MaxNorm(0.5))
    wk.apply_constraints(loaded)
    wk.audit(loaded, strict=True)


# -- normalisation layers recognised by their structure -------------------------------------------


class LlamaLayerNorm(layers.Layer):
    """keras-hub's Llama norm: a 1-D scale and an epsilon."""

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        variance = ops.mean(ops.square(x), axis=-1, keepdims=True)
        return x * ops.rsqrt(variance + self.epsilon) * self.scale


class Mix(layers.Layer):
    """A layer of unknown layout with a 2-D weight and a 1-D one."""

    def build(self, input_shape):
        self.mix = self.add_weight(name="mix", shape=(input_shape[-1], input_shape[-1]))
        self.gain = self.add_weight(name="gain", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return ops.matmul(x, self.mix) * self.gain


class Scale(layers.Layer):
    """A 1-D weight and no epsilon: not a normalisation layer."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


def test_a_normalisation_layer_is_recognised_by_its_structure():
    """Before: LlamaLayerNorm raised 'has weights of its own and an unknown layout'."""
    model = keras.Sequential(
        [
            keras.Input((4,)),
            layers.Dense(8, name="up"),
            LlamaLayerNorm(name="norm"),
            layers.Dense(2, name="down"),
        ]
    )
    attached = wk.constrain(model, kernel=wk.MaxNorm(1.0))
    assert [f"{a.layer}.{a.weight}" for a in attached] == ["up.kernel", "down.kernel"]
    assert model.get_layer("norm").scale.constraint is None


def test_skip_unknown_warns_listing_the_skipped_weights_of_two_or_more_dimensions():
    model = keras.Sequential(
        [keras.Input((4,)), Mix(name="mix"), Scale(name="scale"), layers.Dense(2, name="fc")],
        name="seq",
    )
    with pytest.raises(ValueError, match=r"layer mix \(Mix\) has weights of its own"):
        wk.constrain(model, kernel=wk.MaxNorm(1.0))
    with pytest.warns(UserWarning, match=r"unconstrained: seq/mix/mix \(4x4\)$"):
        attached = wk.constrain(model, kernel=wk.MaxNorm(1.0), skip_unknown=True)
    assert [a.layer for a in attached] == ["fc"]
    only_1d = keras.Sequential([keras.Input((4,)), Scale(name="scale"), layers.Dense(2)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing of two or more dimensions was skipped
        wk.constrain(only_1d, kernel=wk.MaxNorm(1.0), skip_unknown=True)


# -- core constraints of the user's own ------------------------------------------------------------


class Halve(wc.Constraint):
    """A plain (non-dataclass) core constraint with an axis attribute."""

    def __init__(self, axis=0):
        self.axis = axis

    def __call__(self, w, *, out=None, xp=None):
        return w * 0.5

    def get_config(self):
        return {"axis": self.axis}


def test_a_core_constraint_of_ones_own_gets_a_message_saying_what_to_provide():
    model = keras.Sequential([keras.Input((3,)), layers.Dense(2, name="fc")])
    with pytest.raises(
        ValueError,
        match=r"cannot convert .*Halve.* to a weight_constraints constraint: .*subclass "
        r"keras\.constraints\.Constraint, register it with keras\.saving\."
        r"register_keras_serializable .*per_node_axes\(layer, weight\)",
    ):
        wk.constrain(model, kernel=Halve())
    assert model.layers[0].kernel.constraint is None


def test_the_audit_of_a_core_constraint_of_ones_own_measures_the_entry_change():
    """Before: the audit rebound its axis with dataclasses.replace and failed in dataclasses."""
    model = keras.Sequential([keras.Input((3,)), layers.Dense(2, kernel_constraint=Halve())])
    (row,) = [r for r in wk.audit(model) if r.constraint is not None]
    kernel = ops.convert_to_numpy(model.layers[0].kernel).astype(np.float64)
    assert row.axes is None and "custom constraint" in row.note
    assert row.violation == pytest.approx(np.abs(kernel * 0.5).max())

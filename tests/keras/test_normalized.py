"""Normalized-weight training (issue 21): bounds given as rules of the weight's shape
(``"sqrt(fan_in)"``) and one norm per input unit (``constrain(..., per_input=...)``), in compiled
train steps on every backend, in every float dtype, through saving and the audit.

EDM2's forced weight normalization is ``MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)")``: every node
of every kernel on the sphere of radius ``sqrt(fan_in)`` of its own layer. nGPT's is
``UnitNorm()``, with one norm per *input* unit for the layers that map into the embedding space.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import layers, ops

import weight_constraints as wc
from weight_constraints.adapters import keras as wk
from weight_constraints.adapters._audit import tolerance

BACKEND = keras.backend.backend()
# Compiled train steps: XLA on TensorFlow, jax.jit on JAX; the torch backend runs its eager step
# (torch.compile is the PyTorch adapter's business, see test_models.py).
JIT = BACKEND != "torch"
DTYPES = ["float32", "float16", "bfloat16"]
STEPS = 4


def edm2():
    return wk.MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)")


def node_norms(variable, axes) -> np.ndarray:
    weights = ops.convert_to_numpy(ops.cast(variable, "float32")).astype(np.float64)
    return np.atleast_1d(wc.node_norms(weights, axes))


def on_its_sphere(variable, radius: float, axes, constraint) -> None:
    """Every node of ``variable`` at norm ``radius``, within the audit's own tolerance (the
    kind's roundings of the variable's dtype, relative to the resolved bound)."""
    dtype = keras.backend.standardize_dtype(variable.dtype)
    allowed = tolerance(constraint, dtype, 1e-5, shape=tuple(variable.shape))
    np.testing.assert_allclose(node_norms(variable, axes), radius, rtol=0, atol=allowed)


class EveryStep(keras.callbacks.Callback):
    """After every train step: ``check(model)``, and the strict audit; the weights moved."""

    def __init__(self, check):
        super().__init__()
        self.check = check
        self.steps = 0
        self.before = None

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        wk.audit(self.model, strict=True)
        self.check(self.model)
        now = [ops.convert_to_numpy(ops.cast(v, "float32")) for v in self.model.trainable_weights]
        if self.before is not None:  # the step moved the weights, and they are back on the set
            assert any(not np.array_equal(a, b) for a, b in zip(now, self.before, strict=True))
        self.before = now


def fit(model, x, y, check) -> None:
    model.compile(keras.optimizers.SGD(1e-3), "mse", jit_compile=JIT)
    callback = EveryStep(check)
    batch = len(x) // STEPS
    model.fit(x, y, batch_size=batch, shuffle=False, verbose=0, callbacks=[callback])
    assert callback.steps == STEPS


# -- EDM2: forced weight normalization on a small conv net ----------------------------------------


def conv_net(dtype: str) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            layers.Conv2D(4, 3, use_bias=False, dtype=dtype, name="conv"),  # fan_in 3 * 3 * 3
            layers.Flatten(),
            layers.Dense(3, use_bias=False, dtype=dtype, name="fc"),  # fan_in 6 * 6 * 4
        ],
        name="net",
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_edm2_every_node_on_its_sphere_after_every_step(dtype):
    keras.utils.set_random_seed(0)
    model = conv_net(dtype)
    attached = wk.constrain(model, kernel=edm2())
    assert [(a.layer, a.constraint) for a in attached] == [
        ("conv", wk.MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)", axis=(0, 1, 2))),
        ("fc", wk.MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)", axis=0)),
    ]
    with pytest.raises(RuntimeError, match="not active or not satisfied"):
        wk.audit(model, strict=True)  # Keras's initialisation is off the spheres

    conv, fc = model.get_layer("conv"), model.get_layer("fc")
    assert keras.backend.standardize_dtype(conv.kernel.dtype) == dtype

    def check(model):
        on_its_sphere(conv.kernel, math.sqrt(27), (0, 1, 2), conv.kernel.constraint)
        on_its_sphere(fc.kernel, math.sqrt(144), 0, fc.kernel.constraint)

    rng = np.random.default_rng(0)
    x = 0.1 * rng.standard_normal((4 * STEPS, 8, 8, 3)).astype("float32")
    fit(model, x, rng.standard_normal((4 * STEPS, 3)).astype("float32"), check)


def test_a_rule_resolves_for_each_layer_it_is_bound_to():
    model = keras.Sequential(
        [keras.Input((4,)), layers.Dense(9, name="a"), layers.Dense(3, name="b")], name="mlp"
    )
    wk.constrain(model, kernel=wc.MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)"))  # a core object
    wk.apply_constraints(model)
    np.testing.assert_allclose(node_norms(model.get_layer("a").kernel, 0), 2.0, rtol=1e-6)
    np.testing.assert_allclose(node_norms(model.get_layer("b").kernel, 0), 3.0, rtol=1e-6)
    for layer in model.layers:  # the rule is kept, not the number of one layer
        assert layer.kernel_constraint.min_value == "sqrt(fan_in)"
        assert layer.kernel.constraint is layer.kernel_constraint
    stats = wk.norm_stats(model)
    assert stats["mlp/a/kernel/norm_min"] == pytest.approx(2.0, rel=1e-6)
    assert stats["mlp/b/kernel/norm_max"] == pytest.approx(3.0, rel=1e-6)
    constraint = wk.constraint_stats(model)
    assert constraint["constraints/mlp/b/kernel/norm_mean"] == pytest.approx(3.0, rel=1e-6)
    assert constraint["constraints/mlp/b/kernel/violation"] <= 3.0 * 1e-6
    assert "constraints/mlp/a/bias/norm_min" not in constraint


def test_a_rule_as_a_layer_constraint_holds_in_compiled_train_steps():
    """A twin and a core object with a rule, set on the layers directly, trained with a large
    rate: each layer's norms reach its own bound (1 and sqrt(1/2)), and never pass it."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16,)),
            layers.Dense(8, kernel_constraint=wk.max_norm("0.25 * sqrt(fan_in)"), name="a"),
            layers.Dense(1, kernel_constraint=wc.MaxNorm("0.25 * sqrt(fan_in)"), name="b"),
        ]
    )
    model.compile(keras.optimizers.SGD(1.0), "mse", jit_compile=JIT)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 16)), rng.standard_normal((32, 1))
    model.fit(x.astype("float32"), y.astype("float32"), epochs=3, verbose=0)
    a, b = node_norms(model.get_layer("a").kernel, 0), node_norms(model.get_layer("b").kernel, 0)
    assert a.max() <= 1.0 * (1 + 1e-6) and a.max() >= 1.0 * 0.999  # 0.25 * sqrt(16)
    assert b.max() <= 0.25 * math.sqrt(8) * (1 + 1e-6) and b.max() >= 0.25 * math.sqrt(8) * 0.999
    wk.audit(model, strict=True)


def test_half_precision_is_accumulated_in_float32():
    """One node of 4096 bfloat16 entries 3.0 (norm 192) onto the sphere of radius
    sqrt(4096) = 64: summed one by one in bfloat16, its squares would stop growing at 4096 (the
    norm read as 64, the node left as it is); accumulated in float32 every entry becomes 1."""
    variable = keras.Variable(np.full((4096, 2), 3.0), dtype="bfloat16")
    variable.assign(edm2()(variable))
    assert keras.backend.standardize_dtype(variable.dtype) == "bfloat16"
    np.testing.assert_allclose(node_norms(variable, 0), 64.0, rtol=2 * 2.0**-8)
    np.testing.assert_allclose(ops.convert_to_numpy(ops.cast(variable, "float32")), 1.0)


# -- the audit shows the rule and measures against the resolved bound ------------------------------


def test_the_audit_shows_the_rule_and_measures_against_the_resolved_bound():
    model = keras.Sequential([keras.Input((100,)), layers.Dense(2, name="fc")], name="m")
    wk.constrain(model, kernel=edm2())  # fan_in 100: the sphere of radius 10
    kernel = model.get_layer("fc").kernel
    unit = np.ones((100, 2)) / 10.0
    kernel.assign(unit * (10.0 + 5e-5))  # 5e-5 off: within tol 1e-5 relative to 10
    (row,) = [r for r in wk.audit(model) if r.constraint is not None]
    assert row.constraint.max_value == "sqrt(fan_in)" and row.axes == (0,)
    assert row.violation == pytest.approx(5e-5, rel=0.05)
    assert "MinMaxNorm(min_value='sqrt(fan_in)', max_value='sqrt(fan_in)'" in str(wk.audit(model))
    wk.audit(model, strict=True)  # tolerance 1e-5 * 10, the bound resolved for the row's shape
    kernel.assign(unit * (10.0 + 2e-4))
    with pytest.raises(RuntimeError, match="sqrt"):
        wk.audit(model, strict=True)
    kernel.assign(unit * 10.0)
    assert next(r.violation for r in wk.audit(model) if r.constraint is not None) < 1e-5


# -- nGPT: unit norms, one norm per input unit for the layers that map into the embedding ----------


def ngpt_block(dtype: str = "float32") -> keras.Model:
    """A residual MLP block of width 6: ``up`` maps out of the embedding space, ``down`` into
    it (one norm per input unit)."""
    inputs = keras.Input((6,))
    hidden = layers.Dense(12, use_bias=False, activation="relu", dtype=dtype, name="up")(inputs)
    down = layers.Dense(6, use_bias=False, dtype=dtype, name="down")(hidden)
    outputs = layers.Dense(6, use_bias=False, dtype=dtype, name="attn_out")(down)
    return keras.Model(inputs, layers.Add(dtype=dtype)([inputs, outputs]), name="block")


@pytest.mark.parametrize("dtype", DTYPES)
def test_ngpt_unit_norms_with_per_input_hold_after_every_step(dtype):
    keras.utils.set_random_seed(0)
    model = ngpt_block(dtype)
    attached = wk.constrain(model, kernel=wk.UnitNorm(), per_input=[r"down", r"attn_.*"])
    assert [str(a) for a in attached] == [
        "up.kernel: UnitNorm(axis=0)",
        "down.kernel: UnitNorm(axis=1)",  # (in, out): one norm per input unit
        "attn_out.kernel: UnitNorm(axis=1)",
    ]
    up, down = model.get_layer("up"), model.get_layer("down")
    assert down.kernel_constraint is down.kernel.constraint  # in the config: saved

    def check(model):
        on_its_sphere(up.kernel, 1.0, 0, up.kernel.constraint)
        on_its_sphere(down.kernel, 1.0, 1, down.kernel.constraint)
        on_its_sphere(model.get_layer("attn_out").kernel, 1.0, 1, down.kernel.constraint)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4 * STEPS, 6)).astype("float32")
    fit(model, x, rng.standard_normal((4 * STEPS, 6)).astype("float32"), check)


def test_per_input_patterns_match_the_paths_constrain_reports():
    inner = keras.Sequential(
        [keras.Input((6,)), layers.Dense(12, name="up"), layers.Dense(6, name="down")],
        name="mlp",
    )
    model = keras.Sequential([keras.Input((6,)), inner, layers.Dense(6, name="down")])
    attached = wk.constrain(model, kernel=wk.UnitNorm(), per_input=r"mlp/down")
    assert [(a.layer, a.constraint.axis) for a in attached] == [
        ("mlp/up", 0),
        ("mlp/down", 1),
        ("down", 0),  # fullmatched: "mlp/down" is not "down"
    ]
    lstm = keras.Sequential([keras.Input((5, 3)), layers.LSTM(4, name="lstm")])
    found = wk.constrain(lstm, kernel=wk.UnitNorm(), recurrent=wk.UnitNorm(), per_input=r".*cell")
    assert [(a.layer, a.weight, a.constraint.axis) for a in found] == [
        ("lstm/lstm_cell", "kernel", 1),
        ("lstm/lstm_cell", "recurrent_kernel", 1),
    ]


def test_per_input_leaves_embeddings_and_biases_per_node():
    model = keras.Sequential(
        [
            keras.Input((4,), dtype="int32"),
            layers.Embedding(20, 6, name="embed"),
            layers.Dense(6, name="down"),
        ]
    )
    attached = wk.constrain(model, kernel=wk.UnitNorm(), bias=wk.MaxNorm(1.0), per_input=".*")
    assert [str(a) for a in attached] == [
        "embed.embeddings: UnitNorm(axis=1)",
        "down.kernel: UnitNorm(axis=1)",
        "down.bias: MaxNorm(max_value=1.0, axis=0)",
    ]


def test_per_input_errors_attach_nothing():
    def unconstrained(model):
        return all(v.constraint is None for v in model.weights)

    net = conv_net("float32")
    with pytest.raises(ValueError, match=r"conv\.kernel: one norm per input unit .*\(3, 3, 3, 4\)"):
        wk.constrain(net, kernel=wk.UnitNorm(), per_input="conv")
    assert unconstrained(net)
    block = ngpt_block()
    with pytest.raises(ValueError, match=r"per_input pattern 'dwon' matches no layer"):
        wk.constrain(block, kernel=wk.UnitNorm(), per_input=["down", "dwon"])
    assert unconstrained(block)
    with pytest.raises(ValueError, match=r"per_input: '\(' is not a regular expression"):
        wk.constrain(block, kernel=wk.UnitNorm(), per_input="(")
    with pytest.raises(ValueError, match=r"explicit axis=0"):  # the per-node axis, not per-input
        wk.constrain(block, kernel=wk.UnitNorm(axis=0), per_input="down")
    assert unconstrained(block)


def test_a_loaded_per_input_constraint_is_the_same_constraint(tmp_path):
    block = ngpt_block()
    wk.constrain(block, kernel=wk.UnitNorm(), per_input="down|attn_out")
    block.save(tmp_path / "block.keras")
    loaded = keras.saving.load_model(tmp_path / "block.keras")
    assert loaded.get_layer("down").kernel.constraint == wk.UnitNorm(axis=1)
    wk.constrain(loaded, kernel=wk.UnitNorm(), per_input="down|attn_out")  # already there
    with pytest.raises(ValueError, match="already has the constraint UnitNorm"):
        wk.constrain(loaded, kernel=wk.UnitNorm())  # would be one norm per output unit


# -- rules through get, serialize, deserialize, and errors ----------------------------------------


@pytest.mark.parametrize(
    "constraint, field, rule",
    [
        (edm2(), "min_value", "sqrt(fan_in)"),
        (wk.max_norm("2 * sqrt(fan_in)"), "max_value", "2.0 * sqrt(fan_in)"),
        (wk.Simplex("fan_in"), "radius", "fan_in"),
        (wk.MaxL1Norm("0.5*fan_in", axis=[0, 1]), "max_value", "0.5 * fan_in"),
    ],
    ids=repr,
)
def test_rules_survive_get_serialize_and_deserialize(constraint, field, rule):
    config = wk.serialize(constraint)
    assert config["config"][field] == rule
    for load in (wk.deserialize, wk.get, keras.constraints.get, keras.constraints.deserialize):
        again = load(config)
        assert again == constraint and type(again) is type(constraint)
    assert wk.get(constraint.core) == constraint  # a core object becomes the twin
    assert wk.get({"class_name": type(constraint).__qualname__, "config": config["config"]}) == (
        constraint
    )


@pytest.mark.parametrize(
    "make, value",
    [
        (lambda: wk.MaxNorm("sqrt(fan_out)"), "sqrt(fan_out)"),
        (lambda: wk.MinMaxNorm("sqrt(fan_in)", "fan_in ** 2"), "fan_in ** 2"),
        (lambda: wk.max_norm("-2 * sqrt(fan_in)"), "-2 * sqrt(fan_in)"),
        (lambda: wk.get({"class_name": "MaxNorm", "config": {"max_value": "fanin"}}), "fanin"),
        (lambda: wk.deserialize({"class_name": "Simplex", "config": {"radius": "n"}}), "n"),
    ],
    ids=["unknown", "power", "negative", "get", "deserialize"],
)
def test_a_bad_rule_names_the_value(make, value):
    with pytest.raises(ValueError, match=re.escape(f"got {value!r}")):
        make()


def test_a_rule_the_dtype_cannot_represent_raises_naming_weight_and_dtype():
    model = keras.Sequential([keras.Input((8,)), layers.Dense(2, dtype="float16", name="fc")])
    with pytest.raises(ValueError, match=r"fc\.kernel: max_value=8\d+\.0 is beyond .* float16"):
        wk.constrain(model, kernel=wk.MaxNorm("1e4 * fan_in"))
    assert model.get_layer("fc").kernel.constraint is None


def test_a_rule_needs_the_static_shape():
    class Unknown:
        shape = (None, 4)

    with pytest.raises(ValueError, match=r"shape \(None, 4\) is not fully known"):
        edm2()(Unknown())


# -- saving: the rules and the per-input axis survive .keras and .h5 -----------------------------


def saved_model() -> keras.Model:
    body = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            layers.Conv2D(3, 3, name="conv"),
            layers.Flatten(),
            layers.Dense(6, name="fc"),
        ],
        name="body",
    )
    wk.constrain(body, kernel=edm2())
    block = keras.Sequential(
        [keras.Input((6,)), layers.Dense(12, name="up"), layers.Dense(6, name="down")],
        name="block",
    )
    wk.constrain(block, kernel=wk.UnitNorm(), per_input="down")
    head = layers.Dense(
        2,
        kernel_constraint=wk.max_norm("2 * sqrt(fan_in)"),
        bias_constraint=wc.MaxNorm("sqrt(fan_in)"),  # a core object as the layer's constraint
        name="head",
    )
    model = keras.Sequential([keras.Input((6, 6, 2)), body, block, head], name="model")
    wk.apply_constraints(model)
    return model


EXPECTED = {
    "conv": ("MinMaxNorm", {"min_value": "sqrt(fan_in)", "axis": [0, 1, 2]}),
    "fc": ("MinMaxNorm", {"min_value": "sqrt(fan_in)", "axis": 0}),
    "up": ("UnitNorm", {"axis": 0}),
    "down": ("UnitNorm", {"axis": 1}),
    "head": ("MaxNorm", {"max_value": "2.0 * sqrt(fan_in)"}),
    "head.bias": ("MaxNorm", {"max_value": "sqrt(fan_in)"}),
}

LOAD = r"""
import json, sys
import keras

def load(paths):
    results = {}
    for path in paths:
        try:
            model = keras.saving.load_model(path)
        except Exception as error:
            results[path] = {"error": f"{type(error).__name__}: {error}"}
            continue
        loaded = {}
        for layer in model._flatten_layers():
            for name, c in (("", getattr(layer, "kernel_constraint", None)),
                            (".bias", getattr(layer, "bias_constraint", None))):
                if c is not None:
                    loaded[layer.name + name] = [type(c).__qualname__, c.get_config()]
        results[path] = {"loaded": loaded}
    return results

without = load(sys.argv[1:])  # a process that has not imported the adapter
assert "weight_constraints.adapters.keras" not in sys.modules
import weight_constraints.adapters.keras
print("RESULT " + json.dumps({"without": without, "with": load(sys.argv[1:])}))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = saved_model()
    folder = tmp_path_factory.mktemp("normalized")
    paths = [folder / "model.keras", folder / "model.h5"]
    for path in paths:
        model.save(path)
    return model, paths


def save_and_load_elsewhere(folder) -> dict:
    """The model of ``saved`` saved in ``folder`` as ``model.keras`` and ``model.h5``, and what
    a fresh process loads from each: ``{"without": {suffix: ...}, "with": {suffix: ...}}``,
    first without the adapter imported, then with it."""
    keras.utils.set_random_seed(0)
    model = saved_model()
    paths = [folder / "model.keras", folder / "model.h5"]
    for path in paths:
        model.save(path)
    env = {**os.environ, "KERAS_BACKEND": BACKEND, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", LOAD, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    loaded = json.loads(line.removeprefix("RESULT "))
    return {
        when: {path.suffix[1:]: loaded[when][str(path)] for path in paths}
        for when in ("without", "with")
    }


@pytest.fixture(scope="module")
def loaded_elsewhere(once_per_run) -> dict:
    """Computed once per run (see tests/keras/conftest.py): the fresh process is the cost."""
    _, results = once_per_run("normalized-saving", save_and_load_elsewhere)
    return results


def test_saved_rules_load_as_rules_in_a_process_with_the_adapter(loaded_elsewhere):
    assert sorted(loaded_elsewhere["with"]) == ["h5", "keras"]
    for suffix, result in loaded_elsewhere["with"].items():
        assert "error" not in result, (suffix, result)
        loaded = result["loaded"]
        assert sorted(loaded) == sorted(EXPECTED)
        for name, (kind, config) in EXPECTED.items():
            assert loaded[name][0] == kind, name
            assert {key: loaded[name][1][key] for key in config} == config, name


def test_saved_rules_never_load_as_keras_classes_without_the_adapter(loaded_elsewhere):
    assert sorted(loaded_elsewhere["without"]) == ["h5", "keras"]
    for suffix, result in loaded_elsewhere["without"].items():
        assert "loaded" not in result, (suffix, result)
        assert "weight_constraints" in result["error"]


@pytest.mark.parametrize("suffix", ["keras", "h5"])
def test_a_loaded_model_keeps_the_rules_and_trains_on_its_spheres(saved, suffix):
    model, paths = saved
    loaded = keras.saving.load_model(next(p for p in paths if p.suffix == f".{suffix}"))
    for old, new in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(old), ops.convert_to_numpy(new))
    body, block, head = loaded.layers
    assert body.get_layer("conv").kernel.constraint == wk.MinMaxNorm(
        "sqrt(fan_in)", "sqrt(fan_in)", axis=(0, 1, 2)
    )
    assert block.get_layer("down").kernel.constraint == wk.UnitNorm(axis=1)
    assert head.kernel.constraint.get_config()["max_value"] == "2.0 * sqrt(fan_in)"
    assert head.bias.constraint == wc.MaxNorm("sqrt(fan_in)")
    wk.constrain(body, kernel=edm2())  # the same constraints: nothing to replace
    wk.constrain(block, kernel=wk.UnitNorm(), per_input="down")

    def check(model):
        conv = body.get_layer("conv").kernel
        on_its_sphere(conv, math.sqrt(18), (0, 1, 2), conv.constraint)
        on_its_sphere(block.get_layer("down").kernel, 1.0, 1, wk.UnitNorm(axis=1))
        assert node_norms(head.kernel, 0).max() <= 2 * math.sqrt(6) * (1 + 1e-6)

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2 * STEPS, 6, 6, 2)).astype("float32")
    fit(loaded, x, rng.standard_normal((2 * STEPS, 2)).astype("float32"), check)

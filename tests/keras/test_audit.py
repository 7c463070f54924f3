"""audit(): one row per weight with its constraint, axes, whether the next step projects it and
how far it is from its set; ConstraintStats: node-norm statistics in ``logs`` during fit."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest
from keras import layers, ops

import weight_constraints as wc
from weight_constraints.adapters import _audit as wk_rules
from weight_constraints.adapters import keras as wk


def network():
    """Constrained, batch-normalised, unconstrained and frozen constrained parts."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = layers.Dense(
        8, kernel_constraint=wk.MaxNorm(0.5), bias_constraint=wk.NonNeg(), name="constrained"
    )(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Dense(8, name="plain")(x)
    x = layers.Dense(8, kernel_constraint=wk.UnitNorm(), name="frozen")(x)
    outputs = layers.Dense(1, name="head")(x)
    model = keras.Model(inputs, outputs, name="net")
    model.get_layer("frozen").trainable = False
    return model


def data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((32, 6)).astype("float32"), rng.standard_normal((32, 1)).astype(
        "float32"
    )


def numpy(variable):
    return ops.convert_to_numpy(variable).astype(np.float64)


def test_one_row_per_weight():
    model = network()
    rows = wk.audit(model)
    assert [row.name for row in rows] == [v.path for v in model.weights]
    table = {row.name: row for row in rows}
    kernel = table["constrained/kernel"]
    assert kernel.shape == (6, 8) and kernel.constraint == wk.MaxNorm(0.5)
    assert kernel.axes == (0,) and kernel.active and kernel.note == ""
    n = wc.node_norms(numpy(model.get_layer("constrained").kernel), 0)
    assert kernel.violation == pytest.approx(max(n.max() - 0.5, 0.0), rel=1e-9, abs=1e-12)
    assert kernel.violation > 0  # the initial kernel is outside the ball
    bias = table["constrained/bias"]
    assert bias.constraint == wk.NonNeg() and bias.axes is None and bias.active
    assert bias.violation == 0.0
    frozen = table["frozen/kernel"]
    assert frozen.constraint == wk.UnitNorm() and not frozen.active
    assert "not trainable" in frozen.note
    n = wc.node_norms(numpy(model.get_layer("frozen").kernel), 0)
    assert frozen.violation == pytest.approx(np.abs(n - 1).max(), rel=1e-9)
    for name in ("bn/gamma", "bn/moving_mean", "plain/kernel", "head/bias", "frozen/bias"):
        row = table[name]
        assert (row.constraint, row.axes, row.active, row.violation) == (None, None, False, None)
    text = str(rows)
    assert text.splitlines()[0].split() == [
        "weight",
        "shape",
        "constraint",
        "axes",
        "active",
        "violation",
        "note",
    ]
    assert len(text.splitlines()) == 1 + len(model.weights)
    assert "frozen/kernel" in text and " NO " in text


def test_strict_raises_for_the_inactive_and_the_violated():
    model = network()
    with pytest.raises(RuntimeError, match="2 constrained weight") as error:
        wk.audit(model, strict=True)
    assert "constrained/kernel" in str(error.value) and "frozen/kernel" in str(error.value)
    model.compile(keras.optimizers.SGD(0.5), "mse")
    model.fit(*data(), epochs=2, verbose=0)
    with pytest.raises(RuntimeError, match="1 constrained weight") as error:
        wk.audit(model, strict=True)  # the step projected the kernel; the frozen one stays
    assert "frozen/kernel" in str(error.value)
    model.get_layer("frozen").trainable = True
    wk.apply_constraints(model)
    rows = wk.audit(model, strict=True)
    assert all(row.violation <= 1e-6 for row in rows if row.constraint is not None)


def test_notes_on_what_the_optimizer_does_not_see():
    keras.utils.set_random_seed(0)

    class Clip(wk.Constraint):
        def __call__(self, w):
            return ops.clip(w, -0.1, 0.1)

    model = keras.Sequential(
        [
            keras.Input((4,)),
            layers.Dense(3, name="attribute_only"),
            layers.Dense(3, name="variable_only"),
            layers.Dense(3, kernel_constraint=keras.constraints.MaxNorm(9), name="keras_own"),
            layers.Dense(3, kernel_constraint=Clip(), name="custom"),
        ],
        name="m",
    )
    model.get_layer("attribute_only").kernel_constraint = wk.MaxNorm(9)  # after build
    model.get_layer("variable_only").kernel.constraint = wk.MaxNorm(9)
    model.compile(keras.optimizers.SGD(0.1, use_ema=True), "mse")
    table = {row.name: row for row in wk.audit(model)}
    row = table["m/attribute_only/kernel"]
    assert not row.active and "only in kernel_constraint" in row.note
    row = table["m/variable_only/kernel"]
    assert row.active and "model.save() drops it" in row.note and "use_ema" in row.note
    row = table["m/keras_own/kernel"]
    assert row.active and "Keras's own class" in row.note and row.axes == (0,)
    row = table["m/custom/kernel"]
    kernel = numpy(model.get_layer("custom").kernel)
    assert row.axes is None and "custom constraint" in row.note
    assert row.violation == pytest.approx(np.max(np.abs(kernel - np.clip(kernel, -0.1, 0.1))))
    with pytest.raises(RuntimeError, match="m/attribute_only/kernel"):
        wk.audit(model, strict=True)


@pytest.mark.parametrize(
    "constraint",
    [wk.MaxNorm(1.0), wk.UnitNorm(), wk.MinMaxNorm(0.5, 0.75), wk.Simplex(), wk.MaxL1Norm(2.0)],
    ids=repr,
)
def test_half_precision_weights_on_the_boundary_are_not_reported(constraint):
    """A projected bfloat16 weight is rounded to bfloat16: its distance from the set is of the
    order of its dtype's rounding, which the audit allows (and nothing more)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((16,)), layers.Dense(8, kernel_constraint=constraint, dtype="bfloat16")]
    )
    wk.apply_constraints(model)
    rows = wk.audit(model)
    (row,) = [r for r in rows if r.constraint is not None]
    assert row.dtype == "bfloat16"
    assert 1e-5 < row.violation <= 2**-6 * wk_rules.scale(constraint)  # rounding, not zero
    assert rows.problems() == []
    wk.audit(model, strict=True)
    model.get_layer(index=0).kernel.assign(ops.cast(ops.ones((16, 8)), "bfloat16"))  # far out
    assert [r.name for r in wk.audit(model).problems()] == [row.name]


def test_problems_measure_each_row_by_its_own_bound_and_dtype():
    def row(constraint, violation, dtype=None):
        return wk_rules.AuditRow("w", (3,), constraint, None, True, violation, "", dtype)

    rows = wk_rules.Audit(
        [
            row(wc.Simplex(100.0), 5e-4),  # 5e-6 of the radius
            row(wc.Clip(-50.0, 50.0), 4e-4),  # 8e-6 of the bounds
            row(wc.BoxMaxNorm(-0.5, 0.5, 200.0), 1e-3),  # 5e-6 of max_value
            row(wc.Clip(-float("inf"), 30.0), 2e-4),  # the finite bound
            row(wc.MaxNorm(1.0), 2e-3, "bfloat16"),  # within bfloat16's rounding
            row(wc.MaxNorm(1.0), 2e-3, "float32"),  # far beyond float32's
            row(wc.UnitNorm(), 2e-3),  # no dtype given: tol alone
        ]
    )
    assert [rows.index(r) for r in rows.problems(1e-5)] == [5, 6]
    assert rows.problems(1e-5)[0].dtype == "float32"
    assert wk_rules.AuditRow("w", (3,), None, None, False, None)._fields[-1] == "dtype"


def test_audit_needs_a_built_model():
    with pytest.raises(ValueError, match="not built"):
        wk.audit(keras.Sequential([layers.Dense(2)]))


def test_constraint_stats_reach_csv_logger_and_history(tmp_path):
    model = network()
    model.compile(keras.optimizers.SGD(0.5), "mse")
    log = tmp_path / "log.csv"
    history = model.fit(
        *data(),
        epochs=3,
        verbose=0,
        callbacks=[wk.ConstraintStats(), keras.callbacks.CSVLogger(str(log))],
    )
    with open(log, newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 3
    prefix = "constraints/"
    expected = {
        f"{prefix}constrained/kernel/norm_min",
        f"{prefix}constrained/kernel/norm_max",
        f"{prefix}constrained/kernel/norm_mean",  # the shared schema: new in constraint_stats
        f"{prefix}constrained/kernel/violation",
        f"{prefix}constrained/bias/violation",
        f"{prefix}frozen/kernel/norm_min",
        f"{prefix}frozen/kernel/norm_max",
        f"{prefix}frozen/kernel/norm_mean",
        f"{prefix}frozen/kernel/violation",
    }
    assert expected <= set(rows[0])
    assert not any(key.startswith(f"{prefix}plain") for key in rows[0])
    for row in rows:
        assert float(row[f"{prefix}constrained/kernel/norm_max"]) <= 0.5 * (1 + 1e-6)
        assert float(row[f"{prefix}constrained/kernel/violation"]) <= 1e-6
    final = wk.constraint_stats(model)
    assert set(final) == expected
    norms = wc.node_norms(numpy(model.get_layer("frozen").kernel), 0)
    assert final[f"{prefix}frozen/kernel/norm_min"] == pytest.approx(norms.min(), rel=1e-12)
    assert final[f"{prefix}frozen/kernel/norm_max"] == pytest.approx(norms.max(), rel=1e-12)
    assert final[f"{prefix}frozen/kernel/norm_mean"] == pytest.approx(norms.mean(), rel=1e-12)
    for key, value in final.items():
        assert history.history[key][-1] == pytest.approx(value, rel=1e-6, abs=1e-12)
        assert float(rows[-1][key]) == pytest.approx(value, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize(
    "make, shape, dtype, note",
    [
        (
            lambda: layers.Conv2D(4, 3, kernel_constraint=wk.MaxNorm(0.5), name="layer"),
            (6, 6, 3),
            "float32",
            "axis 0 is not the per-node axes (0, 1, 2) of this Conv2D kernel",
        ),
        (
            lambda: layers.Conv2D(4, 3, kernel_constraint=keras.constraints.MaxNorm(), name="c"),
            (6, 6, 3),
            "float32",
            "Keras's own class (not exact); "
            "axis 0 is not the per-node axes (0, 1, 2) of this Conv2D kernel",
        ),
        (
            lambda: layers.Embedding(20, 6, embeddings_constraint=wk.UnitNorm(), name="layer"),
            (3,),
            "int32",
            "axis 0 is not the per-node axes (1,) of this Embedding embeddings",
        ),
        (
            lambda: layers.Dense(4, kernel_constraint=wk.MaxNorm(0.5, axis=1), name="layer"),
            (8,),
            "float32",
            "axis 1 is not the per-node axes (0,) of this Dense kernel",
        ),
        (lambda: layers.Dense(4, kernel_constraint=wk.MaxNorm(0.5), name="layer"), (8,), "", ""),
    ],
)
def test_a_constraint_on_other_axes_than_the_per_node_ones_is_noted(make, shape, dtype, note):
    """A constraint passed to the layer directly keeps Keras's axis 0 (constrain() would bind it
    to the per-node axes): audit says so, and strict mode still checks only active/violation."""
    model = keras.Sequential([keras.Input(shape, dtype=dtype or "float32"), make()], name="m")
    wk.apply_constraints(model)
    (row,) = [r for r in wk.audit(model) if r.constraint is not None]
    assert row.note == note
    wk.audit(model, strict=True)  # satisfied on its own axes: informative, not a problem


def test_norm_stats_give_the_shared_schema_for_every_weight_of_a_known_layer():
    model = network()
    stats = wk.norm_stats(model)
    norms = ("norm_min", "norm_max", "norm_mean")
    expected = {f"constrained/kernel/{s}" for s in (*norms, "violation")}
    expected |= {"constrained/bias/violation"}  # NonNeg: entry-wise, no node norms
    for name in ("plain/kernel", "plain/bias", "frozen/bias", "head/kernel", "head/bias"):
        expected |= {f"{name}/{s}" for s in norms}  # per-node axes from the layer tables
    expected |= {f"frozen/kernel/{s}" for s in (*norms, "violation")}
    assert set(stats) == expected  # the batch norm's weights have no role: none
    assert all(key.rsplit("/", 1)[1] in wk_rules.STATISTICS for key in stats)
    kernel = wc.node_norms(numpy(model.get_layer("plain").kernel), 0)
    assert stats["plain/kernel/norm_mean"] == pytest.approx(kernel.mean(), rel=1e-12)
    assert stats["plain/kernel/norm_min"] == pytest.approx(kernel.min(), rel=1e-12)
    bias = np.linalg.norm(numpy(model.get_layer("head").bias))
    assert stats["head/bias/norm_max"] == pytest.approx(bias, rel=1e-12, abs=1e-300)
    constrained = {k: v for k, v in stats.items() if k.startswith(("constrained/", "frozen/k"))}
    prefixed = {f"constraints/{key}": value for key, value in constrained.items()}
    assert wk.constraint_stats(model) == prefixed  # the same schema, constrained weights only

"""The drop-in Keras constraint classes: signatures, configs, serialisation, parity."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest
from keras import ops

import weight_constraints as wc
from tests.doctests import run_doctests
from weight_constraints._checks import is_default_axis
from weight_constraints.adapters import keras as wk

PAIRS = [
    (wk.MaxNorm, keras.constraints.MaxNorm),
    (wk.UnitNorm, keras.constraints.UnitNorm),
    (wk.MinMaxNorm, keras.constraints.MinMaxNorm),
    (wk.NonNeg, keras.constraints.NonNeg),
]


def test_docstring_examples():
    run_doctests("weight_constraints.adapters.keras")


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_signatures_are_keras_signatures(ours, theirs):
    assert issubclass(ours, keras.constraints.Constraint)
    assert inspect.signature(ours) == inspect.signature(theirs)


def test_snake_case_aliases_as_in_keras():
    for name in ("max_norm", "unit_norm", "min_max_norm", "non_neg"):
        ours, theirs = getattr(wk, name), getattr(keras.constraints, name)
        assert ours.__qualname__ == theirs.__qualname__  # both are the classes
        assert ours is getattr(wk, theirs.__qualname__)
    assert wk.max_norm(3) == wk.MaxNorm(3)


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_saved_class_names_do_not_collide_with_keras(ours, theirs):
    """Keras saves ``type(obj).__name__`` as ``class_name`` and, without the registered name,
    looks it up among its own classes: the names must differ (see test_saving.py)."""
    config = wk.serialize(ours())
    assert config["class_name"] == f"weight_constraints.{theirs.__name__}"
    assert config["class_name"] not in keras.constraints.__dict__
    assert config["module"] == "weight_constraints.adapters.keras"
    assert repr(ours) == f"<class 'weight_constraints.adapters.keras.{theirs.__name__}'>"


@pytest.mark.parametrize(
    "make, explicit",
    [
        (lambda: wk.MaxNorm(3), False),
        (lambda: wk.MaxNorm(3, 0), True),
        (lambda: wk.MaxNorm(3, axis=0), True),
        (lambda: wk.UnitNorm(), False),
        (lambda: wk.UnitNorm(axis=0), True),
        (lambda: wk.MinMaxNorm(0.5, 1.0), False),
        (lambda: wk.MinMaxNorm(0.5, 1.0, 1.0, 0), True),
        (lambda: wk.to_keras("max_norm"), False),
        (lambda: wk.to_keras(wc.UnitNorm()), False),
        (lambda: wk.get("min_max_norm"), False),
        (lambda: wk.to_keras(keras.constraints.MaxNorm(3)), True),  # Keras cannot tell
    ],
)
def test_the_default_axis_stays_the_default(make, explicit):
    """MaxNorm(3) has the default axis (the per-node axes in constrain()); axis=0 is explicit."""
    constraint = make()
    assert constraint.axis == 0 and repr(constraint.axis) == "0"
    assert is_default_axis(constraint.axis) is not explicit
    assert is_default_axis(constraint.core.axis) is not explicit


def test_attributes_configs_and_repr():
    constraint = wk.MinMaxNorm(0.5, 2, 0.3, axis=[0, 1])
    assert constraint.min_value == 0.5 and constraint.max_value == 2.0
    assert constraint.rate == 0.3 and constraint.axis == (0, 1)
    assert constraint.get_config() == {
        "min_value": 0.5,
        "max_value": 2.0,
        "rate": 0.3,
        "axis": [0, 1],
    }
    assert repr(constraint) == "MinMaxNorm(min_value=0.5, max_value=2.0, rate=0.3, axis=(0, 1))"
    assert wk.MinMaxNorm.from_config(constraint.get_config()) == constraint
    assert constraint.core == wc.MinMaxNorm(0.5, 2, 0.3, axis=(0, 1))
    with pytest.raises(AttributeError, match="immutable"):
        constraint.max_value = 3.0
    assert constraint.max_value == 2.0


@pytest.mark.parametrize(
    "constraint",
    [wk.MaxNorm(3), wk.UnitNorm(axis=[0, 1, 2]), wk.MinMaxNorm(0.1, 0.9, 0.5, 1), wk.NonNeg()],
    ids=repr,
)
def test_keras_serialize_deserialize_get(constraint):
    config = keras.constraints.serialize(constraint)
    assert config["registered_name"] == f"weight_constraints>{type(constraint).__qualname__}"
    assert keras.constraints.deserialize(config) == constraint
    assert keras.constraints.get(config) == constraint
    assert keras.constraints.get(constraint) is constraint


def test_to_keras():
    assert wk.to_keras(wc.MaxNorm(3, axis=1)) == wk.MaxNorm(3, axis=1)
    assert wk.to_keras("unit_norm") == wk.UnitNorm()
    assert wk.to_keras({"class_name": "NonNeg"}) == wk.NonNeg()
    assert wk.to_keras(keras.constraints.MinMaxNorm(0.2, 0.4, 0.5, 1)) == wk.MinMaxNorm(
        0.2, 0.4, 0.5, 1
    )
    same = wk.MaxNorm()
    assert wk.to_keras(same) is same
    with pytest.raises(ValueError, match="cannot convert"):
        wk.to_keras(None)


@pytest.mark.parametrize("value", [-1, float("nan"), "3"])
def test_invalid_parameters_fail_at_construction(value):
    with pytest.raises(ValueError, match=r"max_value .*got"):
        wk.MaxNorm(value)
    with pytest.raises(ValueError, match=r"min_value .*got"):
        wk.MinMaxNorm(min_value=value)
    with pytest.raises(ValueError, match="rate"):
        wk.MinMaxNorm(rate=2)


def test_an_axis_that_does_not_fit_raises_at_the_first_call():
    variable = keras.Variable(np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"axis \(0, 2\) is out of range .* shape \(3, 4\)"):
        wk.MaxNorm(3, axis=[0, 2])(variable)


def kernels() -> dict[str, tuple[np.ndarray, tuple[int, ...]]]:
    rng = np.random.default_rng(0)

    def sample(shape):
        return (rng.standard_normal(shape) * rng.uniform(0.05, 2.0, shape[-1])).astype("float32")

    dense = keras.layers.Dense(24)
    dense.build((None, 40))
    conv = keras.layers.Conv2D(8, 3)
    conv.build((None, 9, 9, 5))
    lstm = keras.layers.LSTM(6)
    lstm.build((None, 4, 7))
    return {
        "dense": (sample((40, 24)), wk.per_node_axis(dense, "kernel")),
        "conv2d": (sample((3, 3, 5, 8)), wk.per_node_axis(conv, "kernel")),
        "lstm_kernel": (sample((7, 24)), wk.per_node_axis(lstm, "kernel")),
        "lstm_recurrent": (sample((6, 24)), wk.per_node_axis(lstm, "recurrent_kernel")),
    }


@pytest.mark.parametrize("name", ["dense", "conv2d", "lstm_kernel", "lstm_recurrent"])
@pytest.mark.parametrize(
    "arguments",
    [
        ("MaxNorm", {"max_value": 1.5}),
        ("UnitNorm", {}),
        ("MinMaxNorm", {"min_value": 0.5, "max_value": 1.2, "rate": 0.7}),
        ("NonNeg", {}),
    ],
    ids=lambda a: a[0],
)
def test_parity_with_keras_constraints(name, arguments):
    kernel, axes = kernels()[name]
    class_name, kwargs = arguments
    if class_name != "NonNeg":
        kwargs = {**kwargs, "axis": list(axes)}
    ours = getattr(wk, class_name)(**kwargs)
    theirs = getattr(keras.constraints, class_name)(**kwargs)
    variable = keras.Variable(kernel)
    got = ops.convert_to_numpy(ours(variable))
    want = ops.convert_to_numpy(theirs(variable))
    assert got.dtype == np.float32
    # Keras divides by (1e-7 + n): relative differences of about 1e-7 / n, below 1e-6 here.
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_exact_where_keras_is_not():
    kernel = np.array([[0.3], [0.4]], np.float32)  # norm 0.5, inside the ball
    variable = keras.Variable(kernel)
    np.testing.assert_array_equal(ops.convert_to_numpy(wk.MaxNorm(1)(variable)), kernel)
    shrunk = ops.convert_to_numpy(keras.constraints.MaxNorm(1)(variable))
    assert not np.array_equal(shrunk, kernel)
    zero = keras.Variable(np.zeros((3, 2), np.float32))
    np.testing.assert_array_equal(ops.convert_to_numpy(wk.UnitNorm()(zero)), 0.0)


# -- every constraint x dtype x input type ---------------------------------------------------------

BACKEND = keras.backend.backend()
DTYPES = ["float16", "bfloat16", "float32", "float64"]
RTOL = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 2e-6, "float64": 1e-12}
CONSTRAINTS = [
    wk.MaxNorm(1.5, axis=0),
    wk.UnitNorm(axis=0),
    wk.MinMaxNorm(0.5, 1.5, 0.7, axis=0),
    wk.NonNeg(),
]


def held_dtype(dtype: str) -> str:
    """The dtype the backend holds a ``dtype`` array in: JAX without x64 has no float64 and
    makes it float32 (explicitly, for every input type alike)."""
    if BACKEND == "jax":
        import jax

        if dtype == "float64" and not jax.config.jax_enable_x64:
            return "float32"
    return dtype


def sample(dtype: str) -> np.ndarray:
    """Columns with norms 0 (a zero node), inside every set, and far outside."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 5)) * np.array([0.0, 0.2, 0.8, 3.0, 40.0])
    w[:, 2] *= 1.0 / np.linalg.norm(w[:, 2])  # norm 1: inside MaxNorm, MinMaxNorm and UnitNorm
    import ml_dtypes

    return w.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


INPUTS = {
    "variable": lambda w, dtype: keras.Variable(w, dtype=dtype),
    "tensor": lambda w, dtype: ops.convert_to_tensor(w, dtype=dtype),
    "numpy": lambda w, dtype: w,
}


@pytest.mark.parametrize("kind", list(INPUTS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("constraint", CONSTRAINTS, ids=lambda c: type(c).__qualname__)
def test_every_dtype_and_input_type(constraint, dtype, kind):
    """Issue item 12: half-precision backend tensors and NumPy arrays crashed on TensorFlow."""
    w = sample(dtype)
    result = constraint(INPUTS[kind](w, dtype))
    assert keras.backend.standardize_dtype(result.dtype) == held_dtype(dtype)
    if dtype in ("float16", "bfloat16"):
        result = ops.cast(result, "float32")  # exact: NumPy has no bfloat16 of its own
    got = ops.convert_to_numpy(result).astype(np.float64)
    exact = (w if held_dtype(dtype) == dtype else w.astype(held_dtype(dtype))).astype(np.float64)
    want = constraint.core(exact)  # the core in float64 on the same values
    np.testing.assert_allclose(got, want, rtol=RTOL[held_dtype(dtype)], atol=0)
    if not isinstance(constraint, wk.NonNeg):
        np.testing.assert_array_equal(got[:, 0], 0.0)  # the zero node stays zero
        inside = wc.node_norms(exact, 0)
        if not isinstance(constraint, wk.UnitNorm):
            keep = (inside >= getattr(constraint, "min_value", 0.0)) & (inside <= 1.5)
            np.testing.assert_array_equal(got[:, keep], exact[:, keep])  # bit for bit

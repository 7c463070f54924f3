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
from weight_constraints.adapters.keras._twins import TWINS

PAIRS = [
    (wk.MaxNorm, keras.constraints.MaxNorm),
    (wk.UnitNorm, keras.constraints.UnitNorm),
    (wk.MinMaxNorm, keras.constraints.MinMaxNorm),
    (wk.NonNeg, keras.constraints.NonNeg),
]


@pytest.mark.parametrize("module", ["", "._twins", "._names", "._layers", "._constrain", "._audit"])
def test_docstring_examples(module):
    run_doctests(f"weight_constraints.adapters.keras{module}")


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


# -- the box, simplex and L1 kinds (no Keras namesakes) -----------------------------------------

NEW_KINDS = [
    (wk.Clip, wc.Clip, "clip"),
    (wk.BoxMaxNorm, wc.BoxMaxNorm, "box_max_norm"),
    (wk.Simplex, wc.Simplex, "simplex"),
    (wk.MaxL1Norm, wc.MaxL1Norm, "max_l1_norm"),
]
NEW_OBJECTS = [
    wk.Clip(-0.3, 0.5),
    wk.BoxMaxNorm(-0.4, 0.6, 0.9),
    wk.Simplex(1.25),  # a radius every dtype holds exactly
    wk.MaxL1Norm(1.7),
]


@pytest.mark.parametrize(
    "ours, core, alias", NEW_KINDS, ids=lambda x: getattr(x, "__qualname__", x)
)
def test_new_kinds_take_the_core_arguments_and_have_snake_case_aliases(ours, core, alias):
    assert issubclass(ours, keras.constraints.Constraint)
    mine = inspect.signature(ours).parameters
    theirs = inspect.signature(core).parameters
    assert [(p.name, p.default) for p in mine.values()] == [
        (p.name, p.default) for p in theirs.values()
    ]
    assert getattr(wk, alias) is ours and alias in wk.__all__ and ours.__qualname__ in wk.__all__
    assert TWINS[core] is ours
    assert wk.get(alias if alias == "simplex" else core(**ARGUMENTS[alias])) is not None


ARGUMENTS = {
    "clip": {"lower": -1.0, "upper": 1.0},
    "box_max_norm": {"lower": -1.0, "upper": 1.0, "max_value": 2.0},
    "simplex": {},
    "max_l1_norm": {"max_value": 2.0},
}


@pytest.mark.parametrize(
    "ours, core, alias", NEW_KINDS, ids=lambda x: getattr(x, "__qualname__", x)
)
def test_new_kinds_are_registered_under_names_keras_does_not_have(ours, core, alias):
    constraint = ours(**ARGUMENTS[alias])
    config = wk.serialize(constraint)
    name = ours.__qualname__
    assert config["class_name"] == f"weight_constraints.{name}"
    assert config["registered_name"] == f"weight_constraints>{name}"
    assert config["module"] == "weight_constraints.adapters.keras"
    assert config["class_name"] not in keras.constraints.__dict__
    assert repr(ours) == f"<class 'weight_constraints.adapters.keras.{name}'>"
    for load in (keras.constraints.deserialize, keras.constraints.get, wk.deserialize, wk.get):
        again = load(config)
        assert type(again) is ours and again == constraint
    assert wk.to_keras(core(**ARGUMENTS[alias])) == constraint
    assert wk.to_keras({"class_name": alias, "config": ARGUMENTS[alias]}) == constraint
    assert constraint.core == core(**ARGUMENTS[alias])
    assert repr(constraint) == repr(constraint.core)


@pytest.mark.parametrize(
    "make, explicit",
    [
        (lambda: wk.Simplex(), False),
        (lambda: wk.Simplex(2.0, 0), True),
        (lambda: wk.BoxMaxNorm(-1, 1, 2), False),
        (lambda: wk.BoxMaxNorm(-1, 1, 2, axis=0), True),
        (lambda: wk.MaxL1Norm(1.0), False),
        (lambda: wk.MaxL1Norm(1.0, axis=0), True),
        (lambda: wk.get("simplex"), False),
        (lambda: wk.to_keras(wc.MaxL1Norm(1.0)), False),
        (lambda: wk.to_keras(wc.BoxMaxNorm(-1, 1, 2)), False),
    ],
)
def test_the_new_kinds_keep_the_default_axis(make, explicit):
    constraint = make()
    assert constraint.axis == 0 and repr(constraint.axis) == "0"
    assert is_default_axis(constraint.axis) is not explicit
    assert is_default_axis(constraint.core.axis) is not explicit


@pytest.mark.parametrize(
    "identifier, missing",
    [
        ("clip", "lower, upper"),
        ("Clip", "lower, upper"),
        (wk.Clip, "lower, upper"),
        ("box_max_norm", "lower, upper, max_value"),
        (wk.BoxMaxNorm, "lower, upper, max_value"),
        ("max_l1_norm", "max_value"),
        (wc.MaxL1Norm, "max_value"),
    ],
    ids=str,
)
def test_get_names_the_required_parameters(identifier, missing):
    with pytest.raises(ValueError, match=rf"no default for the parameters? {missing}: pass an"):
        wk.get(identifier)


def test_configs_missing_a_parameter_are_a_value_error():
    with pytest.raises(ValueError, match="config of a Clip needs the parameter upper"):
        wk.get({"class_name": "Clip", "config": {"lower": -1.0}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'radus'"):
        wk.Simplex.from_config({"radus": 2.0})


@pytest.mark.parametrize("name", ["dense", "conv2d", "lstm_kernel", "lstm_recurrent"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("constraint", NEW_OBJECTS, ids=repr)
def test_new_kinds_agree_with_the_numpy_core(constraint, dtype, name):
    """The Keras twin on the current backend against the NumPy core, on the same values: equal to
    the accumulation dtype's rounding, and bit for bit on the nodes the projection keeps (every
    other node is replaced by its projection first, so that there are such nodes)."""
    import ml_dtypes

    kernel, axes = kernels()[name]
    held = held_dtype(dtype)
    w = kernel.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else held)
    if hasattr(constraint, "axis"):
        constraint = type(constraint).from_config({**constraint.get_config(), "axis": axes})
        nodes = np.moveaxis(w, axes, range(len(axes)))  # a view: (*node entries, *nodes)
        if isinstance(constraint, wk.Simplex):  # on the simplex: radius in one entry
            inside = np.zeros_like(nodes)
            inside.reshape(-1, *inside.shape[len(axes) :])[0] = constraint.radius
        else:  # halfway to the origin from the projection: inside the box and the ball
            inside = np.moveaxis(constraint.core(w), axes, range(len(axes))) * 0.5
        nodes[..., ::2] = inside[..., ::2]
    want = constraint.core(w)  # the NumPy core, same dtype, same accumulation
    result = constraint(keras.Variable(w, dtype=dtype))
    assert keras.backend.standardize_dtype(result.dtype) == held
    got = ops.convert_to_numpy(ops.cast(result, "float32") if "16" in dtype else result)
    # float64 to 1e-12 on every backend: on the torch backend Keras 3.15's keras.ops compute
    # cumsum/maximum and the scalar bounds of clip/where of float64 in float32, so the twins
    # project with the core's own torch backend there (this failed before at ~2e-8).
    tolerance = {"float16": 1e-3, "bfloat16": 8e-3, "float32": 3e-6, "float64": 1e-12}[held]
    np.testing.assert_allclose(got, want.astype(got.dtype), rtol=tolerance, atol=tolerance)
    if hasattr(constraint, "axis"):
        kept = np.all(want == w, axis=axes)  # nodes the NumPy core leaves as they are
        assert kept[..., ::2].all()
        np.testing.assert_array_equal(
            np.moveaxis(got, axes, range(len(axes)))[..., kept],
            np.moveaxis(w.astype(got.dtype), axes, range(len(axes)))[..., kept],
        )

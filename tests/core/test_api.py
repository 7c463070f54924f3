"""The public API: objects, configs, ``get``, edge values and every error path."""

from __future__ import annotations

import dataclasses
import inspect
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import weight_constraints as wc

FUNCTIONS = {
    "max_norm": lambda w, **kw: wc.max_norm(w, 1.0, **kw),
    "unit_norm": lambda w, **kw: wc.unit_norm(w, **kw),
    "min_max_norm": lambda w, **kw: wc.min_max_norm(w, 0.5, 1.0, **kw),
    "non_neg": lambda w, **kw: wc.non_neg(w, **kw),
}
NORM_FUNCTIONS = ["max_norm", "unit_norm", "min_max_norm"]


# -- signatures and objects ---------------------------------------------------------------


def test_signatures_match_the_issue_and_keras():
    def params(fn):
        return {
            name: (p.default, p.kind.name) for name, p in inspect.signature(fn).parameters.items()
        }

    assert params(wc.max_norm) == {
        "w": (inspect.Parameter.empty, "POSITIONAL_OR_KEYWORD"),
        "max_value": (2.0, "POSITIONAL_OR_KEYWORD"),
        "axis": (0, "POSITIONAL_OR_KEYWORD"),
        "out": (None, "KEYWORD_ONLY"),
        "xp": (None, "KEYWORD_ONLY"),
    }
    assert list(params(wc.min_max_norm)) == [
        "w",
        "min_value",
        "max_value",
        "rate",
        "axis",
        "out",
        "xp",
    ]
    assert [p.default for p in inspect.signature(wc.min_max_norm).parameters.values()][1:5] == [
        0.0,
        1.0,
        1.0,
        0,
    ]
    assert list(params(wc.unit_norm)) == ["w", "axis", "out", "xp"]
    assert list(params(wc.non_neg)) == ["w", "out", "xp"]
    assert list(params(wc.node_norms)) == ["w", "axis", "keepdims", "xp"]

    # The classes take the arguments of keras.constraints, with its defaults.
    def defaults(cls):
        return {name: p.default for name, p in inspect.signature(cls).parameters.items()}

    assert defaults(wc.MaxNorm) == {"max_value": 2, "axis": 0}
    assert defaults(wc.UnitNorm) == {"axis": 0}
    assert defaults(wc.MinMaxNorm) == {"min_value": 0.0, "max_value": 1.0, "rate": 1.0, "axis": 0}
    assert defaults(wc.NonNeg) == {}
    assert wc.MaxNorm() == wc.MaxNorm(2, 0)
    assert wc.MinMaxNorm() == wc.MinMaxNorm(0.0, 1.0, 1.0, 0)
    assert wc.UnitNorm() == wc.UnitNorm(0)


CONFIGS = [
    wc.MaxNorm(3),
    wc.MaxNorm(0.5, axis=[0, 1, 2]),
    wc.MaxNorm(1.0, axis=None),
    wc.UnitNorm(axis=-1),
    wc.MinMaxNorm(0.5, 2.0, 0.3, axis=(1, 2)),
    wc.NonNeg(),
]


@pytest.mark.parametrize("constraint", CONFIGS, ids=repr)
def test_config_round_trip_through_json(constraint):
    config = json.loads(json.dumps(constraint.get_config()))
    again = type(constraint).from_config(config)
    assert again == constraint
    assert hash(again) == hash(constraint)
    assert repr(again) == repr(constraint)
    assert wc.get({"class_name": type(constraint).__qualname__, "config": config}) == constraint
    assert wc.get({"class_name": type(constraint).__name__, "config": config}) == constraint


ALL_CLASSES = [
    wc.MaxNorm,
    wc.UnitNorm,
    wc.MinMaxNorm,
    wc.NonNeg,
    wc.Clip,
    wc.BoxMaxNorm,
    wc.Simplex,
    wc.MaxL1Norm,
]


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__qualname__)
def test_class_names_that_keras_cannot_mistake_for_its_own(cls):
    """Keras saves ``type(obj).__name__`` as the ``class_name`` and, without our registration,
    looks it up among its own classes (``MaxNorm``...): the saved name must not be one of them,
    while ``__qualname__``, ``repr``, pickling and ``get`` keep the plain name."""
    import pickle

    name = cls.__qualname__
    assert cls.__name__ == f"weight_constraints.{name}"
    assert cls.__module__.startswith("weight_constraints.")
    assert getattr(wc, name) is cls
    constraint = wc.get({"class_name": name, "config": CONSTRUCTED[name].get_config()})
    assert repr(constraint).startswith(f"{name}(")
    assert pickle.loads(pickle.dumps(constraint)) == constraint
    assert type(wc.get({"class_name": cls.__name__, "config": constraint.get_config()})) is cls
    with pytest.raises(ValueError) as error:
        wc.get("no_such_constraint")
    assert "weight_constraints." not in str(error.value)  # the saved names are not listed


CONSTRUCTED = {
    "MaxNorm": wc.MaxNorm(3),
    "UnitNorm": wc.UnitNorm(1),
    "MinMaxNorm": wc.MinMaxNorm(0.5, 2.0),
    "NonNeg": wc.NonNeg(),
    "Clip": wc.Clip(-1.0, 1.0),
    "BoxMaxNorm": wc.BoxMaxNorm(-1.0, 1.0, 2.0),
    "Simplex": wc.Simplex(2.0),
    "MaxL1Norm": wc.MaxL1Norm(1.5),
}


@pytest.mark.parametrize(
    "identifier, missing",
    [
        ("clip", "lower, upper"),
        ("Clip", "lower, upper"),
        (wc.Clip, "lower, upper"),
        ("box_max_norm", "lower, upper, max_value"),
        (wc.BoxMaxNorm, "lower, upper, max_value"),
        ("max_l1_norm", "max_value"),
        ("MaxL1Norm", "max_value"),
    ],
    ids=str,
)
def test_get_names_the_parameters_a_class_cannot_do_without(identifier, missing):
    with pytest.raises(
        ValueError,
        match=rf"has no default for the parameters? {missing}: pass an "
        r"object such as .*\(.*=\.\.\.\) or a config dict",
    ):
        wc.get(identifier)


@pytest.mark.parametrize(
    "config, missing",
    [
        ({"class_name": "clip"}, "the parameters lower, upper"),
        ({"class_name": "Clip", "config": {"lower": -1}}, "the parameter upper"),
        ({"class_name": "MaxL1Norm", "config": {"axis": 1}}, "the parameter max_value"),
    ],
    ids=str,
)
def test_get_names_what_a_config_lacks(config, missing):
    with pytest.raises(ValueError, match=rf"config of a \w+ needs {missing}, got"):
        wc.get(config)


def test_get_with_defaults_still_works_for_the_new_kinds():
    assert wc.get("simplex") == wc.Simplex()
    assert wc.get(wc.Simplex) == wc.Simplex()


@given(
    low=st.floats(0, 1e6),
    width=st.floats(0, 1e6),
    rate=st.floats(0, 1),
    axis=st.one_of(st.none(), st.integers(-4, 3), st.lists(st.integers(0, 5), unique=True)),
)
def test_min_max_config_round_trip(low, width, rate, axis):
    constraint = wc.MinMaxNorm(low, low + width, rate, axis)
    assert wc.MinMaxNorm.from_config(constraint.get_config()) == constraint
    assert eval(repr(constraint), {"MinMaxNorm": wc.MinMaxNorm}) == constraint


def test_objects_are_immutable_and_readable():
    constraint = wc.MaxNorm(3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        constraint.max_value = 4  # type: ignore[misc]
    assert repr(constraint) == "MaxNorm(max_value=3.0, axis=0)"
    assert repr(wc.MinMaxNorm(axis=[0, 1])) == (
        "MinMaxNorm(min_value=0.0, max_value=1.0, rate=1.0, axis=(0, 1))"
    )
    assert wc.MaxNorm(3) != wc.MaxNorm(3, axis=1)
    assert wc.MaxNorm(3) != wc.MinMaxNorm(0, 3)
    assert len({wc.MaxNorm(3), wc.MaxNorm(3.0), wc.UnitNorm()}) == 2


@pytest.mark.parametrize(
    "constraint, function",
    [
        (wc.MaxNorm(1.0, axis=1), lambda w: wc.max_norm(w, 1.0, 1)),
        (wc.UnitNorm(axis=(0, 1)), lambda w: wc.unit_norm(w, (0, 1))),
        (
            wc.MinMaxNorm(0.5, 0.8, 0.5, axis=None),
            lambda w: wc.min_max_norm(w, 0.5, 0.8, 0.5, None),
        ),
        (wc.NonNeg(), wc.non_neg),
    ],
)
def test_objects_call_their_function(constraint, function):
    w = np.random.default_rng(0).standard_normal((3, 4, 2)).astype(np.float32)
    np.testing.assert_array_equal(constraint(w), function(w))
    copy = w.copy()
    assert constraint(copy, out=copy) is copy
    np.testing.assert_array_equal(copy, function(w))


# -- get -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "identifier, expected",
    [
        ("max_norm", wc.MaxNorm()),
        ("MaxNorm", wc.MaxNorm()),
        ("unit_norm", wc.UnitNorm()),
        ("UnitNorm", wc.UnitNorm()),
        ("min_max_norm", wc.MinMaxNorm()),
        ("MinMaxNorm", wc.MinMaxNorm()),
        ("non_neg", wc.NonNeg()),
        ("NonNeg", wc.NonNeg()),
        ({"class_name": "MaxNorm", "config": {"max_value": 3, "axis": 0}}, wc.MaxNorm(3)),
        (
            {
                "module": "keras.constraints",
                "class_name": "MaxNorm",
                "config": {"max_value": 3},
                "registered_name": None,
            },
            wc.MaxNorm(3),
        ),
        ({"class_name": "non_neg"}, wc.NonNeg()),
        (wc.MaxNorm, wc.MaxNorm()),
        (wc.UnitNorm(1), wc.UnitNorm(1)),
        (None, None),
    ],
)
def test_get(identifier, expected):
    assert wc.get(identifier) == expected


def test_get_returns_the_same_instance():
    constraint = wc.MaxNorm(3)
    assert wc.get(constraint) is constraint


@pytest.mark.parametrize("identifier", ["maxnorm", "l2", {"class_name": "Foo", "config": {}}])
def test_get_unknown_name_lists_the_known_ones(identifier):
    with pytest.raises(ValueError, match=r"known names: .*'MaxNorm'.*'max_norm'"):
        wc.get(identifier)


@pytest.mark.parametrize("identifier", [3, {"config": {}}, ["max_norm"]])
def test_get_rejects_other_things(identifier):
    with pytest.raises(ValueError, match="constraint"):
        wc.get(identifier)


def test_get_rejects_a_bad_config():
    with pytest.raises(ValueError, match="max_value must be finite and >= 0, got -1"):
        wc.get({"class_name": "MaxNorm", "config": {"max_value": -1}})


# -- parameters ----------------------------------------------------------------------------

BAD_VALUES = [-1, -0.5, float("nan"), float("inf"), "3", None, True, [1.0], 1 + 2j]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_bad_max_value(value):
    with pytest.raises(ValueError, match=r"max_value .*got " + repr_pattern(value)):
        wc.MaxNorm(value)
    with pytest.raises(ValueError, match=r"max_value .*got " + repr_pattern(value)):
        wc.max_norm(np.ones(3), value)


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_bad_min_value(value):
    with pytest.raises(ValueError, match=r"min_value .*got " + repr_pattern(value)):
        wc.MinMaxNorm(min_value=value)
    with pytest.raises(ValueError, match=r"min_value .*got " + repr_pattern(value)):
        wc.min_max_norm(np.ones(3), min_value=value)


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), "1", None, False], ids=repr)
def test_bad_rate(rate):
    with pytest.raises(ValueError, match=r"rate .*got " + repr_pattern(rate)):
        wc.MinMaxNorm(rate=rate)
    with pytest.raises(ValueError, match=r"rate .*got " + repr_pattern(rate)):
        wc.min_max_norm(np.ones(3), rate=rate)


def test_min_above_max():
    with pytest.raises(
        ValueError, match="min_value must be <= max_value, got min_value=2, max_value=1"
    ):
        wc.MinMaxNorm(2, 1)
    with pytest.raises(ValueError, match="min_value=2"):
        wc.min_max_norm(np.ones(3), 2, 1)


@pytest.mark.parametrize("axis", [1.5, "0", True, (0, 0), [1, 1], (0, "1")], ids=repr)
def test_bad_axis_at_construction(axis):
    with pytest.raises(ValueError, match="axis"):
        wc.MaxNorm(axis=axis)
    with pytest.raises(ValueError, match="axis"):
        wc.UnitNorm(axis=axis)
    with pytest.raises(ValueError, match="axis"):
        wc.MinMaxNorm(axis=axis)


def test_numpy_scalars_are_accepted():
    assert wc.MaxNorm(np.float32(3.0), axis=np.int64(1)) == wc.MaxNorm(3.0, axis=1)


def repr_pattern(value) -> str:
    import re

    return re.escape(repr(value))


# -- weights -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex64, np.uint8])
def test_non_floating_weights(name, dtype):
    w = np.ones((3, 2), dtype=dtype)
    before = w.copy()
    with pytest.raises(TypeError, match=f"dtype {np.dtype(dtype).name}"):
        FUNCTIONS[name](w)
    np.testing.assert_array_equal(w, before)


def test_node_norms_rejects_integers():
    with pytest.raises(TypeError, match="dtype int64"):
        wc.node_norms(np.ones(3, dtype=np.int64))


@pytest.mark.parametrize("name", NORM_FUNCTIONS)
@pytest.mark.parametrize("axis", [2, -3, (0, 2), (0, -2), [1, -1], (5,)])
def test_axis_out_of_range_or_repeated(name, axis):
    w = np.full((3, 2), 7.0)
    with pytest.raises(ValueError, match=r"axis .* weights of shape \(3, 2\)") as info:
        FUNCTIONS[name](w, axis=axis, out=w)
    assert repr(axis) in str(info.value)
    assert (w == 7.0).all()
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        wc.node_norms(w, axis=axis)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize(
    "out, error",
    [
        (np.zeros((3, 2), np.float64), ValueError),
        (np.zeros((2, 3), np.float32), ValueError),
        (np.zeros((3, 2, 1), np.float32), ValueError),
        ([[0.0] * 2] * 3, TypeError),
    ],
)
def test_bad_out_changes_nothing(name, out, error):
    w = np.full((3, 2), 7.0, dtype=np.float32)
    before = np.copy(out)
    with pytest.raises(error, match="out"):
        FUNCTIONS[name](w, out=out)
    assert (w == 7.0).all()
    np.testing.assert_array_equal(np.asarray(out), before)


def test_out_into_a_separate_array():
    w = np.array([[3.0, 0.0], [4.0, 0.0]], dtype=np.float32)
    out = np.empty_like(w)
    assert wc.unit_norm(w, out=out) is out
    np.testing.assert_allclose(out, [[0.6, 0.0], [0.8, 0.0]], rtol=1e-7)
    assert w[0, 0] == 3.0


# -- values ------------------------------------------------------------------------------------


def test_float16_squares_that_overflow_are_accumulated_in_float32():
    w = np.full((4, 3), 1000.0, dtype=np.float16)  # 1000² overflows float16
    np.testing.assert_array_equal(wc.unit_norm(w), np.full((4, 3), 0.5, np.float16))
    np.testing.assert_array_equal(wc.max_norm(w, 3.0), np.full((4, 3), 1.5, np.float16))
    assert wc.node_norms(w).dtype == np.float32
    np.testing.assert_array_equal(wc.node_norms(w), [2000.0] * 3)
    w = np.full((4, 1), 65504.0, dtype=np.float16)
    np.testing.assert_array_equal(wc.unit_norm(w), np.full((4, 1), 0.5, np.float16))


def test_bfloat16_numpy_arrays():
    ml_dtypes = pytest.importorskip("ml_dtypes")  # optional: NumPy has no bfloat16 of its own
    w = np.full((4, 2), 1000.0, dtype=ml_dtypes.bfloat16)
    result = wc.unit_norm(w)
    assert result.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(result.astype(np.float32), np.full((4, 2), 0.5))
    assert wc.node_norms(w).dtype == np.float32


def test_array_likes_become_numpy():
    result = wc.max_norm([[3.0], [4.0]], 1.0)
    assert isinstance(result, np.ndarray)
    np.testing.assert_allclose(result, [[0.6], [0.8]])


def test_zero_nodes_and_tiny_nodes():
    w = np.zeros((3, 4), np.float32)
    w[:, 1] = 1e-30  # squared norm underflows float32: left as it is
    w[:, 2] = [3.0, 4.0, 0.0]
    for result in (wc.unit_norm(w), wc.min_max_norm(w, 1.0, 2.0), wc.max_norm(w, 1.0)):
        assert not np.isnan(result).any()
        np.testing.assert_array_equal(result[:, [0, 3]], 0.0)
        np.testing.assert_array_equal(result[:, 1], w[:, 1])
    np.testing.assert_allclose(wc.unit_norm(w)[:, 2], [0.6, 0.8, 0.0], rtol=1e-7)
    # a zero ball sends every node to zero, tiny ones included
    np.testing.assert_array_equal(wc.max_norm(w, 0.0), 0.0)
    # float64 represents these squares: normalised exactly
    np.testing.assert_allclose(wc.unit_norm(w.astype(np.float64))[:, 1], [1 / np.sqrt(3)] * 3)


class InexactDivision(np.ndarray):
    """NumPy arrays whose division rounds up by one ulp: a stand-in for a GPU whose float32
    division is not correctly rounded (there ``n / n`` is not always 1)."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [x.view(np.ndarray) if isinstance(x, InexactDivision) else x for x in inputs]
        result = getattr(ufunc, method)(*plain, **kwargs)
        if ufunc is np.divide:
            result = np.nextafter(result, np.inf)
        return result.view(InexactDivision) if isinstance(result, np.ndarray) else result

    def __array_function__(self, func, types, args, kwargs):  # np.where, ... keep the type
        result = super().__array_function__(func, types, args, kwargs)
        return result.view(InexactDivision) if isinstance(result, np.ndarray) else result


@pytest.mark.parametrize(
    "constraint",
    [wc.UnitNorm(), wc.MinMaxNorm(0.5, 2.0), wc.MinMaxNorm(0.5, 2.0, rate=0.3)],
    ids=repr,
)
def test_the_factor_is_exactly_one_where_the_norm_is_kept(constraint):
    """Nodes whose norm is already the target get the factor 1 without a division, so they
    come back bit for bit even where division is inexact; elsewhere the factor is the
    division's."""
    n = np.array([1.0, 0.75, 2.0, 0.5, 0.1, 3.0, 0.0, np.nan], np.float32)
    exact = constraint.factor(n, "float32", np)
    n_inexact = n.view(InexactDivision)
    assert np.divide(n_inexact, n_inexact)[0] != 1.0  # the stand-in divides inexactly
    got = np.asarray(constraint.factor(n_inexact, "float32", np))
    target = n * exact  # exact on these values: the norm each node is given
    kept = (target == n) | ~(n > 0)
    if isinstance(constraint, wc.UnitNorm):
        assert kept.tolist() == [True, False, False, False, False, False, True, True]
    else:
        assert kept.tolist() == [True, True, True, True, False, False, True, True]
    np.testing.assert_array_equal(got[kept], 1.0)
    np.testing.assert_array_equal(got[~kept], np.nextafter(exact[~kept], np.float32(np.inf)))


def test_empty_arrays():
    for shape, axis in [((0, 3), 0), ((3, 0), 0), ((0,), None)]:
        w = np.zeros(shape, np.float32)
        assert wc.max_norm(w, 1.0, axis).shape == shape
        assert wc.unit_norm(w, axis).shape == shape


def test_zero_dimensional_array():
    w = np.array(-4.0)
    np.testing.assert_array_equal(wc.max_norm(w, 2.0, axis=None), -2.0)
    np.testing.assert_array_equal(wc.unit_norm(w, axis=()), -1.0)
    with pytest.raises(ValueError, match=r"shape \(\)"):
        wc.max_norm(w, 2.0, axis=0)


KERAS_EPSILON = 1e-7


def keras_formula(w, axis, low, high, rate):
    """keras.constraints' formula, written in NumPy (float32), for the documented comparison."""
    norms = np.sqrt(np.sum(np.square(w), axis=axis, keepdims=True))
    desired = rate * np.clip(norms, low, high) + (1 - rate) * norms
    return w * (desired / (KERAS_EPSILON + norms))


@pytest.mark.parametrize("shape, axis", [((64, 32), 0), ((3, 3, 16, 8), (0, 1, 2)), ((10, 40), 1)])
def test_agrees_with_the_keras_formula_to_1e6(shape, axis):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal(shape) * rng.uniform(0.1, 3, size=shape[-1])).astype(np.float32)
    pairs = [
        (wc.max_norm(w, 2.0, axis), keras_formula(w, axis, 0.0, 2.0, 1.0)),
        (wc.unit_norm(w, axis), w / (KERAS_EPSILON + np.sqrt(np.sum(w * w, axis, keepdims=True)))),
        (wc.min_max_norm(w, 0.5, 1.5, 0.7, axis), keras_formula(w, axis, 0.5, 1.5, 0.7)),
    ]
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    # Keras shrinks nodes it should leave alone (visibly for norms below about 2 in float32),
    # and is not idempotent; we are exact.
    small = wc.unit_norm(w, axis) * np.float32(0.5)
    inside = keras_formula(small, axis, 0.0, 1.0, 1.0)
    assert not np.array_equal(inside, small)
    assert not np.array_equal(keras_formula(inside, axis, 0.0, 1.0, 1.0), inside)
    np.testing.assert_array_equal(wc.max_norm(small, 1.0, axis), small)

"""Inputs at the edges of the API: NaN nodes, the ``xp=`` namespace, every spelling of ``axis``,
parameters given as 0-d arrays or tensors, malformed configs and the ``Constraint`` base class."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import weight_constraints as wc
from tests.ids import stable_repr

torch = pytest.importorskip("torch")

PROJECTIONS = {
    "max_norm": lambda w, **kw: wc.max_norm(w, 1.0, **kw),
    "max_norm_0": lambda w, **kw: wc.max_norm(w, 0.0, **kw),
    "unit_norm": lambda w, **kw: wc.unit_norm(w, **kw),
    "min_max_norm": lambda w, **kw: wc.min_max_norm(w, 0.5, 1.0, **kw),
    "min_max_rate": lambda w, **kw: wc.min_max_norm(w, 0.5, 1.0, 0.5, **kw),
    "non_neg": lambda w, **kw: wc.non_neg(w, **kw),
    "node_norms": lambda w, **kw: wc.node_norms(w, **kw),
}
NORM_PROJECTIONS = [name for name in PROJECTIONS if name not in ("non_neg", "node_norms")]


# -- a node whose norm is NaN keeps its values -----------------------------------------------


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("name", NORM_PROJECTIONS)
@pytest.mark.parametrize("in_place", [False, True])
def test_a_nan_node_keeps_its_values(library, name, in_place):
    # Column 0 has a NaN norm; column 1 is an ordinary node, column 2 a zero node.
    columns = np.array([[np.nan, 3.0, 0.0], [1.0, 4.0, 0.0], [2.0, 0.0, 0.0]], np.float32)
    w = columns if library == "numpy" else torch.tensor(columns)
    before = np.array(columns)
    kw = {"out": w} if in_place else {}
    result = np.asarray(PROJECTIONS[name](w, **kw))
    np.testing.assert_array_equal(result[:, 0], before[:, 0])  # [nan, 1, 2] as it was
    assert np.isfinite(result[:, 1:]).all()
    np.testing.assert_array_equal(result[:, 2], 0.0)
    if name == "max_norm_0":
        np.testing.assert_array_equal(result[:, 1], 0.0)


# -- xp= -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROJECTIONS)
def test_a_torch_namespace_for_a_numpy_array_is_refused(name):
    w = np.full((3, 2), 5.0, np.float32)
    with pytest.raises(TypeError, match=r"xp=torch needs a torch\.Tensor, got numpy\.ndarray"):
        PROJECTIONS[name](w, xp=torch)
    with pytest.raises(TypeError, match=r"xp=torch needs a torch\.Tensor, got list"):
        PROJECTIONS[name]([[1.0, 2.0]], xp=torch)
    assert (w == 5.0).all()


@pytest.mark.parametrize("name", PROJECTIONS)
@pytest.mark.parametrize("xp", ["numpy", 42, np.linalg, torch.nn, torch.Tensor], ids=repr)
def test_something_that_is_not_a_namespace_is_refused(name, xp):
    w = np.full((3, 2), 5.0, np.float32)
    with pytest.raises(
        TypeError, match=r"xp must be an array namespace .*got " + re.escape(repr(xp))
    ):
        PROJECTIONS[name](w, xp=xp)
    assert (w == 5.0).all()


def test_a_generic_namespace_needs_an_array():
    compat = pytest.importorskip("array_api_compat")
    xp = compat.array_namespace(torch.empty(0))
    with pytest.raises(TypeError, match=r"needs an array of that namespace, got list"):
        wc.max_norm([[3.0], [4.0]], 1.0, xp=xp)


# -- axis ------------------------------------------------------------------------------------

AXIS_SPELLINGS = [
    ((0, 2), (0, 2)),
    ([0, 2], (0, 2)),
    (range(0, 3, 2), (0, 2)),
    (np.array([0, 2]), (0, 2)),
    (np.array([0, -1], dtype=np.int8), (0, -1)),
    (np.array([2, 0], dtype=np.uint64), (2, 0)),
    (torch.tensor([0, 2]), (0, 2)),
    (np.int64(1), 1),
    (np.array(1), 1),
    (torch.tensor(1), 1),
    ([1], 1),
    (range(1, 2), 1),
    (range(0), ()),
    (np.array([], dtype=np.int64), ()),
]


@pytest.mark.parametrize("axis, same_as", AXIS_SPELLINGS, ids=repr)
def test_every_sequence_of_ints_is_an_axis(axis, same_as):
    w = np.random.default_rng(0).standard_normal((3, 4, 2)) * 3
    assert wc.MaxNorm(1.0, axis=axis) == wc.MaxNorm(1.0, axis=same_as)
    np.testing.assert_array_equal(wc.max_norm(w, 1.0, axis), wc.max_norm(w, 1.0, same_as))
    np.testing.assert_array_equal(wc.node_norms(w, axis), wc.node_norms(w, same_as))
    config = json.loads(json.dumps(wc.MinMaxNorm(axis=axis).get_config()))
    assert wc.MinMaxNorm.from_config(config) == wc.MinMaxNorm(axis=same_as)


BAD_AXES = [
    "0",
    b"0",
    1.0,
    True,
    np.bool_(True),
    np.array([True, False]),
    np.array([0.0, 1.0]),
    np.array([[0, 1]]),
    [0, 1.0],
    [[0], [1]],
    {0, 1},
    {0: 1},
    torch.tensor([0.0]),
    object(),
]


@pytest.mark.parametrize("axis", BAD_AXES, ids=stable_repr)
def test_other_axes_are_refused_with_their_value(axis):
    message = "axis must be an int, a sequence of ints or None, got " + re.escape(repr(axis))
    with pytest.raises(ValueError, match=message):
        wc.MaxNorm(axis=axis)
    w = np.full((3, 2), 7.0)
    with pytest.raises(ValueError, match=message):
        wc.max_norm(w, 1.0, axis, out=w)
    with pytest.raises(ValueError, match=message):
        wc.node_norms(w, axis)
    assert (w == 7.0).all()


@pytest.mark.parametrize(
    "axis, problem",
    [
        (range(3), "is out of range"),
        (np.array([0, 2]), "is out of range"),
        (np.array([0, -2]), "repeats an axis"),
        (range(-2, 2, 2), "repeats an axis"),
    ],
    ids=repr,
)
def test_axes_that_do_not_fit_name_the_axis_and_the_shape(axis, problem):
    w = np.full((3, 2), 7.0)
    message = f"axis {re.escape(repr(axis))} {problem} .*weights of shape \\(3, 2\\)"
    with pytest.raises(ValueError, match=message):
        wc.unit_norm(w, axis, out=w)
    assert (w == 7.0).all()


def test_a_repeated_axis_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"axis contains a repeated axis: array\(\[1, 1\]\)"):
        wc.UnitNorm(axis=np.array([1, 1]))


# -- parameters as 0-d arrays and tensors ----------------------------------------------------

ZERO_D = [np.array(2.0), np.array(2), np.array(2.0, np.float16), torch.tensor(2.0)]
ZERO_D += [torch.tensor(2), torch.tensor(2.0, dtype=torch.bfloat16), np.float32(2.0)]


@pytest.mark.parametrize("value", ZERO_D, ids=repr)
def test_parameters_may_be_0d_arrays_and_tensors(value):
    w = np.random.default_rng(1).standard_normal((4, 3)) * 3
    np.testing.assert_array_equal(wc.max_norm(w, value), wc.max_norm(w, 2.0))
    assert wc.MaxNorm(value) == wc.MaxNorm(2.0)
    assert type(wc.MaxNorm(value).max_value) is float
    assert json.dumps(wc.MaxNorm(value).get_config()) == '{"max_value": 2.0, "axis": 0}'
    half = value / 4  # 0.5, of the same type
    np.testing.assert_array_equal(
        wc.min_max_norm(w, half, value, half), wc.min_max_norm(w, 0.5, 2.0, 0.5)
    )
    assert wc.MinMaxNorm(half, value, half) == wc.MinMaxNorm(0.5, 2.0, 0.5)


@pytest.mark.parametrize(
    "value, problem",
    [
        (np.array([2.0]), "a real number"),
        (torch.tensor([2.0]), "a real number"),
        (np.array(True), "a real number"),
        (torch.tensor(True), "a real number"),
        (np.array(2 + 1j), "a real number"),
        (np.array("2"), "a real number"),
        (np.array(-1.0), "finite and >= 0"),
        (torch.tensor(float("nan")), "finite and >= 0"),
        (np.array(np.inf), "finite and >= 0"),
    ],
    ids=repr,
)
def test_other_arrays_are_refused_as_parameters(value, problem):
    message = f"max_value must be {problem}, got {re.escape(repr(value))}"
    with pytest.raises(ValueError, match=message):
        wc.MaxNorm(value)
    with pytest.raises(ValueError, match=message):
        wc.max_norm(np.ones(3), value)
    with pytest.raises(ValueError, match=message.replace("max_value", "min_value")):
        wc.MinMaxNorm(min_value=value)
    with pytest.raises(ValueError, match=message.replace("max_value", "rate")):
        wc.min_max_norm(np.ones(3), rate=value)


# -- get: every malformed config is a ValueError ----------------------------------------------

MALFORMED = [
    ({"class_name": "MaxNorm", "config": [3]}, r"'config' of a MaxNorm must be a dict"),
    ({"class_name": "MaxNorm", "config": "max_value=3"}, r"must be a dict, got 'max_value=3'"),
    ({"class_name": 3}, r"'class_name' must be a string, got 3"),
    ({"class_name": ["MaxNorm"]}, r"'class_name' must be a string, got \['MaxNorm'\]"),
    ({"class_name": None}, r"'class_name' must be a string, got None"),
    ({"class_name": "MaxNorm", "confg": {}}, r"unknown key\(s\) 'confg'"),
    (
        {"class_name": "MaxNorm", "config": {"max_value": 3, "maxvalue": 4}},
        r"unknown key\(s\) 'maxvalue' in the config of a MaxNorm; it takes 'max_value', 'axis'",
    ),
    ({"class_name": "NonNeg", "config": {"axis": 0}}, r"it takes no arguments"),
    ({"class_name": "UnitNorm", "config": {0: 1}}, r"unknown key\(s\) 0 "),
    ({"class_name": "MaxNorm", "config": {"max_value": "3"}}, r"max_value must be a real number"),
    ({"class_name": "MaxNorm", "config": {"axis": 1.5}}, r"axis must be an int"),
    ({"class_name": "MinMaxNorm", "config": {"rate": [1]}}, r"rate must be a real number"),
    ({"class_name": "MinMaxNorm", "config": {"min_value": 2}}, r"min_value must be <= max_value"),
]


@pytest.mark.parametrize("config, message", MALFORMED, ids=repr)
def test_get_raises_value_error_for_every_malformed_config(config, message):
    with pytest.raises(ValueError, match=message):
        wc.get(config)


def test_get_accepts_a_missing_or_none_config():
    assert wc.get({"class_name": "MaxNorm", "config": None}) == wc.MaxNorm()
    assert wc.get({"class_name": "max_norm"}) == wc.MaxNorm()


class KerasLike:
    """Stands in for a constraint of ``weight_constraints.adapters.keras`` (no Keras needed)."""

    def __init__(self, core):
        self.core = core


def test_get_resolves_an_object_with_a_core_constraint_to_it():
    core = wc.MinMaxNorm(0.5, 2.0, axis=(0, 1))
    assert wc.get(KerasLike(core)) is core
    with pytest.raises(ValueError, match="cannot interpret"):
        wc.get(KerasLike("max_norm"))  # a core attribute that is not a core constraint


# -- the Constraint base class, as in Keras ---------------------------------------------------


def test_the_base_class_is_the_identity():
    w = np.array([[-1.0, 2.0]], np.float32)
    assert wc.Constraint()(w) is w
    assert wc.Constraint()(w, out=w) is w
    out = np.zeros_like(w)
    assert wc.Constraint()(w, out=out) is out
    np.testing.assert_array_equal(out, w)
    tensor = torch.tensor([[-1.0, 2.0]])
    target = torch.zeros(1, 2)
    assert wc.Constraint()(tensor, out=target) is target
    assert torch.equal(target, tensor)
    with pytest.raises(ValueError, match="out must have the shape and dtype of w"):
        wc.Constraint()(w, out=np.zeros((2, 1), np.float32))
    assert wc.Constraint().get_config() == {}
    assert isinstance(wc.Constraint.from_config({}), wc.Constraint)
    assert isinstance(wc.get(wc.Constraint), wc.Constraint)


class Scale(wc.Constraint):
    """A plain subclass: no dataclass."""

    def __init__(self, factor=2.0):
        self.factor = factor

    def __call__(self, w, *, out=None, xp=None):
        return np.multiply(w, self.factor, out=out)

    def get_config(self):
        return {"factor": self.factor}


class Negate(wc.Constraint):
    """A plain subclass that keeps the base get_config."""

    def __call__(self, w, *, out=None, xp=None):
        return np.negative(w, out=out)


def test_a_plain_subclass_works():
    w = np.array([1.0, -2.0])
    scale = Scale(3.0)
    np.testing.assert_array_equal(scale(w), [3.0, -6.0])
    again = Scale.from_config(json.loads(json.dumps(scale.get_config())))
    assert again.factor == 3.0
    assert wc.get(scale) is scale
    assert wc.get(Scale).factor == 2.0
    negate = Negate()
    assert negate.get_config() == {}
    np.testing.assert_array_equal(Negate.from_config(negate.get_config())(w), [-1.0, 2.0])


@pytest.mark.parametrize(
    "project",
    [
        lambda w: wc.max_norm(w, 1.0, 1, out=w),
        lambda w: wc.unit_norm(w, 1, out=w),
        lambda w: wc.simplex(w, 1.0, 1, out=w),
        lambda w: wc.clip(w, -0.1, 0.1, out=w),
        lambda w: wc.non_neg(w, out=w),
    ],
)
def test_a_parameter_as_out_outside_no_grad_is_refused_before_torch_fails(project):
    torch = pytest.importorskip("torch")
    leaf = torch.nn.Parameter(torch.full((3, 4), 2.0))
    with pytest.raises(ValueError, match=r"leaf tensor that requires grad .* torch.no_grad\(\)"):
        project(leaf)
    assert (leaf.detach() == 2.0).all()
    with torch.no_grad():
        assert project(leaf) is leaf


def test_torch_out_interleaved_with_w_but_disjoint_is_accepted():
    """The overlap test is exact (one implementation, shared with the adapter's memory index):
    ``w[:, ::2]`` and ``w[:, 1::2]`` span the same bytes but share no element."""
    torch = pytest.importorskip("torch")
    base = torch.arange(24.0).reshape(4, 6)
    w, out = base[:, ::2], base[:, 1::2]
    expected = wc.max_norm(w.clone(), 1.0, 0)
    assert wc.max_norm(w, 1.0, 0, out=out) is out
    assert torch.equal(out, expected) and torch.equal(w, torch.arange(24.0).reshape(4, 6)[:, ::2])
    with pytest.raises(ValueError, match="overlaps the memory of w"):
        wc.max_norm(base[:, :3], 1.0, 0, out=base[:, 1:4])

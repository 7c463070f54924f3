"""Keras's own constraint tests, with only the import changed: the adapter module is a complete
drop-in for ``keras.constraints`` (``get``, ``serialize``, ``deserialize``, ``Constraint`` and the
classes).

The cases, inputs and expected values are those of ``keras/src/constraints/constraints_test.py``
(Keras 3) and ``tf_keras/constraints_test.py`` (tf-keras), written here as pytest functions.
tf-keras's ``backend.variable``/``backend.eval`` are ``keras.Variable``/``convert_to_numpy``.
tf-keras's ``radial_constraint`` case is not in Keras 3's ``keras.constraints``: the drop-in has
no such name either (checked below). tf-keras runs its cases in graph mode too; the compiled train
step is covered by test_models.py.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import weight_constraints as wc
from weight_constraints.adapters import keras as constraints  # was: from keras import constraints


def to_numpy(x) -> np.ndarray:
    return ops.convert_to_numpy(x)


def get_example_array() -> np.ndarray:
    # np.random.seed(3537); np.random.random(...) as in the Keras tests: the same numbers
    example_array = np.random.RandomState(3537).random_sample((100, 100)) * 100.0 - 50.0
    example_array[0, 0] = 0.0  # possible edge case
    return example_array


def test_the_module_has_every_public_name_of_keras_constraints():
    public = {name for name in dir(keras.constraints) if not name.startswith("_")}
    assert public <= set(constraints.__all__)
    assert hasattr(keras.constraints, "radial_constraint") == hasattr(
        constraints, "radial_constraint"
    )


# -- Keras 3: keras/src/constraints/constraints_test.py ----------------------------------------


def test_max_norm():
    constraint_fn = constraints.MaxNorm(2.0)
    x = np.array([[0, 0, 0], [1.0, 0, 0], [3, 0, 0], [3, 3, 3]]).T
    target = np.array(
        [
            [0, 0, 0],
            [1.0, 0, 0],
            [2.0, 0, 0],
            [2.0 / np.sqrt(3), 2.0 / np.sqrt(3), 2.0 / np.sqrt(3)],
        ]
    ).T
    np.testing.assert_allclose(to_numpy(constraint_fn(x)), target, rtol=1e-6, atol=1e-6)


def test_non_neg():
    output = to_numpy(constraints.NonNeg()(get_example_array()))
    assert (np.min(output, axis=1) >= 0.0).all()


def test_unit_norm():
    output = to_numpy(constraints.UnitNorm()(get_example_array()))
    l2 = np.sqrt(np.sum(np.square(output), axis=0))
    np.testing.assert_allclose(l2, 1.0, rtol=1e-6, atol=1e-6)


def test_min_max_norm():
    constraint_fn = constraints.MinMaxNorm(min_value=0.2, max_value=0.5)
    output = to_numpy(constraint_fn(get_example_array()))
    l2 = np.sqrt(np.sum(np.square(output), axis=0))
    assert np.all(l2 >= 0.2)
    assert np.all(l2 <= 0.5 + 1e-6)


def test_get_method():
    assert isinstance(constraints.get("unit_norm"), constraints.UnitNorm)
    assert constraints.get(None) is None
    with pytest.raises(ValueError):
        constraints.get("typo")


def test_default_constraint_call():
    x = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(to_numpy(constraints.Constraint()(x)), x)


def test_constraint_get_config():
    assert constraints.Constraint().get_config() == {}


def test_constraint_from_config():
    config = constraints.Constraint().get_config()
    assert isinstance(constraints.Constraint.from_config(config), constraints.Constraint)


def test_max_norm_get_config():
    config = constraints.MaxNorm(max_value=3.0, axis=1).get_config()
    assert config == {"max_value": 3.0, "axis": 1}


def test_unit_norm_get_config():
    assert constraints.UnitNorm(axis=1).get_config() == {"axis": 1}


def test_min_max_norm_get_config():
    constraint_fn = constraints.MinMaxNorm(min_value=0.5, max_value=2.0, rate=0.7, axis=1)
    assert constraint_fn.get_config() == {
        "min_value": 0.5,
        "max_value": 2.0,
        "rate": 0.7,
        "axis": 1,
    }


def test_non_neg_get_config_and_from_config():
    config = constraints.NonNeg().get_config()
    assert config == {}
    assert isinstance(constraints.NonNeg.from_config(config), constraints.NonNeg)


@pytest.mark.parametrize(
    "original, attributes",
    [
        (constraints.NonNeg(), ()),
        (constraints.MaxNorm(max_value=3.0, axis=1), ("max_value", "axis")),
        (constraints.UnitNorm(axis=0), ("axis",)),
        (
            constraints.MinMaxNorm(min_value=0.2, max_value=0.9, rate=0.5, axis=0),
            ("min_value", "max_value", "rate", "axis"),
        ),
    ],
    ids=repr,
)
def test_from_config_roundtrip(original, attributes):
    restored = type(original).from_config(original.get_config())
    for name in attributes:
        assert getattr(restored, name) == getattr(original, name)
    x = get_example_array()
    np.testing.assert_allclose(to_numpy(restored(x)), to_numpy(original(x)))


@pytest.mark.parametrize("value, expected", [(-3.0, 0.0), (3.0, 3.0), (0.0, 0.0)])
def test_non_neg_on_constant_inputs(value, expected):
    x = np.full((5, 5), value)
    np.testing.assert_allclose(to_numpy(constraints.NonNeg()(x)), np.full((5, 5), expected))


# -- tf-keras: tf_keras/constraints_test.py ---------------------------------------------------

TEST_VALUES = [0.1, 0.5, 3, 8, 1e-7]


@pytest.mark.parametrize("name", ["max_norm", "non_neg", "unit_norm", "min_max_norm"])
def test_serialization(name):
    fn = constraints.get(name)
    ref_fn = getattr(constraints, name)()
    assert fn.__class__ == ref_fn.__class__
    fn = constraints.deserialize(constraints.serialize(fn))
    assert fn.__class__ == ref_fn.__class__


def test_tf_keras_max_norm():
    array = get_example_array()
    for m in TEST_VALUES:
        normed = constraints.max_norm(m)(keras.Variable(array))
        assert np.all(to_numpy(normed) < m)
    x = np.array([[0, 0, 0], [1.0, 0, 0], [3, 0, 0], [3, 3, 3]]).T
    target = np.array(
        [
            [0, 0, 0],
            [1.0, 0, 0],
            [2.0, 0, 0],
            [2.0 / np.sqrt(3), 2.0 / np.sqrt(3), 2.0 / np.sqrt(3)],
        ]
    ).T
    actual = to_numpy(constraints.max_norm(2.0)(keras.Variable(x)))
    np.testing.assert_allclose(actual, target, rtol=1e-05, atol=1e-6)


def test_tf_keras_non_neg():
    normed = constraints.non_neg()(keras.Variable(get_example_array()))
    assert np.all(np.min(to_numpy(normed), axis=1) == 0.0)


def test_tf_keras_unit_norm():
    normalized = constraints.unit_norm()(keras.Variable(get_example_array()))
    norm_of_normalized = np.sqrt(np.sum(to_numpy(normalized) ** 2, axis=0))
    assert np.max(np.abs(norm_of_normalized - 1.0)) < 10e-5


def test_tf_keras_min_max_norm():
    array = get_example_array()
    for m in TEST_VALUES:
        normed = constraints.min_max_norm(min_value=m, max_value=m * 2)(keras.Variable(array))
        l2 = np.sqrt(np.sum(np.square(to_numpy(normed)), axis=0))
        assert not l2[l2 < m].size
        assert not l2[l2 > m * 2 + 1e-5].size


# -- the rest of the drop-in interface --------------------------------------------------------


@pytest.mark.parametrize(
    "identifier, expected",
    [
        ("MaxNorm", constraints.MaxNorm()),
        ("min_max_norm", constraints.MinMaxNorm()),
        (constraints.UnitNorm, constraints.UnitNorm()),
        (wc.NonNeg, constraints.NonNeg()),
        (wc.MaxNorm(3, axis=1), constraints.MaxNorm(3, axis=1)),
        ({"class_name": "UnitNorm", "config": {"axis": 1}}, constraints.UnitNorm(axis=1)),
        (keras.constraints.serialize(keras.constraints.MaxNorm(3)), constraints.MaxNorm(3)),
        (constraints.serialize(constraints.MinMaxNorm(0.1)), constraints.MinMaxNorm(0.1)),
    ],
    ids=str,
)
def test_get_gives_our_classes(identifier, expected):
    got = constraints.get(identifier)
    assert type(got) is type(expected) and got == expected


def test_get_returns_callables_as_they_are():
    theirs = keras.constraints.MaxNorm(3)
    assert constraints.get(theirs) is theirs
    assert type(constraints.get("constraint")) is keras.constraints.Constraint
    with pytest.raises(ValueError, match="Could not interpret"):
        constraints.get(3)


def test_deserialize_takes_custom_objects():
    class Clip(constraints.Constraint):
        def __call__(self, w):
            return ops.clip(w, -1, 1)

    config = {"class_name": "Clip", "config": {}, "module": None, "registered_name": "Clip"}
    assert isinstance(constraints.deserialize(config, custom_objects={"Clip": Clip}), Clip)


def test_our_objects_are_accepted_wherever_a_core_constraint_is():
    assert wc.get(constraints.MaxNorm(3, axis=1)) == wc.MaxNorm(3, axis=1)
    assert wc.get(constraints.NonNeg()) == wc.NonNeg()
    import torch

    from weight_constraints.adapters.torch import project_

    weight = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # torch Linear layout (out, in): norms 5, 0.5
    project_(weight, constraints.MaxNorm(1.0), dims=1)
    np.testing.assert_allclose(weight.numpy(), [[0.6, 0.8], [0.3, 0.4]], rtol=1e-6)

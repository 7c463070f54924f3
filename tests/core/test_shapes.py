"""Bounds given as a rule of the weight's shape: ``"sqrt(fan_in)"`` (EDM2's forced weight
normalisation), resolved for each weight, exact and serialisable."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import weight_constraints as wc
from weight_constraints._shapes import check_bound, fan_in, resolve

RULED = [
    wc.MaxNorm("sqrt(fan_in)"),
    wc.MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)"),
    wc.MinMaxNorm(0.5, "2 * sqrt(fan_in)", rate=0.5),
    wc.BoxMaxNorm(-1.0, 1.0, "sqrt(fan_in)"),
    wc.Simplex("fan_in"),
    wc.MaxL1Norm("0.5 * fan_in"),
]


@pytest.mark.parametrize(
    "given, spelled",
    [
        ("sqrt(fan_in)", "sqrt(fan_in)"),
        (" sqrt( fan_in ) ", "sqrt(fan_in)"),
        ("fan_in", "fan_in"),
        ("2*sqrt(fan_in)", "2.0 * sqrt(fan_in)"),
        ("1e-1 * fan_in", "0.1 * fan_in"),
    ],
)
def test_rules_are_spelled_one_way(given, spelled):
    assert check_bound("max_value", given) == spelled
    assert wc.MaxNorm(given) == wc.MaxNorm(spelled)


@pytest.mark.parametrize("bad", ["sqrt(fan_out)", "fan_in + 1", "-2 * fan_in", "0 * fan_in", ""])
def test_unknown_rules_are_refused_naming_the_value(bad):
    with pytest.raises(ValueError, match="max_value"):
        wc.MaxNorm(bad)


def test_resolution_is_exact_and_per_weight():
    assert fan_in((64, 16, 3, 3), (1, 2, 3)) == 144 and fan_in((5, 7), None) == 35
    assert resolve("sqrt(fan_in)", 144) == 12.0 and resolve("sqrt(fan_in)", 2) == math.sqrt(2)
    edm2 = wc.MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)", axis=(1, 2, 3))
    assert edm2.resolved((64, 16, 3, 3)) == wc.MinMaxNorm(12.0, 12.0, axis=(1, 2, 3))
    assert edm2.resolved((8, 1, 2, 2)) == wc.MinMaxNorm(2.0, 2.0, axis=(1, 2, 3))
    assert wc.UnitNorm().resolved((3, 4)) == wc.UnitNorm()  # no rule: itself


@pytest.mark.parametrize("constraint", RULED, ids=repr)
@pytest.mark.parametrize("shape, axis", [((6, 5), 0), ((4, 3, 2, 2), (1, 2, 3))])
def test_a_ruled_constraint_projects_as_its_numbers(constraint, shape, axis):
    w = np.random.default_rng(0).standard_normal(shape) * 3
    bound = constraint.with_axis(axis)
    np.testing.assert_array_equal(bound(w), bound.resolved(shape)(w))
    assert not bound.resolved(shape).rules() and bound.rules()


def test_functions_take_rules_too():
    w = np.random.default_rng(1).standard_normal((9, 4))
    np.testing.assert_array_equal(wc.max_norm(w, "sqrt(fan_in)"), wc.max_norm(w, 3.0))
    np.testing.assert_array_equal(
        wc.min_max_norm(w, "sqrt(fan_in)", "sqrt(fan_in)", axis=1), wc.min_max_norm(w, 2, 2, axis=1)
    )
    np.testing.assert_array_equal(wc.simplex(w, "fan_in"), wc.simplex(w, 9.0))
    np.testing.assert_allclose(wc.node_norms(wc.min_max_norm(w, "fan_in", "fan_in")), 9.0)


@pytest.mark.parametrize("constraint", RULED, ids=repr)
def test_rules_survive_configs_and_json(constraint):
    config = json.loads(json.dumps(constraint.get_config()))
    assert type(constraint).from_config(config) == constraint
    assert wc.get({"class_name": type(constraint).__qualname__, "config": config}) == constraint


def test_a_rule_is_checked_against_the_dtype_once_resolved():
    w = np.zeros((70000, 2), np.float16)
    with pytest.raises(ValueError, match=r"radius=70000.0 is beyond the range of float16"):
        wc.simplex(w, "fan_in")
    assert wc.Simplex("fan_in").bounds() == {}  # no number to check before a shape is known
    wc.Simplex("fan_in").resolved((100, 2)).check_dtype("float16")


def test_the_factor_of_an_unresolved_rule_is_refused():
    with pytest.raises(TypeError, match=r"resolved\(shape\)"):
        wc.MaxNorm("sqrt(fan_in)").factor(np.ones(3), "float64", np)
    assert wc.MaxNorm("sqrt(fan_in)").resolved((4, 2)).factor(np.array([4.0]), "float64", np)


def test_min_and_max_are_compared_once_resolved():
    rules = wc.MinMaxNorm("fan_in", 3.0)  # a rule beside a number: checked for each weight
    assert rules.resolved((2, 5)) == wc.MinMaxNorm(2.0, 3.0)
    with pytest.raises(ValueError, match="min_value must be <= max_value"):
        rules.resolved((4, 5))

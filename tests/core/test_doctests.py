"""The docstring examples of the core run as tests."""

from __future__ import annotations

import pkgutil

import pytest

import weight_constraints
from tests.doctests import run_doctests

MODULES = ["weight_constraints"] + [
    info.name
    for info in pkgutil.walk_packages(weight_constraints.__path__, "weight_constraints.")
    if not info.name.startswith("weight_constraints.adapters")
]


def test_every_public_function_has_an_example():
    for name in weight_constraints.__all__:
        obj = getattr(weight_constraints, name)
        if callable(obj) and name not in ("Constraint", "Axis"):
            assert ">>>" in (obj.__doc__ or ""), f"{name} has no runnable example"


def test_the_backends_are_collected():
    assert "weight_constraints._backends.torch" in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module):
    run_doctests(module)

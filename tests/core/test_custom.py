"""Constraints of the user's own, the per-node predicate and ``with_axis``, and arrays given to
a namespace that is not theirs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import weight_constraints as wc
from weight_constraints._base import is_per_node


class PlainWithAxis(wc.Constraint):
    """A plain (non-dataclass) subclass with an axis: it must say how to copy itself."""

    def __init__(self, limit: float = 1.0, axis=0) -> None:
        self.limit, self.axis = limit, axis

    def __call__(self, w, *, out=None, xp=None):
        return wc.max_norm(w, self.limit, self.axis, out=out, xp=xp)


class Rebindable(PlainWithAxis):
    def with_axis(self, axis):
        return Rebindable(self.limit, axis)


@dataclass(frozen=True)
class DataclassWithAxis(wc.Constraint):
    limit: float = 1.0
    axis: wc.Axis = 0

    def __call__(self, w, *, out=None, xp=None):
        return wc.max_norm(w, self.limit, self.axis, out=out, xp=xp)


@pytest.mark.parametrize(
    "constraint", [wc.MaxNorm(2), wc.UnitNorm(), wc.MinMaxNorm(), wc.BoxMaxNorm(-1, 1, 1)]
)
def test_built_in_kinds_rebind_through_with_axis(constraint):
    bound = constraint.with_axis((0, 1))
    assert bound.axis == (0, 1) and type(bound) is type(constraint)
    assert bound.with_axis(constraint.axis) == constraint


def test_a_plain_subclass_with_an_axis_is_told_what_to_provide():
    # Before: TypeError "replace() should be called on dataclass instances" from dataclasses.py.
    with pytest.raises(TypeError, match=r"PlainWithAxis has an axis attribute but no with_axis"):
        PlainWithAxis().with_axis((1,))
    assert Rebindable(2.0).with_axis((1,)).axis == (1,)
    assert DataclassWithAxis(2.0).with_axis((1,)) == DataclassWithAxis(2.0, (1,))


def test_entry_wise_constraints_have_no_axis_to_rebind():
    assert not is_per_node(wc.NonNeg()) and not is_per_node(wc.Clip(-1, 1))
    assert is_per_node(PlainWithAxis()) and is_per_node(wc.Simplex())
    with pytest.raises(TypeError, match="has no axis"):
        wc.NonNeg().with_axis(0)


def test_arrays_of_another_library_are_refused_by_jax_numpy():
    jnp = pytest.importorskip("jax.numpy")
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"xp=jax.numpy needs an array of that namespace"):
        wc.clip(torch.ones(3), -1, 1, xp=jnp)
    with pytest.raises(TypeError, match=r"got numpy.ndarray"):
        wc.simplex(np.ones(3, np.float64), xp=jnp)  # was silently float32
    with pytest.raises(TypeError, match=r"got numpy.ndarray"):
        wc.MaxNorm(1.0)(np.ones((3, 2)), xp=jnp)
    got = wc.simplex(jnp.ones(3), xp=jnp)
    assert float(got.sum()) == pytest.approx(1.0)


def test_arrays_of_another_library_are_refused_by_array_api_compat():
    compat = pytest.importorskip("array_api_compat")
    torch = pytest.importorskip("torch")
    xp = compat.array_namespace(torch.empty(0))
    with pytest.raises(TypeError, match=r"needs an array of that namespace, got numpy.ndarray"):
        wc.unit_norm(np.ones((3, 2)), xp=xp)
    assert isinstance(wc.unit_norm(torch.ones(3, 2), xp=xp), torch.Tensor)

"""Constraints of one's own and foreign arrays (issue 17, case 5), and bounds a leaf's dtype
cannot represent: each leaf's constraint is bound through the shared binding when the tree is
read (its with_axis, its dtype check), naming the leaf; NumPy leaves are projected with NumPy,
never handed to jax.numpy."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weight_constraints as wc
from weight_constraints._checks import DEFAULT_AXIS
from weight_constraints.adapters.optax import audit, constrained, project, projection


class Plain(wc.Constraint):
    """A plain (non-dataclass) constraint with an axis and no with_axis."""

    def __init__(self, axis=DEFAULT_AXIS):
        self.axis = axis

    def __call__(self, w, *, out=None, xp=None):
        return wc.unit_norm(w, self.axis, out=out, xp=xp)

    def __repr__(self):
        return f"Plain(axis={self.axis!r})"


class Rebindable(Plain):
    """The same, saying how to copy itself over other axes."""

    def with_axis(self, axis):
        return Rebindable(axis)

    def __repr__(self):
        return f"Rebindable(axis={self.axis!r})"


@dataclass(frozen=True)
class Frozen(wc.Constraint):
    """A dataclass constraint of one's own: with_axis comes from the base class."""

    axis: wc.Axis = DEFAULT_AXIS

    def __call__(self, w, *, out=None, xp=None):
        return wc.unit_norm(w, self.axis, out=out, xp=xp)


def dense(seed: int = 0, dtype=jnp.float32) -> dict:
    rng = np.random.default_rng(seed)
    return {"Conv_0": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 2, 4)) * 3, dtype)}}


@pytest.mark.parametrize("constraint", [Rebindable(), Frozen()], ids=["with_axis", "dataclass"])
def test_constraints_of_ones_own_get_each_leafs_axes(constraint):
    params = dense()
    out = projection(kernel=constraint)(params)["Conv_0"]["kernel"]
    np.testing.assert_allclose(wc.node_norms(np.asarray(out), axis=(0, 1, 2)), 1.0, rtol=1e-6)
    rows = audit(params, kernel=constraint)
    assert rows[0].axes == (0, 1, 2) and rows[0].constraint.axis == (0, 1, 2)
    tx = constrained(optax.sgd(0.1), kernel=constraint)
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)["Conv_0"]["kernel"]
    np.testing.assert_allclose(wc.node_norms(np.asarray(new), axis=(0, 1, 2)), 1.0, rtol=1e-5)


def test_a_plain_constraint_without_with_axis_says_what_to_define():
    params = dense()
    message = r"Plain has an axis attribute but no with_axis\(\): define with_axis"
    for read in (
        lambda: projection(kernel=Plain())(params),
        lambda: audit(params, kernel=Plain()),
        lambda: project(kernel=Plain()).update(params, optax.EmptyState(), params),
        lambda: projection(rules={"Conv_0/kernel": (Plain(), (0, 1, 2))})(params),
    ):
        with pytest.raises(TypeError, match=message):
            read()


@pytest.mark.parametrize(
    "constraint, dtype, parameter",
    [
        (wc.Simplex(radius=1e5), jnp.float16, "radius"),
        (wc.MaxNorm(1e39), jnp.bfloat16, "max_value"),
    ],
    ids=["simplex-float16", "max_norm-bfloat16"],
)
def test_a_bound_the_leafs_dtype_cannot_hold_raises_naming_the_leaf(constraint, dtype, parameter):
    params = dense(dtype=dtype)
    message = rf"Conv_0/kernel: {parameter}=.* is beyond the range of {np.dtype(dtype).name}"
    with pytest.raises(ValueError, match=message):
        projection(kernel=constraint)(params)
    tx = project(kernel=constraint)
    with pytest.raises(ValueError, match=message):  # when the tree is read, before any step
        jax.jit(tx.update)(params, tx.init(params), params)


def test_a_bound_is_checked_against_each_leafs_own_dtype():
    params = {**dense(dtype=jnp.float32), "Dense_0": {"kernel": jnp.ones((3, 2), jnp.float16)}}
    constrain = projection(kernel=wc.Simplex(radius=1e5), rules={"Dense_0/.*": None})
    out = constrain(params)["Conv_0"]["kernel"]  # float32 holds 1e5
    np.testing.assert_allclose(np.asarray(out).sum(axis=(0, 1, 2)), 1e5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_numpy_parameters_through_the_optimizer(dtype):
    """NumPy parameters: optax works on them as JAX arrays (of JAX's default precision), and
    so does the landing; projection() keeps NumPy leaves NumPy."""
    rng = np.random.default_rng(1)
    params = {"Dense_0": {"kernel": (rng.standard_normal((5, 3)) * 3).astype(dtype)}}
    constraint = wc.Simplex()
    tx = constrained(optax.sgd(0.1), kernel=constraint)
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert audit(new, kernel=constraint).problems() == []
    projected = projection(kernel=constraint)(params)["Dense_0"]["kernel"]
    assert type(projected) is np.ndarray and projected.dtype == dtype
    assert audit({"Dense_0": {"kernel": projected}}, kernel=constraint).problems() == []

"""projection(): parity with the NumPy core on every constraint kind (float32, bfloat16),
exactness, jit, rules, and every error a user can hit (raised before anything is projected,
naming the path)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import weight_constraints as wc
from tests.doctests import run_doctests
from weight_constraints import BoxMaxNorm, Clip, MaxL1Norm, Simplex
from weight_constraints.adapters.optax import audit, projection

# A few shapes, so that jitted functions are compiled once each: Dense (in, out), Conv1D, Conv2D.
SHAPES = [(1, 1), (3, 4), (5, 1), (1, 6), (2, 3, 4), (3, 1, 2), (2, 2, 3, 4), (1, 3, 1, 2)]
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def per_node(shape) -> tuple[int, ...]:
    return (0,) if len(shape) == 2 else tuple(range(len(shape) - 1))


def bound(constraint, axes):
    if isinstance(constraint, wc.NonNeg):
        return constraint
    return type(constraint).from_config({**constraint.get_config(), "axis": axes})


constraints = st.one_of(
    st.builds(wc.MaxNorm, st.floats(0.0, 4.0)),
    st.builds(wc.UnitNorm),
    st.tuples(st.floats(0.0, 2.0), st.floats(0.0, 2.0), st.floats(0.0, 1.0)).map(
        lambda t: wc.MinMaxNorm(min(t[:2]), max(t[:2]), rate=t[2])
    ),
    st.builds(wc.NonNeg),
)


@st.composite
def kernels(draw):
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    shape = draw(st.sampled_from(SHAPES))
    elements = st.one_of(
        st.floats(-8.0, 8.0, width=32), st.sampled_from([0.0, -0.0, 1e-3, -2.5, 1.0])
    )
    w = draw(hnp.arrays(np.float32, shape, elements=elements)).astype(DTYPES[dtype])
    zero = draw(st.booleans())
    if zero:  # one whole node at zero
        w[..., 0] = 0
    return w


def layer(w) -> dict:
    name = "Dense_0" if w.ndim == 2 else "Conv_0"
    return {name: {"kernel": jnp.asarray(w)}}, f"{name}/kernel"


MODULES = [
    "",
    "._layouts",
    "._cells",
    "._leaves",
    "._patterns",
    "._per_input",
    "._projection",
    "._transforms",
]


@pytest.mark.parametrize("module", [*MODULES, "._audit"])
def test_docstring_examples(module):
    run_doctests(f"weight_constraints.adapters.optax{module}")


@given(w=kernels(), constraint=constraints)
def test_parity_with_the_numpy_core(w, constraint):
    params, _ = layer(w)
    (projected,) = jax.tree.leaves(projection(kernel=constraint)(params))
    expected = bound(constraint, per_node(w.shape))(w)  # the NumPy core on the same values
    assert projected.dtype == w.dtype and projected.shape == w.shape
    got, want = np.asarray(projected, np.float64), np.asarray(expected, np.float64)
    if w.dtype == np.float32:
        np.testing.assert_allclose(got, want, rtol=4e-6, atol=1e-6)
    else:  # one rounding to bfloat16 of a product formed in float32: at most one step apart
        np.testing.assert_allclose(got, want, rtol=2.0**-7, atol=1e-6)


@given(w=kernels(), kind=st.sampled_from(["max_norm", "min_max_norm", "non_neg"]))
def test_nodes_inside_the_set_come_back_bit_for_bit(w, kind):
    params, _ = layer(w)
    norms = np.asarray(wc.node_norms(w, axis=per_node(w.shape)), np.float64)
    largest = float(norms.max()) * 2 + 1
    constraint = {
        "max_norm": wc.MaxNorm(largest),
        "min_max_norm": wc.MinMaxNorm(0.0, largest),
        "non_neg": wc.NonNeg(),
    }[kind]
    if kind == "non_neg":
        w = np.abs(w)
        params, _ = layer(w)
    (projected,) = jax.tree.leaves(projection(kernel=constraint)(params))
    bits = np.uint16 if w.itemsize == 2 else np.uint32
    np.testing.assert_array_equal(np.asarray(projected).view(bits), w.view(bits))


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize(
    "constraint",
    [wc.MaxNorm(1.0), wc.UnitNorm(), wc.MinMaxNorm(0.5, 1.0, rate=0.7), wc.NonNeg()],
    ids=repr,
)
def test_jit_matches_eager_keeps_dtype_zero_and_nan_nodes(constraint, dtype):
    w = np.random.default_rng(1).standard_normal((3, 3, 2, 5)).astype(DTYPES[dtype]) * 3
    w[..., 1] = 0  # a zero node
    w[0, 0, 0, 2] = np.nan  # a NaN in one node only
    params = {"Conv_0": {"kernel": jnp.asarray(w), "bias": jnp.ones(5, DTYPES[dtype])}}
    f = projection(kernel=constraint)
    eager, jitted = f(params), jax.jit(f)(params)
    for got in (eager["Conv_0"]["kernel"], jitted["Conv_0"]["kernel"]):
        assert got.dtype == w.dtype
        got = np.asarray(got, np.float32)
        assert np.all(got[..., 1] == 0)
        assert np.isnan(got[..., 2]).any()  # NaN stays in its node (its entry for NonNeg)
        assert not np.isnan(np.delete(got, 2, axis=-1)).any()
    np.testing.assert_allclose(
        np.asarray(eager["Conv_0"]["kernel"], np.float32),
        np.asarray(jitted["Conv_0"]["kernel"], np.float32),
        rtol=2e-6 if dtype == "float32" else 2.0**-7,
    )
    assert eager["Conv_0"]["bias"] is params["Conv_0"]["bias"]  # no bias constraint: untouched


def test_grad_through_a_step_that_projects():
    params = {"Dense_0": {"kernel": jnp.full((3, 2), 2.0), "bias": jnp.zeros(2)}}
    constrain = projection(kernel=wc.MaxNorm(1.0), bias=wc.MaxNorm(0.5))

    @jax.jit
    def step(params, x):
        loss = lambda p: jnp.sum((x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]) ** 2)  # noqa: E731
        grads = jax.grad(loss)(params)
        return constrain(jax.tree.map(lambda p, g: p - 0.1 * g, params, grads))

    new = step(params, jnp.ones((4, 3)))
    assert audit(new, kernel=wc.MaxNorm(1.0), bias=wc.MaxNorm(0.5)).problems() == []


def test_constraints_by_name_and_config():
    params = {"Dense_0": {"kernel": jnp.full((4, 2), 3.0)}}
    by_name = projection(kernel="unit_norm")(params)["Dense_0"]["kernel"]
    by_config = projection(kernel={"class_name": "UnitNorm", "config": {}})(params)
    np.testing.assert_allclose(wc.node_norms(np.asarray(by_name)), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(by_name, by_config["Dense_0"]["kernel"])
    with pytest.raises(ValueError, match="unknown constraint 'l3_norm'"):
        projection(kernel="l3_norm")


def test_explicit_axis_honoured_when_it_names_the_per_node_axes():
    params = {
        "Dense_0": {"kernel": jnp.full((4, 3), 1.0)},
        "Conv_0": {"kernel": jnp.ones((3, 3, 2, 4))},
    }
    default = projection(kernel=wc.MaxNorm(1.0))(params)
    dense = {"Dense_0": params["Dense_0"]}
    conv = {"Conv_0": params["Conv_0"]}
    np.testing.assert_array_equal(
        projection(kernel=wc.MaxNorm(1.0, axis=0))(dense)["Dense_0"]["kernel"],
        default["Dense_0"]["kernel"],
    )
    np.testing.assert_array_equal(
        projection(kernel=wc.MaxNorm(1.0, axis=[-4, 1, 2]))(conv)["Conv_0"]["kernel"],
        default["Conv_0"]["kernel"],
    )
    for bad, tree in ((wc.MaxNorm(1.0, axis=1), dense), (wc.UnitNorm(axis=0), conv)):
        with pytest.raises(ValueError, match="has the explicit axis"):
            projection(kernel=bad)(tree)


def test_rules_constrain_other_leaves_override_roles_and_skip():
    params = {
        "encoder": {"w": jnp.full((2, 5), 3.0), "pos": jnp.full((4, 8), -1.0)},
        "Dense_0": {"kernel": jnp.full((5, 3), 2.0), "bias": jnp.full(3, -2.0)},
        "head": {"kernel": jnp.full((3, 1), 9.0)},
    }
    f = projection(
        kernel=wc.MaxNorm(1.0),
        bias=wc.NonNeg(),
        rules={
            r"encoder/w": (wc.UnitNorm(), 1),  # one norm per row
            r"encoder/pos": None,  # left alone
            r"head/.*": (wc.MaxNorm(2.0), None),  # overrides the role: one norm, whole leaf
        },
    )
    out = jax.jit(f)(params)
    np.testing.assert_allclose(
        wc.node_norms(np.asarray(out["encoder"]["w"]), axis=1), 1.0, rtol=1e-6
    )
    np.testing.assert_array_equal(out["encoder"]["pos"], params["encoder"]["pos"])
    np.testing.assert_allclose(float(jnp.linalg.norm(out["head"]["kernel"])), 2.0, rtol=1e-6)
    np.testing.assert_allclose(wc.node_norms(np.asarray(out["Dense_0"]["kernel"])), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(out["Dense_0"]["bias"], 0.0)
    rows = {
        row.name: row for row in audit(params, kernel=wc.MaxNorm(1.0), rules={"encoder/.*": None})
    }
    assert rows["encoder/w"].note == "left alone by rule 'encoder/.*'"


def test_lists_tuples_and_nested_containers():
    params = {"layers": [{"kernel": jnp.full((2, 2), 5.0)}, {"kernel": jnp.full((2, 2), 5.0)}]}
    out = projection(kernel=wc.MaxNorm(1.0))(params)
    assert isinstance(out["layers"], list)
    for layer in out["layers"]:
        np.testing.assert_allclose(wc.node_norms(np.asarray(layer["kernel"])), 1.0, rtol=1e-6)
    rows = audit(params, kernel=wc.MaxNorm(1.0))
    assert [row.name for row in rows] == ["layers/0/kernel", "layers/1/kernel"]


UNKNOWN = {
    "custom leaf": ({"encoder": {"w": jnp.ones((2, 3))}}, "encoder/w (2, 3): a parameter Flax"),
    "Einsum kernel": (
        {"Einsum_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}},
        "Einsum_0/kernel (3, 4): an Einsum kernel",
    ),
    "bias-free DenseGeneral": (
        {"DenseGeneral_0": {"kernel": jnp.ones((3, 2, 4))}},
        "DenseGeneral_0/kernel (3, 2, 4): a bias-free DenseGeneral kernel",
    ),
    "kernel of rank 1": ({"x": {"kernel": jnp.ones(3)}}, "x/kernel (3,): a kernel of rank 1"),
    "kernel of rank 6": ({"x": {"kernel": jnp.ones((1,) * 6)}}, "a kernel of rank 6"),
    "embedding of rank 3": ({"e": {"embedding": jnp.ones((2, 3, 4))}}, "an embedding of rank 3"),
    "kernel beside an odd bias": (
        {"x": {"kernel": jnp.ones((2, 3, 4)), "bias": jnp.ones(3)}},
        "a kernel (2, 3, 4) beside a bias (3,)",
    ),
}


@pytest.mark.parametrize("tree, message", UNKNOWN.values(), ids=UNKNOWN.keys())
def test_unknown_leaves_raise_naming_the_path_unless_skipped(tree, message):
    dense = {"Dense_0": {"kernel": jnp.full((2, 2), 5.0)}}
    params = {**tree, **dense}
    with pytest.raises(ValueError, match="cannot tell the per-node axes") as error:
        projection(kernel=wc.MaxNorm(1.0), embedding=wc.MaxNorm(1.0))(params)
    assert message in str(error.value)
    out = projection(kernel=wc.MaxNorm(1.0), skip_unknown=True)(params)
    for a, b in zip(jax.tree.leaves(out[next(iter(tree))]), jax.tree.leaves(tree), strict=True):
        assert a is b
    np.testing.assert_allclose(wc.node_norms(np.asarray(out["Dense_0"]["kernel"])), 1.0, rtol=1e-6)
    skip = {f"{next(iter(tree))}/.*": None}
    projection(kernel=wc.MaxNorm(1.0), rules=skip)(params)  # skipped explicitly: no error


def test_a_bare_array_needs_a_rule():
    w = jnp.full((2, 3), 2.0)
    with pytest.raises(ValueError, match=r" \(2, 3\): an array outside a container has no name"):
        projection(kernel=wc.MaxNorm(1.0))(w)
    out = projection(rules={"": (wc.MaxNorm(1.0), 0)})(w)  # its path is the empty string
    np.testing.assert_allclose(wc.node_norms(np.asarray(out)), 1.0, rtol=1e-6)


def test_unknown_leaf_of_a_role_not_asked_is_not_an_error():
    params = {"Einsum_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.full(4, 2.0)}}
    out = projection(bias=wc.MaxNorm(1.0))(params)
    assert out["Einsum_0"]["kernel"] is params["Einsum_0"]["kernel"]
    with pytest.raises(ValueError, match="cannot tell"):  # a leaf of any name: any role
        projection(bias=wc.MaxNorm(1.0))({**params, "w": jnp.ones(3)})


DENSE = {"Dense_0": {"kernel": jnp.ones((2, 2))}}
ERRORS = [
    (dict(), {}, ValueError, "nothing to project"),
    (dict(bias=wc.NonNeg()), DENSE, ValueError, "no parameter has the role bias"),
    (dict(recurrent=wc.NonNeg()), DENSE, ValueError, "no parameter has the role recurrent"),
    (
        dict(rules={"Dense_0": None}),
        DENSE,
        ValueError,
        r"rules \['Dense_0'\] match no parameter \(paths look like 'Dense_0/kernel'\)",
    ),
    (dict(rules={".*": None, "D.*": None}), DENSE, ValueError, "matches several rules"),
    (dict(rules={"a": wc.MaxNorm(1.0)}), {}, ValueError, r"must be \(constraint, axis\) or None"),
    (dict(rules={"a": (None, 0)}), {}, ValueError, "has no constraint"),
    (dict(rules={"(": None}), {}, ValueError, "is not a regular expression"),
    (dict(rules=[("a", None)]), {}, TypeError, "rules must map"),
    (
        dict(rules={"step": (wc.NonNeg(), None)}),
        {"step": jnp.zeros((), jnp.int32)},
        TypeError,
        "step is matched by rule 'step' but has dtype int32",
    ),
    (
        dict(kernel=wc.NonNeg()),
        {"Dense_0": {"kernel": jnp.ones((2, 2), jnp.int32)}},
        TypeError,
        "Dense_0/kernel is matched by kernel",
    ),
    (
        dict(rules={"w": (wc.MaxNorm(1.0), 2)}),
        {"w": jnp.ones((2, 2))},
        ValueError,
        "w: axis 2 is out of range",
    ),
]


@pytest.mark.parametrize("kwargs, tree, error, message", ERRORS)
def test_errors(kwargs, tree, error, message):
    with pytest.raises(error, match=message):
        projection(**kwargs)(tree)
    with pytest.raises(error, match=message):
        audit(tree, **kwargs)


def test_roles_are_keyword_only():
    with pytest.raises(TypeError):
        projection(wc.MaxNorm(1.0))  # type: ignore[misc]


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize(
    "constraint",
    [Clip(-0.1, 0.2), BoxMaxNorm(0.0, 0.5, 1.0), Simplex(), MaxL1Norm(1.0)],
    ids=lambda c: type(c).__name__,
)
def test_box_simplex_and_l1_kinds_per_node_under_jit(constraint, dtype):
    rng = np.random.default_rng(5)
    params = {
        "Dense_0": {"kernel": jnp.asarray(rng.standard_normal((5, 3)), DTYPES[dtype])},
        "Conv_0": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 2, 4)), DTYPES[dtype])},
    }
    out = jax.jit(projection(kernel=constraint))(params)
    for name, axes in (("Dense_0", (0,)), ("Conv_0", (0, 1, 2))):
        w = np.asarray(params[name]["kernel"])
        per_node = constraint if not hasattr(constraint, "axis") else bound(constraint, axes)
        got, want = (np.asarray(a, np.float64) for a in (out[name]["kernel"], per_node(w)))
        assert out[name]["kernel"].dtype == w.dtype
        rtol = 4e-6 if dtype == "float32" else 2.0**-7
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(w).max())

"""The pieces every adapter shares: roles, the axis rule and binding, the walk, audit rows and
their tolerance, norm statistics, errors that carry their reason."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import weight_constraints as wc
from tests.doctests import run_doctests
from weight_constraints._checks import DEFAULT_AXIS
from weight_constraints.adapters._audit import (
    Audit,
    AuditRow,
    finish,
    norm_statistics,
    tolerance,
    worst_violation,
)
from weight_constraints.adapters._binding import bind, with_axes
from weight_constraints.adapters._errors import WeightTypeError, WeightValueError
from weight_constraints.adapters._roles import Request
from weight_constraints.adapters._walk import normalises, walk

SHARED = ["_roles", "_binding", "_audit", "_errors", "_walk"]


@pytest.mark.parametrize("module", SHARED)
def test_docstring_examples(module):
    run_doctests(f"weight_constraints.adapters.{module}")


def test_the_embedding_takes_the_kernel_constraint_unless_given():
    request = Request.of(wc.get, kernel=wc.MaxNorm(3))
    assert request.constraint_for("embedding") == wc.MaxNorm(3)
    assert request.missing({"embedding"}) == []  # the tables took the kernel constraint
    own = Request.of(wc.get, kernel=wc.MaxNorm(3), embedding="unit_norm")
    assert own.constraint_for("embedding") == wc.UnitNorm()
    assert own.missing({"embedding"}) == ["kernel"]
    assert Request.of(wc.get, bias="non_neg").asked() == ["bias"]


def test_bind_gives_per_node_axes_and_checks_the_dtype():
    bound, axes = bind(wc.Simplex(), (1,), (4, 8), "fc.weight", dtype="float32")
    assert axes == (1,) and bound == wc.Simplex(axis=1)
    with pytest.raises(ValueError, match=r"fc.weight: radius=100000.0 is beyond .* float16"):
        bind(wc.Simplex(1e5), (1,), (4, 8), "fc.weight", dtype="float16")
    with pytest.raises(ValueError, match="explicit axis=0"):
        bind(wc.MaxNorm(3, axis=0), (1,), (4, 8), "fc.weight")


@dataclass(frozen=True)
class Custom(wc.Constraint):
    axis: wc.Axis = DEFAULT_AXIS

    def __call__(self, w, *, out=None, xp=None):
        return wc.unit_norm(w, self.axis, out=out, xp=xp)


class NoWithAxis:
    axis = 0

    def __call__(self, w):
        return w


def test_custom_constraints_bind_through_with_axis():
    assert bind(Custom(), (0, 1), (2, 3, 4), "conv")[0] == Custom((0, 1))
    with pytest.raises(TypeError, match=r"no with_axis\(axis\) method"):
        with_axes(NoWithAxis(), (1,))


def test_the_audit_tolerance_is_the_kinds_own():
    # The sum kinds keep a node within 4 roundings of the radius: the audit accepts it.
    assert tolerance(wc.Simplex(), "bfloat16") == 4 * 2.0**-7
    assert tolerance(wc.MaxL1Norm(2.0), "float16") == 4 * 2.0**-10 * 2.0
    assert tolerance(wc.MaxNorm(1.0), "bfloat16") == 2 * 2.0**-7
    assert tolerance(wc.MaxNorm(1.0), None, tol=1e-5) == 1e-5


def test_a_projected_half_precision_node_passes_the_audit():
    """Before, the projection kept bfloat16 nodes whose sum was off by up to m · eps and the
    audit flagged them: the two definitions of "on the set" disagreed."""
    import ml_dtypes

    rng = np.random.default_rng(0)
    for m in (2, 3, 1024):
        w = rng.uniform(0.0, 3.0 / m, (m, 6)).astype(ml_dtypes.bfloat16)
        for constraint in (wc.Simplex(axis=0), wc.MaxL1Norm(1.0, axis=0)):
            projected = constraint(w)
            violation = worst_violation(constraint, projected.astype(np.float64), (0,))
            row = AuditRow("w", w.shape, constraint, (0,), True, violation, "", "bfloat16")
            assert Audit([row]).problems(0.0) == [], (m, constraint, violation)


def test_finish_raises_with_strict_and_lists_the_rows():
    rows = Audit([AuditRow("a", (2,), wc.MaxNorm(1.0), (0,), False, 0.0, "", "float32")])
    assert finish(rows, False, 1e-5) is rows
    with pytest.raises(RuntimeError, match="1 constrained weight"):
        finish(rows, True, 1e-5)


def test_norm_statistics_schema():
    w = np.array([[3.0, 0.0], [4.0, 0.0]])
    assert norm_statistics("w", w, (0,), None) == {
        "w/norm_min": 0.0,
        "w/norm_max": 5.0,
        "w/norm_mean": 2.5,
    }
    assert norm_statistics("w", w, None, 0.5) == {"w/violation": 0.5}
    assert norm_statistics("e", np.zeros((0, 3)), (0,), 0.0)["e/norm_max"] == 0.0


def test_errors_carry_their_note():
    error = WeightTypeError("x has layout torch.sparse_coo", "constrain the dense tensor")
    assert isinstance(error, TypeError) and error.note == "x has layout torch.sparse_coo"
    assert WeightValueError("lora", "", code="lora").code == "lora"


class Node:
    def __init__(self, name, children=(), weights=(), known=False, eps=None):
        self.name, self.kids, self.weights, self.known = name, list(children), weights, known
        if eps is not None:
            self.eps = eps


class Tables:
    def children(self, node):
        return [(child.name, child) for child in node.kids]

    def is_known(self, node):
        return node.known

    def owned(self, node):
        return {"owned"}

    def has_own_weights(self, node):
        return bool(node.weights)

    def has_no_role(self, node):
        return normalises(node, node.weights)


def test_the_walk_yields_known_and_unknown_layers_and_the_extras_of_known_ones():
    model = Node(
        "model",
        [
            Node("fc", [Node("owned", weights=[2]), Node("extra", weights=[2])], [2], True),
            Node("norm", weights=[1], eps=1e-6),  # a normalisation layer by its structure
            Node("odd", weights=[1]),  # 1-D weights, no epsilon: not recognised
            Node("block", [Node("inner", weights=[2], known=True)]),
        ],
    )
    assert [path for path, _ in walk(model, Tables())] == ["fc", "fc.extra", "odd", "block.inner"]


def test_per_input_is_a_named_choice_for_2d_weights():
    """nGPT's down-projections: one norm per input unit, asked for by name, never guessed."""
    from weight_constraints.adapters._binding import per_input_axes

    bound, axes = bind(wc.UnitNorm(), (1,), (8, 4), "down.weight", per_input=True)
    assert axes == (0,) and bound == wc.UnitNorm(axis=0)
    assert bind(wc.UnitNorm(axis=0), (1,), (8, 4), "down", per_input=True)[1] == (0,)
    with pytest.raises(ValueError, match="explicit axis=1, but one norm per input unit of down"):
        bind(wc.UnitNorm(axis=1), (1,), (8, 4), "down", per_input=True)
    with pytest.raises(ValueError, match="2-D weights"):
        per_input_axes((1, 2, 3), (8, 4, 3, 3), "conv.weight")
    assert bind(wc.NonNeg(), (1,), (8, 4), "down", per_input=True) == (wc.NonNeg(), None)


def test_bind_keeps_rules_and_checks_them_resolved():
    bound, _axes = bind(wc.MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)"), (1,), (8, 16), "fc")
    assert bound.rules() and bound.resolved((8, 16)) == wc.MinMaxNorm(4.0, 4.0, axis=1)
    with pytest.raises(ValueError, match=r"fc: radius=70000.0 is beyond .* float16"):
        bind(wc.Simplex("fan_in"), (1,), (2, 70000), "fc", dtype="float16")


def test_the_tolerance_of_a_rule_is_its_resolved_size():
    edm2 = wc.MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)", axis=1)
    assert tolerance(edm2, "bfloat16", shape=(4, 256)) == 2 * 2.0**-7 * 16
    assert tolerance(edm2, "bfloat16") == 2 * 2.0**-7  # no shape: the rule is not known

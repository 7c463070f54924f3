"""Issue 17, case 3a: constrained(...) composed with optax's wrappers, each order as the table
of docs/jax.md says. The orders that hold are trained over steps with every constraint kind,
from parameters outside their sets, and checked after every step; the orders documented as
unsafe are shown to leave the set, so that the table stays true."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weight_constraints as wc
from weight_constraints.adapters.optax import audit, constrained, project, projection

KINDS = [
    wc.MaxNorm(1.0),
    wc.UnitNorm(),
    wc.MinMaxNorm(0.5, 1.0),
    wc.NonNeg(),
    wc.Clip(-0.5, 0.5),
    wc.BoxMaxNorm(-0.5, 0.5, 1.0),
    wc.Simplex(),
    wc.MaxL1Norm(1.0),
]
STEPS = 4  # two lookahead synchronisations, two MultiSteps updates
MASK = {"Dense_0": {"kernel": True, "bias": True}, "Dense_1": {"kernel": False}}
LABELS = {
    "Dense_0": {"kernel": "constrained", "bias": "constrained"},
    "Dense_1": {"kernel": "free"},
}


def sgd():
    return optax.sgd(0.3)


def tree(seed: int = 0) -> dict:
    """Two Dense layers, every node far outside the sets."""
    rng = np.random.default_rng(seed)
    return {
        "Dense_0": {
            "kernel": jnp.asarray(rng.standard_normal((6, 4)) * 2, jnp.float32),
            "bias": jnp.asarray(rng.standard_normal(4), jnp.float32),
        },
        "Dense_1": {"kernel": jnp.asarray(rng.standard_normal((4, 3)) * 2, jnp.float32)},
    }


class Case(NamedTuple):
    """How to build the composition from the roles; the first step from which it holds the
    set; whether it trains ``optax.LookaheadParams``; whether it holds only the leaves the
    wrapper passes to constrained(...) (Dense_0 here)."""

    build: Callable[[dict], Any]
    start: int = 0
    lookahead: bool = False
    partial: bool = False


# The wrapper's name first: the wrapper outside constrained(...).
HOLDS = {
    "constrained(lookahead)": Case(
        lambda k: constrained(optax.lookahead(sgd(), 2, 0.5), **k), lookahead=True
    ),
    "constrained(schedule_free)": Case(
        lambda k: constrained(optax.contrib.schedule_free(sgd(), 0.3), **k)
    ),
    "constrained(MultiSteps)": Case(lambda k: constrained(optax.MultiSteps(sgd(), 2), **k)),
    "MultiSteps(constrained)": Case(  # its first accumulated step is the second call
        lambda k: optax.MultiSteps(constrained(sgd(), **k), 2).gradient_transformation(),
        start=1,
    ),
    "constrained(masked)": Case(lambda k: constrained(optax.masked(sgd(), MASK), **k)),
    "masked(constrained)": Case(
        lambda k: optax.masked(constrained(sgd(), **k), MASK), partial=True
    ),
    "constrained(multi_transform)": Case(
        lambda k: constrained(
            optax.multi_transform({"constrained": sgd(), "free": sgd()}, LABELS), **k
        )
    ),
    "multi_transform(constrained)": Case(
        lambda k: optax.multi_transform(
            {"constrained": constrained(sgd(), **k), "free": sgd()}, LABELS
        ),
        partial=True,
    ),
    "constrained(inject_hyperparams)": Case(
        lambda k: constrained(optax.inject_hyperparams(optax.sgd)(learning_rate=0.3), **k)
    ),
    "inject_hyperparams(constrained)": Case(
        lambda k: optax.inject_hyperparams(
            lambda learning_rate: constrained(optax.sgd(learning_rate), **k)
        )(learning_rate=0.3)
    ),
    "constrained(apply_if_finite)": Case(
        lambda k: constrained(optax.apply_if_finite(sgd(), 3), **k)
    ),
    "apply_if_finite(constrained)": Case(
        lambda k: optax.apply_if_finite(constrained(sgd(), **k), 3)
    ),
}


def random_like(params, *, seed: int):
    """Gradients: a tree like ``params`` of independent normal draws."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)


def train(tx, params, steps: int = STEPS):
    """``steps`` steps of ``tx`` on random gradients; yields the parameters after each."""
    state = tx.init(params)
    update = jax.jit(tx.update)
    for t in range(steps):
        fast = params.fast if isinstance(params, optax.LookaheadParams) else params
        grads = random_like(fast, seed=100 + t)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        yield t, params


@pytest.mark.parametrize("constraint", KINDS, ids=lambda c: type(c).__qualname__)
@pytest.mark.parametrize("case", HOLDS.values(), ids=HOLDS.keys())
def test_the_orders_that_hold_keep_every_node_on_its_set(case, constraint):
    params = tree()
    if case.lookahead:
        params = optax.LookaheadParams.init_synced(params)
    for t, new in train(case.build({"kernel": constraint}), params):
        if t < case.start:
            continue
        held = {"Dense_0": new["Dense_0"]} if case.partial else new  # what it is given
        rows = audit(held, kernel=constraint)
        assert rows.problems() == [], f"step {t}:\n{rows}"
        if case.lookahead:  # the fast and the slow weights, both on the set
            assert {row.name.split("/")[0] for row in rows if row.active} == {"fast", "slow"}


def test_lookahead_inside_reads_both_halves_from_the_fast_weights():
    """Rules and stacks match the paths of the parameters themselves; at a synchronisation
    the average lands on the sphere, in the fast and the slow weights."""
    start = optax.LookaheadParams.init_synced(tree(1))
    rules = {"Dense_1/kernel": (wc.UnitNorm(), 0)}
    tx = constrained(optax.lookahead(sgd(), 2, 0.5), kernel=wc.UnitNorm(), rules=rules)
    for _, params in train(tx, start):
        for half in (params.fast, params.slow):
            for layer in ("Dense_0", "Dense_1"):
                norms = wc.node_norms(np.asarray(half[layer]["kernel"]), axis=0)
                np.testing.assert_allclose(norms, 1.0, rtol=1e-6)
    rows = audit(params, kernel=wc.UnitNorm(), rules=rules)
    assert [row.name for row in rows if row.active] == [
        "fast/Dense_0/kernel",
        "fast/Dense_1/kernel",
        "slow/Dense_0/kernel",
        "slow/Dense_1/kernel",
    ]
    projected = projection(kernel=wc.MaxNorm(0.5))(optax.LookaheadParams.init_synced(tree(2)))
    assert isinstance(projected, optax.LookaheadParams)
    for half in (projected.fast, projected.slow):
        assert wc.node_norms(np.asarray(half["Dense_0"]["kernel"]), axis=0).max() <= 0.5 + 1e-6


def test_lookahead_params_with_plain_updates_are_refused():
    params = optax.LookaheadParams.init_synced(tree())
    tx = optax.chain(sgd(), project(kernel=wc.MaxNorm(1.0)))  # lookahead forgotten
    with pytest.raises(TypeError, match=r"optax.LookaheadParams but the updates are not"):
        tx.update(params.fast, tx.init(params.fast), params)


def test_lookahead_outside_leaves_the_sphere_at_each_synchronisation():
    """The documented hazard: lookahead(constrained(...)) replaces the fast weights by an
    average at each synchronisation, off the sphere; the slow weights are never projected."""
    start = projection(kernel=wc.UnitNorm())(tree())
    tx = optax.lookahead(constrained(sgd(), kernel=wc.UnitNorm()), 2, 0.5)
    off = []
    for _, params in train(tx, optax.LookaheadParams.init_synced(start)):
        norms = wc.node_norms(np.asarray(params.fast["Dense_0"]["kernel"]), axis=0)
        off.append(float(np.abs(norms - 1.0).max()))
    assert off[0] < 1e-6 and off[1] > 0.05  # on the sphere, then off it after the sync


def test_schedule_free_outside_leaves_the_set():
    """The documented hazard: schedule_free(constrained(...)) adds the landing step, computed
    for the parameters, to its own sequence z: the parameters leave even a convex set."""
    start = projection(kernel=wc.NonNeg())(tree())
    tx = optax.contrib.schedule_free(constrained(sgd(), kernel=wc.NonNeg()), 0.3)
    worst = [
        min(float(np.asarray(params[layer]["kernel"]).min()) for layer in ("Dense_0", "Dense_1"))
        for _, params in train(tx, start)
    ]
    assert min(worst) < -1e-3


def test_schedule_free_eval_params_need_the_projection():
    """constrained(schedule_free(...)) holds the parameters it trains; the evaluation
    parameters are an extrapolation of them, projected on demand."""
    tx = constrained(optax.contrib.schedule_free(sgd(), 0.3), kernel=wc.UnitNorm())
    state = tx.init(params := tree())
    update = jax.jit(tx.update)
    for t in range(STEPS):
        updates, state = update(random_like(params, seed=t), state, params)
        params = optax.apply_updates(params, updates)
    evaluation = optax.contrib.schedule_free_eval_params(state, params)
    assert audit(evaluation, kernel=wc.UnitNorm()).problems()  # not on the sphere
    evaluation = projection(kernel=wc.UnitNorm())(evaluation)
    assert audit(evaluation, kernel=wc.UnitNorm()).problems() == []

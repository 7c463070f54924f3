"""audit() takes strict= and tol= like the PyTorch and Keras audits (issue 17, case 3d), and
norm_stats() gives the norm statistics in the schema every adapter shares."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import weight_constraints as wc
from weight_constraints.adapters._audit import STATISTICS
from weight_constraints.adapters.optax import audit, norm_stats, projection

PARAMS = {
    "Dense_0": {"kernel": jnp.full((4, 2), 1.0), "bias": jnp.full(2, -1.0)},
    "LayerNorm_0": {"scale": jnp.ones(2), "bias": jnp.zeros(2)},
}
ROLES = dict(kernel=wc.MaxNorm(1.0), bias=wc.NonNeg())


def test_strict_raises_listing_every_violated_leaf():
    with pytest.raises(RuntimeError, match="2 constrained weight") as error:
        audit(PARAMS, **ROLES, strict=True)
    assert "Dense_0/kernel" in str(error.value) and "Dense_0/bias" in str(error.value)
    projected = projection(**ROLES)(PARAMS)
    rows = audit(projected, **ROLES, strict=True)  # nothing to raise for: the rows
    assert [row.name for row in rows if row.active] == ["Dense_0/bias", "Dense_0/kernel"]


def test_tol_is_relative_to_the_scale_and_at_least_the_dtype_rounding():
    nearly = {"Dense_0": {"kernel": jnp.full((4, 2), 0.5 * (1 + 1e-4))}}  # norm 1.0001
    audit(nearly, kernel=wc.MaxNorm(1.0), strict=True, tol=1e-3)
    with pytest.raises(RuntimeError, match=r"tolerance 1e-05"):
        audit(nearly, kernel=wc.MaxNorm(1.0), strict=True)
    scaled = {"Dense_0": {"kernel": jnp.full((4, 2), 50.0 * (1 + 1e-4))}}  # norm 100.01
    with pytest.raises(RuntimeError):
        audit(scaled, kernel=wc.MaxNorm(100.0), strict=True, tol=1e-5)
    audit(scaled, kernel=wc.MaxNorm(100.0), strict=True, tol=1e-3)  # 1e-3 of the scale
    half = {"Dense_0": {"kernel": jnp.full((4, 2), 0.5 * (1 + 2**-8), jnp.bfloat16)}}
    audit(half, kernel=wc.MaxNorm(1.0), strict=True, tol=0.0)  # within bfloat16's rounding


def test_norm_stats_in_the_shared_schema():
    stats = norm_stats(PARAMS, **ROLES)
    assert sorted(stats) == sorted(
        ["Dense_0/bias/violation"] + [f"Dense_0/kernel/{name}" for name in STATISTICS]
    )
    assert stats["Dense_0/kernel/norm_max"] == pytest.approx(2.0)
    assert stats["Dense_0/kernel/violation"] == pytest.approx(1.0)
    assert stats["Dense_0/bias/violation"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 3, 2, 5)).astype(np.float32)
    stats = norm_stats({"Conv_0": {"kernel": jnp.asarray(kernel)}}, kernel=wc.UnitNorm())
    norms = wc.node_norms(kernel.astype(np.float64), axis=(0, 1, 2))
    assert stats["Conv_0/kernel/norm_min"] == pytest.approx(norms.min())
    assert stats["Conv_0/kernel/norm_mean"] == pytest.approx(norms.mean())


def test_norm_stats_checks_like_the_audit():
    with pytest.raises(ValueError, match="nothing to project"):
        norm_stats(PARAMS)
    with pytest.raises(ValueError, match="no parameter has the role recurrent"):
        norm_stats(PARAMS, recurrent=wc.UnitNorm())

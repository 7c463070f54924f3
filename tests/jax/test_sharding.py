"""Multi-device: the projection and the optax transformation run inside jax.jit on parameters
sharded over two (virtual CPU) devices; the constraint holds and each leaf keeps its sharding.

The device count must be set before JAX is imported, so the check runs in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import NamedSharding, PartitionSpec as P
import weight_constraints as wc
from weight_constraints.adapters.optax import audit, project, projection

assert jax.device_count() == 2, jax.devices()
mesh = jax.make_mesh((2,), ("x",))
rng = np.random.default_rng(0)
params = {
    "Dense_0": {"kernel": rng.standard_normal((8, 6)) * 3, "bias": rng.standard_normal(6)},
    "Conv_0": {"kernel": rng.standard_normal((3, 3, 4, 8)), "bias": rng.standard_normal(8)},
    "Embed_0": {"embedding": rng.standard_normal((10, 4)) * 2},
}
specs = {  # nodes split across devices (Dense kernel rows), and nodes kept whole (Conv, Embed)
    "Dense_0": {"kernel": P("x", None), "bias": P("x")},
    "Conv_0": {"kernel": P(None, None, None, "x"), "bias": P()},
    "Embed_0": {"embedding": P("x", None)},
}
params = jax.tree.map(
    lambda a, s: jax.device_put(jnp.asarray(a, jnp.float32), NamedSharding(mesh, s)), params, specs
)
roles = dict(kernel=wc.MaxNorm(1.0), bias=wc.UnitNorm())

def same_sharding(new, old):
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True):
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)

projected = jax.jit(projection(**roles))(params)
same_sharding(projected, params)
assert audit(projected, **roles).problems(tol=1e-6) == []
unsharded = projection(**roles)(jax.tree.map(lambda a: jax.device_get(a), params))
for a, b in zip(jax.tree.leaves(projected), jax.tree.leaves(unsharded), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)

tx = optax.chain(optax.adam(0.1), project(**roles))
state = tx.init(params)

@jax.jit
def step(params, state):
    grads = jax.grad(lambda p: sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(p)))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

for _ in range(3):
    params, state = step(params, state)
    same_sharding(params, projected)
    assert audit(params, **roles).problems(tol=1e-6) == []
print("OK", len(jax.tree.leaves(params)))
"""


def test_sharded_parameters_keep_their_sharding_and_constraint():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "OK 5"

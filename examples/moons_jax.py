"""The moons case study in JAX (Flax + optax): an overfit MLP, and the same with unit-norm hidden
weights.

The model and training follow the PyTorch and Keras examples: Glorot-uniform weights and zero
biases, binary cross-entropy on the logit, Adam with Keras's defaults (learning rate 1e-3, epsilon
1e-7), one full-batch step per epoch (30 samples), 4000 epochs, the test set evaluated after every
epoch. The constraint wraps Adam, so its updates land on the projected parameters:
``constrained(optax.adam(...), rules={"hidden/kernel": (UnitNorm(), 0)})``: the hidden
layer's kernel ``(in, out)`` with one norm per output unit over axis 0. The initial weights come
from JAX's random generator, so the numbers differ from the other frameworks' runs.

Usage: ``python examples/moons_jax.py [--epochs N] [--seed S] [--out DIR]``
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import weight_constraints as wc
from weight_constraints.adapters.optax import constrained

from moons_data import EPOCHS, EPSILON, HIDDEN, LEARNING_RATE, compare_cli, moons


class MLP(nn.Module):
    """2 -> 500 ReLU -> 1 (logit; the sigmoid lives in the loss and in the accuracy)."""

    hidden: int = HIDDEN

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        glorot = nn.initializers.glorot_uniform()
        x = nn.relu(nn.Dense(self.hidden, kernel_init=glorot, name="hidden")(x))
        return nn.Dense(1, kernel_init=glorot, name="output")(x).squeeze(-1)


def accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
    return ((logits > 0).astype(y.dtype) == y).mean()


def train(
    seed: int, constraint: wc.Constraint | None, epochs: int = EPOCHS, hidden: int = HIDDEN
) -> dict[str, object]:
    """Train one model; return its parameters, per-epoch curves and the final accuracies.

    As in Keras's ``fit``, the train accuracy of an epoch is measured on the forward pass of its
    step (before the update) and the test accuracy after the update.
    """
    train_x, train_y, test_x, test_y = (jnp.asarray(a) for a in moons())
    model = MLP(hidden)
    params = model.init(jax.random.key(seed), train_x)["params"]
    optimizer = optax.adam(LEARNING_RATE, eps=EPSILON)
    if constraint is not None:
        optimizer = constrained(optimizer, rules={"hidden/kernel": (constraint, 0)})
    state = optimizer.init(params)

    def loss_fn(params: Any) -> tuple[jax.Array, jax.Array]:
        logits = model.apply({"params": params}, train_x)
        return optax.sigmoid_binary_cross_entropy(logits, train_y).mean(), logits

    @jax.jit
    def step(params: Any, state: Any) -> tuple[Any, Any, jax.Array, jax.Array]:
        grads, logits = jax.grad(loss_fn, has_aux=True)(params)
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)  # lands on the projected parameters
        test_logits = model.apply({"params": params}, test_x)
        return params, state, accuracy(logits, train_y), accuracy(test_logits, test_y)

    curves = np.empty((2, epochs), np.float32)
    for epoch in range(epochs):
        params, state, curves[0, epoch], curves[1, epoch] = step(params, state)
    final = tuple(
        float(accuracy(model.apply({"params": params}, x), y))
        for x, y in ((train_x, train_y), (test_x, test_y))
    )
    return {"params": params, "train": curves[0], "test": curves[1], "final": final}


def main(argv: list[str] | None = None) -> int:
    description = __doc__.splitlines()[0]
    return compare_cli(argv, description, train, wc.UnitNorm(), "moons_jax.png", "JAX, moons")


if __name__ == "__main__":
    raise SystemExit(main())

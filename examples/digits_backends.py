"""The digits study's check on the other front ends: one configuration, dropout + max-norm,
trained with Keras and with JAX (Flax + optax) exactly as the PyTorch ensemble trains it.

Same data, network (Glorot-uniform kernels, zero biases), dropout on both hidden layers, SGD with
momentum on shuffled mini-batches, the cosine schedule, and max-norm on every kernel: through
``weight_constraints.adapters.keras.max_norm`` (applied by Keras's optimizer after each update)
and ``weight_constraints.adapters.optax.constrained`` (the updates land on the projected
parameters). The random streams are each framework's own, so single seeds differ from PyTorch's;
the study compares the spread over seeds. Each trainer returns the seeds' test errors, every
layer's final node norms (min, max) per seed, and the adapter's audit problems (none expected).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

import weight_constraints as wc

from digits_data import CLASSES, Settings


def train_keras(seeds: list[int], settings: Settings, c: float, data) -> dict[str, Any]:
    """Keras (``KERAS_BACKEND``, TensorFlow by default): ``fit`` with batches of
    ``settings.batch``, shuffled every epoch."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from weight_constraints.adapters.keras import audit, max_norm

    train_x, train_y, test_x, test_y = data
    errors, norms, problems = [], [], 0
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((train_x.shape[1],))])
        for _ in range(2):
            model.add(keras.layers.Dense(settings.hidden, "relu", kernel_constraint=max_norm(c)))
            model.add(keras.layers.Dropout(settings.dropout))
        model.add(keras.layers.Dense(CLASSES, kernel_constraint=max_norm(c)))
        schedule = keras.optimizers.schedules.CosineDecay(settings.lr, settings.steps())
        model.compile(
            optimizer=keras.optimizers.SGD(schedule, momentum=settings.momentum),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(train_x, train_y, batch_size=settings.batch, epochs=settings.epochs, verbose=0)
        logits = keras.ops.convert_to_numpy(model(test_x, training=False))
        errors.append(float(np.mean(logits.argmax(axis=1) != test_y)))
        kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers[::2]]
        norms.append([_min_max(wc.node_norms(k, axis=0)) for k in kernels])
        problems += len(audit(model).problems())
    framework = f"Keras {keras.__version__} ({keras.backend.backend()} backend)"
    return {
        "test_error": errors,
        "final_norms": norms,
        "audit_problems": problems,
        "framework": framework,
    }


def train_jax(seeds: list[int], settings: Settings, c: float, data) -> dict[str, Any]:
    """JAX: a Flax linen MLP and ``constrained(optax.sgd(...), kernel=MaxNorm(c))``."""
    import flax
    import jax
    import optax

    from weight_constraints.adapters.optax import audit, constrained

    train_x, train_y, test_x, test_y = data
    model = _flax_mlp(settings)
    schedule = optax.cosine_decay_schedule(settings.lr, settings.steps())
    tx = constrained(optax.sgd(schedule, momentum=settings.momentum), kernel=wc.MaxNorm(c))
    step = jax.jit(_jax_step(model, tx))
    errors, norms, problems = [], [], 0
    for seed in seeds:
        params = model.init(jax.random.key(seed), train_x[:1], train=False)["params"]
        state, dropout_key = tx.init(params), jax.random.key(1_000_003 + seed)
        shuffle, n, batch = np.random.default_rng(seed), len(train_x), settings.batch
        for epoch in range(settings.epochs):
            order = shuffle.permutation(n)
            for i, start in enumerate(range(0, n - batch + 1, batch)):
                index = order[start : start + batch]
                key = jax.random.fold_in(dropout_key, epoch * n + i)
                params, state = step(params, state, train_x[index], train_y[index], key)
        logits = model.apply({"params": params}, test_x, train=False)
        errors.append(float(np.mean(np.asarray(logits).argmax(axis=1) != test_y)))
        kernels = [np.asarray(params[name]["kernel"]) for name in sorted(params)]
        norms.append([_min_max(wc.node_norms(k, axis=0)) for k in kernels])
        problems += len(audit(params, kernel=wc.MaxNorm(c)).problems())
    framework = f"JAX {jax.__version__}, Flax {flax.__version__}, optax {optax.__version__}"
    return {
        "test_error": errors,
        "final_norms": norms,
        "audit_problems": problems,
        "framework": framework,
    }


def _flax_mlp(settings: Settings) -> Any:
    import flax.linen as nn

    class MLP(nn.Module):
        """inputs -> hidden ReLU -> dropout -> hidden ReLU -> dropout -> classes (logits)."""

        @nn.compact
        def __call__(self, x, train: bool):
            glorot = nn.initializers.glorot_uniform()
            for i in range(2):
                x = nn.relu(nn.Dense(settings.hidden, kernel_init=glorot, name=f"dense{i}")(x))
                x = nn.Dropout(settings.dropout, deterministic=not train)(x)
            return nn.Dense(CLASSES, kernel_init=glorot, name="dense2")(x)

    return MLP()


def _jax_step(model: Any, tx: Any) -> Any:
    import jax
    import optax

    def step(params, state, x, y, key):
        def loss(p):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)  # lands on the projected parameters
        return optax.apply_updates(params, updates), state

    return step


def _min_max(norms: np.ndarray) -> list[float]:
    return [float(norms.min()), float(norms.max())]


BACKENDS = {"keras": train_keras, "jax": train_jax}

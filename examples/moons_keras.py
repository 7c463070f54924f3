"""The moons case study in Keras: the tutorial's code with ``unit_norm`` from weight_constraints.

The model is the tutorial's: ``Dense(500, relu, kernel_constraint=unit_norm())``,
``Dense(1, sigmoid)``, binary cross-entropy, Adam with its defaults, batch size 32 on 30 samples
(one full-batch step per epoch), 4000 epochs, the test set as validation data every epoch.

Why not ``model.fit(..., epochs=4000, validation_data=...)``? With one step per epoch, almost all
of ``fit``'s time is its per-epoch work (a fresh data iterator, callbacks, a separate
``evaluate`` pass, logs): about 6 minutes per model on 2 cores. The loop below runs exactly the
same maths with ``train_on_batch`` and ``test_on_batch``: Keras's own compiled train step on the
same full batch (``fit`` would only shuffle the order of the 30 samples inside the batch), the same
optimizer, the constraint applied by the optimizer after each update, the train accuracy measured
on the step's forward pass as ``fit`` reports it, the test accuracy after the update as ``fit``'s
``val_accuracy``. It takes about 10 seconds per model on the TensorFlow backend.

Usage: ``python examples/moons_keras.py [--epochs N] [--seed S] [--out DIR]``
(``KERAS_BACKEND`` picks the backend; TensorFlow by default.)
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from weight_constraints.adapters.keras import unit_norm

from moons_data import EPOCHS, HIDDEN, compare_cli, moons


def build(constraint: keras.constraints.Constraint | None, hidden: int = HIDDEN) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(hidden, activation="relu", kernel_constraint=constraint),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


def train(
    seed: int, constraint: keras.constraints.Constraint | None, epochs: int = EPOCHS
) -> dict[str, object]:
    """Train one model; return it, the per-epoch curves and the final accuracies."""
    train_x, train_y, test_x, test_y = moons()
    keras.utils.set_random_seed(seed)
    model = build(constraint)
    curves = np.empty((2, epochs))
    for epoch in range(epochs):
        _, curves[0, epoch] = model.train_on_batch(train_x, train_y)
        _, curves[1, epoch] = model.test_on_batch(test_x, test_y)
    _, train_accuracy = model.evaluate(train_x, train_y, verbose=0)
    _, test_accuracy = model.evaluate(test_x, test_y, verbose=0)
    return {
        "model": model,
        "train": curves[0],
        "test": curves[1],
        "final": (train_accuracy, test_accuracy),
    }


def main(argv: list[str] | None = None) -> int:
    title = f"Keras ({keras.backend.backend()}), moons"
    return compare_cli(argv, __doc__.splitlines()[0], train, unit_norm(), "moons_keras.png", title)


if __name__ == "__main__":
    raise SystemExit(main())

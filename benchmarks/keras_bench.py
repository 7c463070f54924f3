"""The Keras adapter against ``keras.constraints`` inside ``model.fit``."""

from __future__ import annotations

import keras
import numpy as np
from _timing import Row, interleaved

from weight_constraints.adapters import keras as wk


def keras_section(width: int, repeats: int) -> list[Row]:
    """Epoch time of ``fit`` on 3 Dense(width) layers with our MaxNorm, Keras's, and none."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32 * 64, width)).astype("float32")
    y = rng.standard_normal((32 * 64, 1)).astype("float32")

    def model(constraint):
        keras.utils.set_random_seed(0)
        m = keras.Sequential(
            [keras.Input((width,))]
            + [keras.layers.Dense(width, "relu", kernel_constraint=constraint) for _ in range(3)]
            + [keras.layers.Dense(1)]
        )
        m.compile(keras.optimizers.SGD(1e-3), "mse")
        m.fit(x, y, batch_size=64, epochs=1, verbose=0)  # compile the train step
        return m

    models = {
        "weight_constraints MaxNorm": model(wk.MaxNorm(2.0)),
        "keras.constraints.MaxNorm": model(keras.constraints.MaxNorm(2.0)),
        "no constraint": model(None),
    }
    medians = interleaved(
        {
            name: (lambda m=m: m.fit(x, y, batch_size=64, epochs=1, verbose=0))
            for name, m in models.items()
        },
        repeats,
    )
    ratio = medians["weight_constraints MaxNorm"] / medians["keras.constraints.MaxNorm"]
    return [
        Row(
            "keras",
            f"fit epoch, 3 Dense({width}) + MaxNorm(2), 32 steps ({keras.backend.backend()})",
            medians,
            "ours / keras.constraints",
            ratio,
            goal="≤ 1.05×",
            met=ratio <= 1.05,
        )
    ]

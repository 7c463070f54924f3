"""The training overhead of a constraint on the moons MLP (examples/), PyTorch and Keras."""

from __future__ import annotations

import sys

import keras
import torch
from _checkout import ROOT
from _timing import Row, interleaved

import weight_constraints as wc
from weight_constraints.adapters.keras import unit_norm
from weight_constraints.adapters.torch import Constraints


def moons_section(repeats: int) -> list[Row]:
    """One training step of the moons MLP (2 -> 500 -> 1) with and without ``unit_norm`` on the
    hidden layer, in PyTorch and in Keras."""
    sys.path.insert(0, str(ROOT / "examples"))
    from moons_data import moons
    from moons_torch import MLP

    train_x, train_y, _, _ = moons()
    tx, ty = torch.from_numpy(train_x), torch.from_numpy(train_y)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def torch_step(constrained: bool):
        model = MLP(1)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
        if constrained:
            Constraints().add(model.hidden, kernel=wc.UnitNorm()).attach(optimizer)

        def step():
            optimizer.zero_grad()
            loss_fn(model(tx), ty).backward()
            optimizer.step()

        return step

    def keras_step(constrained: bool):
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [
                keras.Input((2,)),
                keras.layers.Dense(
                    500, "relu", kernel_constraint=unit_norm() if constrained else None
                ),
                keras.layers.Dense(1, "sigmoid"),
            ]
        )
        model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
        model.train_on_batch(train_x, train_y)
        return lambda: model.train_on_batch(train_x, train_y)

    rows = []
    for backend, make in (
        ("torch", torch_step),
        (f"keras ({keras.backend.backend()})", keras_step),
    ):
        medians = interleaved(
            {"unit_norm on the hidden layer": make(True), "no constraint": make(False)},
            repeats * 20,
        )
        ratio = medians["unit_norm on the hidden layer"] / medians["no constraint"]
        rows.append(Row("moons", f"one training step, {backend}", medians, "with / without", ratio))
    return rows

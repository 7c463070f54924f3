"""The moons case study in PyTorch: an overfit MLP, and the same with unit-norm hidden weights.

The model and training follow the Keras tutorial so the two backends are comparable: Glorot-uniform
weights and zero biases (Keras's defaults), binary cross-entropy, Adam with Keras's defaults
(learning rate 1e-3, epsilon 1e-7), one full-batch step per epoch (30 samples, batch size 32),
4000 epochs, and the test set evaluated after every epoch. The constraint is one line:
``Constraints().add(model.hidden, kernel=UnitNorm()).attach(optimizer)``.

Usage: ``python examples/moons_torch.py [--epochs N] [--seed S] [--out DIR]``
"""

from __future__ import annotations

import math

import torch
from torch import nn

import weight_constraints as wc
from weight_constraints.adapters.torch import Constraints

from moons_data import EPOCHS, EPSILON, HIDDEN, LEARNING_RATE, compare_cli, moons


class MLP(nn.Module):
    """2 -> 500 ReLU -> 1 (logit; the sigmoid lives in the loss and in the accuracy)."""

    def __init__(self, seed: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.hidden = nn.Linear(2, hidden)
        self.output = nn.Linear(hidden, 1)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in (self.hidden, self.output):
                glorot_uniform_(layer.weight, generator)
                layer.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(torch.relu(self.hidden(x))).squeeze(-1)


def glorot_uniform_(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Keras's default initializer: U(-a, a), a = sqrt(6 / (fan_in + fan_out))."""
    fan_out, fan_in = weight.shape
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return weight.uniform_(-limit, limit, generator=generator)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((logits > 0).float() == y).float().mean()


def train(
    seed: int, constraint: wc.Constraint | None, epochs: int = EPOCHS, hidden: int = HIDDEN
) -> dict[str, object]:
    """Train one model; return the model, per-epoch curves and the final accuracies.

    Like Keras's ``fit``, the train accuracy of an epoch is measured on the forward pass of its
    step (before the update) and the test accuracy after the update.
    """
    train_x, train_y, test_x, test_y = (torch.from_numpy(a) for a in moons())
    model = MLP(seed, hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, eps=EPSILON)
    if constraint is not None:
        Constraints().add(model.hidden, kernel=constraint).attach(optimizer)
    loss_fn = nn.BCEWithLogitsLoss()
    curves = torch.empty(2, epochs)
    for epoch in range(epochs):
        optimizer.zero_grad(set_to_none=True)
        logits = model(train_x)
        loss_fn(logits, train_y).backward()
        optimizer.step()  # the constraint is projected right after the update
        with torch.no_grad():
            curves[0, epoch] = accuracy(logits, train_y)
            curves[1, epoch] = accuracy(model(test_x), test_y)
    with torch.no_grad():
        final = (float(accuracy(model(train_x), train_y)), float(accuracy(model(test_x), test_y)))
    return {"model": model, "train": curves[0].numpy(), "test": curves[1].numpy(), "final": final}


def main(argv: list[str] | None = None) -> int:
    torch.set_num_threads(1)  # tiny matrices: threads cost more than they give
    description = __doc__.splitlines()[0]
    return compare_cli(argv, description, train, wc.UnitNorm(), "moons_torch.png", "PyTorch, moons")


if __name__ == "__main__":
    raise SystemExit(main())

"""The sum and box kinds held in float16 and bfloat16 by the hook, step after step (issue 17, 1).

A node counts as on its set when it lies within the kind's own tolerance (the shared
``tolerance``: ``Constraint.roundings`` spacings of the dtype, relative to the set's size, the
same definition as the projections' keep test), whatever the node's size. The first step goes
through the full check (the core, tensor by tensor), the later ones through the fast path's plan
(which sends these kinds through the core per tensor): both hold the set after every step.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import weight_constraints as wc
from weight_constraints.adapters._audit import tolerance
from weight_constraints.adapters.torch import audit, constrain

KINDS = {
    "simplex": wc.Simplex(),
    "max_l1_norm": wc.MaxL1Norm(1.0),
    "box_max_norm": wc.BoxMaxNorm(-0.01, 0.01, max_value=0.5),
}
HALF = [torch.float16, torch.bfloat16]


def test_the_issue_example_keeps_every_sum_at_one():
    torch.manual_seed(0)
    model = nn.Linear(1024, 4, bias=False).to(torch.bfloat16)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    constrain(model, optimizer, kernel=wc.Simplex()).apply()
    slack = tolerance(wc.Simplex(), "bfloat16")
    for _ in range(10):
        (-model(torch.ones(8, 1024, dtype=torch.bfloat16)).sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
        weight = model.weight.detach()
        sums = weight.double().sum(1)
        assert float((sums - 1).abs().max()) <= slack, sums
        assert float(weight.min()) >= 0
        audit(model, optimizer, strict=True, tol=0.0)


def train(inputs: int, kind: str, dtype: torch.dtype, outputs: int = 3, steps: int = 50) -> None:
    """``steps`` steps that push every node off its set (the loss grows with every weight),
    the set checked by a strict audit with no tolerance beyond the kind's own after each."""
    torch.manual_seed(0)
    model = nn.Linear(inputs, outputs, bias=False).to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5 / inputs)
    constrain(model, optimizer, kernel=KINDS[kind])
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.rand(4, inputs, generator=generator).to(dtype)
        (-model(x).float().sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
        (row,) = audit(model, optimizer, strict=True, tol=0.0)
        assert row.active and row.dtype == str(dtype).removeprefix("torch.")
    assert model.weight.dtype == dtype


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_fifty_steps_stay_on_the_set(kind, dtype):
    train(4096, kind, dtype)


@pytest.mark.parametrize(
    ("kind", "dtype", "inputs"),
    [("simplex", torch.bfloat16, 2**16), ("max_l1_norm", torch.float16, 2**20)],
    ids=str,
)
def test_long_nodes_stay_on_the_set(kind, dtype, inputs):
    """Nodes of up to 2**20 entries (float16 ones there mostly subnormal)."""
    train(inputs, kind, dtype, outputs=1)

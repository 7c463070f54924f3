"""audit() and norm_stats(): which weights the next step projects, and how far they are from
their sets; optimizer copies that lost the hook (torch.save / deepcopy) show up."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import weight_constraints as wc
from weight_constraints.adapters._audit import Audit
from weight_constraints.adapters.torch import Constraints, audit, constrain, node_norms, norm_stats


class Net(nn.Module):
    """An embedding tied to the output head, a frozen encoder, a LayerNorm, a decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.encoder = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.decoder = nn.Linear(8, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.relu(self.encoder(self.embed(tokens))))
        return self.head(self.decoder(h))


def trained() -> tuple[Net, torch.optim.Optimizer, Constraints]:
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.embed.weight.mul_(3)  # outside the ball until the first step
    model.encoder.requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    registry = constrain(model, optimizer, kernel=wc.MaxNorm(1.0))
    model(torch.randint(0, 10, (6,))).logsumexp(-1).sum().backward()
    optimizer.step()
    return model, optimizer, registry


def by_name(rows: Audit) -> dict:
    return {row.name: row for row in rows}


def test_one_row_per_parameter():
    model, optimizer, _ = trained()
    rows = audit(model, optimizer)
    assert [r.name for r in rows] == [n for n, _ in model.named_parameters()]
    row = by_name(rows)
    assert row["embed.weight"].active and row["decoder.weight"].active
    assert row["embed.weight"].note == "tied: also head.weight"
    assert row["embed.weight"].constraint == wc.MaxNorm(1.0, axis=(1,))
    assert row["embed.weight"].axes == (1,) and row["embed.weight"].shape == (10, 4)
    assert row["embed.weight"].violation <= 1e-6
    assert not row["encoder.weight"].active
    assert "frozen" in row["encoder.weight"].note
    for name in ("encoder.bias", "norm.weight", "decoder.bias"):
        assert row[name].constraint is None and row[name].violation is None
    assert row["decoder.bias"].axes == (0,) and row["norm.weight"].axes is None
    assert "embed.weight" in str(rows) and "frozen" in str(rows)


def test_the_violation_is_measured():
    model, optimizer, _ = trained()
    with torch.no_grad():
        model.encoder.weight.mul_(10)
    norms = node_norms(model.encoder.weight, 1).double()
    row = by_name(audit(model, optimizer))["encoder.weight"]
    np.testing.assert_allclose(row.violation, float((norms - 1).clamp(min=0).max()), rtol=1e-6)


def test_strict_raises_for_inactive_or_violated_constraints():
    model, optimizer, _ = trained()
    with pytest.raises(RuntimeError, match=r"1 constrained weight\(s\).*\n.*\n.*encoder\.weight"):
        audit(model, optimizer, strict=True)
    model.encoder.requires_grad_(True)
    assert audit(model, optimizer, strict=True).problems() == []
    with torch.no_grad():
        model.decoder.weight.mul_(100)
    with pytest.raises(RuntimeError, match=r"decoder\.weight"):
        audit(model, optimizer, strict=True)


def test_an_optimizer_copy_has_no_hook_and_the_audit_says_so():
    model, optimizer, _ = trained()
    model.encoder.requires_grad_(True)
    for copied in (copy.deepcopy(optimizer), copy.copy(optimizer)):
        assert not copied._optimizer_step_post_hooks  # PyTorch drops step hooks on copies
        rows = audit(model, copied)
        for name in ("embed.weight", "encoder.weight", "decoder.weight"):
            assert not by_name(rows)[name].active
            assert "not attached to this optimizer" in by_name(rows)[name].note
        with pytest.raises(RuntimeError, match="3 constrained"):
            audit(model, copied, strict=True)
    buffer = io.BytesIO()
    torch.save(optimizer, buffer)
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=False)
    assert not reloaded._optimizer_step_post_hooks
    assert not any(r.active for r in audit(model, reloaded))
    assert all(r.active for r in audit(model, optimizer) if r.constraint is not None)


def test_without_an_optimizer_any_attached_one_counts():
    model, *_alive = trained()  # the optimizer and registry stay alive
    assert by_name(audit(model))["decoder.weight"].active
    unattached = Net()
    constrain(unattached, None, bias=wc.MaxNorm(1.0))
    keep = constrain(unattached, None, kernel=wc.MaxNorm(1.0))
    row = by_name(audit(unattached))["decoder.weight"]
    assert not row.active and "attached to no optimizer" in row.note
    del keep


def test_replaced_and_parametrized_weights_show_up():
    model, optimizer, _ = trained()
    model.encoder.requires_grad_(True)
    model.decoder.weight = nn.Parameter(model.decoder.weight.detach().clone())
    row = by_name(audit(model, optimizer))["decoder.weight"]
    assert not row.active and "the optimizer holds the old tensor" in row.note
    parametrizations.weight_norm(model.encoder)
    rows = by_name(audit(model, optimizer))
    assert not rows["encoder.weight"].active
    assert "computed by a parametrization" in rows["encoder.weight"].note
    assert rows["encoder.parametrizations.weight.original0"].constraint is None


def test_a_parameter_outside_the_optimizer_is_inactive():
    model, _, _ = trained()
    model.encoder.requires_grad_(True)
    head_only = torch.optim.SGD(model.decoder.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match=r"2 of the 3 .*: embed\.weight, encoder\.weight\."):
        constrain(model, head_only, kernel=wc.MaxNorm(1.0))
    rows = by_name(audit(model, head_only))
    assert rows["decoder.weight"].active
    assert "not in the optimizer's param groups" in rows["encoder.weight"].note


def test_norm_stats():
    model, _, registry = trained()
    stats = norm_stats(registry)
    assert set(stats) == {
        f"{n}/{k}"
        for n in ("embed.weight", "encoder.weight", "decoder.weight")
        for k in ("norm_min", "norm_max", "norm_mean", "violation")
    }
    norms = node_norms(model.decoder.weight, 1).double()
    assert stats["decoder.weight/norm_max"] == pytest.approx(float(norms.max()))
    assert stats["decoder.weight/norm_mean"] == pytest.approx(float(norms.mean()))
    assert stats["decoder.weight/norm_min"] == pytest.approx(float(norms.min()))
    assert all(isinstance(v, float) for v in stats.values())
    of_model = norm_stats(model)  # also the weights without a constraint whose dims are known
    assert of_model["encoder.bias/norm_max"] == pytest.approx(float(model.encoder.bias.norm()))
    assert "encoder.bias/violation" not in of_model and "norm.weight/norm_max" not in of_model
    assert of_model["embed.weight/violation"] == stats["embed.weight/violation"]
    with torch.no_grad():
        model.decoder.weight.mul_(10)
    assert norm_stats(registry)["decoder.weight/violation"] == pytest.approx(
        float((node_norms(model.decoder.weight, 1).double() - 1).clamp(min=0).max())
    )
    with pytest.raises(TypeError, match="norm_stats"):
        norm_stats(model.decoder.weight)


def test_a_copied_or_reloaded_model_whose_constraints_were_lost_shows_up():
    model, optimizer, _ = trained()
    model.encoder.requires_grad_(True)
    copied_model, copied_optimizer = copy.deepcopy((model, optimizer))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=False)
    for clone, opt in ((copied_model, copied_optimizer), (reloaded, None)):
        rows = by_name(audit(clone, opt))
        for name in ("embed.weight", "encoder.weight", "decoder.weight"):
            assert not rows[name].active
            assert rows[name].constraint == "MaxNorm(max_value=1.0, axis=1)"
            assert "copied or reloaded" in rows[name].note
        assert rows["decoder.bias"].constraint is None
        with pytest.raises(RuntimeError, match="3 constrained"):
            audit(clone, opt, strict=True)
    constrain(copied_model, copied_optimizer, kernel=wc.MaxNorm(1.0))
    assert audit(copied_model, copied_optimizer, strict=True).problems() == []
    assert model.state_dict().keys() == copied_model.state_dict().keys()  # the note is no state


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_strict_allows_the_rounding_of_half_precision(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8)).to(dtype)
    with torch.no_grad():
        model[0].weight.mul_(20)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    constrain(model, optimizer, kernel=wc.UnitNorm())
    model(torch.randn(4, 16, dtype=dtype)).float().sum().backward()
    optimizer.step()
    row = audit(model, optimizer)[0]
    assert 0 < row.violation <= 2 * torch.finfo(dtype).eps  # rounded to the dtype
    audit(model, optimizer, strict=True)
    with torch.no_grad():
        model[0].weight.mul_(1.1)
    with pytest.raises(RuntimeError, match="not satisfied"):
        audit(model, optimizer, strict=True)


def test_a_grouped_transposed_convolution_is_measured_in_its_view():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose1d(4, 6, 3, groups=2))
    with torch.no_grad():
        model[0].weight.mul_(10)
    registry = constrain(model, None, kernel=wc.MaxNorm(0.5))
    (row, _) = audit(model)
    assert row.axes == (1, 3) and row.violation > 0.5
    registry.apply()
    (row, _) = audit(model)
    assert row.violation <= 1e-6 and not row.active  # attached to no optimizer

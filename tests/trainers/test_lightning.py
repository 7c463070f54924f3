"""PyTorch Lightning: the registry is attached in ``configure_optimizers`` (two lines); Trainer.fit
runs a few steps on the CPU and a callback checks after every step that the constraint holds."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

import weight_constraints as wc
from weight_constraints.adapters.torch import audit, constrain

STEPS = 6


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(8, 32), nn.ReLU(), nn.LayerNorm(32), nn.Unflatten(1, (1, 32)),
            nn.Conv1d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 30, 3),
        )  # fmt: skip
        with torch.no_grad():  # start far outside the ball, so the constraint has work to do
            for module in self.net:
                if isinstance(module, (nn.Linear, nn.Conv1d)):
                    module.weight.mul_(20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)
        constrain(self, optimizer, kernel=wc.MaxNorm(1.0), bias=wc.MaxNorm(0.5))
        return optimizer


class CheckEveryStep(L.Callback):
    def __init__(self) -> None:
        self.checked = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        (optimizer,) = trainer.optimizers
        rows = audit(module, optimizer)
        assert rows.problems(tol=1e-6) == [], str(rows)
        self.checked += 1


def test_lightning_fit_keeps_the_constraint_after_every_step(tmp_path):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    model = Classifier()
    check = CheckEveryStep()
    trainer = L.Trainer(
        max_steps=STEPS, accelerator="cpu", devices=1, logger=False, callbacks=[check],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    before = [m.weight.detach().clone() for m in model.net if isinstance(m, nn.Linear)]
    assert max(wc.node_norms(w.numpy(), axis=1).max() for w in before) > 1  # outside at first
    trainer.fit(model, loader)
    assert check.checked == STEPS
    rows = audit(model, trainer.optimizers[0])
    active = sorted(row.name for row in rows if row.active)
    assert active == [
        "net.0.bias", "net.0.weight", "net.4.bias", "net.4.weight", "net.6.bias", "net.6.weight",
    ]  # fmt: skip

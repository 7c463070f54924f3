"""Hugging Face models as they are, built from tiny configs (no download): one line constrains a
GPT-2 (transformers' Conv1D layers, the embedding tied to the LM head constrained once), and
transformers.Trainer trains it with the registry attached to the optimizer it is given."""

from __future__ import annotations

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

import weight_constraints as wc
from weight_constraints.adapters.torch import audit, constrain

LAYERS = 2


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=LAYERS, n_head=2, n_embd=16, vocab_size=64, n_positions=32,
        bos_token_id=0, eos_token_id=0, initializer_range=0.5,  # weights start outside the balls
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def conv1d_weights(model) -> dict[str, torch.Tensor]:
    return {
        name: module.weight
        for name, module in model.named_modules()
        if isinstance(module, transformers.pytorch_utils.Conv1D)
    }


def check_kernels(model, bound: float, *, holds: bool = True) -> None:
    """Every kernel's nodes inside the ball (``holds``), or some node outside it (not ``holds``)."""
    worst = 0.0
    for weight in conv1d_weights(model).values():  # Conv1D: (in, out), one norm per column
        worst = max(worst, wc.node_norms(weight.detach().numpy(), axis=0).max())
    for table in (model.transformer.wte.weight, model.transformer.wpe.weight):
        worst = max(worst, wc.node_norms(table.detach().numpy(), axis=1).max())
    assert (worst <= bound * (1 + 1e-6)) == holds, worst


def test_gpt2_one_line_constrains_every_kernel_once():
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    assert len(conv1d_weights(model)) == 4 * LAYERS
    check_kernels(model, 1.0, holds=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    registry = constrain(model, optimizer, kernel=wc.MaxNorm(1.0))
    names = sorted(entry.name for entry in registry)
    assert len(names) == 4 * LAYERS + 2  # c_attn, attn.c_proj, c_fc, mlp.c_proj; wte, wpe
    assert len({id(entry.parameter) for entry in registry}) == len(names)  # each weight once
    assert sum("wte" in n or "lm_head" in n for n in names) == 1  # tied pair: one entry
    ids = torch.randint(0, 64, (4, 12))
    for _ in range(3):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        check_kernels(model, 1.0)
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    rows = audit(model, optimizer)
    assert rows.problems(tol=1e-6) == [], str(rows)
    assert sum(row.active for row in rows) == len(names)


class CheckEveryStep(TrainerCallback):
    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.steps = 0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        check_kernels(model, 0.5)
        rows = audit(model, self.optimizer)
        assert rows.problems(tol=1e-6) == [], str(rows)
        self.steps += 1


def test_transformers_trainer_with_a_constrained_optimizer(tmp_path):
    model = tiny_gpt2()
    check_kernels(model, 0.5, holds=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    registry = constrain(model, optimizer, kernel=wc.MaxNorm(0.5))
    ids = torch.randint(0, 64, (16, 12), generator=torch.Generator().manual_seed(1))
    data = [{"input_ids": row, "labels": row} for row in ids]
    check = CheckEveryStep(optimizer)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, use_cpu=True,
        report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=data, optimizers=(optimizer, None), callbacks=[check]
    )
    trainer.train()
    assert check.steps == 4
    rows = audit(model, optimizer)
    assert sorted(row.name for row in rows if row.active) == sorted(e.name for e in registry)


class AttachOnTrainBegin(TrainerCallback):
    """For a Trainer that builds its own optimizer: attach when training begins. Trainer hands
    callbacks accelerate's wrapper, which constrain() and audit() take as it is (the hook goes
    on the torch optimizer it steps)."""

    def __init__(self) -> None:
        self.optimizer = None
        self.steps = 0

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        assert type(optimizer).__name__ == "AcceleratedOptimizer"
        self.optimizer = optimizer
        constrain(model, optimizer, kernel=wc.MaxNorm(0.5))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        check_kernels(model, 0.5)
        assert audit(model, self.optimizer).problems(tol=1e-6) == []
        self.steps += 1


def test_transformers_trainer_with_a_callback_that_attaches(tmp_path):
    model = tiny_gpt2()
    check_kernels(model, 0.5, holds=False)
    ids = torch.randint(0, 64, (8, 12), generator=torch.Generator().manual_seed(2))
    data = [{"input_ids": row, "labels": row} for row in ids]
    attach = AttachOnTrainBegin()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, use_cpu=True,
        report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=data, callbacks=[attach]).train()
    assert attach.steps == 2

"""The optimizer updates the fused step computes natively: which optimizers and options it takes
(``torch.optim.SGD``, ``Adam`` and ``AdamW`` exactly), their state as torch keeps it, and the
per-tensor scalars of each update, rounded as the mode the optimizer runs in rounds them
(foreach and single-tensor: the Python expressions of ``torch.optim``; ``fused=True``: ATen's
fused CPU kernels).

One call of :func:`update` steps the tensors of one param group, each projected row by row in
the same pass; the tensors' own checks are the caller's (:mod:`._fused`).

Example:
    >>> import torch
    >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9)
    >>> refusal(optimizer, optimizer.param_groups[0])
    ''
    >>> optimizer = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))], amsgrad=True)
    >>> refusal(optimizer, optimizer.param_groups[0])
    'amsgrad=True is not implemented by fuse=True'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ._native import (
    COUPLED,
    DECOUPLED,
    FIRST,
    MAXIMIZE,
    MOMENTUM,
    NESTEROV,
    WEIGHT_DECAY,
    AdamScalars,
    Native,
    SgdScalars,
)

__all__ = [
    "KINDS",
    "arithmetic",
    "refusal",
    "signature",
    "state_problem",
    "unsupported",
    "update",
]

KINDS: dict[type, str] = {
    torch.optim.SGD: "sgd",
    torch.optim.Adam: "adam",
    torch.optim.AdamW: "adam",
}
"""The optimizers the fused step implements, by exact type (a subclass may override ``step``)."""

_REFUSED_FLAGS = ("differentiable", "capturable", "amsgrad")
_NUMBERS = ("lr", "weight_decay", "momentum", "dampening", "eps")


def refusal(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> str:
    """What fuse=True does not implement among ``group``'s options ("" when nothing)."""
    for flag in _REFUSED_FLAGS:
        if group.get(flag):
            return f"{flag}=True is not implemented by fuse=True"
    for name in _NUMBERS:
        if isinstance(group.get(name), torch.Tensor):
            return f"a tensor {name} is not implemented by fuse=True (give a Python number)"
    if any(isinstance(beta, torch.Tensor) for beta in group.get("betas", ())):
        return "tensor betas are not implemented by fuse=True (give Python numbers)"
    return ""


def unsupported(optimizer: torch.optim.Optimizer) -> str:
    """Why fuse=True cannot step ``optimizer`` at all ("" when it can): not exactly
    ``torch.optim.SGD``, ``Adam`` or ``AdamW`` (a subclass may override ``step``).

    Example:
        >>> import torch
        >>> unsupported(torch.optim.RMSprop([torch.nn.Parameter(torch.ones(2))]))
        'fuse=True implements torch.optim.SGD, Adam and AdamW (exactly those types), not RMSprop'
    """
    if type(optimizer) in KINDS:
        return ""
    return (
        "fuse=True implements torch.optim.SGD, Adam and AdamW (exactly those types), not "
        f"{type(optimizer).__qualname__}"
    )


def arithmetic(group: dict[str, Any]) -> str:
    """The mode whose arithmetic a group's step runs: "fused" (``fused=True``) or "foreach"
    (foreach and single-tensor compute the same on the CPU)."""
    return "fused" if group.get("fused") else "foreach"


def signature(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> tuple:
    """What decides which operations a group's update runs (not their values): the update
    probe is made once per signature."""
    kind = KINDS[type(optimizer)]
    common = (type(optimizer).__name__, arithmetic(group), bool(group.get("maximize")))
    if kind == "adam":
        beta1 = group["betas"][0]
        return (
            *common,
            group["weight_decay"] != 0,
            _decoupled(optimizer, group),
            abs(float(torch.tensor(1 - beta1, dtype=torch.float32))) < 0.5,
        )
    return (
        *common,
        group["weight_decay"] != 0,
        group["momentum"] != 0,
        bool(group.get("nesterov")),
        group.get("dampening", 0) != 0,
    )


def _decoupled(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> bool:
    return bool(group.get("decoupled_weight_decay", type(optimizer) is torch.optim.AdamW))


def _scalar_dtype(fused: bool) -> torch.dtype:
    """torch.optim's ``_get_scalar_dtype``: the dtype of Adam's ``step``."""
    if fused or torch.get_default_dtype() != torch.float64:
        return torch.float32
    return torch.float64


def _adam_state(optimizer: torch.optim.Optimizer, group: dict[str, Any], p: torch.Tensor) -> dict:
    """``optimizer.state[p]``, made as Adam's ``_init_group`` makes it on the first step."""
    state = optimizer.state[p]
    if len(state) == 0:
        if group.get("fused"):
            state["step"] = torch.zeros((), dtype=_scalar_dtype(True), device=p.device)
        else:
            state["step"] = torch.tensor(0.0, dtype=_scalar_dtype(False))
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def _like(tensor: Any, p: torch.Tensor) -> bool:
    return (
        isinstance(tensor, torch.Tensor)
        and tensor.dtype == p.dtype
        and tensor.device == p.device
        and tensor.shape == p.shape
        and tensor.layout is torch.strided
        and tensor.is_contiguous()
    )


def state_problem(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> str:
    """Why the state the optimizer holds for ``p`` cannot be updated natively ("" when it can,
    or when there is none yet)."""
    state = optimizer.state.get(p)
    if not state:
        return ""
    if KINDS[type(optimizer)] == "sgd":
        buffer = state.get("momentum_buffer")
        if buffer is None or _like(buffer, p):
            return ""
        return "its momentum buffer is not a contiguous tensor like the weight"
    step = state.get("step")
    if not (isinstance(step, torch.Tensor) and step.numel() == 1 and step.device.type == "cpu"):
        return "its state's step is not a one-entry CPU tensor"
    if not (_like(state.get("exp_avg"), p) and _like(state.get("exp_avg_sq"), p)):
        return "its exp_avg or exp_avg_sq is not a contiguous tensor like the weight"
    return ""


def _adam_scalars(
    optimizer: torch.optim.Optimizer, group: dict[str, Any], step: float
) -> AdamScalars:
    """The scalars of one tensor's Adam update at ``step`` (already incremented), as the
    group's mode computes them in double before rounding them to float32."""
    lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
    beta1, beta2 = (float(beta) for beta in group["betas"])
    decoupled = _decoupled(optimizer, group)
    bc1 = 1 - beta1**step
    bc2 = 1 - beta2**step
    if group.get("fused"):  # ATen: std::sqrt(bias_correction2), -(lr / bias_correction1)
        bc2_sqrt, step_size = math.sqrt(bc2), -(lr / bc1)
    else:  # torch.optim: bias_correction2**0.5, (lr / bias_correction1) * -1
        bc2_sqrt, step_size = bc2**0.5, (lr / bc1) * -1
    flags = MAXIMIZE if group.get("maximize") else 0
    if wd != 0:
        flags |= DECOUPLED if decoupled else COUPLED
    decay = 1 - lr * wd if wd != 0 and decoupled else 1.0
    return AdamScalars(
        decay, wd, 1 - beta1, beta2, 1 - beta2, bc2_sqrt, eps, step_size, flags, 0, 0
    )


def _sgd_scalars(group: dict[str, Any], first: bool) -> SgdScalars:
    wd, momentum = float(group["weight_decay"]), float(group["momentum"])
    flags = MAXIMIZE if group.get("maximize") else 0
    flags |= WEIGHT_DECAY if wd != 0 else 0
    if momentum != 0:
        flags |= MOMENTUM | (NESTEROV if group.get("nesterov") else 0) | (FIRST if first else 0)
    damp1 = 1 - float(group.get("dampening", 0))
    return SgdScalars(wd, momentum, damp1, -float(group["lr"]), flags, 0, 0)


def _set_tails(array: Any, params: Sequence[torch.Tensor], fused: bool) -> None:
    """Where each tensor's entries take the scalar forms of torch's fused=True kernels (its last
    numel % 8 entries there; none in the other modes, whose scalar and vector forms agree)."""
    for i, p in enumerate(params):
        n = p.numel()
        array[i].tail_from = n - n % 8 if fused else n


def _increment(native: Native, steps: list[torch.Tensor]) -> list[float]:
    """Add 1 to Adam's ``step`` tensors, as torch's step does, and return their values: in one
    native call when they are all float32 or all float64 (some 10 µs for 100 of them, against
    some 700 µs for ``torch._foreach_add_`` on one-entry CPU tensors)."""
    dtypes = {s.dtype for s in steps}
    if len(dtypes) == 1 and dtypes <= {torch.float32, torch.float64}:
        return native.steps(steps)
    torch._foreach_add_(steps, 1.0)
    return [s.item() for s in steps]


def update(
    native: Native,
    optimizer: torch.optim.Optimizer,
    group: dict[str, Any],
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    shapes: Sequence[tuple[int, int]],
    projections: Sequence[Any],
    sqrt: int,
) -> None:
    """One step of ``optimizer`` (its type in :data:`KINDS`) over ``params`` of ``group`` with
    ``grads``, each tensor projected row by row with its projection (``shapes``: its rows and
    columns), the state kept in ``optimizer.state`` with torch's keys. ``sqrt``: 1 for
    torch.sqrt's square root (foreach/single-tensor Adam on MKL builds), 0 for the correctly
    rounded one."""
    n = len(params)
    proj = (type(projections[0]) * n)(*projections) if n else None
    if KINDS[type(optimizer)] == "sgd":
        momentum = group["momentum"] != 0
        buffers: list[torch.Tensor] = []
        scalars = []
        for p in params:
            state = optimizer.state[p] if momentum else None
            buffer = None if state is None else state.get("momentum_buffer")
            if state is not None and buffer is None:
                buffer = state["momentum_buffer"] = torch.empty_like(p)
                scalars.append(_sgd_scalars(group, True))
            else:
                scalars.append(_sgd_scalars(group, False))
            buffers.append(p if buffer is None else buffer)
        array = (SgdScalars * n)(*scalars)
        _set_tails(array, params, bool(group.get("fused")))
        native.sgd((params, grads, buffers), shapes, array, proj)
        return
    states = [_adam_state(optimizer, group, p) for p in params]
    steps = [state["step"] for state in states]
    cache: dict[float, AdamScalars] = {}
    values = [
        cache[s] if s in cache else cache.setdefault(s, _adam_scalars(optimizer, group, s))
        for s in _increment(native, steps)
    ]
    adam = (AdamScalars * n)(*values)
    _set_tails(adam, params, bool(group.get("fused")))
    exp_avgs = [state["exp_avg"] for state in states]
    exp_avg_sqs = [state["exp_avg_sq"] for state in states]
    native.adam((params, grads, exp_avgs, exp_avg_sqs), shapes, adam, proj, sqrt)

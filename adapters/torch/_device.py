"""The fused step off the CPU (``fuse=True`` on CUDA): each tensor's optimizer update and
projection in one function of torch operations that ``torch.compile`` turns into one kernel
(Triton on CUDA), each node projected while its updated values are still in registers.

The native kernels of :mod:`._native` fuse on the CPU; this path takes the tensors on the
devices of :data:`DEVICES`. It is plain torch code, so the same function runs, and is tested,
on the CPU (eagerly, and compiled). Its update is the one of ``torch.optim.SGD``, ``Adam`` and
``AdamW`` (``capturable`` and ``fused`` groups included) with the floats as operands (an
``alpha=`` or ``value=`` would make dynamo recompile at every new learning rate or bias
correction), and its projection is the core's: its results agree with "torch's step, then the
hook" to within rounding, not bit for bit as the native kernels; nodes inside the set keep the
values the update wrote. Nothing reads a device value on the host: Adam's step counts are read
only where torch keeps them on the CPU; capturable and fused groups compute their bias
corrections on the device.

Each call signature (tensor metadata, constraint, view, flags) gets its own compiled copy of the
function, probed once against the eager function on copies of the call's tensors. Inductor's C++
backend (torch 2.13, still 2.14) fails to build the updates that keep state (momentum SGD, Adam:
pytorch/pytorch#196570), and its code for one variant of them wrote wrong values: the probe is
there for such builds. It runs before the step (:func:`ready`, in the step's pre-hook): a tensor
whose compiled update fails it is left to the optimizer's step and the hook. A later recompile
that fails makes the tensor's update run eagerly: slower than the unfused step, the same
numbers.

Example:
    >>> import torch
    >>> from weight_constraints import MaxNorm
    >>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))
    >>> w.grad = torch.zeros_like(w)
    >>> optimizer = torch.optim.SGD([w], lr=0.1)
    >>> project = MaxNorm(1.0, axis=1)
    >>> step(optimizer, optimizer.param_groups[0], [(w, w.grad, project, None)], compile=False)
    {}
    >>> w.detach()
    tensor([[0.6000, 0.8000],
            [0.3000, 0.4000]])
"""

from __future__ import annotations

import functools
import itertools
import types
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._updates import KINDS

if TYPE_CHECKING:
    from ._entries import Registration

__all__ = ["DEVICES", "layout_problem", "ready", "refusal", "state_problem", "step"]

DEVICES: frozenset[str] = frozenset({"cuda"})
"""The device types whose tensors take this path (the CPU's take the native kernels)."""

BACKEND = "inductor"
"""The ``torch.compile`` backend (the tests use "aot_eager" for what Inductor's C++ backend
cannot build: the same graphs, guards and recompiles, without Inductor's code)."""

COMPILE = True
"""Whether :func:`step` runs its functions through ``torch.compile`` (False: eagerly, one pass
per operation)."""


def layout_problem(registration: Registration) -> str:
    """Why this path cannot update ``registration``'s tensor ("" when it can)."""
    p = registration.parameter
    if registration.dtensor:
        return "a distributed tensor"
    if p.dtype != torch.float32:
        return f"{str(p.dtype).removeprefix('torch.')}, not float32"
    if p.layout is not torch.strided or p.numel() == 0:
        return "not a strided tensor with entries"
    return ""


def refusal(group: dict[str, Any]) -> str:
    """What this path does not implement among ``group``'s options ("" when nothing)."""
    for flag in ("differentiable", "amsgrad"):
        if group.get(flag):
            return f"{flag}=True is not implemented by fuse=True"
    for name in ("lr", "weight_decay", "momentum", "dampening", "eps", "betas"):
        value = group.get(name)
        values = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, torch.Tensor) for v in values):
            return f"a tensor {name} is not implemented by fuse=True (give Python numbers)"
    return ""


def _like(tensor: Any, p: torch.Tensor) -> bool:
    return (
        isinstance(tensor, torch.Tensor)
        and tensor.layout is torch.strided
        and (tensor.dtype, tensor.device, tensor.shape) == (p.dtype, p.device, p.shape)
    )


def state_problem(optimizer: torch.optim.Optimizer, group: dict[str, Any], p: torch.Tensor) -> str:
    """Why the state the optimizer holds for ``p`` cannot be updated here ("" when it can, or
    when there is none yet)."""
    state = optimizer.state.get(p)
    if not state:
        return ""
    if KINDS[type(optimizer)] == "sgd":
        buffer = state.get("momentum_buffer")
        if buffer is None or _like(buffer, p):
            return ""
        return "its momentum buffer is not a tensor like the weight"
    step_tensor = state.get("step")
    on_device = bool(group.get("capturable") or group.get("fused"))
    where = p.device if on_device else torch.device("cpu")
    if not (isinstance(step_tensor, torch.Tensor) and step_tensor.numel() == 1) or (
        step_tensor.device != where
    ):
        return f"its state's step is not a one-entry tensor on {where}"
    if not (_like(state.get("exp_avg"), p) and _like(state.get("exp_avg_sq"), p)):
        return "its exp_avg or exp_avg_sq is not a tensor like the weight"
    return ""


def _project_(p: torch.Tensor, project: Any, view: Any) -> None:
    """Project ``p`` in place (viewed as ``view`` when not None) by its bound constraint."""
    target = p if view is None else p.view(view)
    project(target, out=target)


def _sgd_one(
    p: torch.Tensor,
    grad: torch.Tensor,
    buffer: torch.Tensor | None,
    first: bool,
    project: Any,
    view: Any,
    lr: float,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
) -> None:
    """torch's SGD on one tensor, then its projection (``first``: the momentum buffer is new,
    and takes the gradient). The floats enter as operands only (never as an ``alpha=``, which
    dynamo would specialise: a recompile at every change of the learning rate)."""
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + p * weight_decay
    if buffer is not None:
        if first:
            buffer.copy_(g)
        else:
            buffer.mul_(momentum).add_(g * (1 - dampening))
        g = g + buffer * momentum if nesterov else buffer
    p.sub_(g * lr)
    _project_(p, project, view)


def _adam_one(
    p: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    corrections: Any,
    project: Any,
    view: Any,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    maximize: bool,
    wide: bool,
) -> None:
    """torch's Adam/AdamW on one tensor, then its projection. ``corrections``: the step size
    and the square root of the second bias correction, two Python numbers computed on the host
    (where torch keeps the step count on the CPU), or the incremented step count, a tensor on
    the device (capturable and fused groups), from which they are computed there: in float64
    with ``wide`` (as torch's fused kernels), in the count's dtype otherwise (as capturable)."""
    if isinstance(corrections, torch.Tensor):
        count = corrections.double() if wide else corrections
        step_size = lr / (1 - beta1**count)
        bc2_sqrt = (1 - beta2**count).sqrt()
    else:
        step_size, bc2_sqrt = corrections
    g = -grad if maximize else grad
    if weight_decay != 0:
        if decoupled:
            p.mul_(1 - lr * weight_decay)
        else:
            g = g + p * weight_decay
    exp_avg.mul_(beta1).add_(g * (1 - beta1))
    exp_avg_sq.mul_(beta2).add_(g * g * (1 - beta2))
    p.sub_(exp_avg / (exp_avg_sq.sqrt() / bc2_sqrt + eps) * step_size)
    _project_(p, project, view)


_ONE: dict[str, Callable[..., None]] = {"sgd": _sgd_one, "adam": _adam_one}


@functools.cache
def _compiled(kind: str, signature: tuple) -> Any:
    """The one-tensor function of ``kind`` through ``torch.compile`` for one call signature
    (see :func:`_signature`), made on first use. Each signature gets a copy of the function's
    code: dynamo keeps its compiled code, guards and recompile limit per code object, and one
    object for all the shapes and constraints of a model would make their ints dynamic (which
    the core's checks of an axis cannot take) and reach the limit. Within a signature only the
    floats change (not specialised after their first change: a scheduler recompiles once)."""
    function = _ONE[kind]
    # a name no other copy in this process has: dynamo keeps what it learnt of a frame's
    # shapes and ints (automatic dynamic) by file, line and name
    code = function.__code__.replace(co_name=f"{function.__name__}_{next(_COPIES)}")
    copy: Callable[..., None] = types.FunctionType(code, function.__globals__, code.co_name)
    return torch.compile(copy, fullgraph=True, backend=BACKEND)


_COPIES = itertools.count()

_PROBED: dict[tuple, str] = {}
"""What the probe found for each signature of a call (see :func:`_probe`): "" when the compiled
function agrees with the eager one, otherwise why it is not used."""


def _signature(kind: str, args: tuple) -> tuple:
    """What decides the code the compiler makes for one call: the tensors' metadata, the
    constraint and view, and the flags (not the float values)."""

    def described(a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            return (tuple(a.shape), a.stride(), a.dtype, a.device)
        if isinstance(a, tuple):
            return tuple(described(b) for b in a)
        if isinstance(a, float):
            return float
        try:
            hash(a)
        except TypeError:  # a constraint that is not hashable: known by its identity
            return (type(a), id(a))
        return a

    return (kind, *(described(a) for a in args))


def _probe(kind: str, args: tuple) -> str:
    """Run the compiled function on copies of ``args``' tensors and compare it with the eager
    one: "" when they agree to within float32 rounding, else why the compiled one is not used.
    The copies are of the tensors of this call, so the code compared is the code that runs."""
    copies = [tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args) for _ in (0, 1)]
    try:
        _compiled(kind, _signature(kind, args))(*copies[0])
    except Exception as error:  # any failure of the compiler: the eager function takes it
        return _failed(error)
    _ONE[kind](*copies[1])
    for a, b in zip(copies[0], copies[1], strict=True):
        if isinstance(a, torch.Tensor) and not torch.allclose(
            a, b, rtol=1e-5, atol=1e-6, equal_nan=True
        ):
            worst = float((a - b).abs().nan_to_num().max())
            return f"the compiled update disagrees with the eager one by {worst:.3g}"
    return ""


def _failed(error: Exception) -> str:
    return f"torch.compile could not build the fused update ({type(error).__name__})"


def _call(kind: str, args: tuple, compile: bool) -> str:
    """One tensor's update and projection: compiled where the probe of its signature passed,
    eagerly otherwise; "" when compiled (or not asked to), else why it ran eagerly."""
    if not compile:
        _ONE[kind](*args)
        return ""
    key = _signature(kind, args)
    if key not in _PROBED:
        _PROBED[key] = _probe(kind, args)
    if not _PROBED[key]:
        try:  # a recompile that fails (or reaches dynamo's limit) raises before writing
            _compiled(kind, key)(*args)
            return ""
        except Exception as error:
            _PROBED[key] = _failed(error)
    _ONE[kind](*args)
    return _PROBED[key]


def _adam_state(group: dict[str, Any], p: torch.Tensor) -> dict[str, Any]:
    """The state Adam's ``_init_group`` makes on the first step, where it makes it."""
    on_device = bool(group.get("capturable") or group.get("fused"))
    return {
        "step": torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu"),
        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
    }


def _sgd_calls(
    optimizer: torch.optim.Optimizer, group: dict[str, Any], items: list, preview: bool
) -> Iterator:
    """The arguments of :func:`_sgd_one` for each ``(p, grad, project, view)`` of ``items``,
    a new momentum buffer kept in the state as it is made (not with ``preview``)."""
    state, momentum = optimizer.state, group["momentum"] != 0
    numbers = [float(group[name]) for name in ("lr", "weight_decay", "momentum", "dampening")]
    flags = bool(group.get("nesterov")), bool(group.get("maximize"))
    for p, grad, project, view in items:
        buffer = (state.get(p) or {}).get("momentum_buffer") if momentum else None
        first = momentum and buffer is None
        if first:
            buffer = torch.empty_like(p)
            if not preview:
                state[p]["momentum_buffer"] = buffer
        yield (p.detach(), grad, _plain(buffer), first, project, view, *numbers, *flags)


def _adam_calls(
    optimizer: torch.optim.Optimizer, group: dict[str, Any], items: list, preview: bool
) -> Iterator:
    """The arguments of :func:`_adam_one` for each ``(p, grad, project, view)`` of ``items``,
    its step count incremented as it is made (read on the host only where torch keeps it on the
    CPU: the bias corrections computed in double there, as torch's); with ``preview``, the
    state is left as it is (a new count, new moments)."""
    state = optimizer.state
    beta1, beta2 = (float(b) for b in group["betas"])
    decoupled = bool(group.get("decoupled_weight_decay", type(optimizer) is torch.optim.AdamW))
    lr, eps, weight_decay = (float(group[k]) for k in ("lr", "eps", "weight_decay"))
    flags = decoupled, bool(group.get("maximize")), bool(group.get("fused"))
    on_device = bool(group.get("capturable") or group.get("fused"))
    for p, grad, project, view in items:
        held = state.get(p) or _adam_state(group, p)
        if not preview and not state.get(p):
            state[p].update(held)
        count = held["step"] + 1 if preview else held["step"].add_(1)
        corrections: Any = count
        if not on_device:
            step = float(count)
            corrections = (lr / (1 - beta1**step), (1 - beta2**step) ** 0.5)
        moments = _plain(held["exp_avg"]), _plain(held["exp_avg_sq"])
        scalars = (lr, beta1, beta2, eps, weight_decay, *flags)
        yield (p.detach(), grad, *moments, corrections, project, view, *scalars)


_CALLS = {"sgd": _sgd_calls, "adam": _adam_calls}


def ready(
    optimizer: torch.optim.Optimizer,
    group: dict[str, Any],
    items: Sequence[tuple[torch.Tensor, torch.Tensor, Any, Any]],
) -> dict[int, str]:
    """Probe, before the step, the signatures of this step's calls not probed yet (see
    :func:`_probe`), on copies: nothing is written.

    Args:
        optimizer: The optimizer (its type in :data:`~._updates.KINDS`).
        group: The param group of ``items``.
        items: ``(parameter, gradient, bound core constraint, view)`` of each tensor.

    Returns:
        Why each tensor (by ``id``) whose compiled update failed its probe is better left to
        the optimizer's step and the hook ({} when compiling is off).
    """
    if not COMPILE:
        return {}
    kind, left = KINDS[type(optimizer)], {}
    with torch.no_grad():
        calls = _CALLS[kind](optimizer, group, list(items), True)
        for (p, *_), args in zip(items, calls, strict=True):
            key = _signature(kind, args)
            if key not in _PROBED:
                _PROBED[key] = _probe(kind, args)
            if _PROBED[key]:
                left[id(p)] = _PROBED[key]
    return left


def _plain(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """``tensor`` as a plain tensor sharing its memory (the probe's copies are plain tensors:
    a ``Parameter`` would make dynamo compile other code than the code probed)."""
    return None if tensor is None else tensor.detach()


def step(
    optimizer: torch.optim.Optimizer,
    group: dict[str, Any],
    items: Sequence[tuple[torch.Tensor, torch.Tensor, Any, Any]],
    *,
    compile: bool = True,
) -> dict[int, str]:
    """One step of ``optimizer`` (its type in :data:`~._updates.KINDS`) over the
    ``(parameter, gradient, bound core constraint, view)`` of ``items`` in ``group``, each
    tensor projected by its constraint (on the shape ``view`` when not None), the state kept
    in ``optimizer.state`` with torch's keys; through ``torch.compile`` with ``compile``.

    Returns:
        Why each tensor (by ``id``) was updated eagerly, not compiled: its compiled update
        failed its probe (see :func:`_probe`) or a recompile; every tensor is updated.
    """
    kind = KINDS[type(optimizer)]
    with torch.no_grad():
        return _step(kind, optimizer, group, list(items), compile)


def _step(
    kind: str, optimizer: torch.optim.Optimizer, group: dict[str, Any], items: list, compile: bool
) -> dict[int, str]:
    calls = _CALLS[kind](optimizer, group, items, False)
    eager: dict[int, str] = {}
    for (p, *_), args in zip(items, calls, strict=True):
        reason = _call(kind, args, compile)
        if reason:
            eager[id(p)] = reason
    return eager

"""The fused optimizer step (``attach(optimizer, fuse=True)``): the registered tensors it can
take are updated and projected in one pass each (through the native kernels on the CPU, through
:mod:`._device` on CUDA); everything else is left to the optimizer's step and the registry's
post-hook.

The step pre-hook chooses the tensors it fuses and hides their ``.grad``, so that torch's step
skips them; after the step, the post-hook projects the other tensors, then runs, for each fused
tensor, the optimizer's update (torch's arithmetic for the group's mode, operation by operation)
and projects each node while its new values are still in cache, then gives the gradients back.
Nothing is written before torch's step: when it raises, the fused tensors are as they were. On
the CPU the results are those of "torch's step, then the hook", bit for bit (the probes of
:mod:`._probes` check it on this machine before anything is fused), so a tensor that is not
fused changes the speed only.

On the CPU a tensor is fused when the native library is available, the optimizer is exactly
``torch.optim.SGD``, ``Adam`` or ``AdamW`` with options the kernels implement, the tensor is a
contiguous float32 tensor whose nodes are its trailing dims with an exact ``MaxNorm``,
``UnitNorm`` or ``MinMaxNorm``, and at the step its gradient and optimizer state are contiguous
tensors like it (on CUDA: see :mod:`._device`). When the registry's guard does not hold (the
first step, a replaced parameter, a new dtype...), the pre-hook runs the registry's full check
first, so that what raises raises before anything is written. A step given
``grad_scale``/``found_inf`` (``GradScaler`` with a ``fused=True`` optimizer) is not fused.
Under ``torch.compile(optimizer.step)`` the fused updates run eagerly (graph breaks) and the
compiled step updates the rest.

Between the pre-hook and the post-hook the fused tensors' ``.grad`` is ``None``: a step
post-hook registered before the registry's sees that.

Example:
    >>> import torch
    >>> from weight_constraints import MaxNorm
    >>> from weight_constraints.adapters.torch import constrain
    >>> model = torch.nn.Linear(16, 4)
    >>> optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    >>> registry = constrain(model, optimizer, kernel=MaxNorm(0.5), fuse=True)
    >>> for _ in range(3):
    ...     model(torch.randn(8, 16)).square().sum().backward()
    ...     optimizer.step()
    ...     optimizer.zero_grad()
    >>> bool((model.weight.detach().norm(dim=1) <= 0.5 + 1e-6).all())
    True
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.hooks import RemovableHandle

from . import _device, _native
from ._hooks import _tensor_guards
from ._native import Native, Projection, projection, rows_and_cols
from ._updates import refusal, signature, state_problem, unsupported, update

if TYPE_CHECKING:
    from ._entries import Registration
    from ._hooks import StepHook

__all__ = ["FusedStep", "fuse_note", "start"]

FUSED_NOTE = "updated and projected in one pass (fuse=True)"
EAGER_NOTE = "fuse=True: updated and projected by torch operations, not compiled"

_PROBED: dict[tuple, str] = {}
"""What the update probe found for each signature of a group (see :func:`._updates.signature`),
once per process: "" when the native update equals torch's."""


_Row = tuple[torch.Tensor, tuple[int, int], Projection]
"""A tensor the fused step can update: ``(parameter, (rows, columns), projection)``."""


def _layout_problem(registration: Registration, native: Native) -> str:
    """Why the kernels cannot update ``registration``'s tensor ("" when they can)."""
    p = registration.parameter
    count = len(registration.dims)
    if registration.dtensor:
        return "a distributed tensor"
    if registration.view is not None:
        return "projected through a view of another shape"
    if p.device.type != "cpu":
        return f"on {p.device.type}, where the kernels do not run (they run on the CPU)"
    if p.dtype != torch.float32:
        return f"{str(p.dtype).removeprefix('torch.')}, not float32"
    if not p.is_contiguous() or p.numel() == 0:
        return "not a contiguous tensor with entries"
    if not count or registration.dims != tuple(range(p.ndim - count, p.ndim)):
        return "its nodes are not its trailing dims"
    if projection(registration.projected) is None:
        return f"{type(registration.projected).__name__} is not MaxNorm, UnitNorm or MinMaxNorm"
    return ""


def _group_key(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> tuple:
    """The group's options that decide whether and how it is fused (the learning rate aside,
    which a scheduler changes at every step)."""
    return (
        type(optimizer),
        isinstance(group.get("lr"), torch.Tensor),
        *((k, v) for k, v in group.items() if k not in ("params", "lr", "initial_lr")),
    )


class _Plan:
    """What the fused step covers for one registry version and one set of optimizer tensors:
    per param group (by index), ``(parameter, rows and columns, projection)`` of each tensor
    it can fuse, and why each other registered tensor of the optimizer is not fused."""

    def __init__(
        self,
        registrations: list[Registration],
        version: int,
        members: frozenset[int],
        optimizer: torch.optim.Optimizer,
        native: Native | None,
    ) -> None:
        self.version, self.members = version, members
        where = {
            id(p): i for i, group in enumerate(optimizer.param_groups) for p in group["params"]
        }
        self.groups: dict[int, list[_Row]] = {}
        self.device: dict[int, list[Registration]] = {}  # per group: for _device.step
        self.refused: dict[int, str] = {}
        for registration in registrations:
            p = registration.parameter
            if id(p) not in members:
                continue
            if p.device.type in _device.DEVICES:
                problem = _device.layout_problem(registration)
                if problem:
                    self.refused[id(p)] = problem
                else:
                    self.device.setdefault(where[id(p)], []).append(registration)
                continue
            if native is None:
                self.refused[id(p)] = _unavailable()
                continue
            problem = _layout_problem(registration, native)
            if problem:
                self.refused[id(p)] = problem
                continue
            shape = rows_and_cols(p, len(registration.dims))
            rows = self.groups.setdefault(where[id(p)], [])
            rows.append((p, shape, projection(registration.projected)))  # type: ignore[arg-type]


def _grad_fits(grad: torch.Tensor, p: torch.Tensor) -> bool:
    return (
        grad.layout is torch.strided
        and grad.dtype is p.dtype
        and grad.shape == p.shape
        and grad.device == p.device
        and grad.is_contiguous()
    )


class FusedStep:
    """The fused step of one registry's hook on one optimizer: the step pre-hook
    (``__call__``), and :meth:`restore`, which the post-hook calls last."""

    def __init__(self, hook: StepHook, native: Native | None) -> None:
        self.hook, self.native = hook, native
        self.hidden: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.pending: list[tuple[int, bool, tuple]] = []  # (group, on a device, work): see run
        self.eager: dict[int, str] = {}  # tensors _device.step updated eagerly, and why
        self.left: dict[int, str] = {}  # tensors left to the step and the hook, and why
        self.plan: _Plan | None = None
        self.handle: RemovableHandle | None = None
        self.checked: dict[int, tuple[list[int], Any]] = {}  # per group: see _gather

    @torch.compiler.disable
    def __call__(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        self.restore()  # a step that raised may have left gradients hidden
        self.pending = []
        if self.hook.attached() is None:  # the post-hook was removed: so is the pre-hook
            if self.handle is not None:
                self.handle.remove()
            return None
        if any(
            getattr(optimizer, name, None) is not None or kwargs.get(name) is not None
            for name in ("grad_scale", "found_inf")
        ):  # GradScaler with a fused=True optimizer: the step unscales and may skip
            return None
        result = None
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        if closure is not None:  # the gradients the step uses are the closure's
            with torch.enable_grad():
                loss = closure()
            rest = {k: v for k, v in kwargs.items() if k != "closure"}
            result = ((args[0], functools.partial(_cached, loss), *args[2:]), rest)
        self._fuse(optimizer)
        return result

    def _fuse(self, optimizer: torch.optim.Optimizer) -> None:
        """Choose what the post-hook updates (:meth:`run`) and hide its gradients from the step.
        Nothing is written before the step: if it raises, the fused tensors are as they were
        (their gradients given back by the next step's pre-hook)."""
        registry = self.hook.registry
        guard = registry._guard
        if guard is None or not guard.holds():  # the full check, before anything is written
            registry._full_check(self.hook.members(optimizer), self.hook)
        plan = self.current_plan(optimizer)
        for index, rows in plan.groups.items():
            reason, sqrt = self.group_mode(optimizer, optimizer.param_groups[index])
            if reason or self.native is None:
                continue
            params, grads, shapes, projections = self._gather(optimizer, index, rows)
            if params:
                self._hide(params, grads)
                self.pending.append((index, False, (params, grads, shapes, projections, sqrt)))
        for index, registrations in plan.device.items():
            group = optimizer.param_groups[index]
            if _device.refusal(group):
                continue
            items = [
                (p, grad, r.projected, r.view)
                for r in registrations
                if (grad := (p := r.parameter).grad) is not None
                and _grad_fits(grad, p)
                and not _device.state_problem(optimizer, group, p)
            ]
            left = _device.ready(optimizer, group, items)
            for p, *_ in items:
                if id(p) in left:
                    self.left[id(p)] = left[id(p)]
                    _warn_once(f"a {tuple(p.shape)} tensor is not fused ({left[id(p)]})")
            items = [item for item in items if id(item[0]) not in left]
            if items:
                self._hide([p for p, *_ in items], [grad for _, grad, *_ in items])
                self.pending.append((index, True, (items,)))

    def _hide(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        for p, grad in zip(params, grads, strict=True):
            self.hidden.append((p, grad))
            p.grad = None

    @torch.compiler.disable
    def run(self, optimizer: torch.optim.Optimizer) -> None:
        """Update and project what the pre-hook chose (the post-hook calls it after the step):
        through the native kernels on the CPU, through :mod:`._device` on its devices."""
        pending, self.pending = self.pending, []
        with torch.no_grad():
            for index, on_device, work in pending:
                group = optimizer.param_groups[index]
                if on_device:
                    (items,) = work
                    eager = _device.step(optimizer, group, items, compile=_device.COMPILE)
                    for p, *_ in items:
                        if id(p) in eager:
                            self.eager[id(p)] = eager[id(p)]
                            _warn_eager(tuple(p.shape), eager[id(p)])
                    continue
                params, grads, shapes, projections, sqrt = work
                assert self.native is not None  # only chosen with the kernels
                update(self.native, optimizer, group, params, grads, shapes, projections, sqrt)
                torch.autograd.graph.increment_version(params)  # written through their memory

    def _gather(self, optimizer: torch.optim.Optimizer, index: int, rows: list[_Row]) -> tuple:
        """The tensors of group ``index`` the kernels update at this step, their gradients,
        shapes and projections: those with a gradient and state that fit them. When the same
        tensors have gradients and state tensors with the metadata the last full check of
        them found fit (compared in C++ by the guard kept in ``self.checked``), they are not
        checked one by one again."""
        chosen = [(p, grad, shape, proj) for p, shape, proj in rows if (grad := p.grad) is not None]
        state = optimizer.state
        tensors = [grad for _, grad, _, _ in chosen]
        for p, *_ in chosen:
            tensors.extend(t for t in state.get(p, {}).values() if isinstance(t, torch.Tensor))
        key = [len(tensors), *(id(p) for p, *_ in chosen)]
        kept = self.checked.get(index)
        if kept is None or kept[0] != key or not kept[1].check(*tensors):
            fit = [
                r for r in chosen if _grad_fits(r[1], r[0]) and not state_problem(optimizer, r[0])
            ]
            guards = _tensor_guards(tensors) if len(fit) == len(chosen) else None
            if guards is None:
                self.checked.pop(index, None)
            else:
                self.checked[index] = (key, guards)
            chosen = fit
        if not chosen:
            return [], [], [], []
        return tuple(list(column) for column in zip(*chosen, strict=True))

    def current_plan(self, optimizer: torch.optim.Optimizer) -> _Plan:
        """The plan for the registry's version and the optimizer's tensors as they are now."""
        registry, plan = self.hook.registry, self.plan
        members = self.hook.members(optimizer)
        if plan is None or plan.version != registry._version or plan.members is not members:
            registrations = registry._registrations
            plan = self.plan = _Plan(
                registrations, registry._version, members, optimizer, self.native
            )
            self.eager, self.left = {}, {}  # notes of tensors that may have gone (ids reused)
        return plan

    def group_mode(
        self, optimizer: torch.optim.Optimizer, group: dict[str, Any]
    ) -> tuple[str, int]:
        """Why ``group`` is not fused ("" when it is), and the square root its Adam update
        takes (1 torch.sqrt's, 0 the correctly rounded one)."""
        try:
            key = _group_key(optimizer, group)
            hash(key)
        except TypeError:
            key = None
        found = _MODES.get(key) if key is not None else None
        if found is None:
            found = self._mode(optimizer, group)
            if key is not None:
                if len(_MODES) >= _MODES_KEPT:  # a scheduler that cycles betas or momentum
                    _MODES.clear()
                _MODES[key] = found
        return found

    def _mode(self, optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> tuple[str, int]:
        reason = unsupported(optimizer) or refusal(optimizer, group)
        if reason:
            return reason, 0
        assert self.native is not None  # only groups with tensors the kernels take get here
        sqrt = 0
        if not group.get("fused") and type(optimizer) is not torch.optim.SGD:
            found = self.native.foreach_sqrt
            if found is None:
                return "torch.sqrt's square root could not be reproduced on this build", 0
            sqrt = found
        kind = signature(optimizer, group)
        if kind not in _PROBED:
            from ._probes import check_update

            _PROBED[kind] = check_update(self.native, optimizer, group)
        if _PROBED[kind]:
            return f"the update probe failed: {_PROBED[kind]}", 0
        return "", sqrt

    @torch.compiler.disable
    def restore(self) -> None:
        """Give the fused tensors their gradients back: after the step, or, when the step
        raised, at the next step's pre-hook (or ``clear()``), to each tensor that has not been
        given a new gradient since."""
        hidden, self.hidden = self.hidden, []
        for p, grad in hidden:
            if p.grad is None:
                p.grad = grad

    def describe(self, optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> str:
        """The audit's note on how the next step treats ``parameter``."""
        plan = self.current_plan(optimizer)
        if id(parameter) in plan.refused:
            return f"fuse=True: projected after the step ({plan.refused[id(parameter)]})"
        for index, registrations in plan.device.items():
            if any(r.parameter is parameter for r in registrations):
                group = optimizer.param_groups[index]
                grad = parameter.grad
                problem = _device.refusal(group)
                problem = problem or _device.state_problem(optimizer, group, parameter)
                if not problem and grad is not None and not _grad_fits(grad, parameter):
                    problem = "its gradient is not a contiguous tensor like the weight"
                if problem:
                    return f"fuse=True: projected after the step ({problem})"
                problem = self.left.get(id(parameter), "")
                if problem:
                    return f"fuse=True: projected after the step ({problem})"
                if id(parameter) in self.eager:
                    return f"{EAGER_NOTE} ({self.eager[id(parameter)]})"
                return FUSED_NOTE
        for index, rows in plan.groups.items():
            if any(p is parameter for p, _, _ in rows):
                reason, _ = self.group_mode(optimizer, optimizer.param_groups[index])
                if reason:
                    return f"fuse=True: projected after the step ({reason})"
                problem = state_problem(optimizer, parameter)
                grad = parameter.grad
                if grad is not None and not _grad_fits(grad, parameter):
                    problem = "its gradient is not a contiguous tensor like the weight"
                return f"fuse=True: projected after the step ({problem})" if problem else FUSED_NOTE
        return ""


_MODES_KEPT = 256
_MODES: dict[Any, tuple[str, int]] = {}
""":meth:`FusedStep.group_mode` by the options of a group (see :func:`_group_key`)."""


def _cached(loss: Any) -> Any:
    """The closure the step is given once the pre-hook has evaluated the user's."""
    return loss


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(
        f"fuse=True: {reason}; the constraints are projected after each optimizer step instead "
        "(the same numbers, at the hook's speed)",
        UserWarning,
        stacklevel=5,
    )


def start(hook: StepHook, optimizer: torch.optim.Optimizer) -> None:
    """Put the fused step on ``optimizer`` for ``hook`` (its post-hook), or say why not: a
    warning (once per reason) when the native kernels or the optimizer cannot be used, and the
    reason is kept for the audit (``hook.unfused``)."""
    reason = unsupported(optimizer)
    if reason:
        hook.unfused = reason
        _warn_once(reason)
        return
    native = _native.library()
    members = hook.members(optimizer)
    if native is None and any(
        id(r.parameter) in members and r.parameter.device.type not in _device.DEVICES
        for r in hook.registry._registrations
    ):
        _warn_once(_unavailable())
    fused = FusedStep(hook, native)
    registered = {id(r.parameter) for r in hook.registry._registrations}
    for index, group in enumerate(optimizer.param_groups):
        on = {p.device.type in _device.DEVICES for p in group["params"] if id(p) in registered}
        problem = _device.refusal(group) if True in on else ""
        if not problem and False in on and native is not None:
            problem, _ = fused.group_mode(optimizer, group)
        if problem:
            _warn_once(
                f"param group {index} of the {type(optimizer).__name__} is not fused ({problem})"
            )
    hook.fused = fused
    fused.handle = optimizer.register_step_pre_hook(fused)


@functools.cache
def _warn_eager(shape: tuple[int, ...], reason: str) -> None:
    warnings.warn(
        f"fuse=True: a {shape} tensor is updated and projected without compiling ({reason}): "
        "torch's arithmetic, the same numbers, at more than the unfused step's cost",
        UserWarning,
        stacklevel=5,
    )


def _unavailable() -> str:
    return f"the one-pass kernels cannot be used here ({_native.unavailable()})"


def fuse_note(hook: StepHook, optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> str:
    """The audit's note on ``parameter`` for a hook attached with fuse=True ("" otherwise)."""
    if hook.fused is not None:
        return hook.fused.describe(optimizer, parameter)
    if hook.unfused:
        return f"fuse=True: projected after the step ({hook.unfused})"
    return ""

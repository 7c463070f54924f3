"""The optimizers a registry attaches to: which ones are accepted (accelerate's wrapper is
unwrapped, other wrappers refused), which tensors one holds, and the entries no step of one can
project (views and copies of its parameters, tensors none of them holds, a model constrained
with another model's optimizer).

Example:
    >>> import torch
    >>> layer = torch.nn.Linear(2, 3)
    >>> optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    >>> check_optimizer(optimizer, "attach") is optimizer
    True
    >>> param_ids(optimizer) == {id(layer.weight), id(layer.bias)}
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

import weight_constraints as wc

from ._entries import Registration
from ._memory import MemoryIndex

__all__ = [
    "check_held",
    "check_optimizer",
    "check_reachable",
    "check_trained_by",
    "outside_warning",
    "param_ids",
    "unheld_tensor_entries",
]


def param_ids(optimizer: torch.optim.Optimizer) -> frozenset[int]:
    """The ids of the tensors in ``optimizer``'s param groups."""
    return frozenset(id(p) for group in optimizer.param_groups for p in group["params"])


def _passes_through(wrapper: Any) -> bool:
    """Whether ``wrapper`` is an optimizer wrapper known to step the optimizer it holds in
    ``.optimizer`` and to write nothing else: accelerate's ``AcceleratedOptimizer`` (what
    Hugging Face Trainer callbacks receive), told by its exact type and module without
    importing accelerate. Its subclasses are not (``DeepSpeedOptimizerWrapper``'s step does
    nothing; DeepSpeed's engine steps its own optimizer, which updates flat partitions)."""
    kind = type(wrapper)
    return (
        kind.__name__ == "AcceleratedOptimizer"
        and kind.__module__ == "accelerate.optimizer"
        and isinstance(getattr(wrapper, "optimizer", None), torch.optim.Optimizer)
    )


def _has_step_hooks(optimizer: Any) -> bool:
    """Whether ``optimizer`` is an initialised torch optimizer (one that runs step hooks)."""
    return isinstance(optimizer, torch.optim.Optimizer) and isinstance(
        getattr(optimizer, "_optimizer_step_post_hooks", None), dict
    )


def check_optimizer(optimizer: Any, where: str) -> torch.optim.Optimizer:
    """The torch optimizer that ``optimizer`` is, or passes through to; raise a TypeError for
    anything else (``where`` names the caller in the message).

    accelerate's ``AcceleratedOptimizer`` subclasses ``torch.optim.Optimizer`` without
    initialising it, so it has no step hooks of its own; its ``step()`` calls the optimizer it
    holds in ``.optimizer``, and the hooks go on that one: it runs exactly the steps that happen
    (none when the wrapper skips a step, as during gradient accumulation or after an AMP
    overflow). Other wrappers are refused: one may write the weights after the inner step
    (Lookahead moves them towards its slow weights), which would leave a projection run on the
    inner step violated.
    """
    while not _has_step_hooks(optimizer) and _passes_through(optimizer):
        optimizer = optimizer.optimizer
    if _has_step_hooks(optimizer):
        return optimizer
    inner = getattr(optimizer, "optimizer", None)
    if isinstance(inner, torch.optim.Optimizer) or hasattr(inner, "param_groups"):
        raise TypeError(
            f"{where}() got a {type(optimizer).__name__}, which holds an optimizer in "
            ".optimizer but is not an initialised torch optimizer (it has no step hooks: "
            "Optimizer.__init__ was not called), and whose step() may write the weights after "
            "the inner step (as Lookahead does), so a projection on the inner step could be "
            "undone. Call registry.apply() after each wrapper.step() instead of attaching (a "
            "registry made with constrain(model, None, ...) or Constraints().add(...)); if its "
            "step() only calls the inner optimizer's, pass that optimizer "
            f"({type(optimizer).__name__}.optimizer)"
        )
    if isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"{where}() got a {type(optimizer).__name__}, a torch.optim.Optimizer subclass that "
            "was not initialised (it has no step hooks: Optimizer.__init__ was not called) and "
            "holds no optimizer in .optimizer; pass the torch optimizer it steps"
        )
    hint = ""
    if isinstance(optimizer, wc.Constraint) or type(optimizer).__module__.startswith(
        "weight_constraints"
    ):
        hint = (
            f". It looks like a constraint: pass constraints by role, e.g. "
            f"{where}(model, optimizer, kernel={optimizer!r})"
        )
    raise TypeError(
        f"{where}() expects a torch.optim.Optimizer (or None), got "
        f"{type(optimizer).__name__}: {optimizer!r}"[:300]
        + hint
    )


def _held_memory(optimizer: torch.optim.Optimizer) -> MemoryIndex[None]:
    index: MemoryIndex[None] = MemoryIndex()
    for group in optimizer.param_groups:
        for tensor in group["params"]:
            index.add(tensor, None)
    return index


def _unreachable(
    registration: Registration, held: MemoryIndex[None] | None, optimizer: torch.optim.Optimizer
) -> tuple[str | None, MemoryIndex[None] | None]:
    """Why no step of ``optimizer`` projects the tensor entry ``registration`` (None when one
    can), and the index of the optimizer's memory (made on first use)."""
    tensor = registration.parameter
    if not tensor.is_leaf:
        return "is not a leaf tensor (a view of a parameter, or computed from one)", held
    if registration.memory is None:
        return None, held
    held = _held_memory(optimizer) if held is None else held
    for _, other, _ in held.sharing(tensor, registration.memory):
        return (
            "shares memory with a tensor of the optimizer (shape "
            f"{tuple(other.shape)}) without being it (a view, .data or .detach() of a parameter, "
            "or a parameter replaced in its module by a new one over the same memory)"
        ), held
    return None, held


def check_reachable(
    registrations: Iterable[Registration],
    optimizer: torch.optim.Optimizer,
    members: frozenset[int] | None = None,
) -> None:
    """Raise a ValueError for a tensor entry that no step of ``optimizer`` can project: one
    that is not a leaf (an optimizer holds leaves only, and a view gets no ``.grad``), or one
    that shares memory with a tensor of ``optimizer`` without being it (``.data``,
    ``.detach()`` or a view of a parameter: the optimizer updates the parameter, and the
    hook projects what the optimizer holds). ``members``: the optimizer's :func:`param_ids`."""
    members = param_ids(optimizer) if members is None else members
    held = None
    for registration in registrations:
        if registration.source is not None or id(registration.parameter) in members:
            continue
        what, held = _unreachable(registration, held, optimizer)
        if what is not None:
            raise ValueError(
                f"{registration.name} {what}: the optimizer updates its parameters, never this "
                "tensor, and a step hook projects what the optimizer updated, so no step "
                "would project it. Register the parameter itself (add(parameter, "
                "constraint, dims=...), with dims for the part you mean), or call "
                "registry.apply() after each optimizer.step() instead of attaching"
            )


def unheld_tensor_entries(
    registrations: Iterable[Registration], held: Sequence[frozenset[int]]
) -> list[Registration]:
    """Trainable parameters registered as tensors (no module place to follow) that none of
    the id sets in ``held`` (the members of the attached optimizers) holds."""
    return [
        registration
        for registration in registrations
        if registration.source is None
        and registration.parameter.requires_grad
        and registration.parameter.is_leaf
        and not any(id(registration.parameter) in ids for ids in held)
    ]


def check_held(registrations: Iterable[Registration], held: Sequence[frozenset[int]]) -> None:
    """Raise a RuntimeError for a trainable parameter registered as a tensor
    (``add(parameter, constraint, dims=...)``) that none of the optimizers the registry is
    attached to (``held``: their members) holds: typically one replaced in its module
    (``load_state_dict(..., assign=True)``) and a new optimizer made for the new tensors; a
    registry knows no module of a tensor entry, so it cannot follow the replacement."""
    for registration in unheld_tensor_entries(registrations, held):
        raise RuntimeError(
            f"{registration.name} (a parameter registered as a tensor) is in none of the "
            "optimizers this registry is attached to, so no step projects it. If it "
            "was replaced in its module (load_state_dict(..., assign=True), "
            "module.weight = nn.Parameter(...)) and a new optimizer holds the new "
            "tensor, constrain the new one (a registry cannot follow a tensor entry; "
            "add(module, kernel=...) or constrain() can); if another optimizer updates "
            "it, attach the registry to that one too; if nothing trains it, set "
            "requires_grad=False"
        )


def _listed(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_trained_by(
    optimizer: torch.optim.Optimizer, registrations: Sequence[Registration]
) -> list[str]:
    """The names of the trainable tensors of ``registrations`` that ``optimizer`` does not
    hold (its steps neither update nor project them); frozen ones (``requires_grad=False``)
    are left out: a hook leaves frozen weights alone, and the audit shows them.

    Raises:
        ValueError: ``optimizer`` holds none of the tensors (another model's optimizer, or one
            made before the parameters were replaced): no step would ever project anything.
    """
    members = param_ids(optimizer)
    outside = [r for r in registrations if id(r.parameter) not in members]
    if registrations and len(outside) == len(registrations):
        raise ValueError(
            f"the optimizer ({type(optimizer).__name__}) holds none of the {len(outside)} "
            f"tensors to constrain ({_listed([r.name for r in outside])}), so none of its steps "
            "would update or project them: pass the optimizer that trains this model (made "
            "from its parameters after any replacement), or constrain(model, None, ...) and "
            "call registry.apply() yourself"
        )
    return [r.name for r in outside if r.parameter.requires_grad]


def outside_warning(names: Sequence[str], total: int) -> str:
    """The warning for trainable constrained tensors an optimizer does not hold."""
    return (
        f"{len(names)} of the {total} constrained tensors are trainable but not in the "
        f"optimizer's param groups, so its steps neither update nor project them: "
        f"{_listed(names)}. If another optimizer trains them, attach the registry to it too "
        "(registry.attach(other)); if nothing trains them, freeze them (requires_grad=False)"
    )

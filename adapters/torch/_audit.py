"""What the registries do to a model: :func:`audit` (one row per parameter: its constraint,
whether the next step projects it, how far it is from its set) and :func:`norm_stats` (the
shared norm statistics, for a logger). Both copy weights to the host: for checks and logs, not
for the training step.

Example:
    >>> import torch
    >>> from weight_constraints import MaxNorm
    >>> w = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    >>> registry = Constraints().add(w, MaxNorm(2.0), dims=1, name="w")
    >>> norm_stats(registry)["w/violation"]
    3.0
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from weight_constraints._dtypes import as_name
from weight_constraints.adapters._audit import (
    Audit,
    AuditRow,
    finish,
    norm_statistics,
    worst_violation,
)
from weight_constraints.adapters._binding import is_per_node
from weight_constraints.adapters._errors import WeightError

from ._entries import Registration, bind_again
from ._fused import fuse_note
from ._layers import default_dims
from ._memory import MemoryIndex, is_dtensor
from ._optimizers import check_optimizer, param_ids, unheld_tensor_entries
from ._registry import MARK, Constraints, live_registries
from ._skipped import Skipped, describe

__all__ = ["audit", "norm_stats"]

Members = Callable[[torch.optim.Optimizer], frozenset[int]]
"""The ids of an optimizer's tensors (cached for one audit)."""

Candidate = tuple[Constraints, Registration]
"""A registration of a tensor, with its registry."""


class _Found(NamedTuple):
    name: str
    parameter: torch.Tensor
    places: list[tuple[nn.Module, str, str]]


def _model_parameters(model: nn.Module) -> list[_Found]:
    """Every parameter of ``model`` once, with every ``(module, attribute, name)`` holding it."""
    found: dict[int, _Found] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for attr, parameter in module._parameters.items():
            if parameter is None:
                continue
            name = f"{prefix}.{attr}" if prefix else attr
            if id(parameter) not in found:
                found[id(parameter)] = _Found(name, parameter, [])
            found[id(parameter)].places.append((module, attr, name))
    return list(found.values())


def _note(error: Exception) -> str:
    """What an audit row says of an entry that cannot be bound again."""
    return error.note if isinstance(error, WeightError) else str(error)


def _attached(registry: Constraints) -> list[torch.optim.Optimizer]:
    return [optimizer for _, optimizer in registry._live_hooks()]


def _choose(
    candidates: list[Candidate], optimizer: torch.optim.Optimizer | None
) -> Candidate | None:
    """The registration that matters for ``optimizer``: one attached to it (to any optimizer
    when None), else the first one."""
    for registry, registration in candidates:
        optimizers = _attached(registry)
        if (optimizer is None and optimizers) or any(o is optimizer for o in optimizers):
            return registry, registration
    return candidates[0] if candidates else None


def _hook_status(
    registration: Registration,
    parameter: torch.Tensor,
    replaced: bool,
    optimizers: list[torch.optim.Optimizer],
    members: Members,
) -> tuple[bool, str]:
    """Whether one of ``optimizers`` updates ``parameter`` (so its hook projects it)."""
    if not any(id(parameter) in members(o) for o in optimizers):
        if replaced and any(id(registration.parameter) in members(o) for o in optimizers):
            return False, (
                "replaced after it was constrained (assign=True?) and the optimizer holds the "
                "old tensor: the next step raises"
            )
        return False, "not in the optimizer's param groups: not updated, not projected"
    if not parameter.requires_grad:
        if parameter.grad is None:
            return False, "frozen (requires_grad=False): not updated, not projected"
        return True, (
            "requires_grad=False but it keeps a gradient (zero_grad(set_to_none=False)): the "
            "optimizer still updates it (momentum, weight decay) and the hook projects it"
        )
    return True, "replaced since constrain(); the next step binds it" if replaced else ""


def _status(
    registry: Constraints,
    registration: Registration,
    parameter: torch.Tensor,
    optimizer: torch.optim.Optimizer | None,
    members: Members,
) -> tuple[bool, str]:
    """Whether the next step of ``optimizer`` (of any optimizer the registry is attached to,
    when None) projects ``parameter``, and why not."""
    try:
        fresh = bind_again(registration)
    except (TypeError, ValueError) as error:
        return False, _note(error)
    optimizers = _attached(registry)
    if optimizer is not None:
        if not any(o is optimizer for o in optimizers):
            where = " (it is attached to another one)" if optimizers else ""
            return False, (
                f"its registry is not attached to this optimizer{where}; a copy of an optimizer "
                "(deepcopy, torch.save/load) loses its step hooks: attach again"
            )
        optimizers = [optimizer]
    elif not optimizers:
        return False, "its registry is attached to no optimizer (apply() projects it)"
    replaced = fresh.parameter is not registration.parameter
    return _hook_status(registration, parameter, replaced, optimizers, members)


def _fuse_note(
    registry: Constraints, parameter: torch.Tensor, optimizer: torch.optim.Optimizer | None
) -> str:
    """How a hook attached with fuse=True treats ``parameter`` ("" for the others)."""
    for hook, attached in registry._live_hooks():
        if optimizer is None or attached is optimizer:
            note = fuse_note(hook, attached, parameter)
            if note:
                return note
    return ""


def _host(tensor: torch.Tensor, view: tuple[int, ...] | None) -> np.ndarray:
    """``tensor`` (all of it, for a distributed one) on the host in float64, in ``view``."""
    with torch.no_grad():
        tensor = tensor.detach()
        if is_dtensor(tensor):
            tensor = tensor.full_tensor()  # type: ignore[attr-defined]
        if view is not None:
            tensor = tensor.reshape(view)
        return tensor.to("cpu", torch.float64).numpy()


def _violation(registration: Registration, weight: np.ndarray) -> float:
    axes = registration.dims if is_per_node(registration.constraint) else None
    return worst_violation(registration.constraint, weight, axes)


def _registrations() -> tuple[dict[int, list[Candidate]], dict[tuple[int, str], list[Candidate]]]:
    """Every registration of the live registries, by tensor and by place."""
    by_id: dict[int, list[Candidate]] = {}
    by_place: dict[tuple[int, str], list[Candidate]] = {}
    for registry in live_registries():
        for registration in registry._registrations:
            by_id.setdefault(id(registration.parameter), []).append((registry, registration))
            for owner, attr, _ in registration.places:
                by_place.setdefault((id(owner), attr), []).append((registry, registration))
    return by_id, by_place


Inventory = list[tuple[_Found, "Candidate | None", list[Candidate]]]


def _inventory(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> Inventory:
    """Each parameter of ``model`` with the registration that constrains it, if any, and every
    registration of it (registries oldest first)."""
    by_id, by_place = _registrations()
    result: Inventory = []
    for record in _model_parameters(model):
        candidates = list(by_id.get(id(record.parameter), []))
        for module, attr, _ in record.places:
            candidates += by_place.get((id(module), attr), [])
        result.append((record, _choose(candidates, optimizer), candidates))
    return result


def _shadows() -> MemoryIndex[Registration]:
    """Tensor entries (``add(tensor, ...)``) of live registries by memory, to find one that
    shares a parameter's memory without being it (a view, ``.data`` or ``.detach()``)."""
    index: MemoryIndex[Registration] = MemoryIndex()
    for registry in live_registries():
        for registration in registry._registrations:
            if registration.source is None:
                index.add(registration.parameter, registration)
    return index


def _skipped() -> dict[tuple[int, str], Skipped]:
    """The tensors ``constrain(..., skip_unknown=True)`` passed over, by place."""
    found: dict[tuple[int, str], Skipped] = {}
    for registry in live_registries():
        for skip in registry._skipped:
            found.setdefault((id(skip[0]), skip[1]), skip)
    return found


def _unregistered_row(
    record: _Found,
    shadows: MemoryIndex[Registration],
    skipped: dict[tuple[int, str], Skipped],
    shown: set[int],
) -> AuditRow:
    """The row of a parameter no registration holds."""
    shape = tuple(record.parameter.shape)
    dtype = as_name(record.parameter.dtype)
    module, attr, _ = record.places[0]
    tied = ", ".join(name for _, _, name in record.places[1:])
    for _, _, shadow in shadows.sharing(record.parameter):
        shown.add(id(shadow))
        note = (
            f"registered as {shadow.name}, which shares its memory without being it (a "
            "view, .data or .detach()): no optimizer updates that tensor, so no step "
            "projects it (attach raises); register the parameter itself, or call apply()"
        )
        return AuditRow(
            record.name, shape, shadow.constraint, shadow.dims, False, None, note, dtype
        )
    marks = [m.__dict__.get(MARK, {}).get(a) for m, a, _ in record.places]
    mark = next((m for m in marks if m is not None), None)
    if mark is not None:
        note = (
            "constrained before this module was copied or reloaded; no registry holds "
            "this tensor (a registry is copied only with a module that keeps it, and hooks "
            "never are): constrain the copy"
        )
        return AuditRow(record.name, shape, mark[0], mark[1], False, None, note, dtype)
    skip = next((skipped[(id(m), a)] for m, a, _ in record.places if (id(m), a) in skipped), None)
    if skip is not None:
        note = (
            f"not constrained: a weight the layer tables do not lay out ({describe(skip[0])}), "
            "passed over; constrain it with Constraints.add(tensor, constraint, dims=...)"
        )
        return AuditRow(record.name, shape, skip[3], None, False, None, note, dtype)
    note = f"tied: also {tied}" if tied else ""
    return AuditRow(record.name, shape, None, default_dims(module, attr), False, None, note, dtype)


def _registered_row(
    record: _Found,
    chosen: Candidate,
    candidates: list[Candidate],
    optimizer: torch.optim.Optimizer | None,
    members: Members,
) -> AuditRow:
    """The row of a parameter a registration holds."""
    registry, registration = chosen
    active, note = _status(registry, registration, record.parameter, optimizer, members)
    others = [other for _, other in candidates if not other.same_request(registration)]
    if others:
        active, note = (
            False,
            (
                f"conflicting constraints: also {others[0].constraint!r} over dims "
                f"{others[0].dims} ({others[0].name}, another registry); the hook that runs "
                "last wins"
            ),
        )
    tied = ", ".join(name for _, _, name in record.places[1:])
    fused = _fuse_note(registry, record.parameter, optimizer) if active else ""
    notes = [note, fused, f"tied: also {tied}" if tied else ""]
    violation = None
    if record.parameter.shape == registration.shape:
        violation = _violation(registration, _host(record.parameter, registration.view))
    return AuditRow(
        record.name,
        tuple(record.parameter.shape),
        registration.constraint,
        registration.dims,
        active,
        violation,
        "; ".join(n for n in notes if n),
        as_name(record.parameter.dtype),
    )


def _orphans(model: nn.Module) -> list[Registration]:
    """Registrations whose place in ``model`` holds no parameter any more (a parametrization
    or a weight-norm hook added after ``constrain()``)."""
    modules = {id(m) for m in model.modules()}
    found: dict[int, Registration] = {}
    for registry in live_registries():
        for registration in registry._registrations:
            for owner, attr, _ in registration.places:
                if id(owner) in modules and owner._parameters.get(attr) is None:
                    found.setdefault(id(registration), registration)
    return list(found.values())


def _unheld(inventory: Inventory, members: Members) -> list[Registration]:
    """Trainable parameters registered as tensors, by a registry that constrains this model
    or is attached to an optimizer of its parameters, that are neither in the model nor in
    any optimizer the registry is attached to (what the hook raises for)."""
    model_ids = {id(record.parameter) for record, _, _ in inventory}
    users = {id(chosen[0]) for _, chosen, _ in inventory if chosen is not None}
    found = []
    for registry in live_registries():
        held = [members(o) for o in _attached(registry)]
        if not held or (id(registry) not in users and not any(model_ids & ids for ids in held)):
            continue  # no hook to raise (apply() projects it), or another model's registry
        found += [
            registration
            for registration in unheld_tensor_entries(registry._registrations, held)
            if id(registration.parameter) not in model_ids
        ]
    return found


def _loose_rows(
    model: nn.Module, inventory: Inventory, members: Members, shown: set[int]
) -> list[AuditRow]:
    """Rows of their own for registrations no parameter of the model shows: those whose place
    holds no parameter any more, and parameter entries no optimizer holds."""
    rows = []
    for registration in _orphans(model):
        if id(registration) not in shown:
            shown.add(id(registration))
            try:
                bind_again(registration)
                note = ""
            except (TypeError, ValueError) as error:
                note = _note(error)
            rows.append(_loose_row(registration, note))
    for registration in _unheld(inventory, members):
        if id(registration) not in shown:
            note = (
                "a parameter registered as a tensor, in neither the model nor any optimizer its "
                "registry is attached to (replaced by load_state_dict(assign=True) and a new "
                "optimizer made?): no step projects it and the next step raises; constrain the "
                "parameter the model uses"
            )
            rows.append(_loose_row(registration, note))
    return rows


def _loose_row(registration: Registration, note: str) -> AuditRow:
    shape = tuple(registration.shape)
    return AuditRow(
        registration.name, shape, registration.constraint, registration.dims, False, None, note
    )


def audit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    strict: bool = False,
    tol: float = 1e-5,
) -> Audit:
    """One row per parameter of ``model``: its constraint, and whether the next step projects it.

    A row is *active* when a registry holding the parameter is attached to ``optimizer`` (to
    any live optimizer when ``None``), the parameter is in that optimizer's param groups, it
    requires grad (or keeps a gradient, which the optimizer still applies), it is still the
    tensor the module uses (not replaced, not turned into a computed weight by a
    parametrization), and no other registry constrains it differently. The hook then projects
    it after every step in which it has a gradient. Entries no step projects show too: a
    parameter registered through a view or ``.data`` (on the parameter's row), a parameter
    registered as a tensor that neither the model nor an attached optimizer holds (a row of
    its own), and a tensor of two or more dims that ``constrain(..., skip_unknown=True)``
    passed over (shown with the kernel constraint asked, not active). ``violation`` is the
    largest distance of a node from the constraint's set now. Computing it copies every
    constrained weight to the host: this is for checks and logs, not for the training step.

    Args:
        model: The model.
        optimizer: The optimizer whose next step is meant; ``None`` for any.
        strict: Raise a RuntimeError listing every constrained parameter that is not active or
            is violated by more than its tolerance.
        tol: The tolerance of ``strict``, relative to the constraint's scale; at least the
            projections' own rounding in the weight's dtype (the constraint kind's
            ``roundings`` spacings at 1: ``2 * 2**-7`` for a norm kind in bfloat16, ``4 * 2**-7``
            for ``Simplex`` and ``MaxL1Norm``).

    Returns:
        The rows (a list that prints as a table; ``.problems(tol)`` lists what ``strict``
        raises for).

    Example:
        >>> import torch
        >>> from weight_constraints import MaxNorm
        >>> from weight_constraints.adapters.torch import audit, constrain
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> _ = constrain(model, optimizer, kernel=MaxNorm(1.0))
        >>> print(audit(model, optimizer))  # doctest: +NORMALIZE_WHITESPACE
        weight    shape  constraint                      axes  active  violation  note
        0.weight  3x4    MaxNorm(max_value=1.0, axis=1)  1     yes     0
        0.bias    3      -                               0     -       -
        1.weight  3      -                               -     -       -
        1.bias    3      -                               -     -       -
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"audit() expects an nn.Module, got {type(model).__name__}")
    if optimizer is not None:
        optimizer = check_optimizer(optimizer, "audit")
    members: Members = functools.cache(param_ids)
    rows = Audit()
    shown: set[int] = set()
    inventory = _inventory(model, optimizer)
    shadows, skipped = _shadows(), _skipped()
    for record, chosen, candidates in inventory:
        if chosen is None:
            rows.append(_unregistered_row(record, shadows, skipped, shown))
        else:
            shown.add(id(chosen[1]))
            rows.append(_registered_row(record, chosen, candidates, optimizer, members))
    rows.extend(_loose_rows(model, inventory, members, shown))
    return finish(rows, strict, tol)


def norm_stats(target: Constraints | nn.Module) -> dict[str, float]:
    """Per-weight norm statistics as a flat dict, for any logger.

    For a registry, every entry; for a model, every parameter with per-node dims (from its
    constraint, or its module type when it has none). Keys are ``"<name>/norm_min"``,
    ``"<name>/norm_max"``, ``"<name>/norm_mean"`` (over the weight's nodes) and, for
    constrained weights, ``"<name>/violation"`` (the largest distance of a node from the
    constraint's set): the schema every adapter's ``norm_stats`` shares. The values are Python
    floats: this copies to the host and synchronises with the device, so call it when you log,
    not in the training step.

    Example:
        >>> import torch
        >>> from weight_constraints import MaxNorm
        >>> from weight_constraints.adapters.torch import Constraints, norm_stats
        >>> w = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
        >>> norm_stats(Constraints().add(w, MaxNorm(2.0), dims=1, name="w"))
        {'w/norm_min': 1.0, 'w/norm_max': 5.0, 'w/norm_mean': 3.0, 'w/violation': 3.0}
    """
    sources: list[tuple[str, torch.Tensor, tuple[int, ...], Registration | None]] = []
    if isinstance(target, Constraints):
        sources = [(r.name, r.parameter, r.dims, r) for r in target._registrations]
    elif isinstance(target, nn.Module):
        for record, chosen, _ in _inventory(target, None):
            if chosen is not None and chosen[1].shape == record.parameter.shape:
                sources.append((record.name, record.parameter, chosen[1].dims, chosen[1]))
            elif (dims := default_dims(*record.places[0][:2])) is not None:
                sources.append((record.name, record.parameter, dims, None))
    else:
        raise TypeError(
            f"norm_stats() expects a Constraints registry or an nn.Module, got {target!r}"
        )
    stats: dict[str, float] = {}
    for name, tensor, dims, registration in sources:
        weight = _host(tensor, None if registration is None else registration.view)
        violation = None if registration is None else _violation(registration, weight)
        stats.update(norm_statistics(name, weight, dims, violation))
    return stats

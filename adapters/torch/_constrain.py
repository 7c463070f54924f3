""":func:`constrain`: one call that finds the known layers of a model (the shared walk over this
adapter's catalogue), binds their weights by role, fills a registry and attaches it.

Example:
    >>> import torch
    >>> from weight_constraints import MaxNorm
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> [entry.name for entry in constrain(model, optimizer, kernel=MaxNorm(1.0))]
    ['0.weight']
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

import weight_constraints as wc
from weight_constraints.adapters._binding import PerInput
from weight_constraints.adapters._roles import Request
from weight_constraints.adapters._walk import walk

from ._entries import Registration, module_registrations
from ._layers import CATALOGUE, extra_parameters, is_known, layout
from ._optimizers import check_optimizer, check_trained_by, outside_warning
from ._registry import Constraints
from ._skipped import Skipped, skips, unknown_error, warn_skipped

__all__ = ["constrain"]


def _walk_model(
    model: nn.Module, request: Request, skip_unknown: bool, per_input: PerInput
) -> tuple[list[Registration], set[str], list[Skipped]]:
    """The registrations of every known layer of ``model``, the roles found, and what was
    skipped; an unknown layer with weights, or a known one with extra parameters, raises
    unless ``skip_unknown``. The kernels of modules ``per_input`` chooses take one norm per
    input unit."""
    new: list[Registration] = []
    found: set[str] = set()
    skipped: list[Skipped] = []
    paths = []
    for path, module in walk(model, CATALOGUE):
        known = is_known(module)
        extras = extra_parameters(module) if known else []
        if not known or extras:
            if not skip_unknown:
                raise unknown_error(path, module, extras)
            skipped += skips(module, path, request, extras=known)
        if known:
            roles = layout(module)
            found.update(r for r, places in roles.items() if places and request.constraint_for(r))
            label = path or type(module).__name__
            paths.append(label)
            by_input = per_input(label)
            new.extend(module_registrations(module, request, label, per_input=by_input))
    per_input.check(paths, "module")
    return new, found, skipped


def _distinct(registrations: list[Registration]) -> list[Registration]:
    """One registration per tensor (a tied weight is found twice): the first."""
    distinct: dict[int, Registration] = {}
    for registration in registrations:
        distinct.setdefault(id(registration.parameter), registration)
    return list(distinct.values())


def constrain(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    kernel: Any = None,
    recurrent: Any = None,
    bias: Any = None,
    embedding: Any = None,
    skip_unknown: bool = False,
    compile: bool = False,
    per_input: str | Iterable[str] | None = None,
    fuse: bool = False,
) -> Constraints:
    r"""Constrain every supported submodule of ``model`` by role, and attach to ``optimizer``.

    Adding a constraint to an existing model is one line. Normalisation layers and ``PReLU``
    have no kernel or bias in this sense and are passed over, as are layers recognised as
    normalisation layers by their structure (1-D weights only and a small float ``eps``: Hugging
    Face's ``LlamaRMSNorm``, ``T5LayerNorm``...). A module with parameters of its own that the
    tables do not lay out (a type that is not supported, or a supported one extended with
    parameters of its own; layers it adds as children are walked) raises a TypeError naming
    them, unless ``skip_unknown=True``: then a warning lists every skipped tensor of two or more
    dims, and :func:`~.audit` with ``strict=True`` reports them. A role that no submodule has
    raises a ValueError. A weight tied between two modules is constrained once.

    An optimizer that holds none of the tensors (another model's) raises a ValueError naming
    them; trainable tensors it does not hold are named in a warning (its steps neither update
    nor project them); frozen ones it does not hold are left alone, as hooks leave frozen
    weights (the audit shows them).

    Args:
        model: The model (``torch.compile``, DDP and FSDP2-wrapped models work).
        optimizer: The optimizer to attach to; ``None`` to attach later with
            :meth:`Constraints.attach`.
        kernel: The constraint for input weights (Linear, Conv, ConvTranspose, RNN
            ``weight_ih``, attention projections, transformers' ``Conv1D``), and for embedding
            tables unless ``embedding`` is given.
        recurrent: The constraint for recurrent weights (RNN ``weight_hh``, LSTM ``weight_hr``).
        bias: The constraint for bias vectors, each one norm over the whole vector.
        embedding: The constraint for embedding tables (``Embedding``, ``EmbeddingBag``), one
            norm per embedding vector.
        skip_unknown: Pass over the parameters the tables do not lay out instead of raising.
        compile: Project through ``torch.compile`` (see :class:`Constraints`).
        per_input: The modules whose kernels take one norm per *input* unit instead of one per
            output unit (nGPT's attention-output and MLP down-projections): a regular expression
            or several, each matched against whole module paths (``r".*\.(o_proj|down_proj)"``).
            2-D weights only; a pattern that matches no module raises.
        fuse: Update and project the tensors the native kernels can take in one pass, in a
            step pre-hook (see :meth:`Constraints.attach`): the same results, bit for bit, at
            about the cost of the unconstrained step.

    Returns:
        The registry (its hook is attached when ``optimizer`` is given). The constraints are
        keyword-only: ``constrain(model, optimizer, kernel=MaxNorm(3))``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"constrain() expects an nn.Module, got {type(model).__name__}")
    if optimizer is not None:
        optimizer = check_optimizer(optimizer, "constrain")
    elif fuse:
        raise TypeError("fuse=True needs the optimizer (or attach(optimizer, fuse=True) later)")
    request = Request.of(wc.get, kernel=kernel, recurrent=recurrent, bias=bias, embedding=embedding)
    new, found, skipped = _walk_model(model, request, skip_unknown, PerInput(per_input))
    missing = request.missing(found)
    if missing:
        raise ValueError(f"no module of {type(model).__name__} has {' or '.join(missing)} weights")
    outside = [] if optimizer is None else check_trained_by(optimizer, _distinct(new))
    registry = Constraints(compile=compile)
    registry._extend(new)
    registry._skipped += skipped
    if optimizer is not None:
        registry.attach(optimizer, fuse=fuse)
    warn_skipped(skipped)
    if outside:
        warnings.warn(outside_warning(outside, len(registry)), UserWarning, stacklevel=2)
    return registry

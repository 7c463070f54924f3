"""Tensors the layer tables do not lay out: the parameters of unknown layers and the extra ones
of known layers (a subclass of ``nn.Linear`` with a weight of its own). :func:`~.constrain`
refuses them by name, or with ``skip_unknown=True`` passes over them with a warning listing
every one of two or more dims, which :func:`~.audit` then reports.

Example:
    >>> import torch
    >>> from weight_constraints import MaxNorm, get
    >>> from weight_constraints.adapters._roles import Request
    >>> class Scaled(torch.nn.Linear):
    ...     def __init__(self):
    ...         super().__init__(3, 4)
    ...         self.gain = torch.nn.Parameter(torch.ones(4, 3))
    >>> [name for _, _, name, _ in skips(Scaled(), "fc", Request.of(get, kernel=MaxNorm(1)))]
    ['fc.gain']
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from weight_constraints.adapters._roles import Request

from ._layers import extra_parameters, is_known

__all__ = ["Skipped", "describe", "join", "skips", "unknown_error", "warn_skipped"]

Skipped = tuple[nn.Module, str, str, Any]
"""``(module, attribute, name, constraint)``: a tensor of two or more dims passed over, with
the kernel constraint asked of the model it belongs to (``None`` when none was)."""


def join(path: str, name: str) -> str:
    """``name`` under the module path ``path`` (``""`` for the model itself)."""
    return f"{path}.{name}" if path else name


def _known_base(module: nn.Module) -> str:
    """The name of the known type ``module`` is a subclass of."""
    for cls in type(module).__mro__[1:]:
        if cls.__module__.startswith(("torch.", "transformers")):
            return cls.__name__
    return type(module).__name__


def describe(module: nn.Module) -> str:
    """Why the tables do not lay out a parameter of ``module``."""
    if is_known(module):
        return f"{type(module).__name__} adds it to {_known_base(module)}"
    return f"{type(module).__name__} is not a supported type"


def skips(module: nn.Module, path: str, request: Request, *, extras: bool = True) -> list[Skipped]:
    """The own tensors of two or more dims of ``module`` (at ``path``) that are passed over:
    the extra parameters of a known module (``extras``), or all of them."""
    names = extra_parameters(module) if extras else list(module._parameters)
    kernel = request.constraint_for("kernel")
    found = [(name, module._parameters[name]) for name in names]
    return [
        (module, name, join(path, name), kernel)
        for name, p in found
        if p is not None and p.ndim >= 2
    ]


def warn_skipped(skipped: list[Skipped], *, stacklevel: int = 3) -> None:
    """Warn, naming each, that the tensors ``skipped`` are not constrained."""
    if not skipped:
        return
    described = ", ".join(
        f"{name} ({'x'.join(map(str, getattr(module, attr).shape))}: {describe(module)})"
        for module, attr, name, _ in skipped
    )
    warnings.warn(
        f"{len(skipped)} tensor(s) of two or more dims were not constrained: {described}. "
        "Constrain them with Constraints.add(tensor, constraint, dims=...) if they need it; "
        "audit(strict=True) reports them until then",
        UserWarning,
        stacklevel=stacklevel,
    )


def unknown_error(path: str, module: nn.Module, extras: list[str]) -> TypeError:
    """The error for a module with parameters the tables do not lay out: an unknown type with
    parameters of its own, or a known one with ``extras`` (their names)."""
    where = path or "<model>"
    if not extras:
        return TypeError(
            f"module {where} ({type(module).__name__}) has parameters of its own and is not a "
            "supported type; constrain them with Constraints.add(parameter, constraint, "
            "dims=...) or pass skip_unknown=True"
        )
    return TypeError(
        f"module {where} ({type(module).__name__}) adds parameters of its own to "
        f"{_known_base(module)}, which the tables do not lay out: "
        f"{', '.join(join(path, name) for name in extras)}; constrain them with "
        "Constraints.add(parameter, constraint, dims=...) or pass skip_unknown=True"
    )

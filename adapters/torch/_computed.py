"""Weights a module computes instead of holding them as parameters (parametrizations,
``weight_norm`` and ``spectral_norm`` hooks): their diagnosis, and what to constrain instead.

A projection of a computed weight would be lost at the next forward pass, so the adapter raises
for it, naming the tensor it is computed from. For weight normalisation over the per-node dims,
each node's norm of the computed weight is its magnitude ``g``: constraining ``g`` makes the
constraint hold on the computed weight.

Example:
    >>> import torch
    >>> from torch.nn.utils import parametrizations
    >>> layer = parametrizations.weight_norm(torch.nn.Linear(3, 4))
    >>> error = computed_weight_error(layer, "weight", "fc.weight", (1,), None, None)
    >>> error.note
    'fc.weight is computed by a parametrization (_WeightNorm)'
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from weight_constraints.adapters._binding import is_per_node
from weight_constraints.adapters._errors import WeightValueError

__all__ = ["computed_weight_error", "hook_sources", "is_computed", "parameter_at"]


def _moved_to(
    norm_dims: tuple[int, ...], per_node: tuple[int, ...], ndim: int, g: str, asked: Any
) -> str:
    """What to constrain instead of a weight normalised as ``g * v / ||v||`` over ``norm_dims``."""
    if not is_per_node(asked):
        return (
            f"An entry-wise constraint such as {asked!r} cannot be moved onto the magnitudes {g}: "
            "remove the weight normalisation, or constrain the tensors it starts from yourself."
        )
    if norm_dims == per_node:
        return (
            f"Each node's norm of the computed weight is its magnitude |g|, so constrain {g} "
            f"instead, over the same dims: Constraints().add({g}, {asked!r}, dims={per_node}), "
            "then attach it; the constraint then holds on the computed weight."
        )
    kept = [d for d in range(ndim) if d not in per_node]
    hint = f" (dim={kept[0]} normalises each node)" if len(kept) == 1 else ""
    return (
        f"It normalises over dims {norm_dims}, not over the per-node dims {per_node}, so the "
        f"constraint cannot be moved onto {g}: apply weight_norm with the node dim kept{hint}, "
        "or remove it."
    )


def _norm_dims(dim: int | None, ndim: int) -> tuple[int, ...]:
    if dim is None or dim == -1:
        return tuple(range(ndim))
    return tuple(d for d in range(ndim) if d != dim % ndim)


def _parametrized_error(
    owner: nn.Module, attr: str, where: str, per_node: Any, view: Any, asked: Any, when: str
) -> WeightValueError:
    prefix = where[: len(where) - len(attr)]
    parametrizations: Any = owner.parametrizations  # its attributes are made at run time
    chain = parametrizations[attr]
    kinds = ", ".join(type(p).__name__ for p in chain)
    weight_norm = len(chain) == 1 and type(chain[0]).__name__ == "_WeightNorm"
    if weight_norm and view is None:
        ndim = chain.original1.ndim
        g = f"{prefix}parametrizations.{attr}.original0"
        advice = _moved_to(_norm_dims(chain[0].dim, ndim), per_node, ndim, g, asked)
    else:
        original = "original" if hasattr(chain, "original") else "original0, original1, ..."
        advice = (
            f"Constrain the tensor it is computed from ({prefix}parametrizations.{attr}."
            f"{original}) with Constraints.add(tensor, constraint, dims=...), knowing that "
            f"the constraint then holds on that tensor, not on the computed {attr}; or remove "
            "the parametrization (torch.nn.utils.parametrize.remove_parametrizations)."
        )
    return WeightValueError(
        f"{where} is computed by a parametrization ({kinds}){when}",
        f"projecting the computed tensor would be lost at the next forward pass. {advice}",
    )


def computed_weight_error(
    owner: nn.Module,
    attr: str,
    where: str,
    per_node: tuple[int, ...],
    view: Any,
    asked: Any,
    *,
    when: str = "",
) -> WeightValueError:
    """The error for a weight that ``owner`` computes instead of holding it as a parameter at
    ``attr`` (its note says how it is computed; its message also what to constrain instead).

    Args:
        owner: The module that computes the weight.
        attr: The weight's attribute in ``owner``.
        where: The weight's name, for the message.
        per_node: The weight's per-node dims.
        view: The shape it is projected in, or ``None``.
        asked: The constraint asked for it.
        when: Appended to the note (``" since it was constrained"``).
    """
    if parametrize.is_parametrized(owner, attr):
        return _parametrized_error(owner, attr, where, per_node, view, asked, when)
    prefix = where[: len(where) - len(attr)]
    hooks = [h for h in owner._forward_pre_hooks.values() if getattr(h, "name", None) == attr]
    kind = type(hooks[0]).__name__ if hooks else ""
    if kind == "WeightNorm" and view is None:
        ndim = getattr(owner, f"{attr}_v").ndim
        norm_dims = _norm_dims(hooks[0].dim, ndim)  # type: ignore[attr-defined]
        advice = _moved_to(norm_dims, per_node, ndim, f"{prefix}{attr}_g", asked)
        return WeightValueError(
            f"{where} is computed by torch.nn.utils.weight_norm from {attr}_g and {attr}_v{when}",
            f"projecting it would be lost at the next forward pass. {advice}",
        )
    if kind:
        return WeightValueError(
            f"{where} is computed by a {kind} hook (torch.nn.utils){when}",
            "projecting it would be lost at the next forward pass. Constrain the parameter it is "
            "computed from with Constraints.add(tensor, constraint, dims=...), knowing that the "
            "constraint then holds on that tensor, or remove the hook.",
        )
    value = getattr(owner, attr, None)
    return WeightValueError(
        f"{where} is not a parameter of {type(owner).__name__}{when} (it is "
        f"{type(value).__name__}); constrain the parameter it comes from with "
        "Constraints.add(tensor, constraint, dims=...)",
        "",
    )


def is_computed(owner: nn.Module, attr: str) -> bool:
    """Whether ``owner`` computes its weight ``attr`` instead of holding it as a parameter."""
    return owner._parameters.get(attr) is None or parametrize.is_parametrized(owner, attr)


def parameter_at(
    owner: nn.Module, attr: str, where: str, per_node: Any, view: Any, asked: Any
) -> torch.Tensor:
    """The parameter ``owner`` holds at ``attr``; raise when it computes that weight instead."""
    if is_computed(owner, attr):
        raise computed_weight_error(owner, attr, where, per_node, view, asked)
    return owner._parameters[attr]  # type: ignore[return-value]


def hook_sources(module: nn.Module) -> set[str]:
    """The own parameters of ``module`` that a ``weight_norm`` or ``spectral_norm`` hook
    computes one of its weights from (``weight_g``, ``weight_v``, ``weight_orig``)."""
    computed = [getattr(h, "name", None) for h in module._forward_pre_hooks.values()]
    prefixes = tuple(f"{name}_" for name in computed if isinstance(name, str))
    return {name for name in module._parameters if prefixes and name.startswith(prefixes)}

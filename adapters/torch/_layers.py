"""The layer tables of the PyTorch adapter: which module types are known, the roles and per-node
dims of their parameters, and the catalogue the shared walk (:mod:`.._walk`) reads.

A known module's layout lists, by role, ``(name, dims, view)`` for each constrainable parameter:
its name in the module (``"out_proj.weight"`` for a child it owns), the dims that give one norm
per output unit, and the shape it is projected in when the norms exist only in another view
(grouped transposed convolutions), else ``None``.

Example:
    >>> import torch
    >>> layout(torch.nn.Linear(3, 4))["kernel"]
    [('weight', (1,), None)]
    >>> from weight_constraints.adapters._walk import walk
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LayerNorm(3))
    >>> [path for path, _ in walk(model, CATALOGUE)]
    ['0']
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from torch import nn
from torch.nn.utils import parametrize

from weight_constraints.adapters._roles import ROLES
from weight_constraints.adapters._walk import normalises

from ._computed import hook_sources

__all__ = [
    "CATALOGUE",
    "NO_ROLE_TYPES",
    "SUPPORTED_TYPES",
    "Layout",
    "Place",
    "default_dims",
    "extra_parameters",
    "is_hf_conv1d",
    "is_known",
    "layout",
    "owner",
    "per_node_dims",
]

NO_ROLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.PReLU,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
"""Modules whose parameters are neither kernels nor biases in the sense of a weight constraint:
passed over quietly (so are modules the shared :func:`normalises` recognises by structure)."""

SUPPORTED_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.modules.conv._ConvNd,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.RNNBase,
    nn.RNNCellBase,
    nn.MultiheadAttention,
)
"""The module types whose layout the tables know (with transformers' ``Conv1D``)."""

_NO_ROLE_PARAMETERS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.MultiheadAttention: ("bias_k", "bias_v"),
}
"""Own parameters of a known type that have no role (added to the keys and values)."""

Place = tuple[str, tuple[int, ...], "tuple[int, ...] | None"]
"""``(name, per-node dims, view shape or None)`` of one constrainable parameter."""

Layout = dict[str, list[Place]]
"""The constrainable parameters of a module, by role."""


def is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face transformers' ``Conv1D`` (a linear layer with weight ``(in, out)``), told by
    its type name and module, without importing transformers."""
    return any(
        cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")
        for cls in type(module).__mro__
    )


def is_known(module: nn.Module) -> bool:
    """Whether the tables lay out the parameters of ``module``."""
    return isinstance(module, SUPPORTED_TYPES) or is_hf_conv1d(module)


def _conv_transpose_layout(
    module: nn.modules.conv._ConvNd,
) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Per-node dims of a transposed convolution weight ``(in, out/groups, *k)``.

    With groups, output channel ``(g, j)`` is fed by the input channels of group ``g`` only, so
    the weight is viewed as ``(groups, in/groups, out/groups, *k)`` and the norm runs over dims 1
    and the kernel dims: one norm per output channel.
    """
    ndim = module.weight.ndim
    groups = module.groups
    if groups == 1:
        return (0, *range(2, ndim)), None
    shape = module.weight.shape
    return (1, *range(3, ndim + 1)), (groups, shape[0] // groups, *shape[1:])


def _bias(module: nn.Module, roles: Layout, name: str) -> None:
    if getattr(module, name, None) is not None:
        roles["bias"].append((name, (0,), None))


def _conv(module: nn.modules.conv._ConvNd, roles: Layout) -> None:
    if module.transposed:
        dims, view = _conv_transpose_layout(module)
    else:
        dims, view = tuple(range(1, module.weight.ndim)), None
    roles["kernel"].append(("weight", dims, view))


def _rnn(module: nn.RNNBase, roles: Layout) -> None:
    for name in module._flat_weights_names:
        if name.startswith("weight_ih"):
            roles["kernel"].append((name, (1,), None))
        elif name.startswith(("weight_hh", "weight_hr")):
            roles["recurrent"].append((name, (1,), None))
        else:
            _bias(module, roles, name)


def _attention(module: nn.MultiheadAttention, roles: Layout) -> None:
    for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
        if getattr(module, name, None) is not None:
            roles["kernel"].append((name, (1,), None))
    roles["kernel"].append(("out_proj.weight", (1,), None))
    _bias(module, roles, "in_proj_bias")
    if module.out_proj.bias is not None:
        roles["bias"].append(("out_proj.bias", (0,), None))


def _rnn_cell(module: nn.RNNCellBase, roles: Layout) -> None:
    roles["kernel"].append(("weight_ih", (1,), None))
    roles["recurrent"].append(("weight_hh", (1,), None))
    _bias(module, roles, "bias_ih")
    _bias(module, roles, "bias_hh")


def _read(module: nn.Module, roles: Layout) -> bool:
    """Fill ``roles`` with the layout of ``module``; False for a type the tables do not know.
    (transformers' ``Conv1D`` is no ``nn.Linear``: its weight is ``(in, out)``.)"""
    if isinstance(module, nn.Linear):
        roles["kernel"].append(("weight", (1,), None))
        _bias(module, roles, "bias")
    elif is_hf_conv1d(module):
        roles["kernel"].append(("weight", (0,), None))
        _bias(module, roles, "bias")
    elif isinstance(module, nn.Bilinear):
        roles["kernel"].append(("weight", (1, 2), None))
        _bias(module, roles, "bias")
    elif isinstance(module, nn.modules.conv._ConvNd):
        _conv(module, roles)
        _bias(module, roles, "bias")
    elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        roles["embedding"].append(("weight", (1,), None))
    elif isinstance(module, nn.RNNBase):
        _rnn(module, roles)
    elif isinstance(module, nn.RNNCellBase):
        _rnn_cell(module, roles)
    elif isinstance(module, nn.MultiheadAttention):
        _attention(module, roles)
    else:
        return False
    return True


def layout(module: nn.Module) -> Layout:
    """The constrainable parameters of ``module`` by role: ``(name, dims, view or None)``.

    Raises:
        TypeError: The module type is not supported.
    """
    roles: Layout = {role: [] for role in ROLES}
    if not _read(module, roles):
        raise TypeError(
            f"{type(module).__name__} is not a supported module type; constrain its parameters "
            "with Constraints.add(parameter, constraint, dims=...)"
        )
    return roles


def per_node_dims(module: nn.Module, parameter_name: str) -> tuple[int, ...]:
    """The dims that give one norm per output unit for a parameter of a supported module.

    Example:
        >>> import torch
        >>> from weight_constraints.adapters.torch import per_node_dims
        >>> per_node_dims(torch.nn.Linear(3, 4), "weight")
        (1,)
        >>> per_node_dims(torch.nn.ConvTranspose2d(3, 4, 5), "weight")  # (in, out, kh, kw)
        (0, 2, 3)
    """
    for places in layout(module).values():
        for name, dims, view in places:
            if name == parameter_name:
                if view is not None:
                    raise ValueError(
                        f"{parameter_name} of {module!r} has per-node norms only in the grouped "
                        f"view {view}; Constraints.add(module, ...) handles it"
                    )
                return dims
    raise ValueError(f"{type(module).__name__} has no constrainable parameter {parameter_name!r}")


def default_dims(module: nn.Module, attr: str) -> tuple[int, ...] | None:
    """The per-node dims of the parameter ``attr`` of ``module`` when the tables know them."""
    try:
        return per_node_dims(module, attr)
    except (TypeError, ValueError):
        return None


def owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module that holds the parameter ``name`` of ``module`` (``"out_proj.weight"``: the
    ``out_proj`` child), and its attribute there."""
    *path, attr = name.split(".")
    for part in path:
        module = getattr(module, part)
    return module, attr


def _own_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in module._parameters.items() if p is not None]


def extra_parameters(module: nn.Module) -> list[str]:
    """The own parameters of a known ``module`` that its layout does not cover: a subclass that
    adds parameters of its own (``class Scaled(nn.Linear)`` with an extra ``(out, in)``
    weight). The tensors a weight-norm or spectral-norm hook computes a laid-out weight from
    are covered (the weight is diagnosed as computed), and so are the own parameters the type
    has without a role (``MultiheadAttention``'s ``bias_k``/``bias_v``).

    Example:
        >>> import torch
        >>> class Scaled(torch.nn.Linear):
        ...     def __init__(self):
        ...         super().__init__(3, 4)
        ...         self.gain = torch.nn.Parameter(torch.ones(4, 3))
        >>> extra_parameters(Scaled()), extra_parameters(torch.nn.Linear(3, 4))
        (['gain'], [])
    """
    covered = {name for places in layout(module).values() for name, _, _ in places}
    for kind, names in _NO_ROLE_PARAMETERS.items():
        if isinstance(module, kind):
            covered.update(names)
    covered |= hook_sources(module)
    return [name for name, _ in _own_parameters(module) if name not in covered]


class _ModuleCatalogue:
    """The catalogue of ``nn.Module`` for the shared walk (:class:`.._walk.Catalogue`)."""

    def children(self, node: nn.Module) -> Iterable[tuple[str, nn.Module]]:
        return node.named_children()

    def is_known(self, node: nn.Module) -> bool:
        return is_known(node)

    def owned(self, node: nn.Module) -> Collection[str]:
        """The children whose parameters the layout of ``node`` covers (``out_proj``), and the
        parametrizations of its weights (diagnosed as computed weights, never walked)."""
        names = {name.split(".")[0] for places in layout(node).values() for name, _, _ in places}
        owned = {name for name in names if name in node._modules}
        if parametrize.is_parametrized(node):
            owned.add("parametrizations")
        return owned

    def has_own_weights(self, node: nn.Module) -> bool:
        return bool(_own_parameters(node))

    def has_no_role(self, node: nn.Module) -> bool:
        if isinstance(node, NO_ROLE_TYPES):
            return True
        return normalises(node, [p.ndim for _, p in _own_parameters(node)])


CATALOGUE = _ModuleCatalogue()
"""The tables of this adapter as the shared walk reads them."""

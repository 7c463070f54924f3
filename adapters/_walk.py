"""The walk over a model's layers, kept apart from the tables that say which layers are known.

Both module-based adapters (PyTorch modules, Keras layers) find the layers to constrain the
same way; only their catalogue differs (:class:`Catalogue`: which layer types are known, which
have no role, how to list children and own weights). The walk yields every known layer (whose
weights the tables lay out) and every other layer with weights of its own that is not a
normalisation layer, and descends into everything else. A known layer is not descended into,
except for children its layout does not cover (a subclass that adds layers of its own: those
are walked like any other).

A layer of an unknown type is recognised as a normalisation layer by its structure
(:func:`normalises`): the scale and shift of ``LlamaRMSNorm`` or ``T5LayerNorm`` have no kernel
or bias role, so a model that uses them constrains in one line.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from typing import Protocol, TypeVar

__all__ = ["Catalogue", "normalises", "walk"]

Node = TypeVar("Node")


class Catalogue(Protocol[Node]):
    """What a framework's tables tell the walk about a layer."""

    def children(self, node: Node) -> Iterable[tuple[str, Node]]:
        """The direct sublayers of ``node``, with their names."""
        ...

    def is_known(self, node: Node) -> bool:
        """Whether the tables lay out the weights of ``node`` (its roles and per-node axes)."""
        ...

    def owned(self, node: Node) -> Collection[str]:
        """The names of the children of a known ``node`` whose weights its layout covers
        (``MultiheadAttention``'s ``out_proj``); other children are walked."""
        ...

    def has_own_weights(self, node: Node) -> bool:
        """Whether ``node`` holds trainable weights itself (not through a sublayer)."""
        ...

    def has_no_role(self, node: Node) -> bool:
        """Whether the weights of ``node`` have no role in the sense of a weight constraint
        (normalisation layers, ``PReLU``): passed over quietly."""
        ...


def walk(
    node: Node, catalogue: Catalogue[Node], path: str = "", sep: str = "."
) -> Iterator[tuple[str, Node]]:
    """Yield ``(path, layer)`` for every known layer and every other layer with weights of its
    own and a role, from ``node`` down; paths join names with ``sep`` (``""`` for ``node``).

    Example:
        >>> import torch
        >>> from weight_constraints.adapters.torch._layers import CATALOGUE
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LayerNorm(3))
        >>> [path for path, _ in walk(model, CATALOGUE)]
        ['0']
    """
    if catalogue.is_known(node):
        yield path, node
        owned = catalogue.owned(node)
        children = [(name, child) for name, child in catalogue.children(node) if name not in owned]
    else:
        if catalogue.has_own_weights(node) and not catalogue.has_no_role(node):
            yield path, node
        children = list(catalogue.children(node))
    for name, child in children:
        yield from walk(child, catalogue, f"{path}{sep}{name}" if path else name, sep)


_EPSILON_MARK = "eps"


def normalises(node: object, ranks: Iterable[int]) -> bool:
    """Whether a layer of a type the tables do not know is a normalisation layer, by its
    structure: it has weights, all of them 1-D (a scale, a shift), and a small positive float
    attribute whose name holds ``eps`` (``eps``, ``epsilon``, ``variance_epsilon``), the constant
    a normalisation adds to the variance or the norm.

    Example:
        >>> class RMSNorm:  # as Hugging Face's LlamaRMSNorm holds its parameters
        ...     def __init__(self):
        ...         self.variance_epsilon = 1e-6
        >>> normalises(RMSNorm(), [1]), normalises(RMSNorm(), [1, 2]), normalises(object(), [1])
        (True, False, False)
    """
    sizes = list(ranks)
    if not sizes or any(rank != 1 for rank in sizes):
        return False
    attributes = getattr(node, "__dict__", {})
    return any(
        _EPSILON_MARK in key.lower() and isinstance(value, float) and 0.0 < value < 1.0
        for key, value in attributes.items()
    )

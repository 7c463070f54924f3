"""The role and per-node axes of each leaf of a Flax parameter tree, read from its name and what
the tree shows around it: its siblings, its parent's siblings, stacked layers, wrappers.

- ``kernel``: the layer's layout (:mod:`._layouts`); the ``recurrent`` role for the hidden
  layers of a recurrent cell its structure proves (:mod:`._cells`).
- ``embedding`` of ``Embed`` ``(num, features)``: axis 1 (one norm per embedding vector).
- ``bias`` beside a kernel: one norm over the whole bias. Normalisation layers (a ``scale``,
  ``mean`` or ``var`` beside the bias, or linen's ``LayerNorm_N``...), their statistics and
  any ``batch_stats`` or ``cache`` collection have no role.
- The kernels of ``WeightNorm`` and ``SpectralNorm`` layers, and a leaf under linen's
  ``nn.scan`` / ``nn.vmap`` modules or beside a leaf whose shape shows a stack, unless the
  stack is declared, are unknown (:class:`~._layouts.Unknown`, whose reason says what to add).

Example:
    >>> index = TreeIndex()
    >>> index.add(("Conv_0", "kernel"), (3, 3, 2, 8))
    >>> index.add(("Conv_0", "bias"), (8,))
    >>> role_of(("Conv_0", "kernel"), (3, 3, 2, 8), index)
    ('kernel', (0, 1, 2), 'kernel')
"""

from __future__ import annotations

import re
from typing import Any

from weight_constraints.adapters._roles import ROLES

from ._cells import HIDDEN, cell_of
from ._layouts import MASKED, STACK_HINT, Unknown, auto_kind, kernel_layout

__all__ = ["NO_ROLE_LEAVES", "TreeIndex", "could_be", "role_of"]

Shape = tuple[int, ...]
Names = tuple[str, ...]

# The four projections of linen's MultiHeadDotProductAttention and nnx.MultiHeadAttention.
_ATTENTION = frozenset({"query", "key", "value", "out"})
# Modules linen's nn.scan / nn.vmap make (``ScanBlock_0``, ``VmapDense_0``): stacked layers.
_LIFTED = re.compile(r"(Scan|Vmap)[A-Z]\w*_\d+")
_WRAPPER = re.compile(r"(WeightNorm|SpectralNorm)_\d+")
# Names linen gives unnamed normalisation layers; any layer with a ``scale`` is one too.
_NORM_PREFIXES = ("LayerNorm_", "BatchNorm_", "GroupNorm_", "RMSNorm_", "InstanceNorm_")
NO_ROLE_LEAVES = frozenset(
    {"scale", "mean", "var", "negative_slope", "cached_key", "cached_value", "cache_index"}
)
"""Leaves with no role: normalisation scales and statistics, PReLU slopes, attention caches."""
# Collections of a linen variables dict (and nnx.SpectralNorm's attribute) that hold no
# parameters: batch and spectral-norm statistics, decoding caches.
_NOT_PARAMETERS = frozenset({"batch_stats", "cache"})
# The roles a leaf could have, by its name; any other name could be any role.
_ROLES_OF_NAME = {"kernel": ("kernel", "recurrent"), "bias": ("bias",), "embedding": ("embedding",)}
_NODE = "node"  # what a layer's contents record for a child that is not a leaf


def could_be(names: Names) -> tuple[str, ...]:
    """The roles the leaf ``names`` could have, by its name (any role for another name)."""
    return _ROLES_OF_NAME.get(names[-1], ROLES) if names else ROLES


class TreeIndex:
    """What a tree shows around each leaf: the leaves of each layer (their shapes with stacked
    axes removed, :data:`~._layouts.MASKED` for leaves optax.masked hides), the children of
    each node, the modules whose shapes show stacked layers, and the kernels WeightNorm and
    SpectralNorm layers compute from. Built with :meth:`add`, leaf by leaf."""

    def __init__(self) -> None:
        self._leaves: dict[Names, dict[str, Any]] = {}
        self._children: dict[Names, set[str]] = {}
        self.stacks: dict[Names, str] = {}
        """Modules holding stacked layers -> the path of a leaf showing it."""
        self.wrapped: dict[str, str] = {}
        """Paths of kernels normalised by a wrapper -> the path of the wrapper's leaf."""

    def add(self, names: Names, shape: Shape | str, *, stacked: int = 0) -> None:
        """Record the leaf ``names`` of (unstacked) ``shape``; ``stacked``: its declared
        stacked axes (a declared leaf is no evidence of an undeclared stack)."""
        self._leaves.setdefault(names[:-1], {})[names[-1] if names else ""] = shape
        for depth in range(len(names)):
            self._children.setdefault(names[:depth], set()).add(names[depth])
        if not names:
            return
        where = "/".join(names)
        target = _wrapped(names)  # a wrapper's leaf shows its kernel, masked or not
        if target is not None:
            self.wrapped["/".join(target)] = where
        evidence = None if stacked or isinstance(shape, str) else _stack_evidence(names, shape)
        if evidence is not None:
            self.stacks.setdefault(evidence, where)

    def siblings(self, names: Names) -> dict[str, Any]:
        """The leaves beside the leaf ``names`` (itself included), by name, with their shapes."""
        return self._leaves.get(names[:-1], {})

    def children(self, path: Names) -> frozenset[str]:
        """The names of the children of the node ``path``."""
        return frozenset(self._children.get(path, ()))

    def layers(self, path: Names) -> dict[str, Any]:
        """The children of the node ``path``: for each child that is a node, its own children
        (a leaf's shape, or a marker for a node); for a leaf, its shape."""
        own = self._leaves.get(path, {})
        return {
            child: own[child] if child in own else self._contents((*path, child))
            for child in self.children(path)
        }

    def _contents(self, path: Names) -> dict[str, Any]:
        leaves = self._leaves.get(path, {})
        return {child: leaves.get(child, _NODE) for child in self.children(path)}


def _stack_evidence(names: Names, shape: Shape) -> Names | None:
    """The module whose layers are stacked, when the leaf ``names`` of (unstacked) ``shape``
    shows it: a layer under a linen nn.scan / nn.vmap module, a ``Dense_N`` or ``Embed_N``
    leaf of rank 3, a ``Dense_N`` / ``Conv_N`` / ``ConvTranspose_N`` bias of rank 2."""
    for depth, name in enumerate(names[:-1]):
        if _LIFTED.fullmatch(name):
            return names[: depth + 1]
    kind = auto_kind(names[-2]) if len(names) > 1 else None
    leaf = names[-1]
    if (kind in ("Dense", "Embed") and leaf in ("kernel", "embedding") and len(shape) != 2) or (
        kind in ("Dense", "Conv", "ConvTranspose") and leaf == "bias" and len(shape) != 1
    ):
        return names[:-2]
    return None


def _wrapped(names: Names) -> Names | None:
    """The path of the kernel a linen WeightNorm scale or SpectralNorm statistic is about."""
    if len(names) < 2 or not _WRAPPER.fullmatch(names[-2]) or "/" not in names[-1]:
        return None
    head = tuple("params" if name == "batch_stats" else name for name in names[:-2])
    return head + tuple(names[-1].split("/")[:-1])


def role_of(
    names: Names, shape: Shape, index: TreeIndex, *, stacked: int = 0
) -> tuple[str | None, Shape | None, str]:
    """``(role, per-node axes, note)`` of the floating leaf ``names`` of ``shape`` (stacked
    axes included; ``stacked`` of them declared), role ``None`` for a leaf with no role. The
    axes are those of one layer: add ``stacked`` to them.

    Raises:
        Unknown: The leaf could have a role but its axes cannot be read.
    """
    if not names:
        raise Unknown("an array outside a container has no name")
    where = "/".join(names)
    if where in index.wrapped:
        raise Unknown(
            f"normalised by {index.wrapped[where]} (WeightNorm / SpectralNorm): the "
            "layer's effective kernel is computed from it, so constraining it does "
            "not constrain the layer; leave it alone with rules={path_regex: None}"
        )
    lifted = next((m for m in index.stacks if names[: len(m)] == m), None)
    if lifted is not None and not stacked and names[-1] not in NO_ROLE_LEAVES:
        raise Unknown(
            f"{'/'.join(lifted) or 'the tree'} holds stacked layers (nn.scan / "
            f"nn.vmap; {index.stacks[lifted]} shows it): {STACK_HINT}"
        )
    no_role = _no_role(names)
    if no_role is not None:
        return None, None, no_role
    return _named_role(names, shape[stacked:], index)


def _no_role(names: Names) -> str | None:
    """The note of a leaf that has no role by where it is (``None``: it may have one).

    Raises:
        Unknown: A parameter of a WeightNorm or SpectralNorm layer.
    """
    name, parent = names[-1], (names[-2] if len(names) > 1 else "")
    if _NOT_PARAMETERS & set(names[:-1]) or parent.startswith("SpectralNorm_"):
        if name in _ROLES_OF_NAME:  # no Flax statistic has a parameter's name
            raise Unknown(
                f"a {name} among statistics (under batch_stats, cache or SpectralNorm_N): "
                "a layer of your own named so? give it a rule"
            )
        return "statistics"
    if parent.startswith("WeightNorm_"):
        raise Unknown(
            f"the WeightNorm scale of {name.rsplit('/', 1)[0]}: the layer's effective kernel is "
            "scale * kernel / ||kernel|| (one norm per output unit), so its per-node norms are "
            "|scale|; constrain the scale entry by entry, rules={path_regex: (constraint, ())}"
        )
    if parent == "layer_instance":
        raise Unknown(
            "a parameter inside nnx.WeightNorm or nnx.SpectralNorm: the layer's effective "
            "weight is computed from it, so constraining it does not constrain the layer; "
            "leave it alone with rules={path_regex: None} (and constrain WeightNorm's scale)"
        )
    if name in NO_ROLE_LEAVES:
        return "no role"
    return None


def _named_role(
    names: Names, shape: Shape, index: TreeIndex
) -> tuple[str | None, Shape | None, str]:
    """The role of a ``kernel``, ``bias`` or ``embedding`` leaf of (unstacked) ``shape``.

    Raises:
        Unknown: Another name, or a layout that is not proven.
    """
    name, parent = names[-1], (names[-2] if len(names) > 1 else "")
    siblings = index.siblings(names)
    attention = parent in _ATTENTION and _ATTENTION <= index.children(names[:-2])
    if name == "bias":
        return _bias_role(names, shape, siblings, attention)
    if name == "embedding":
        if len(shape) != 2:
            raise Unknown(f"an embedding of rank {len(shape)}: a stacked layer? {STACK_HINT}")
        return "embedding", (1,), "embedding"
    if name == "kernel":
        axes, _ = kernel_layout(parent, shape, siblings.get("bias"), attention=attention)
        cell = cell_of(index.layers(names[:-2])) if parent in HIDDEN else None
        if cell is not None and parent in cell.hidden:
            return "recurrent", axes, "recurrent"
        return "kernel", axes, "kernel"
    raise Unknown("a parameter Flax layers do not name")


def _bias_role(
    names: Names, shape: Shape, siblings: dict[str, Any], attention: bool
) -> tuple[str | None, Shape | None, str]:
    """A bias: one norm over the whole bias, beside a kernel whose layout proves it."""
    kernel = siblings.get("kernel")
    parent = names[-2] if len(names) > 1 else ""
    if kernel is None:
        if {"scale", "mean", "var"} & set(siblings) or parent.startswith(_NORM_PREFIXES):
            return None, None, "no role"
        raise Unknown(
            "a bias with no kernel beside it: a normalisation layer's (use_scale=False), "
            "which has no role (rules={path_regex: None}), or a layer of your own "
            "(rules={path_regex: (constraint, None)})"
        )
    if len(shape) >= 2:  # one node only when the kernel's layout proves it
        if kernel == MASKED:
            raise Unknown(
                "a bias of rank >= 2 whose kernel optax.masked hides: its layout is read "
                "from the kernel; mask the kernel and its bias alike, or give it a rule"
            )
        try:
            _, one_node = kernel_layout(parent, kernel, shape, attention=attention)
        except Unknown as unknown:
            raise Unknown(f"the kernel beside it is unknown ({unknown.reason})") from None
        if not one_node:
            raise Unknown(f"a bias of rank {len(shape)}: a stacked layer? {STACK_HINT}")
    return "bias", tuple(range(len(shape))), "bias"

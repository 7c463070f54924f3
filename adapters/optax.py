"""JAX adapter: per-node constraints on parameter pytrees (Flax linen, Flax NNX), and optax
transformations that keep them after every step.

JAX parameters are immutable arrays in a pytree, so a constraint is a pure function
``params -> params``: :func:`projection` builds it; :func:`constrained` wraps an optimizer so
that its updates land on the projected parameters (:func:`project` is the same as a
transformation to chain last). The math is the core's (:mod:`weight_constraints`) on
``jax.numpy`` arrays; it runs under ``jax.jit``, on any device, with sharded parameters. This
module only decides which leaf is which, and its per-node axes.

Roles and axes. A leaf's role and per-node axes (one norm per output unit) are read from its
name, its rank and its siblings, in Flax's layouts, and only where they prove the layout:

- ``kernel`` of rank 2 (``Dense``, ``nnx.Linear``, recurrent cells) ``(in, out)``: axis 0.
- ``kernel`` of ``Conv_N`` ``(*k, in, out)``: every axis but the last; of a layer of another
  name with a bias ``(out,)`` (``nnx.Conv``, ``DenseGeneral`` over several input axes): the
  same; of ``ConvTranspose`` with a bias telling ``(*k, in, out)`` from the
  ``transpose_kernel=True`` layout ``(*k, out, in)``; of ``DenseGeneral`` /
  ``nnx.LinearGeneral``: the input axes, from the bias shape; of ``ConvLocal_N``: the axis
  before the last; of the attention projections ``query``, ``key``, ``value``, ``out`` (beside
  one another): the input axes.
- ``kernel`` of the hidden-to-hidden layers of Flax's recurrent cells (``LSTMCell``,
  ``GRUCell``, ``OptimizedLSTMCell``, ``SimpleCell``, ``MGUCell``): the ``recurrent`` role.
- ``embedding`` of ``Embed`` ``(num, features)``: axis 1 (one norm per embedding vector).
- ``bias`` beside a kernel: one norm over the whole bias. Normalisation layers (a ``scale``,
  ``mean`` or ``var`` beside the bias, or linen's ``LayerNorm_N``...), their statistics and
  any ``batch_stats`` or ``cache`` collection have no role and are passed over.

Everything else raises a ValueError naming its path when a role could match it, unless
``rules`` covers it (``rules={path_regex: (constraint, axis)}``, or ``None`` to leave it alone)
or ``skip_unknown=True``: an ``Einsum`` kernel, a bias-free kernel of rank 3 or more under a
name of your own, a bias with no kernel beside it, a leaf with another name, a kernel whose
layout is read from a sibling that ``optax.masked`` hides, the kernels of ``WeightNorm`` and
``SpectralNorm`` layers. Layers stacked by ``nn.scan`` / ``nn.vmap`` / ``nnx.vmap`` have
leading layer axes: declare them with ``stacked={path_regex: n}``, and each layer keeps its
own norms; where the shapes show a stack that is not declared, it raises. The axis rule is the
one of every adapter (:func:`weight_constraints.adapters._rules.bind_axes`): a constraint's
default axis means the per-node axes; an explicit axis is honoured when it names them and
rejected otherwise.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from weight_constraints import MaxNorm, node_norms
    >>> from weight_constraints.adapters.optax import constrained, projection
    >>> params = {"Dense_0": {"kernel": jnp.full((3, 4), 2.0), "bias": jnp.zeros(4)}}
    >>> constrain = projection(kernel=MaxNorm(1.0))
    >>> dense = constrain(params)["Dense_0"]
    >>> node_norms(dense["kernel"], axis=0).round(6)  # one norm per output unit
    Array([1., 1., 1., 1.], dtype=float32)
    >>> tx = constrained(optax.sgd(0.1), kernel=MaxNorm(1.0))
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)  # params are required
    >>> new = optax.apply_updates(params, updates)["Dense_0"]
    >>> bool((node_norms(new["kernel"], axis=0) <= 1.0 + 1e-6).all())
    True
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import weight_constraints as wc
from weight_constraints.adapters._rules import (
    ROLES,
    Audit,
    AuditRow,
    bind_axes,
    explicit_roles,
    resolve_roles,
    worst_violation,
)

__all__ = ["audit", "constrained", "project", "projection"]

# Flax's recurrent cells hold one Dense layer per gate (linen, NNX LSTMCell) or per input
# (NNX GRUCell, OptimizedLSTMCell, SimpleCell): input-to-hidden and hidden-to-hidden.
_CELL_INPUT = frozenset({"i", "ii", "if", "if_", "ig", "io", "ir", "iz", "in", "dense_i"})
_CELL_HIDDEN = frozenset({"h", "hi", "hf", "hg", "ho", "hr", "hz", "hn", "dense_h"})
# The four projections of linen's MultiHeadDotProductAttention and nnx.MultiHeadAttention.
_ATTENTION = frozenset({"query", "key", "value", "out"})
# The names linen gives layers it names itself (``Conv_0``): proof of the layer's type.
_AUTO_NAME = re.compile(r"(Dense|DenseGeneral|Conv|ConvTranspose|ConvLocal|Embed|Einsum)_\d+")
# Modules linen's nn.scan / nn.vmap make (``ScanBlock_0``, ``VmapDense_0``): stacked layers.
_LIFTED = re.compile(r"(Scan|Vmap)[A-Z]\w*_\d+")
_WRAPPER = re.compile(r"(WeightNorm|SpectralNorm)_\d+")
# Names linen gives unnamed normalisation layers; any layer with a ``scale`` is one too.
_NORM_PREFIXES = ("LayerNorm_", "BatchNorm_", "GroupNorm_", "RMSNorm_", "InstanceNorm_")
# Leaves with no role: normalisation scales and statistics, PReLU slopes, attention caches.
_NO_ROLE_LEAVES = frozenset(
    {"scale", "mean", "var", "negative_slope", "cached_key", "cached_value", "cache_index"}
)
# Collections of a linen variables dict (and nnx.SpectralNorm's attribute) that hold no
# parameters: batch and spectral-norm statistics, decoding caches.
_NOT_PARAMETERS = frozenset({"batch_stats", "cache"})
# The roles a leaf could have, by its name; any other name could be any role.
_ROLES_OF_NAME = {"kernel": ("kernel", "recurrent"), "bias": ("bias",), "embedding": ("embedding",)}
_MASKED = "masked"  # the shape recorded for a sibling that optax.masked hides
_STACK_HINT = "declare the stacked axes with stacked={path_regex: number of leading axes}"


class _Unknown(Exception):
    """A leaf whose per-node axes cannot be read from its name, rank and siblings."""


class _Leaf(NamedTuple):
    """How one leaf is projected: ``constraint`` is bound to ``axes`` (``None``: unchanged)."""

    path: str
    shape: tuple[int, ...]
    constraint: Any
    axes: tuple[int, ...] | None
    note: str


Rules = Mapping[str, "tuple[Any, Any] | None"]


# -- reading the tree ------------------------------------------------------------------------------


def _key_name(key: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            value = getattr(key, attribute)
            if isinstance(value, tuple):  # nnx.State keys such as ('kernel', 'sigma')
                return "/".join(map(str, value))
            return str(value)
    return str(key)


def _names(path: tuple[Any, ...]) -> tuple[str, ...]:
    """A key path as names; the trailing ``.value`` of an ``nnx.Variable`` is dropped."""
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    return tuple(_key_name(key) for key in path)


def _is_masked(leaf: Any) -> bool:
    return isinstance(leaf, optax.MaskedNode)


def _is_floating(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def _auto_kind(parent: str) -> str | None:
    """The layer type linen's automatic name ``parent`` proves (``"Conv"``), else ``None``."""
    match = _AUTO_NAME.fullmatch(parent)
    return match.group(1) if match else None


def _beside(shape: tuple[int, ...], bias: tuple[int, ...], why: str) -> _Unknown:
    return _Unknown(f"a kernel {shape} beside a bias {bias}: {why}")


def _kernel_layout(
    parent: str, shape: tuple[int, ...], bias: Any, attention: bool
) -> tuple[tuple[int, ...], bool]:
    """``(per-node axes, whether a bias of rank >= 2 beside it is one node)`` of a Flax
    ``kernel`` of ``shape`` in the layer ``parent``, whose sibling bias has shape ``bias``
    (``None``: no bias; ``_MASKED``: hidden by optax.masked). Only layouts the name or the
    shapes prove are read; anything else raises.

    Raises:
        _Unknown: The layout is not proven.
    """
    kind, ndim = _auto_kind(parent), len(shape)
    if kind == "Einsum":
        raise _Unknown("an Einsum kernel: its per-node axes depend on the equation")
    if ndim < 2:
        raise _Unknown(f"a kernel of rank {ndim}")
    if bias == _MASKED:
        if ndim > 2:
            raise _Unknown(
                "its layout is read from the bias beside it, which optax.masked hides: mask "
                "the kernel and its bias alike, or give the kernel a rule"
            )
        bias = None
    if ndim == 2:  # Dense, nnx.Linear, a recurrent cell's layers: (in, out)
        if bias is not None and bias != shape[-1:]:
            raise _beside(shape, bias, f"a stacked layer? {_STACK_HINT}")
        return (0,), False
    if kind in ("Dense", "Embed"):
        raise _Unknown(
            f"a {kind} kernel has rank 2, this one {ndim}: a stacked layer? {_STACK_HINT}"
        )
    if attention:  # query, key, value: (in, heads, head_dim); out: (heads, head_dim, out)
        wanted = shape[-1:] if parent == "out" else shape[1:]
        if ndim == 3 and bias in (None, wanted):
            return ((0, 1) if parent == "out" else (0,)), True
        raise _Unknown(f"an attention {parent!r} kernel {shape}: a stacked layer? {_STACK_HINT}")
    if kind == "ConvLocal":  # (*positions, k * in, out) beside a bias (*positions, out)
        if bias is None or (shape[:-2] == bias[:-1] and shape[-1:] == bias[-1:]):
            return (ndim - 2,), True
        raise _beside(shape, bias, f"a stacked layer? {_STACK_HINT}")
    if bias is None:
        if kind == "Conv" and ndim <= 5:  # (*k, in, out)
            return tuple(range(ndim - 1)), False
        if kind == "DenseGeneral":
            raise _Unknown("a bias-free DenseGeneral kernel: its input axes are not known")
        if kind == "ConvTranspose":
            raise _Unknown(
                "a bias-free ConvTranspose kernel: (*k, in, out), or (*k, out, in) with "
                "transpose_kernel=True; give it a rule with the axes of its layout"
            )
        raise _Unknown(
            f"a kernel of rank {ndim} without a bias, under a name of your own: a Conv's "
            "(*k, in, out), a LinearGeneral's (*in, *features), a ConvTranspose's with "
            "transpose_kernel=True (*k, out, in) or a stacked layer's (leading layer axes) "
            "cannot be told apart; give it a rule with its per-node axes"
        )
    if len(bias) == 1:
        last, before = shape[-1:] == bias, shape[-2:-1] == bias
        if kind == "ConvTranspose" and last == before:
            raise _beside(
                shape,
                bias,
                "a ConvTranspose kernel with as many inputs as outputs: (*k, in, out), or "
                "(*k, out, in) with transpose_kernel=True; give it a rule with the axes of "
                "its layout",
            )
        if kind == "ConvTranspose" and before:  # transpose_kernel=True: (*k, out, in)
            return tuple(a for a in range(ndim) if a != ndim - 2), False
        if last and (kind != "Conv" or ndim <= 5):  # Conv (*k, in, out), DenseGeneral (*in, out)
            return tuple(range(ndim - 1)), False
        raise _beside(shape, bias, "not a layout of a Flax layer; give it a rule")
    if kind in ("Conv", "ConvTranspose"):
        raise _beside(shape, bias, f"a {kind}'s bias has rank 1: a stacked layer? {_STACK_HINT}")
    # DenseGeneral / LinearGeneral: (*batch, *in, *features) beside a bias (*batch, *features).
    k = len(bias)
    tail = shape[-k:] == bias and ndim > k
    leads = [j for j in range(1, k) if shape[:j] == bias[:j] and shape[ndim - k + j :] == bias[j:]]
    if tail and not leads:
        return tuple(range(ndim - k)), True
    if kind == "DenseGeneral" and leads and not tail and len(leads) == 1:
        j = leads[0]  # batch_dims: the kernel's nodes are known, the bias's are not
        return tuple(range(j, ndim - k + j)), False
    raise _beside(
        shape,
        bias,
        "a LinearGeneral's (*in, *features), or a stacked layer's or a batched layer's "
        f"(leading axes in both); {_STACK_HINT} or give it a rule",
    )


def _role(
    names: tuple[str, ...],
    shape: tuple[int, ...],
    siblings: Mapping[str, Any],
    cousins: frozenset[str],
) -> tuple[str | None, tuple[int, ...] | None, str]:
    """``(role, per-node axes, note)`` of a floating leaf; role ``None`` for a leaf with no role.

    ``siblings`` maps the names of the leaves beside it to their shapes (``_MASKED`` when
    optax.masked hides them), stacked axes removed; ``cousins`` are the names of its parent and
    the parent's siblings (the layers of a recurrent cell, the projections of an attention).

    Raises:
        _Unknown: The leaf could have a role but its axes cannot be read.
    """
    if not names:
        raise _Unknown("an array outside a container has no name")
    name = names[-1]
    parent = names[-2] if len(names) > 1 else ""
    if _NOT_PARAMETERS & set(names[:-1]):
        return None, None, "statistics"
    if parent.startswith("SpectralNorm_"):
        return None, None, "statistics"
    if parent.startswith("WeightNorm_"):
        raise _Unknown(
            f"the WeightNorm scale of {name.rsplit('/', 1)[0]}: the layer's effective kernel is "
            "scale * kernel / ||kernel|| (one norm per output unit), so its per-node norms are "
            "|scale|; constrain the scale entry by entry, rules={path_regex: (constraint, ())}"
        )
    if parent == "layer_instance":
        raise _Unknown(
            "a parameter inside nnx.WeightNorm or nnx.SpectralNorm: the layer's effective "
            "weight is computed from it, so constraining it does not constrain the layer; "
            "leave it alone with rules={path_regex: None} (and constrain WeightNorm's scale)"
        )
    norm_layer = bool({"scale", "mean", "var"} & set(siblings)) or parent.startswith(_NORM_PREFIXES)
    if name in _NO_ROLE_LEAVES:
        return None, None, "no role"
    attention = parent in _ATTENTION and _ATTENTION <= cousins
    if name == "bias":
        kernel = siblings.get("kernel")
        if kernel is None:
            if norm_layer:
                return None, None, "no role"
            raise _Unknown(
                "a bias with no kernel beside it: a normalisation layer's (use_scale=False), "
                "which has no role (rules={path_regex: None}), or a layer of your own "
                "(rules={path_regex: (constraint, None)})"
            )
        if len(shape) >= 2:  # one node only when the kernel's layout proves it
            if kernel == _MASKED:
                raise _Unknown(
                    "a bias of rank >= 2 whose kernel optax.masked hides: its layout is read "
                    "from the kernel; mask the kernel and its bias alike, or give it a rule"
                )
            try:
                _, one_node = _kernel_layout(parent, kernel, shape, attention)
            except _Unknown as reason:
                raise _Unknown(f"the kernel beside it is unknown ({reason})") from None
            if not one_node:
                raise _Unknown(f"a bias of rank {len(shape)}: a stacked layer? {_STACK_HINT}")
        return "bias", tuple(range(len(shape))), "bias"
    if name == "embedding":
        if len(shape) != 2:
            raise _Unknown(f"an embedding of rank {len(shape)}: a stacked layer? {_STACK_HINT}")
        return "embedding", (1,), "embedding"
    if name == "kernel":
        axes, _ = _kernel_layout(parent, shape, siblings.get("bias"), attention)
        in_cell = cousins <= (_CELL_INPUT | _CELL_HIDDEN) and cousins & _CELL_INPUT
        if in_cell and cousins & _CELL_HIDDEN and parent in _CELL_HIDDEN:
            return "recurrent", axes, "recurrent"
        return "kernel", axes, "kernel"
    raise _Unknown("a parameter Flax layers do not name")


def _stack_evidence(names: tuple[str, ...], shape: tuple[int, ...]) -> tuple[str, ...] | None:
    """The module whose layers are stacked, when the leaf ``names`` of (unstacked) ``shape``
    shows it: a layer under a linen nn.scan / nn.vmap module, a ``Dense_N`` or ``Embed_N``
    leaf of rank 3, a ``Dense_N`` / ``Conv_N`` / ``ConvTranspose_N`` bias of rank 2."""
    for depth, name in enumerate(names[:-1]):
        if _LIFTED.fullmatch(name):
            return names[: depth + 1]
    kind = _auto_kind(names[-2]) if len(names) > 1 else None
    leaf = names[-1]
    if (kind in ("Dense", "Embed") and leaf in ("kernel", "embedding") and len(shape) != 2) or (
        kind in ("Dense", "Conv", "ConvTranspose") and leaf == "bias" and len(shape) != 1
    ):
        return names[:-2]
    return None


def _wrapped(names: tuple[str, ...]) -> tuple[str, ...] | None:
    """The path of the kernel a linen WeightNorm scale or SpectralNorm statistic is about."""
    if len(names) < 2 or not _WRAPPER.fullmatch(names[-2]) or "/" not in names[-1]:
        return None
    head = tuple("params" if name == "batch_stats" else name for name in names[:-2])
    return head + tuple(names[-1].split("/")[:-1])


def _compile_rules(rules: Rules | None) -> list[tuple[str, re.Pattern, Any, Any]]:
    """``(pattern, regex, constraint or None, axis)`` per rule, checked."""
    if rules is None:
        return []
    if not isinstance(rules, Mapping):
        raise TypeError(
            f"rules must map path patterns to (constraint, axis) or None, got {rules!r}"
        )
    compiled = []
    for pattern, value in rules.items():
        try:
            regex = re.compile(pattern)
        except (re.error, TypeError) as error:
            raise ValueError(f"rules: {pattern!r} is not a regular expression ({error})") from None
        if value is None:
            compiled.append((pattern, regex, None, None))
            continue
        if not (isinstance(value, tuple) and len(value) == 2):
            raise ValueError(
                f"rules[{pattern!r}] must be (constraint, axis) or None, got {value!r}; "
                "the axis is the axes each norm is taken over (None: the whole leaf)"
            )
        constraint = wc.get(value[0])
        if constraint is None:
            raise ValueError(f"rules[{pattern!r}] has no constraint; use None to skip a leaf")
        compiled.append((pattern, regex, constraint, value[1]))
    return compiled


def _compile_stacked(stacked: Mapping[str, int] | None) -> list[tuple[str, re.Pattern, int]]:
    """``(pattern, regex, number of stacked leading axes)`` per declaration, checked."""
    if stacked is None:
        return []
    if not isinstance(stacked, Mapping):
        raise TypeError(f"stacked must map path patterns to numbers of axes, got {stacked!r}")
    compiled = []
    for pattern, n in stacked.items():
        try:
            regex = re.compile(pattern)
        except (re.error, TypeError) as error:
            raise ValueError(
                f"stacked: {pattern!r} is not a regular expression ({error})"
            ) from None
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(
                f"stacked[{pattern!r}] must be the number of stacked leading axes (1, 2...), "
                f"got {n!r}"
            )
        compiled.append((pattern, regex, n))
    return compiled


class _Projection:
    """The plan behind :func:`projection`, :func:`project`, :func:`constrained` and
    :func:`audit`."""

    def __init__(
        self,
        roles: dict[str, Any],
        rules: Rules | None,
        stacked: Mapping[str, int] | None,
        skip_unknown: bool,
    ) -> None:
        given = {role: wc.get(c) for role, c in roles.items()}
        self.wanted = resolve_roles(**given)
        self.asked = explicit_roles(given)
        self.rules = _compile_rules(rules)
        self.stacked = _compile_stacked(stacked)
        self.skip_unknown = skip_unknown
        if not self.asked and not self.rules:
            raise ValueError(
                "nothing to project: give kernel=, recurrent=, bias=, embedding= or rules="
            )

    def _stack_of(self, where: str, shape: tuple[int, ...], used: set[str]) -> int:
        """The number of stacked leading axes declared for the leaf ``where``."""
        matches = [(p, n) for p, regex, n in self.stacked if regex.fullmatch(where)]
        if len(matches) > 1:
            listed = ", ".join(repr(p) for p, _ in matches)
            raise ValueError(f"{where} matches several stacked patterns ({listed})")
        if not matches:
            return 0
        pattern, n = matches[0]
        used.add(pattern)
        if n >= len(shape):
            raise ValueError(
                f"stacked[{pattern!r}] = {n} leading axes, but {where} has shape {shape}"
            )
        return n

    def plan(self, tree: Any) -> tuple[list[Any], Any, list[_Leaf]]:
        """Flatten ``tree``; return its leaves, its treedef and how each leaf is projected.

        Raises:
            ValueError: A leaf a role could match has unknown axes, an explicit axis is not the
                per-node one, a rule or stacked pattern matches no leaf or a leaf matches
                several, or an asked role matches no leaf.
            TypeError: A rule or an asked role matches a leaf that is not floating-point.
        """
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_masked)
        paths = [_names(path) for path, _ in flat]
        used_stacks: set[str] = set()
        stacks, siblings, children = [], {}, {}
        stacked_modules: dict[tuple[str, ...], str] = {}
        wrapped: dict[str, str] = {}
        for names, (_, leaf) in zip(paths, flat, strict=True):
            where, shape = "/".join(names), tuple(np.shape(leaf))
            n = 0 if _is_masked(leaf) else self._stack_of(where, shape, used_stacks)
            stacks.append(n)
            inner = _MASKED if _is_masked(leaf) else shape[n:]
            siblings.setdefault(names[:-1], {})[names[-1] if names else ""] = inner
            for depth in range(len(names)):
                children.setdefault(names[:depth], set()).add(names[depth])
            evidence = None if n or _is_masked(leaf) or not names else _stack_evidence(names, shape)
            if evidence is not None:
                stacked_modules.setdefault(evidence, where)
            target = _wrapped(names) if names else None
            if target is not None:
                wrapped["/".join(target)] = where
        plans, unknown, used_rules, found, masked = [], [], set(), set(), []
        for names, n, (_, leaf) in zip(paths, stacks, flat, strict=True):
            where = "/".join(names)
            shape = tuple(np.shape(leaf))
            if _is_masked(leaf):
                masked.append(where)
                plans.append(_Leaf(where, shape, None, None, "masked out (optax.masked)"))
                continue
            by_rule = self._by_rule(where, shape, leaf, used_rules)
            if by_rule is not None:
                plans.append(by_rule)
                continue
            could_be = _ROLES_OF_NAME.get(names[-1], ROLES) if names else ROLES
            if not _is_floating(leaf):
                if (
                    names
                    and names[-1] in _ROLES_OF_NAME
                    and any(self.wanted[r] is not None for r in could_be)
                ):
                    self._check_floating(leaf, where, names[-1])
                plans.append(_Leaf(where, shape, None, None, "not floating-point"))
                continue
            try:
                if where in wrapped:
                    raise _Unknown(
                        f"normalised by {wrapped[where]} (WeightNorm / SpectralNorm): the "
                        "layer's effective kernel is computed from it, so constraining it does "
                        "not constrain the layer; leave it alone with rules={path_regex: None}"
                    )
                lifted = next((m for m in stacked_modules if names[: len(m)] == m), None)
                if lifted is not None and not n and names[-1] not in _NO_ROLE_LEAVES:
                    raise _Unknown(
                        f"{'/'.join(lifted) or 'the tree'} holds stacked layers (nn.scan / "
                        f"nn.vmap; {stacked_modules[lifted]} shows it): {_STACK_HINT}"
                    )
                role, per_node, note = _role(
                    names,
                    shape[n:],
                    siblings[names[:-1]],
                    frozenset(children.get(names[:-2], ())),
                )
            except _Unknown as reason:
                if any(self.wanted[r] is not None for r in could_be):
                    unknown.append(f"{where} {shape}: {reason}")
                plans.append(_Leaf(where, shape, None, None, f"unknown ({reason}): left alone"))
                continue
            constraint = None if role is None else self.wanted[role]
            if n:
                note = f"{note}, {n} stacked axes" if n > 1 else f"{note}, stacked"
            if constraint is None:
                plans.append(_Leaf(where, shape, None, None, note))
                continue
            found.add(role)
            axes = bind_axes(constraint, tuple(a + n for a in per_node), shape, where)
            plans.append(_Leaf(where, shape, _bound(constraint, axes), axes, note))
        if unknown and not self.skip_unknown:
            raise ValueError(
                "cannot tell the per-node axes of these parameters:\n  "
                + "\n  ".join(unknown)
                + "\nConstrain them with rules={path_regex: (constraint, axis)}, leave them "
                "alone with rules={path_regex: None}, or pass skip_unknown=True."
            )
        unused = [rule[0] for rule in self.rules if rule[0] not in used_rules]
        if unused:
            raise ValueError(
                f"rules {unused} match no parameter (paths look like {_example(paths)})"
            )
        unused = [pattern for pattern, _, _ in self.stacked if pattern not in used_stacks]
        if unused:
            raise ValueError(
                f"stacked {unused} match no parameter (paths look like {_example(paths)})"
            )
        if "embedding" in found and "embedding" not in self.asked:
            found.add("kernel")  # the kernel constraint, taken by the embedding tables
        missing = [role for role in self.asked if role not in found]
        if missing:
            hidden = (
                f" (optax.masked hides {len(masked)} leaves from it, such as {masked[0]!r}; a "
                "role whose parameters are all masked out has nothing to constrain)"
                if masked
                else ""
            )
            raise ValueError(f"no parameter has the role {' or '.join(missing)}{hidden}")
        return [leaf for _, leaf in flat], treedef, plans

    def _by_rule(self, where: str, shape: tuple[int, ...], leaf: Any, used: set[str]) -> Any:
        """How the rule matching ``where`` projects the leaf (``None``: no rule matches); the
        rule's pattern is added to ``used``."""
        matches = [rule for rule in self.rules if rule[1].fullmatch(where)]
        if len(matches) > 1:
            listed = ", ".join(repr(rule[0]) for rule in matches)
            raise ValueError(f"{where} matches several rules ({listed}); make them exclusive")
        if not matches:
            return None
        pattern, _, constraint, axis = matches[0]
        used.add(pattern)
        if constraint is None:
            return _Leaf(where, shape, None, None, f"left alone by rule {pattern!r}")
        self._check_floating(leaf, where, f"rule {pattern!r}")
        axes = bind_axes(constraint, _rule_axes(axis, shape, where), shape, where)
        return _Leaf(where, shape, _bound(constraint, axes), axes, f"rule {pattern!r}")

    @staticmethod
    def _check_floating(leaf: Any, where: str, by: str) -> None:
        if not _is_floating(leaf):
            raise TypeError(
                f"{where} is matched by {by} but has dtype {getattr(leaf, 'dtype', type(leaf))}; "
                "only floating-point parameters can be constrained"
            )

    def __call__(self, tree: Any) -> Any:
        leaves, treedef, plans = self.plan(tree)
        projected = [
            leaf if plan.constraint is None else _apply(plan.constraint, leaf)
            for leaf, plan in zip(leaves, plans, strict=True)
        ]
        return jax.tree_util.tree_unflatten(treedef, projected)


def _apply(constraint: Any, leaf: Any) -> Any:
    """``constraint`` on ``leaf``: NumPy arrays with NumPy (their dtype kept, float64 too),
    anything else with ``jax.numpy``."""
    if isinstance(leaf, (np.ndarray, np.generic)):
        return constraint(np.asarray(leaf))
    return constraint(jnp.asarray(leaf), xp=jnp)


def _rule_axes(axis: Any, shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    from weight_constraints._checks import normalize_axes

    try:
        return normalize_axes(axis, shape)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _bound(constraint: Any, axes: tuple[int, ...] | None) -> Any:
    """``constraint`` with its axis set to ``axes`` (entry-wise constraints as they are)."""
    return constraint if axes is None else dataclasses.replace(constraint, axis=axes)


def _example(paths: list[tuple[str, ...]]) -> str:
    return ", ".join(repr("/".join(p)) for p in paths[:3]) or "(no parameters)"


# -- public API ------------------------------------------------------------------------------------


def projection(
    *,
    kernel: Any = None,
    recurrent: Any = None,
    bias: Any = None,
    embedding: Any = None,
    rules: Rules | None = None,
    stacked: Mapping[str, int] | None = None,
    skip_unknown: bool = False,
) -> Callable[[Any], Any]:
    """A pure function ``params -> params`` that projects every constrained leaf of a pytree.

    Each leaf gets the constraint of its role over its per-node axes (see the module
    documentation for how roles and axes are read); other leaves come back as they are (the same
    objects). Works on Flax linen parameter dicts, on ``nnx.State`` (with or without
    ``nnx.Variable`` wrappers) and on any nested dict / list / tuple of arrays, eagerly or under
    ``jax.jit`` (the leaves are read when the function is traced), on sharded arrays too. NumPy
    leaves are projected with NumPy and keep their dtype.

    Args:
        kernel: The constraint of input kernels (``Dense``, ``Conv``, ``DenseGeneral``,
            attention projections, the input layers of recurrent cells): a core constraint
            object, a name or a config.
        recurrent: The constraint of the hidden-to-hidden kernels of Flax's recurrent cells.
        bias: The constraint of biases, one norm over each whole bias.
        embedding: The constraint of ``Embed`` tables; ``kernel``'s when not given.
        rules: ``{path_regex: (constraint, axis)}`` for any other leaf (or to override a role),
            ``axis`` being the axes each norm is taken over (``None``: the whole leaf), or
            ``{path_regex: None}`` to leave matching leaves alone. A regex must match the whole
            path, written with ``/`` (``"Dense_0/kernel"``, ``"encoder/layers/0/w"``); a leaf
            matched by two rules, and a rule that matches nothing, raise a ValueError.
        stacked: ``{path_regex: n}`` for layers stacked by ``nn.scan``, ``nn.vmap`` or
            ``nnx.vmap``: the ``n`` leading axes of the matching leaves index the layers. They
            are read as the layer they stack, and each layer keeps its own norms (a stacked
            bias gets one norm per layer).
        skip_unknown: Leave leaves whose axes cannot be read alone instead of raising.

    Returns:
        The projection, a pure function of the parameter pytree. It raises, naming the leaf, when
        a leaf's axes cannot be read, an explicit axis is not the per-node one, or an asked role
        or rule matches no leaf.

    Raises:
        ValueError: Nothing to project, or a rule is malformed.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from weight_constraints import MaxNorm, NonNeg, node_norms
        >>> from weight_constraints.adapters.optax import projection
        >>> params = {"Conv_0": {"kernel": jnp.ones((3, 3, 2, 8)), "bias": jnp.ones(8)}}
        >>> constrain = jax.jit(projection(kernel=MaxNorm(2.0), bias=NonNeg()))
        >>> conv = constrain(params)["Conv_0"]
        >>> node_norms(conv["kernel"], axis=(0, 1, 2))[:3].round(6)
        Array([2., 2., 2.], dtype=float32)
    """
    roles = {"kernel": kernel, "recurrent": recurrent, "bias": bias, "embedding": embedding}
    plan = _Projection(roles, rules, stacked, skip_unknown)

    def project_params(params: Any) -> Any:
        return plan(params)

    return project_params


def constrained(
    tx: optax.GradientTransformation,
    *,
    kernel: Any = None,
    recurrent: Any = None,
    bias: Any = None,
    embedding: Any = None,
    rules: Rules | None = None,
    stacked: Mapping[str, int] | None = None,
    skip_unknown: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """The optimizer ``tx`` with its updates landing on the projected parameters: the form to
    use, which cannot be put in the wrong place of a chain.

    ``constrained(optax.adam(1e-3), kernel=MaxNorm(3))`` runs ``tx`` and then :func:`project`
    on its updates, so that ``optax.apply_updates(params, updates)`` gives the projected
    parameters. Its state is ``tx``'s own (``inject_hyperparams`` hyperparameters stay where
    they were). Arguments as in :func:`projection`; the transformation needs the parameters,
    ``tx.update(grads, state, params)``, as ``nnx.Optimizer`` passes them.

    Nothing may change the updates after it: chain it last, and apply the updates as they come
    (a transformation chained after it, such as ``optax.scale``, moves the parameters off the
    set). Only the parameters the updates are applied to are constrained: the slow weights of
    ``optax.lookahead`` and the evaluation weights of ``optax.contrib.schedule_free`` are
    averages of them; apply :func:`projection` to them when you use them.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from weight_constraints import UnitNorm, node_norms
        >>> from weight_constraints.adapters.optax import constrained
        >>> params = {"kernel": jnp.eye(3)}
        >>> tx = constrained(optax.adam(0.1), kernel=UnitNorm())
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"kernel": jnp.ones((3, 3))}, state, params)
        >>> node_norms(optax.apply_updates(params, updates)["kernel"]).round(6)
        Array([1., 1., 1.], dtype=float32)
    """
    roles = {"kernel": kernel, "recurrent": recurrent, "bias": bias, "embedding": embedding}
    land = _lander(_Projection(roles, rules, stacked, skip_unknown))
    inner = optax.with_extra_args_support(tx)

    def update_fn(updates: Any, state: Any, params: Any = None, **extra: Any) -> tuple[Any, Any]:
        if params is None:
            raise ValueError(
                "constrained(...) needs the parameters: call tx.update(grads, state, params)"
            )
        updates, state = inner.update(updates, state, params, **extra)
        return land(updates, params), state

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def project(
    *,
    kernel: Any = None,
    recurrent: Any = None,
    bias: Any = None,
    embedding: Any = None,
    rules: Rules | None = None,
    stacked: Mapping[str, int] | None = None,
    skip_unknown: bool = False,
) -> optax.GradientTransformation:
    """An optax transformation, chained last, whose updates land on the projected parameters.

    ``optax.chain(optax.adam(1e-3), project(kernel=MaxNorm(3)))`` is
    ``constrained(optax.adam(1e-3), kernel=MaxNorm(3))``; prefer :func:`constrained`, which
    cannot be put in the wrong place: ``project`` cannot see what is chained after it, and
    anything there (``chain(project(...), adam)``, ``optax.scale``) moves the parameters off the
    set without an error. Arguments as in :func:`projection`.

    The update of a constrained leaf becomes ``projected(params + updates) - params`` where the
    projection moves an entry, and the optimizer's own update, bit for bit, everywhere else.
    Updates of bfloat16 and float16 leaves come back in float32, so that
    ``optax.apply_updates`` (which adds in float32 and rounds once to the leaf's dtype) lands
    exactly on the projected value. Float32 leaves land within half a unit in the last place of
    ``max(|old|, |projected|)``: exactly when the parameters move little, a few units in the
    last place of the projected value when a step shrinks a node by orders of magnitude (from a
    far-away initialisation); apply :func:`projection` to the new parameters when you need
    them exactly in the set.

    The transformation needs the parameters: ``tx.update(grads, state, params)`` (as
    ``nnx.Optimizer`` and ``optax.chain`` pass them); without them it raises a ValueError.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from weight_constraints import UnitNorm, node_norms
        >>> from weight_constraints.adapters.optax import project
        >>> params = {"kernel": jnp.eye(3)}
        >>> tx = optax.chain(optax.adam(0.1), project(kernel=UnitNorm()))
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"kernel": jnp.ones((3, 3))}, state, params)
        >>> node_norms(optax.apply_updates(params, updates)["kernel"]).round(6)
        Array([1., 1., 1.], dtype=float32)
    """
    roles = {"kernel": kernel, "recurrent": recurrent, "bias": bias, "embedding": embedding}
    land = _lander(_Projection(roles, rules, stacked, skip_unknown))

    def init_fn(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        if params is None:
            raise ValueError(
                "project(...) needs the parameters: call tx.update(grads, state, params)"
            )
        return land(updates, params), state

    return optax.GradientTransformation(init_fn, update_fn)


def _lander(plan: _Projection) -> Callable[[Any, Any], Any]:
    """``(updates, params) -> updates`` that land on the projected parameters."""

    def land(updates: Any, params: Any) -> Any:
        leaves, treedef, plans = plan.plan(params)
        steps = treedef.flatten_up_to(updates)
        landed = [
            step if entry.constraint is None else _landing(p, step, entry.constraint)
            for p, step, entry in zip(leaves, steps, plans, strict=True)
        ]
        return jax.tree_util.tree_unflatten(treedef, landed)

    return land


def _landing(param: Any, update: Any, constraint: Any) -> Any:
    """The update that takes ``param`` to ``constraint(param + update)`` in ``apply_updates``:
    the optimizer's own update where the projection changes nothing. Half-precision updates
    are widened to float32: ``apply_updates`` then adds in float32, where the difference of two
    half-precision values is exact, and rounds once onto the projected value."""
    new = optax.apply_updates(param, update)
    target = constraint(new, xp=jnp)
    wide = jnp.promote_types(jnp.result_type(param, update), jnp.float32)
    moved = target.astype(wide) - jnp.asarray(param).astype(wide)
    return jnp.where(target == new, jnp.asarray(update).astype(wide), moved)


def audit(
    params: Any,
    *,
    kernel: Any = None,
    recurrent: Any = None,
    bias: Any = None,
    embedding: Any = None,
    rules: Rules | None = None,
    stacked: Mapping[str, int] | None = None,
    skip_unknown: bool = False,
) -> Audit:
    """Every leaf of ``params``: the constraint and axes :func:`projection` would use (same
    arguments), and how far the leaf is from its set now. Reads the values on the host: for
    checking and logging, not for the training step.

    Example:
        >>> import jax.numpy as jnp
        >>> from weight_constraints import MaxNorm
        >>> from weight_constraints.adapters.optax import audit
        >>> params = {"Dense_0": {"kernel": jnp.full((4, 2), 1.0), "bias": jnp.zeros(2)},
        ...           "LayerNorm_0": {"scale": jnp.ones(2), "bias": jnp.zeros(2)}}
        >>> print(audit(params, kernel=MaxNorm(1.0)))
        weight             shape  constraint                      axes  active  violation  note
        Dense_0/bias       2      -                               -     -       -          bias
        Dense_0/kernel     4x2    MaxNorm(max_value=1.0, axis=0)  0     yes     1          kernel
        LayerNorm_0/bias   2      -                               -     -       -          no role
        LayerNorm_0/scale  2      -                               -     -       -          no role
    """
    roles = {"kernel": kernel, "recurrent": recurrent, "bias": bias, "embedding": embedding}
    leaves, _, plans = _Projection(roles, rules, stacked, skip_unknown).plan(params)
    rows = Audit()
    for leaf, plan in zip(leaves, plans, strict=True):
        violation = None
        if plan.constraint is not None:
            violation = worst_violation(plan.constraint, np.asarray(leaf), plan.axes)
        rows.append(
            AuditRow(
                plan.path,
                plan.shape,
                plan.constraint,
                plan.axes,
                plan.constraint is not None,
                violation,
                plan.note,
                getattr(leaf, "dtype", None),
            )
        )
    return rows

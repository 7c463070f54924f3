"""JAX adapter: per-node constraints on parameter pytrees (Flax linen, Flax NNX), and an optax
transformation that keeps them after every step.

JAX parameters are immutable arrays in a pytree, so a constraint is a pure function
``params -> params``: :func:`projection` builds it, :func:`project` wraps it as an
``optax.GradientTransformation`` to chain after the optimizer. The math is the core's
(:mod:`weight_constraints`) on ``jax.numpy`` arrays; it runs under ``jax.jit``, on any device,
with sharded parameters. This module only decides which leaf is which, and its per-node axes.

Roles and axes. A leaf's role and per-node axes (one norm per output unit) are read from its
name, its rank and its siblings, in Flax's layouts:

- ``kernel`` of ``Dense`` / ``nnx.Linear`` ``(in, out)``: axis 0; of ``Conv`` /
  ``ConvTranspose`` ``(*k, in, out)``: every axis but the last; of ``DenseGeneral`` /
  ``nnx.LinearGeneral``: the input axes, known from the bias shape or the attention projection
  names (``query``, ``key``, ``value``, ``out``); of ``ConvLocal``: the axis before the last.
- ``kernel`` of the hidden-to-hidden layers of Flax's recurrent cells (``LSTMCell``,
  ``GRUCell``, ``OptimizedLSTMCell``, ``SimpleCell``, ``MGUCell``): the ``recurrent`` role.
- ``embedding`` of ``Embed`` ``(num, features)``: axis 1 (one norm per embedding vector).
- ``bias``: one norm over the whole bias. Normalisation layers (a ``scale`` beside the bias)
  and their statistics have no role and are passed over.

A leaf whose axes cannot be known (an ``Einsum`` kernel, a leaf with another name) raises a
ValueError naming its path when a role could match it, unless ``rules`` covers it
(``rules={path_regex: (constraint, axis)}``, or ``None`` to leave it alone) or
``skip_unknown=True``. The axis rule is the one of every adapter
(:func:`weight_constraints.adapters._rules.bind_axes`): a constraint's default axis means the
per-node axes; an explicit axis is honoured when it names them and rejected otherwise.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from weight_constraints import MaxNorm, node_norms
    >>> from weight_constraints.adapters.optax import project, projection
    >>> params = {"Dense_0": {"kernel": jnp.full((3, 4), 2.0), "bias": jnp.zeros(4)}}
    >>> constrain = projection(kernel=MaxNorm(1.0))
    >>> node_norms(constrain(params)["Dense_0"]["kernel"], axis=0).round(6)  # one per output unit
    Array([1., 1., 1., 1.], dtype=float32)
    >>> tx = optax.chain(optax.sgd(0.1), project(kernel=MaxNorm(1.0)))
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)  # params are required
    >>> new = optax.apply_updates(params, updates)
    >>> bool((node_norms(new["Dense_0"]["kernel"], axis=0) <= 1.0 + 1e-6).all())
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

__all__ = ["audit", "project", "projection"]

# Flax's recurrent cells hold one Dense layer per gate (linen, NNX LSTMCell) or per input
# (NNX GRUCell, OptimizedLSTMCell, SimpleCell): input-to-hidden and hidden-to-hidden.
_CELL_INPUT = frozenset({"i", "ii", "if", "if_", "ig", "io", "ir", "iz", "in", "dense_i"})
_CELL_HIDDEN = frozenset({"h", "hi", "hf", "hg", "ho", "hr", "hz", "hn", "dense_h"})
_ATTENTION_QKV = frozenset({"query", "key", "value"})
# Names linen gives unnamed normalisation layers; any layer with a ``scale`` is one too.
_NORM_PREFIXES = ("LayerNorm_", "BatchNorm_", "GroupNorm_", "RMSNorm_", "InstanceNorm_")
# Leaves with no role: normalisation scales and statistics, PReLU slopes.
_NO_ROLE_LEAVES = frozenset({"scale", "mean", "var", "negative_slope"})
# The roles a leaf could have, by its name; any other name could be any role.
_ROLES_OF_NAME = {"kernel": ("kernel", "recurrent"), "bias": ("bias",), "embedding": ("embedding",)}


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
            return str(getattr(key, attribute))
    return str(key)


def _names(path: tuple[Any, ...]) -> tuple[str, ...]:
    """A key path as names; the trailing ``.value`` of an ``nnx.Variable`` is dropped."""
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    return tuple(_key_name(key) for key in path)


def _is_floating(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def _kernel_axes(names: tuple[str, ...], shape: tuple[int, ...], bias: Any) -> tuple[int, ...]:
    """Per-node axes of a Flax ``kernel`` of ``shape`` whose sibling bias has shape ``bias``."""
    parent = names[-2] if len(names) > 1 else ""
    ndim = len(shape)
    if parent.startswith("Einsum_"):
        raise _Unknown("an Einsum kernel: its per-node axes depend on the equation")
    if ndim < 2:
        raise _Unknown(f"a kernel of rank {ndim}")
    if ndim == 2:  # Dense, nnx.Linear, DenseGeneral with one input and one output axis: (in, out)
        return (0,)
    if bias is not None and len(bias) >= 2:
        k = len(bias)
        if shape[-k:] == bias:  # DenseGeneral with features=(f1, f2, ...): (*in, *features)
            return tuple(range(ndim - k))
        if shape[:-2] == bias[:-1] and shape[-1] == bias[-1]:  # ConvLocal: (*out, k*in, out)
            return (ndim - 2,)
        raise _Unknown(f"a kernel {shape} beside a bias {bias}")
    if parent.startswith("ConvLocal_"):
        return (ndim - 2,)
    if parent in _ATTENTION_QKV and ndim == 3:  # (in, heads, head_dim), bias-free
        return (0,)
    if bias is None and parent.startswith(("DenseGeneral_", "LinearGeneral_")):
        raise _Unknown("a bias-free DenseGeneral kernel: its input axes are not known")
    if bias is not None and bias[-1:] != shape[-1:]:
        raise _Unknown(f"a kernel {shape} beside a bias {bias}")
    if ndim <= 5:  # Conv, ConvTranspose (*k, in, out); DenseGeneral (*in, out)
        return tuple(range(ndim - 1))
    raise _Unknown(f"a kernel of rank {ndim}")


def _role(
    names: tuple[str, ...],
    shape: tuple[int, ...],
    siblings: Mapping[str, tuple[int, ...]],
    cousins: frozenset[str],
) -> tuple[str | None, tuple[int, ...] | None, str]:
    """``(role, per-node axes, note)`` of a floating leaf; role ``None`` for a leaf with no role.

    ``siblings`` maps the names of the leaves beside it to their shapes; ``cousins`` are the
    names of its parent and the parent's siblings (the layers of a recurrent cell).

    Raises:
        _Unknown: The leaf could have a role but its axes cannot be read.
    """
    if not names:
        raise _Unknown("an array outside a container has no name")
    name = names[-1]
    parent = names[-2] if len(names) > 1 else ""
    norm_layer = "scale" in siblings or parent.startswith(_NORM_PREFIXES)
    if name in _NO_ROLE_LEAVES or (name == "bias" and norm_layer):
        return None, None, "no role"
    if name == "bias":
        return "bias", tuple(range(len(shape))), "bias"
    if name == "embedding":
        if len(shape) != 2:
            raise _Unknown(f"an embedding of rank {len(shape)}")
        return "embedding", (1,), "embedding"
    if name == "kernel":
        axes = _kernel_axes(names, shape, siblings.get("bias"))
        in_cell = cousins <= (_CELL_INPUT | _CELL_HIDDEN) and cousins & _CELL_INPUT
        if in_cell and cousins & _CELL_HIDDEN and parent in _CELL_HIDDEN:
            return "recurrent", axes, "recurrent"
        return "kernel", axes, "kernel"
    raise _Unknown("a parameter Flax layers do not name")


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


class _Projection:
    """The plan behind :func:`projection`, :func:`project` and :func:`audit`."""

    def __init__(self, roles: dict[str, Any], rules: Rules | None, skip_unknown: bool) -> None:
        given = {role: wc.get(c) for role, c in roles.items()}
        self.wanted = resolve_roles(**given)
        self.asked = explicit_roles(given)
        self.rules = _compile_rules(rules)
        self.skip_unknown = skip_unknown
        if not self.asked and not self.rules:
            raise ValueError(
                "nothing to project: give kernel=, recurrent=, bias=, embedding= or rules="
            )

    def plan(self, tree: Any) -> tuple[list[Any], Any, list[_Leaf]]:
        """Flatten ``tree``; return its leaves, its treedef and how each leaf is projected.

        Raises:
            ValueError: A leaf a role could match has unknown axes, an explicit axis is not the
                per-node one, a rule matches no leaf or a leaf matches several rules, or an
                asked role matches no leaf.
            TypeError: A rule or an asked role matches a leaf that is not floating-point.
        """
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
        paths = [_names(path) for path, _ in flat]
        siblings: dict[tuple[str, ...], dict[str, tuple[int, ...]]] = {}
        children: dict[tuple[str, ...], set[str]] = {}
        for names, (_, leaf) in zip(paths, flat, strict=True):
            siblings.setdefault(names[:-1], {})[names[-1] if names else ""] = np.shape(leaf)
            for depth in range(len(names)):
                children.setdefault(names[:depth], set()).add(names[depth])
        plans, unknown, used_rules, found = [], [], set(), set()
        for names, (_, leaf) in zip(paths, flat, strict=True):
            where = "/".join(names)
            shape = tuple(np.shape(leaf))
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
                role, per_node, note = _role(
                    names, shape, siblings[names[:-1]], frozenset(children.get(names[:-2], ()))
                )
            except _Unknown as reason:
                if any(self.wanted[r] is not None for r in could_be):
                    unknown.append(f"{where} {shape}: {reason}")
                plans.append(_Leaf(where, shape, None, None, f"unknown ({reason}): left alone"))
                continue
            constraint = None if role is None else self.wanted[role]
            if constraint is None:
                plans.append(_Leaf(where, shape, None, None, note))
                continue
            found.add(role)
            axes = bind_axes(constraint, per_node, shape, where)
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
        if "embedding" in found and "embedding" not in self.asked:
            found.add("kernel")  # the kernel constraint, taken by the embedding tables
        missing = [role for role in self.asked if role not in found]
        if missing:
            raise ValueError(f"no parameter has the role {' or '.join(missing)}")
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
            leaf if plan.constraint is None else plan.constraint(jnp.asarray(leaf), xp=jnp)
            for leaf, plan in zip(leaves, plans, strict=True)
        ]
        return jax.tree_util.tree_unflatten(treedef, projected)


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
    skip_unknown: bool = False,
) -> Callable[[Any], Any]:
    """A pure function ``params -> params`` that projects every constrained leaf of a pytree.

    Each leaf gets the constraint of its role over its per-node axes (see the module
    documentation for how roles and axes are read); other leaves come back as they are (the same
    objects). Works on Flax linen parameter dicts, on ``nnx.State`` (with or without
    ``nnx.Variable`` wrappers) and on any nested dict / list / tuple of arrays, eagerly or under
    ``jax.jit`` (the leaves are read when the function is traced), on sharded arrays too.

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
        >>> node_norms(constrain(params)["Conv_0"]["kernel"], axis=(0, 1, 2))[:3].round(6)
        Array([2., 2., 2.], dtype=float32)
    """
    roles = {"kernel": kernel, "recurrent": recurrent, "bias": bias, "embedding": embedding}
    plan = _Projection(roles, rules, skip_unknown)

    def project_params(params: Any) -> Any:
        return plan(params)

    return project_params


def project(
    *,
    kernel: Any = None,
    recurrent: Any = None,
    bias: Any = None,
    embedding: Any = None,
    rules: Rules | None = None,
    skip_unknown: bool = False,
) -> optax.GradientTransformation:
    """An optax transformation, chained last, whose updates land on the projected parameters.

    ``optax.chain(optax.adam(1e-3), project(kernel=MaxNorm(3)))``: the update of a constrained
    leaf becomes ``projected(params + updates) - params``, so that ``optax.apply_updates``
    lands on the projected parameters; entries the projection leaves unchanged keep the
    optimizer's update bit for bit. The addition in ``apply_updates`` rounds once, so a moved
    entry lands within about one rounding of the projected value (not always on it bit for bit);
    apply :func:`projection` to the new parameters when you need them exactly in the set.
    Arguments as in :func:`projection`.

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
    plan = _Projection(roles, rules, skip_unknown)

    def init_fn(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        if params is None:
            raise ValueError(
                "project(...) needs the parameters: call tx.update(grads, state, params)"
            )
        leaves, treedef, plans = plan.plan(params)
        steps = treedef.flatten_up_to(updates)
        landed = [
            step if entry.constraint is None else _landing(p, step, entry.constraint)
            for p, step, entry in zip(leaves, steps, plans, strict=True)
        ]
        return jax.tree_util.tree_unflatten(treedef, landed), state

    return optax.GradientTransformation(init_fn, update_fn)


def _landing(param: Any, update: Any, constraint: Any) -> Any:
    """The update that takes ``param`` to ``constraint(param + update)`` in ``apply_updates``:
    the optimizer's own update where the projection changes nothing."""
    new = optax.apply_updates(param, update)
    target = constraint(new, xp=jnp)
    wide = jnp.result_type(param, update)
    moved = (target.astype(wide) - jnp.asarray(param).astype(wide)).astype(update.dtype)
    return jnp.where(target == new, update, moved)


def audit(
    params: Any,
    *,
    kernel: Any = None,
    recurrent: Any = None,
    bias: Any = None,
    embedding: Any = None,
    rules: Rules | None = None,
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
    leaves, _, plans = _Projection(roles, rules, skip_unknown).plan(params)
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
            )
        )
    return rows

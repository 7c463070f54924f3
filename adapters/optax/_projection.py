"""The tree reader: leaf by leaf, the constraint and axes a parameter pytree is projected with;
and :func:`projection`, the pure function ``params -> params`` built on it.

A leaf is read, in order: hidden by ``optax.masked`` (left alone); matched by a rule (the
rule's constraint over the rule's axes); not floating-point (left alone, or a TypeError when a
rule or an asked role names it); otherwise by its role (:mod:`._leaves`), bound to its per-node
axes by the axis rule every adapter shares (:func:`weight_constraints.adapters._binding.bind`,
which also checks the constraint's bounds, rules such as ``"sqrt(fan_in)"`` resolved for the
leaf, against the leaf's dtype), or, for a kernel ``per_input=`` chooses, to the axes that give
one norm per input unit (:func:`weight_constraints.adapters._binding.per_input_axes`, read on
each stacked layer's own 2-D kernel). A leaf ``per_input=`` matches that is not such a kernel
raises. The tree is read when the projection is called, or traced under ``jax.jit``: shapes,
names and dtypes only, never values.

Example:
    >>> import jax.numpy as jnp
    >>> from weight_constraints import MaxNorm
    >>> reader = TreeReader.of(kernel=MaxNorm(1.0))
    >>> reading = reader.read({"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}})
    >>> [(leaf.path, leaf.axes, leaf.note) for leaf in reading.decisions]
    [('Dense_0/bias', None, 'bias'), ('Dense_0/kernel', (0,), 'kernel')]
"""

# optax ships no type information (no py.typed): its objects are Any here.

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import weight_constraints as wc
from weight_constraints._checks import normalize_axes
from weight_constraints._dtypes import as_name
from weight_constraints.adapters._binding import PerInput, bind
from weight_constraints.adapters._roles import Request

from ._layouts import MASKED, Unknown
from ._leaves import TreeIndex, could_be, role_of
from ._patterns import (
    Rule,
    Rules,
    Stack,
    check_used,
    compile_rules,
    compile_stacked,
    rule_for,
    stack_for,
)
from ._per_input import (
    check_per_input_role,
    input_axes,
    not_per_input,
    per_input_patterns,
)

__all__ = ["Leaf", "Reading", "TreeReader", "parts", "projection", "rebuild"]


class Leaf(NamedTuple):
    """How one leaf is projected: ``constraint`` bound to ``axes`` (``None``: unchanged)."""

    path: str
    shape: tuple[int, ...]
    constraint: Any
    axes: tuple[int, ...] | None
    note: str


class Reading(NamedTuple):
    """A tree as read: its leaves, its structure, and how each leaf is projected."""

    leaves: list[Any]
    treedef: Any
    decisions: list[Leaf]

    def project(self, tree: Any) -> Any:
        """``tree`` (of this structure) with each leaf projected as decided."""
        leaves = self.treedef.flatten_up_to(tree)
        projected = [
            leaf if decision.constraint is None else _apply(decision.constraint, leaf)
            for leaf, decision in zip(leaves, self.decisions, strict=True)
        ]
        return jax.tree_util.tree_unflatten(self.treedef, projected)


def parts(tree: Any) -> tuple[tuple[str, Any], ...]:
    """The parameter trees ``tree`` holds, each with the prefix of its paths: the fast and the
    slow weights of ``optax.LookaheadParams`` (read alike, from the fast ones), else the tree
    itself."""
    if isinstance(tree, optax.LookaheadParams):
        return (("fast/", tree.fast), ("slow/", tree.slow))
    return (("", tree),)


def rebuild(tree: Any, trees: list[Any]) -> Any:
    """A tree of the kind of ``tree`` holding ``trees``, one per :func:`parts` of it."""
    if isinstance(tree, optax.LookaheadParams):
        fast, slow = trees
        return optax.LookaheadParams(fast=fast, slow=slow)
    (only,) = trees
    return only


@dataclass
class _Tally:
    """What reading a tree found, for the checks made once every leaf is read."""

    used_rules: set[str] = field(default_factory=set)
    found: set[str] = field(default_factory=set)
    unknown: list[str] = field(default_factory=list)
    masked: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TreeReader:
    """Reads parameter trees for :func:`projection`, the optax transformations and the audit:
    the constraints asked by role (``request``), ``rules=``, ``stacked=``, ``skip_unknown`` and
    the ``per_input=`` patterns. Build it with :meth:`of`."""

    request: Request
    rules: list[Rule]
    stacked: list[Stack]
    skip_unknown: bool = False
    per_input: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        *,
        kernel: Any = None,
        recurrent: Any = None,
        bias: Any = None,
        embedding: Any = None,
        rules: Rules | None = None,
        stacked: Mapping[str, int] | None = None,
        skip_unknown: bool = False,
        per_input: str | Iterable[str] | None = None,
    ) -> TreeReader:
        """The reader of these arguments (those of :func:`projection`), checked.

        Raises:
            ValueError: Nothing to project, or a rule, a stack declaration or a ``per_input``
                pattern is malformed.
            TypeError: ``rules`` or ``stacked`` is not a mapping.
        """
        request = Request.of(
            wc.get, kernel=kernel, recurrent=recurrent, bias=bias, embedding=embedding
        )
        patterns = per_input_patterns(per_input)
        reader = cls(
            request, compile_rules(rules), compile_stacked(stacked), skip_unknown, patterns
        )
        if not request.asked() and not reader.rules:
            raise ValueError(
                "nothing to project: give kernel=, recurrent=, bias=, embedding= or rules="
            )
        return reader

    def read(self, tree: Any) -> Reading:
        """Flatten ``tree`` (the fast weights of ``optax.LookaheadParams``) and decide how each
        leaf is projected.

        Raises:
            ValueError: A leaf a role could match has unknown axes, an explicit axis is not the
                per-node one, a bound does not fit a leaf's dtype, a rule or stacked pattern
                matches no leaf or a leaf matches several, or an asked role matches no leaf.
            TypeError: A rule or an asked role matches a leaf that is not floating-point, or a
                per-node constraint cannot be given a leaf's axes (no ``with_axis``).
        """
        flat, treedef = jax.tree_util.tree_flatten_with_path(parts(tree)[0][1], is_leaf=_is_masked)
        named = [(_names(path), leaf) for path, leaf in flat]
        paths = ["/".join(names) for names, _ in named]
        used_stacks: set[str] = set()
        stacks, index = [], TreeIndex()
        for (names, leaf), where in zip(named, paths, strict=True):
            shape = tuple(np.shape(leaf))
            stack = None if _is_masked(leaf) else stack_for(self.stacked, where, shape)
            n = 0 if stack is None else stack.axes
            if stack is not None:
                used_stacks.add(stack.pattern)
            stacks.append(n)
            index.add(names, MASKED if _is_masked(leaf) else shape[n:], stacked=n)
        tally, choose = _Tally(), PerInput(self.per_input)
        decisions = [
            self._decide(names, leaf, n, index, tally, choose)
            for (names, leaf), n in zip(named, stacks, strict=True)
        ]
        self._check(tally, used_stacks, paths)
        kernels = [path for path in paths if path.endswith("kernel")]  # shown first
        choose.check(kernels + [path for path in paths if path not in kernels], "parameter")
        return Reading([leaf for _, leaf in named], treedef, decisions)

    def project(self, tree: Any) -> Any:
        """``tree`` with every constrained leaf projected (both halves of
        ``optax.LookaheadParams``)."""
        reading = self.read(tree)
        return rebuild(tree, [reading.project(part) for _, part in parts(tree)])

    def _asks(self, names: tuple[str, ...]) -> bool:
        """Whether an asked role could match the leaf ``names``, by its name."""
        return any(self.request.constraint_for(role) is not None for role in could_be(names))

    def _decide(
        self,
        names: tuple[str, ...],
        leaf: Any,
        n: int,
        index: TreeIndex,
        tally: _Tally,
        choose: PerInput,
    ) -> Leaf:
        """How the leaf ``names`` (with ``n`` declared stacked axes) is projected; ``choose``:
        the ``per_input=`` patterns.

        Raises:
            ValueError: ``per_input=`` matches a leaf that is not a constrained kernel.
        """
        where, shape = "/".join(names), tuple(np.shape(leaf))
        if _is_masked(leaf):
            tally.masked.append(where)
            return Leaf(where, shape, None, None, "masked out (optax.masked)")
        rule, by_input = rule_for(self.rules, where), choose(where)
        if rule is not None:
            tally.used_rules.add(rule.pattern)
            if by_input:
                raise not_per_input(where, f"is given its axes by the rule {rule.pattern!r}")
            return _by_rule(rule, where, shape, leaf)
        if not _is_floating(leaf):
            if names and names[-1] in ("kernel", "bias", "embedding") and self._asks(names):
                _check_floating(leaf, where, names[-1])
            if by_input:
                raise not_per_input(where, "is not floating-point")
            return Leaf(where, shape, None, None, "not floating-point")
        try:
            role, per_node, note = role_of(names, shape, index, stacked=n)
        except Unknown as unknown:
            if self._asks(names):
                tally.unknown.append(f"{where} {shape}: {unknown.reason}")
            return Leaf(where, shape, None, None, f"unknown ({unknown.reason}): left alone")
        constraint = None if role is None else self.request.constraint_for(role)
        if by_input:
            check_per_input_role(where, role, constraint)
        if n:
            note = f"{note}, {n} stacked axes" if n > 1 else f"{note}, stacked"
        if role is None or per_node is None or constraint is None:
            return Leaf(where, shape, None, None, note)
        tally.found.add(role)
        if by_input:  # the other axis of each layer's own 2-D kernel
            stacked, note = input_axes(constraint, per_node, shape, n, where), f"{note}, per input"
        else:
            stacked = tuple(a + n for a in per_node)
        bound, axes = bind(constraint, stacked, shape, where, dtype=as_name(leaf.dtype))
        return Leaf(where, shape, bound, axes, note)

    def _check(self, tally: _Tally, used_stacks: set[str], paths: list[str]) -> None:
        """The checks made once every leaf is read (see :meth:`read`)."""
        if tally.unknown and not self.skip_unknown:
            raise ValueError(
                "cannot tell the per-node axes of these parameters:\n  "
                + "\n  ".join(tally.unknown)
                + "\nConstrain them with rules={path_regex: (constraint, axis)}, leave them "
                "alone with rules={path_regex: None}, or pass skip_unknown=True."
            )
        check_used("rules", [rule.pattern for rule in self.rules], tally.used_rules, paths)
        check_used("stacked", [stack.pattern for stack in self.stacked], used_stacks, paths)
        missing = self.request.missing(tally.found)
        if missing:
            masked = tally.masked
            hidden = (
                f" (optax.masked hides {len(masked)} leaves from it, such as {masked[0]!r}; a "
                "role whose parameters are all masked out has nothing to constrain)"
                if masked
                else ""
            )
            raise ValueError(f"no parameter has the role {' or '.join(missing)}{hidden}")


def _by_rule(rule: Rule, where: str, shape: tuple[int, ...], leaf: Any) -> Leaf:
    """How ``rule``, which matches the leaf ``where``, projects it."""
    if rule.constraint is None:
        return Leaf(where, shape, None, None, f"left alone by rule {rule.pattern!r}")
    _check_floating(leaf, where, f"rule {rule.pattern!r}")
    try:
        per_node = normalize_axes(rule.axis, shape)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    bound, axes = bind(rule.constraint, per_node, shape, where, dtype=as_name(leaf.dtype))
    return Leaf(where, shape, bound, axes, f"rule {rule.pattern!r}")


def _check_floating(leaf: Any, where: str, by: str) -> None:
    if not _is_floating(leaf):
        raise TypeError(
            f"{where} is matched by {by} but has dtype {getattr(leaf, 'dtype', type(leaf))}; "
            "only floating-point parameters can be constrained"
        )


def _is_masked(leaf: Any) -> bool:
    return isinstance(leaf, optax.MaskedNode)


def _is_floating(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and bool(jnp.issubdtype(dtype, jnp.floating))


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


def _apply(constraint: Any, leaf: Any) -> Any:
    """``constraint`` on ``leaf``: NumPy arrays with NumPy (their dtype kept, float64 too),
    anything else as a JAX array with ``jax.numpy``."""
    if isinstance(leaf, (np.ndarray, np.generic)):
        return constraint(np.asarray(leaf))
    return constraint(jnp.asarray(leaf), xp=jnp)


def projection(
    *,
    kernel: Any = None,
    recurrent: Any = None,
    bias: Any = None,
    embedding: Any = None,
    rules: Rules | None = None,
    stacked: Mapping[str, int] | None = None,
    skip_unknown: bool = False,
    per_input: str | Iterable[str] | None = None,
) -> Callable[[Any], Any]:
    """A pure function ``params -> params`` that projects every constrained leaf of a pytree.

    Each leaf gets the constraint of its role over its per-node axes (see the package
    documentation for how roles and axes are read); other leaves come back as they are (the same
    objects). Works on Flax linen parameter dicts, on ``nnx.State`` (with or without
    ``nnx.Variable`` wrappers), on ``optax.LookaheadParams`` (fast and slow weights alike) and
    on any nested dict / list / tuple of arrays, eagerly or under ``jax.jit`` (the leaves are
    read when the function is traced), on sharded arrays too. NumPy leaves are projected with
    NumPy and keep their dtype.

    Bounds may be rules of the leaf's shape (``MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)")``,
    EDM2's forced weight normalization): each leaf's rule is resolved for its own nodes,
    ``fan_in`` being the entries of one node (the sizes of its per-node axes, stacked axes
    excluded).

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
        per_input: The kernels that take one norm per *input* unit instead of one per output
            unit (nGPT's attention-output and MLP down-projections): a regular expression or
            several, each matched, as ``rules`` are, against whole leaf paths
            (``r".*/(out|down)/kernel"``). A Flax ``Dense`` kernel ``(in, out)`` is then
            normalised over axis 1; a stacked layer's kernel over the same axis of each layer
            (its stacked axes never count). 2-D kernels (``kernel=``, ``recurrent=``) only: a
            pattern that matches no leaf, or a leaf that is not such a kernel, raises.

    Returns:
        The projection, a pure function of the parameter pytree. It raises, naming the leaf, when
        a leaf's axes cannot be read, an explicit axis is not the per-node one, a bound does
        not fit a leaf's dtype (rules once resolved for it), an asked role, a rule or a
        ``per_input`` pattern matches no leaf, or ``per_input`` matches a leaf that is not a
        2-D kernel.

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
        >>> from weight_constraints import MinMaxNorm, UnitNorm
        >>> edm2 = projection(kernel=MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)"))
        >>> forced = edm2(params)["Conv_0"]
        >>> node_norms(forced["kernel"], axis=(0, 1, 2))[:3]  # sqrt(3 * 3 * 2)
        Array([4.2426405, 4.2426405, 4.2426405], dtype=float32)
        >>> block = {"up": {"kernel": jnp.ones((4, 8))}, "down": {"kernel": jnp.ones((8, 4))}}
        >>> down = projection(kernel=UnitNorm(), per_input=r"down/kernel")(block)["down"]
        >>> node_norms(down["kernel"], axis=1)  # one norm per input unit
        Array([1., 1., 1., 1., 1., 1., 1., 1.], dtype=float32)
    """
    reader = TreeReader.of(
        kernel=kernel,
        recurrent=recurrent,
        bias=bias,
        embedding=embedding,
        rules=rules,
        stacked=stacked,
        skip_unknown=skip_unknown,
        per_input=per_input,
    )

    def project_params(params: Any) -> Any:
        return reader.project(params)

    return project_params

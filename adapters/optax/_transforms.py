"""The optax transformations: :func:`constrained` (an optimizer whose updates land on the
projected parameters) and :func:`project` (the same, as a transformation to chain last), and
the landing of an update on the projected parameters.

The update of a constrained leaf becomes ``projected(params + updates) - params`` where the
projection moves an entry, and the optimizer's own update, bit for bit, everywhere else. Updates
of bfloat16 and float16 leaves come back in float32, so that ``optax.apply_updates`` (which adds
in float32 and rounds once to the leaf's dtype) lands exactly on the projected value.

With ``optax.lookahead`` inside (``constrained(optax.lookahead(tx, ...), ...)``), the
parameters are ``optax.LookaheadParams``: the fast and the slow weights both land on the set,
read alike from the fast ones, so that the average taken at each synchronisation is projected
too.

Example:
    >>> import jax.numpy as jnp
    >>> from weight_constraints import UnitNorm
    >>> step = landing(jnp.array([3.0, 4.0]), jnp.array([0.0, 0.0]), UnitNorm(axis=0))
    >>> step  # from (3, 4) to (0.6, 0.8)
    Array([-2.4, -3.2], dtype=float32)
"""

# optax ships no type information (no py.typed): its objects are Any here.

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ._patterns import Rules
from ._projection import Reading, TreeReader, parts, rebuild

__all__ = ["constrained", "landing", "project"]


def landing(param: Any, update: Any, constraint: Any) -> Any:
    """The update that takes ``param`` to ``constraint(param + update)`` in
    ``optax.apply_updates``: the optimizer's own update where the projection changes nothing.

    Half-precision updates are widened to float32: ``apply_updates`` then adds in float32, where
    the difference of two half-precision values is exact, and rounds once onto the projected
    value. The roundings to the parameter's dtype are written out (:func:`_stored`), so that
    under ``jax.jit`` XLA cannot skip them (it may keep half-precision values in float32
    between operations): ``param + update`` is rounded exactly as ``apply_updates`` will round
    it, and the projection is taken of those very values. Everything runs on JAX arrays (NumPy
    parameters too)."""
    param, update = jnp.asarray(param), jnp.asarray(update)
    wide = jnp.promote_types(jnp.result_type(param, update), jnp.float32)
    old, step = param.astype(wide), update.astype(wide)
    new = _stored(old + step, param.dtype)  # what apply_updates(param, step) gives
    target = _stored(constraint(new.astype(param.dtype), xp=jnp).astype(wide), param.dtype)
    return jnp.where(target == new, step, target - old)


def _stored(x: Any, dtype: Any) -> Any:
    """The values of ``x`` rounded to ``dtype`` (to nearest, ties to even, subnormals kept),
    still in the dtype of ``x``; ``x`` itself when ``dtype`` is the same."""
    if jnp.dtype(dtype) == x.dtype:
        return x
    info = jnp.finfo(dtype)
    normal = jax.lax.reduce_precision(x, exponent_bits=info.nexp, mantissa_bits=info.nmant)
    if info.minexp <= jnp.finfo(x.dtype).minexp:  # bfloat16: float32's range
        return normal
    tiny = float(info.smallest_subnormal)  # reduce_precision flushes subnormals to zero
    subnormal = jnp.round(x / tiny) * tiny
    return jnp.where(jnp.abs(x) < float(info.smallest_normal), subnormal, normal)


def _land(reading: Reading, updates: Any, params: Any) -> Any:
    """``updates`` of ``params`` (of the structure read), landing on the projected values."""
    steps = reading.treedef.flatten_up_to(updates)
    leaves = reading.treedef.flatten_up_to(params)
    landed = [
        step if decision.constraint is None else landing(param, step, decision.constraint)
        for param, step, decision in zip(leaves, steps, reading.decisions, strict=True)
    ]
    return jax.tree_util.tree_unflatten(reading.treedef, landed)


def _lander(reader: TreeReader) -> Callable[[Any, Any], Any]:
    """``(updates, params) -> updates`` that land on the projected parameters (both halves of
    ``optax.LookaheadParams``)."""

    def land(updates: Any, params: Any) -> Any:
        reading = reader.read(params)
        halves, steps = parts(params), parts(updates)
        if len(halves) != len(steps):
            raise TypeError(
                "the parameters are optax.LookaheadParams but the updates are not: put "
                "optax.lookahead inside constrained(...), constrained(optax.lookahead(...))"
            )
        landed = [
            _land(reading, step, half) for (_, half), (_, step) in zip(halves, steps, strict=True)
        ]
        return rebuild(params, landed)

    return land


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
    per_input: str | Iterable[str] | None = None,
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
    set). Wrappers that average parameters go inside it: ``constrained(optax.lookahead(tx,
    ...), ...)`` projects the fast and the slow weights (``optax.lookahead(constrained(...))``
    replaces the fast weights by an unprojected average at each synchronisation), and
    ``constrained(optax.contrib.schedule_free(tx, ...), ...)`` projects the parameters it
    trains (apply :func:`projection` to ``schedule_free_eval_params``, an extrapolation, when
    you use them). The documentation's table lists every wrapper.

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
    land = _lander(
        TreeReader.of(
            kernel=kernel,
            recurrent=recurrent,
            bias=bias,
            embedding=embedding,
            rules=rules,
            stacked=stacked,
            skip_unknown=skip_unknown,
            per_input=per_input,
        )
    )
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
    per_input: str | Iterable[str] | None = None,
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
    land = _lander(
        TreeReader.of(
            kernel=kernel,
            recurrent=recurrent,
            bias=bias,
            embedding=embedding,
            rules=rules,
            stacked=stacked,
            skip_unknown=skip_unknown,
            per_input=per_input,
        )
    )

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

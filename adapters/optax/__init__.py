"""JAX adapter: per-node constraints on parameter pytrees (Flax linen, Flax NNX), and optax
transformations that keep them after every step.

JAX parameters are immutable arrays in a pytree, so a constraint is a pure function
``params -> params``: :func:`projection` builds it; :func:`constrained` wraps an optimizer so
that its updates land on the projected parameters (:func:`project` is the same as a
transformation to chain last); :func:`audit` and :func:`norm_stats` check and log. The math is
the core's (:mod:`weight_constraints`) on ``jax.numpy`` arrays; it runs under ``jax.jit``, on
any device, with sharded parameters. This package only decides which leaf is which, and its
per-node axes.

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
  ``GRUCell``, ``OptimizedLSTMCell``, ``SimpleCell``, ``MGUCell``), where the whole structure
  of the cell proves it (its gate layers, their biases and shapes): the ``recurrent`` role.
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
one of every adapter (:func:`weight_constraints.adapters._binding.bind`): a constraint's
default axis means the per-node axes; an explicit axis is honoured when it names them and
rejected otherwise; a bound the leaf's dtype cannot represent raises, naming the leaf.

Normalized-weight training. A bound may be a rule of each leaf's shape, resolved per leaf
(``fan_in``: the entries of one node, stacked axes excluded): EDM2's forced weight
normalization is ``kernel=MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)")``. ``per_input=`` (path
patterns, as ``rules``) names the 2-D kernels that take one norm per *input* unit instead, as
nGPT's attention-output and MLP down-projections: ``kernel=UnitNorm(),
per_input=r".*/(out|down)/kernel"``. It is a separate, named choice, never guessed; a pattern
that matches no leaf, or a leaf that is not a constrained 2-D kernel, raises.

The package's modules, one concern each: ``_layouts`` (Flax's kernel layouts), ``_cells``
(recurrent cells, by structure), ``_leaves`` (the role of each leaf from its neighbours),
``_patterns`` (``rules=`` and ``stacked=``), ``_per_input`` (``per_input=``: the kernels that
take one norm per input unit, and their axes), ``_projection`` (the tree reader and
:func:`projection`), ``_transforms`` (:func:`constrained`, :func:`project`, the landing of
updates), ``_audit`` (:func:`audit`, :func:`norm_stats`).

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

from ._audit import audit, norm_stats
from ._projection import projection
from ._transforms import constrained, project

__all__ = ["audit", "constrained", "norm_stats", "project", "projection"]

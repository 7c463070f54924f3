"""PyTorch adapter: per-node constraints applied after every optimizer step.

PyTorch has no ``kernel_constraint=``: the usual recipe is a loop of ``renorm_``/``clamp_`` after
``optimizer.step()``. Here a :class:`Constraints` registry records (parameter, constraint, dims)
and :meth:`Constraints.attach` runs the projections in an optimizer step post-hook, in place,
under ``torch.no_grad()``, with no host synchronisation. The math is the core's
(:mod:`weight_constraints`) on torch tensors; this package only finds the parameters and their
per-node dims, and checks that what it projects is what the model uses.

Axes. A constraint attached *by role* (``kernel=``, ``recurrent=``, ``bias=``, ``embedding=``)
is applied over the module's per-node dims (:func:`per_node_dims`), e.g. dim 1 of a ``Linear``
weight ``(out, in)``: with its axis left at the default, it takes those dims; an explicit axis is
honoured when it names them (``MaxNorm(3, axis=1)`` on a ``Linear``) and raises a ValueError
otherwise (``axis=0`` is Keras's per-node axis of a ``Dense`` kernel ``(in, out)``, not torch's).
``add(tensor, constraint, dims=...)`` and :func:`project_` follow the same rule with your
``dims``. An axis is never silently replaced.

What the hook projects. A hook projects what its optimizer updated in that step: the registered
parameters that are in the optimizer's param groups and have a gradient (frozen weights,
``requires_grad=False``, are left alone, as in Keras). :meth:`Constraints.apply` projects every
registered tensor. An entry no step can project raises instead of being skipped: a view,
``.data`` or ``.detach()`` of a parameter (at ``attach()``), and a parameter registered as a
tensor that no attached optimizer holds (at the next step); :func:`constrain` given an
optimizer that holds none of the model's constrained tensors (another model's) raises, and warns
naming the trainable ones it does not hold. A tensor takes one constraint across all live
registries. Before projecting anything, every entry is checked (O(1) per entry): a
parameter replaced in its module after registration (``load_state_dict(..., assign=True)``,
``module.weight = nn.Parameter(...)``) is projected in its new form when the optimizer updates
it, and raises when the optimizer still holds the old one; a weight computed by a
parametrization (``weight_norm``, ``spectral_norm``, ``torch.nn.utils.parametrize``) raises with
what to constrain instead; a bound the weight's dtype cannot represent raises when the
weight is registered and when it changes dtype (``model.half()``), before anything is projected.
A weight shared by two modules (tied embeddings) is constrained once.
:func:`audit` shows, weight by weight, whether the next step will project it; copies of an
optimizer (``copy.deepcopy``, ``torch.save``/``torch.load`` of the object) lose their step hooks,
a PyTorch behaviour that the audit reports; a registry kept on a model is copied and pickled
with it, attached to no optimizer (attach the copy again). accelerate's
``AcceleratedOptimizer`` (what Hugging Face Trainer callbacks receive) is unwrapped: the hook
goes on the optimizer it steps. Other
wrappers that are not initialised torch optimizers raise (their step may write the weights after
the inner one, as Lookahead does): call :meth:`Constraints.apply` after their step.

Cost. The first projection (after ``add()``) checks every entry in full; the later ones check in
O(1) per entry, without host synchronisation, that nothing changed since (a guard), then run a
plan bound once to the tensors they project (``_plan.Plan``: small tensors of one shape
stacked, one norm per larger tensor into one buffer, the factors of many tensors formed at
once, one ``_foreach_mul_``), with the core's results bit for bit. A change (a replaced
parameter, a new dtype, device or layout, a parametrization) sends the next call through the
full check again, and the plans are bound anew. ``fuse=True`` (:func:`constrain`,
:meth:`Constraints.attach`) goes further: the weights the native kernels can take are updated
and projected in one pass, in a step pre-hook, with the results of the step and the hook bit
for bit.

Example:
    >>> import torch
    >>> from weight_constraints import MaxNorm
    >>> from weight_constraints.adapters.torch import constrain, node_norms
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    >>> registry = constrain(model, optimizer, kernel=MaxNorm(0.5))
    >>> len(registry)
    2
    >>> model(torch.randn(4, 8)).sum().backward()
    >>> optimizer.step()  # the projection runs right after the update
    >>> bool((node_norms(model[0].weight, dims=1) <= 0.5 + 1e-6).all())
    True

Where each concern lives (one module each):

- ``_layers``: the layer tables (known types, roles and per-node dims, transformers' ``Conv1D``,
  grouped transposed convolutions) and the ``CATALOGUE`` the shared walk reads;
- ``_computed``: weights a module computes (parametrizations, ``weight_norm`` and
  ``spectral_norm`` hooks) and what to constrain instead;
- ``_entries``: :class:`Entry`, the record of a registered tensor, and binding it to its
  constraint (the shared axis rule and dtype check), again after a change;
- ``_memory``: writability, the one index of storage regions, conflicts between registrations;
- ``_optimizers``: which optimizers are accepted, what they hold, entries no step can project;
- ``_hooks``: the step hook and the O(1) guard of the fast path;
- ``_plan``: the batched projection the fast path runs;
- ``_native``, ``_probes``: the native per-row kernels (``_native.c``, built at first use with
  the system C compiler) and the probes that check them bit for bit against torch and the core;
- ``_updates``, ``_fused``: the optimizer updates the kernels compute, and the fused step
  (``attach(optimizer, fuse=True)``): update and projection in one pass, in a step pre-hook;
- ``_device``: the fused step on CUDA, one compiled update-and-projection per weight shape;
- ``_project``: :func:`project_`, :func:`node_norms`, distributed tensors, the eager and
  compiled projections and the selection a fast-path call projects;
- ``_registry``: :class:`Constraints`, the registry (its full check and fast path);
- ``_constrain``: :func:`constrain`, which fills a registry from a model's known layers;
- ``_skipped``: what the tables do not lay out (unknown layers, extra parameters of known
  ones), refused by name or skipped with a warning;
- ``_audit``: :func:`audit` and :func:`norm_stats`.
"""

from ._audit import audit, norm_stats
from ._constrain import constrain
from ._entries import Entry
from ._layers import per_node_dims
from ._project import node_norms, project_
from ._registry import Constraints

__all__ = [
    "Constraints",
    "Entry",
    "audit",
    "constrain",
    "node_norms",
    "norm_stats",
    "per_node_dims",
    "project_",
]

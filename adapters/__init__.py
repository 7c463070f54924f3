"""Framework adapters: ``weight_constraints.adapters.keras``, ``.torch`` and ``.optax``.

Each adapter package imports its framework; import the one you use. The math lives in
:mod:`weight_constraints`; the adapters only connect it to a framework's training loop.

What the three adapters share is written once here:

- ``_roles``: the roles (``kernel``, ``recurrent``, ``bias``, ``embedding``), which constraint
  each role gets (embedding tables take the kernel's) and which asked role no weight has;
- ``_binding``: the axis rule, how a constraint is given a weight's per-node axes (through its
  ``with_axis``) and checked against the weight's dtype, and the per-node predicate;
- ``_walk``: the walk over a model's layers (PyTorch and Keras), apart from each framework's
  catalogue of layer types, and normalisation layers recognised by their structure;
- ``_audit``: audit rows, their table, ``strict=``/``tol=``, the tolerance (the projections'
  definition of "on the set") and the one schema of norm statistics;
- ``_errors``: errors that carry their reason as data.

Per framework stay only the layer tables (the layouts really differ) and the framework's own
mechanism (step hooks and plans for PyTorch, ``keras.constraints`` twins and saving for Keras,
pytree reading and optax transformations for JAX).
"""

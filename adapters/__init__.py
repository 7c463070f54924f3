"""Framework adapters: ``weight_constraints.adapters.keras`` and ``.adapters.torch``.

Each adapter module imports its framework at the top; import the one you use. The math lives in
:mod:`weight_constraints`; the adapters only connect it to the framework's training loop.
"""

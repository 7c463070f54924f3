"""Exact per-node weight constraints: max-norm, unit-norm, min-max-norm and non-negativity.

Functions project an array (NumPy, torch, or ``keras.ops`` tensors through ``xp=``); the classes
are immutable, validated, callable objects with the parameters of ``keras.constraints``.

Example:
    >>> import numpy as np
    >>> import weight_constraints as wc
    >>> w = np.array([[3.0, 0.3], [4.0, 0.4]])
    >>> wc.node_norms(w)
    array([5. , 0.5])
    >>> wc.node_norms(wc.MaxNorm(2.0)(w))
    array([2. , 0.5])
"""

from ._checks import Axis
from ._norms import node_norms
from ._objects import Constraint, MaxNorm, MinMaxNorm, NonNeg, UnitNorm, get
from ._projections import max_norm, min_max_norm, non_neg, unit_norm

__version__ = "0.1.0"

__all__ = [
    "Axis",
    "Constraint",
    "MaxNorm",
    "MinMaxNorm",
    "NonNeg",
    "UnitNorm",
    "__version__",
    "get",
    "max_norm",
    "min_max_norm",
    "node_norms",
    "non_neg",
    "unit_norm",
]

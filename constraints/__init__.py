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
from ._objects import Constraint, MaxNorm, MinMaxNorm, NonNeg, UnitNorm, get, register
from ._polyhedral import (
    BoxMaxNorm,
    Clip,
    MaxL1Norm,
    Simplex,
    box_max_norm,
    clip,
    max_l1_norm,
    simplex,
)
from ._projections import max_norm, min_max_norm, non_neg, unit_norm

register(Clip, BoxMaxNorm, Simplex, MaxL1Norm)

__version__ = "0.1.0"

__all__ = [
    "Axis",
    "BoxMaxNorm",
    "Clip",
    "Constraint",
    "MaxL1Norm",
    "MaxNorm",
    "MinMaxNorm",
    "NonNeg",
    "Simplex",
    "UnitNorm",
    "__version__",
    "box_max_norm",
    "clip",
    "get",
    "max_l1_norm",
    "max_norm",
    "min_max_norm",
    "node_norms",
    "non_neg",
    "simplex",
    "unit_norm",
]

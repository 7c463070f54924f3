"""Exact per-node weight constraints: max-norm, unit-norm, min-max-norm, non-negativity, and the
box, simplex and L1 kinds.

Functions project an array (NumPy, torch, or ``keras.ops`` tensors through ``xp=``); the classes
are immutable, validated, callable objects with the parameters of ``keras.constraints``.

The modules, from the bottom up: ``_dtypes`` (dtype tables), ``_checks`` (validation),
``_backends`` (one module per array family), ``_projections`` (the norm kinds) and
``_polyhedral`` (the box, simplex and L1 kinds) as functions, ``_norms`` (``node_norms``),
``_base`` (the ``Constraint`` base class), ``_objects`` (the eight kinds as objects) and
``_registry`` (``get``).

Example:
    >>> import numpy as np
    >>> import weight_constraints as wc
    >>> w = np.array([[3.0, 0.3], [4.0, 0.4]])
    >>> wc.node_norms(w)
    array([5. , 0.5])
    >>> wc.node_norms(wc.MaxNorm(2.0)(w))
    array([2. , 0.5])
"""

from ._base import Constraint
from ._checks import DEFAULT_AXIS, Axis
from ._norms import node_norms
from ._objects import (
    BoxMaxNorm,
    Clip,
    MaxL1Norm,
    MaxNorm,
    MinMaxNorm,
    NonNeg,
    Simplex,
    UnitNorm,
)
from ._polyhedral import box_max_norm, clip, max_l1_norm, simplex
from ._projections import max_norm, min_max_norm, non_neg, unit_norm
from ._registry import get

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_AXIS",
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

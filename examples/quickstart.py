"""The README's NumPy quick start."""

import numpy as np

import weight_constraints as wc

w = np.array([[3.0, 0.3], [4.0, 0.4]])  # a Dense kernel (in=2, out=2): nodes are columns
print(wc.node_norms(w))
print(wc.max_norm(w, max_value=1.0))
wc.unit_norm(w, out=w)
print(wc.node_norms(w))
constraint = wc.MaxNorm(3, axis=0)
print(constraint, constraint.get_config())

"""The array families the projections run on: one module each, chosen once per call.

The projections (``_projections.py``) are written once against an array namespace ``xp``. The
few operations that NumPy, PyTorch and the other namespaces do not spell the same way live in
one module per family, as ``array-api-compat`` keeps one alias module per library:

- ``numpy.py``: NumPy arrays (and array-likes, through ``numpy.asarray``);
- ``torch.py``: torch tensors, with the CPU kernels and the ``out=`` checks of torch;
- ``generic.py``: any other namespace: ``keras.ops``, ``jax.numpy``, array-API namespaces.

Each module provides a *backend*: an object bound to one namespace, with

- ``xp``: the namespace the factors are computed with;
- ``prepare(w)``: ``w`` as an array of that namespace (TypeError when it cannot be one);
- ``astype(x, name)``: ``x`` cast to the dtype called ``name`` (no copy when it has it);
- ``norms(w, axes, acc)``: per-node L2 norms over sorted, non-negative ``axes``, keeping dims,
  accumulated in (and returned in) the dtype called ``acc``;
- ``multiply(w, factor, out)``: ``w * factor`` in the dtype of ``w``, into ``out`` when given;
- ``zero_negatives(w, out)``: ``max(w, 0)`` entry by entry, NaN kept;
- ``check_out(out, w)``: raise before anything is written unless ``out`` can take the result;
- ``copy_into(w, out)``: write ``w`` into a checked ``out``.

and, for the per-node projections that sort each node (``_polyhedral.py``), the operations on
the last axis of "rows" that each family spells its own way: ``permute(x, order)``,
``sort_last(x)`` (ascending), ``argsort_last(x)``, ``take_last(x, indices)``,
``cumsum_last(x)``, ``flip_last(x)``, ``max_last(x)`` and ``sum_last(x)`` (keeping the axis;
the sum pairwise or as a tree, not one entry at a time), ``accurate_cumsum(name)`` (whether
the running sum of rows of the dtype called ``name`` rounds as a tree or in a wider dtype
rather than once per entry: torch's does for float32, accumulating it in float64 on the CPU
and as a tree on CUDA; NumPy's and TensorFlow's do not, and the sum kinds then correct their
threshold with ``sum_last``), ``counts(m, like)`` (``1, ..., m`` in
the dtype and on the device of ``like``), ``clip(x, lower, upper, out)`` (NaN kept),
``write(result, out)`` (``result``, copied into ``out`` when it is given) and ``quiet()`` (a
context in which the family's floating-point warnings are off, for nodes with ±inf or huge
entries whose results are kept as they are).

``for_namespace(xp)`` and ``infer(w)`` choose the backend once per call; the backends are
made once per namespace and kept, by the namespace's name (a string Dynamo folds: no ``id()``,
which older ``torch.compile`` cannot trace on a module). Array types are recognised lazily
through ``sys.modules``: a framework the caller did not import is never imported.

For the adapters (private API): obtain the backend once, e.g. ``for_namespace(torch)``, and the
per-node factor of a norm constraint from its ``factor(n, acc, xp)`` method; then each step is
``backend.multiply(w, constraint.factor(backend.norms(w, axes, acc), acc, backend.xp), w)``,
the very computation the public functions make after validating their arguments.

Example:
    >>> import numpy as np
    >>> from weight_constraints._backends import for_namespace, infer
    >>> backend = for_namespace(np)
    >>> backend is infer(np.ones(3))
    True
    >>> backend.norms(np.array([[3.0, 0.0], [4.0, 1.0]]), (0,), "float64")
    array([[5., 1.]])
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from . import generic
from . import numpy as numpy_backend
from . import torch as torch_backend


class Backend(Protocol):
    """The operations of one array family, bound to one namespace (see the module docstring)."""

    @property
    def name(self) -> str: ...
    @property
    def xp(self) -> Any: ...
    def accurate_cumsum(self, name: str) -> bool: ...

    def prepare(self, w: Any) -> Any: ...
    def astype(self, x: Any, name: str) -> Any: ...
    def norms(self, w: Any, axes: tuple[int, ...], acc: str) -> Any: ...
    def multiply(self, w: Any, factor: Any, out: Any) -> Any: ...
    def zero_negatives(self, w: Any, out: Any) -> Any: ...
    def check_out(self, out: Any, w: Any) -> None: ...
    def copy_into(self, w: Any, out: Any) -> Any: ...
    def permute(self, x: Any, order: tuple[int, ...]) -> Any: ...
    def sort_last(self, x: Any) -> Any: ...
    def argsort_last(self, x: Any) -> Any: ...
    def take_last(self, x: Any, indices: Any) -> Any: ...
    def cumsum_last(self, x: Any) -> Any: ...
    def flip_last(self, x: Any) -> Any: ...
    def max_last(self, x: Any) -> Any: ...
    def sum_last(self, x: Any) -> Any: ...
    def counts(self, m: int, like: Any) -> Any: ...
    def clip(self, x: Any, lower: float, upper: float, out: Any = None) -> Any: ...
    def write(self, result: Any, out: Any) -> Any: ...
    def quiet(self) -> AbstractContextManager: ...


NUMPY: Backend = numpy_backend.NumPyBackend()
"""The backend of NumPy arrays (and of array-likes)."""

_TORCH: list[Backend] = []  # the torch backend, once torch was seen
# Module name -> backend of that module. Keyed by the name, not id(xp): torch.compile (Dynamo)
# folds a module's __name__ and a dict lookup by a string into constants, while id() of a
# module breaks the graph in older torch (2.11). The backend holds its module; a lookup checks
# that it is the very module asked for (a reloaded module gets a backend of its own).
_BY_NAME: dict[str, Backend] = {}


def for_namespace(xp: Any) -> Backend:
    """The backend of the namespace ``xp``, made on first use and kept.

    Raises:
        TypeError: ``xp`` is not an array namespace (it lacks a function the projections use).
    """
    if xp is np:
        return NUMPY
    name = getattr(xp, "__name__", None)
    backend = _BY_NAME.get(name) if type(name) is str else None
    if backend is not None and backend.xp is xp:
        return backend
    backend = _make(xp)
    if isinstance(xp, ModuleType) and type(name) is str:  # modules kept; other objects not
        _BY_NAME[name] = backend
    return backend


def _make(xp: Any) -> Backend:
    name = getattr(xp, "__name__", None)
    if name == "torch" and isinstance(xp, ModuleType):
        backend = torch_backend.TorchBackend(xp)
        _TORCH[:] = [backend]
        return backend
    if isinstance(name, str) and name.partition(".")[0] == "keras":
        return generic.KerasBackend(xp)
    return generic.GenericBackend(xp)


def infer(w: Any) -> Backend:
    """The backend of an array ``w`` by its type: torch tensors get torch, Keras variables and
    TensorFlow tensors ``keras.ops`` (when Keras is imported), JAX arrays ``jax.numpy``; anything
    else NumPy (array-likes are converted with ``numpy.asarray``)."""
    if type(w) is np.ndarray:
        return NUMPY
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(w, torch.Tensor):
        return _TORCH[0] if _TORCH else for_namespace(torch)
    module = type(w).__module__.partition(".")[0]
    if module in ("keras", "tensorflow") and "keras.ops" in sys.modules:
        return for_namespace(sys.modules["keras.ops"])
    if module in ("jax", "jaxlib") and "jax.numpy" in sys.modules:
        return for_namespace(sys.modules["jax.numpy"])
    return NUMPY


def prepare(w: Any, xp: Any = None) -> tuple[Any, Backend]:
    """``(w, backend)``: the backend of ``xp`` (inferred from ``w`` when None) and ``w`` as its
    array; the one place where the public functions choose the array family."""
    backend = infer(w) if xp is None else for_namespace(xp)
    return backend.prepare(w), backend


__all__ = ["NUMPY", "Backend", "for_namespace", "infer", "prepare"]

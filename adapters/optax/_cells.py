"""Flax's recurrent cells, recognised by their whole structure: which kernels are
hidden-to-hidden (the ``recurrent`` role).

A name is not proof: a block of one's own with ``Dense`` layers named ``i`` and ``h`` is not a
``SimpleCell``. A layer is read as a cell's hidden layer only when its parent holds exactly the
gate layers of one of Flax's cells (linen ``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell``,
``SimpleCell``, ``MGUCell``; NNX ``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell``,
``SimpleCell``), each with the cell's leaves (a kernel, and a bias exactly where the cell has
one) and the cell's shapes: input kernels ``(in, out)``, hidden kernels ``(units, out)`` with
``out`` the cell's number of fused gates times ``units``, biases ``(out,)``. Anything else is
not a cell, and its kernels are kernels.

Example:
    >>> simple = {"i": {"kernel": (3, 4), "bias": (4,)}, "h": {"kernel": (4, 4)}}
    >>> cell_of(simple).name
    'SimpleCell'
    >>> block = {"i": {"kernel": (3, 8), "bias": (8,)}, "h": {"kernel": (8, 8), "bias": (8,)}}
    >>> cell_of(block) is None  # h has a bias: a block of one's own, not a SimpleCell
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from ._layouts import MASKED, Unknown

__all__ = ["CELLS", "HIDDEN", "Cell", "cell_of"]


class Cell(NamedTuple):
    """The structure of one of Flax's recurrent cells.

    Attributes:
        name: The cell's class (``"nnx.GRUCell"``).
        inputs: Its input-to-hidden layers, each with whether it has a bias (``None``: it may).
        hidden: Its hidden-to-hidden layers, likewise.
        fused: How many gates each hidden layer computes: a hidden kernel is
            ``(units, fused * units)``.
    """

    name: str
    inputs: Mapping[str, bool | None]
    hidden: Mapping[str, bool | None]
    fused: int = 1


def _gates(names: str, bias: bool | None) -> dict[str, bool | None]:
    return dict.fromkeys(names.split(), bias)


CELLS = (
    Cell("LSTMCell", _gates("ii if ig io", False), _gates("hi hf hg ho", True)),
    Cell("GRUCell", _gates("ir iz in", True), {"hr": False, "hz": False, "hn": True}),
    Cell("SimpleCell", {"i": True}, {"h": False}),
    Cell("MGUCell", _gates("if in", True), {"hf": False, "hn": None}),
    Cell("nnx.LSTMCell", _gates("ii if_ ig io", False), _gates("hi hf hg ho", True)),
    Cell("nnx.OptimizedLSTMCell", {"dense_i": False}, {"dense_h": True}, fused=4),
    Cell("nnx.GRUCell", {"dense_i": True}, {"dense_h": False}, fused=3),
    Cell("nnx.SimpleCell", {"dense_i": True}, {"dense_h": False}),
)
"""The cells Flax provides (linen's ``OptimizedLSTMCell`` has ``LSTMCell``'s parameters)."""

HIDDEN = frozenset(name for cell in CELLS for name in cell.hidden)
"""The names of the cells' hidden layers: only a kernel in a layer of such a name may be one."""


def cell_of(layers: Mapping[str, Any]) -> Cell | None:
    """The cell whose structure ``layers`` has, else ``None``.

    Args:
        layers: The children of a module, by name: each a mapping of its leaves' names to their
            shapes (stacked axes removed; :data:`MASKED` for a leaf optax.masked hides), or
            anything else for a child that is a leaf itself.

    Raises:
        Unknown: The names and leaves are a cell's, but a kernel whose shape would prove it is
            hidden by optax.masked.
    """
    for cell in CELLS:
        gates = {**cell.inputs, **cell.hidden}
        if set(layers) != set(gates) or not all(
            _has_leaves(layers[name], bias) for name, bias in gates.items()
        ):
            continue
        if any(layers[name]["kernel"] == MASKED for name in gates):
            raise Unknown(
                f"the layers of a {cell.name}? its structure is read from kernels that "
                "optax.masked hides: mask the cell's layers alike, or give it a rule"
            )
        if _has_shapes(cell, layers):  # nnx's GRUCell and SimpleCell differ only there
            return cell
    return None


def _has_leaves(layer: Any, bias: bool | None) -> bool:
    """Whether ``layer`` holds a kernel and a bias exactly as the cell's layer does."""
    if not isinstance(layer, Mapping) or "kernel" not in layer:
        return False
    allowed = {"kernel", "bias"} if bias is not False else {"kernel"}
    required = {"kernel", "bias"} if bias else {"kernel"}
    return required <= set(layer) <= allowed


def _has_shapes(cell: Cell, layers: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether the kernels and biases of ``layers`` have the shapes of ``cell``'s."""
    kernels = {name: layers[name]["kernel"] for name in {**cell.inputs, **cell.hidden}}
    if any(len(shape) != 2 for shape in kernels.values()):
        return False
    outs = {shape[1] for shape in kernels.values()}
    ins = {kernels[name][0] for name in cell.inputs}
    units = {kernels[name][0] for name in cell.hidden}
    if len(outs) != 1 or len(ins) != 1 or len(units) != 1:
        return False
    (out,), (unit,) = outs, units
    biases = [layer["bias"] for layer in layers.values() if "bias" in layer]
    return out == cell.fused * unit and all(b in ((out,), MASKED) for b in biases)

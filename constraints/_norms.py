"""Per-node L2 norms: one pass over the weights, accumulated in float32 or wider."""

from __future__ import annotations

import math
import string
from typing import Any

import numpy as np

from ._checks import Axis, normalize_axes
from ._namespace import accumulation_dtype, astype, float_dtype, kind, namespace


def _numpy_norms(w: np.ndarray, axes: tuple[int, ...], acc: str) -> np.ndarray:
    # One pass over w, with no temporary of its size: a BLAS dot product per node when each
    # node is a contiguous run of memory, einsum's sum of products otherwise.
    shape = tuple(1 if i in axes else size for i, size in enumerate(w.shape))
    trailing = axes == tuple(range(w.ndim - len(axes), w.ndim))
    if trailing and w.size and w.flags.c_contiguous and w.dtype == acc and hasattr(np, "vecdot"):
        rows = w.reshape(-1, math.prod(w.shape[w.ndim - len(axes) :]))
        return np.sqrt(np.vecdot(rows, rows)).reshape(shape)
    letters = string.ascii_letters[: w.ndim]
    kept = "".join(letter for i, letter in enumerate(letters) if i not in axes)
    squares = np.einsum(f"{letters},{letters}->{kept}", w, w, dtype=acc)
    return np.sqrt(squares).reshape(shape)


# Block size of the CPU reduction over leading dims: large enough to amortise each step's
# overhead, small enough that a block's squares stay in cache.
_BLOCK_BYTES = 1 << 22


def _torch_norms(w: Any, axes: tuple[int, ...], acc: str, torch: Any) -> Any:
    dtype = getattr(torch, acc)
    lead = 0  # the first dim not reduced over
    while lead in axes:
        lead += 1
    if lead == 0 and w.dtype == dtype:  # no leading dim reduced, nothing to convert
        return torch.linalg.vector_norm(w, dim=axes, keepdim=True)
    if (
        w.device.type != "cpu"
        or lead == w.ndim
        or not w.is_contiguous()
        or not w.numel()
        or torch.compiler.is_compiling()  # the compiler fuses the reduction itself
    ):
        # A fused reduction (no squared temporary); dtype= accumulates half precision in float32.
        return torch.linalg.vector_norm(w, dim=axes, keepdim=True, dtype=dtype)
    # On the CPU, work in cache-sized blocks of the first dim: torch reduces over leading dims
    # (the ConvTranspose layout) some 15x slower than over trailing ones, and dtype= converts a
    # half-precision tensor to float32 whole before reducing it. Half-precision blocks are
    # converted into one reused float32 buffer (a fresh allocation per block costs page faults).
    rows = w.reshape(math.prod(w.shape[: max(lead, 1)]), *w.shape[max(lead, 1) :])
    itemsize = max(w.element_size(), torch.finfo(dtype).bits // 8)
    block = max(1, _BLOCK_BYTES * rows.shape[0] // (w.numel() * itemsize))
    buffer = None
    if w.dtype != dtype:
        buffer = torch.empty((min(block, len(rows)), *rows.shape[1:]), dtype=dtype, device="cpu")

    def wide(chunk: Any) -> Any:
        if buffer is None:
            return chunk
        return buffer[: len(chunk)].copy_(chunk)

    if lead == 0:  # nodes lie in blocks of the first dim: reduce block by block
        parts = [torch.linalg.vector_norm(wide(c), dim=axes, keepdim=True) for c in w.split(block)]
        return torch.cat(parts)
    # Leading dims reduced: add up, block by block, the squared norms over the trailing reduced
    # dims (a fast reduction) or the squares themselves when no trailing dim is reduced.
    suffix = [a for a in axes if a >= lead and all(b in axes for b in range(a, w.ndim))]
    trailing = tuple(a - lead + 1 for a in suffix)  # their dims in rows
    squares = None
    for chunk in rows.split(block):
        chunk = wide(chunk)
        if trailing:
            chunk = torch.linalg.vector_norm(chunk, dim=trailing, keepdim=True)
        part = (chunk * chunk).sum(0)
        squares = part if squares is None else squares.add_(part)
    middle = tuple(a - lead for a in axes if a >= lead and a - lead + 1 not in trailing)
    if middle:
        squares = squares.sum(dim=middle, keepdim=True)
    return squares.sqrt().view(tuple(1 if i in axes else n for i, n in enumerate(w.shape)))


def norms(w: Any, axes: tuple[int, ...], acc: str, xp: Any) -> Any:
    """Per-node L2 norms of a checked ``w`` over normalised ``axes``, keeping dims, in ``acc``."""
    if not axes:  # every entry is its own node
        return xp.abs(astype(w, acc, xp))
    family = kind(xp)
    if family == "numpy":
        return _numpy_norms(w, axes, acc)
    if family == "torch":
        return _torch_norms(w, axes, acc, xp)
    wide = astype(w, acc, xp)
    return xp.sqrt(xp.sum(wide * wide, axis=axes, keepdims=True))


def node_norms(w: Any, axis: Axis = 0, keepdims: bool = False, *, xp: Any = None) -> Any:
    """Per-node L2 norms: ``n_j = sqrt(sum_i w[i, j]²)``, the sum running over ``axis``.

    A node is one index of the axes that are not summed over: with the default ``axis=0`` and a
    Keras ``Dense`` kernel of shape ``(in, out)``, one norm per output unit.

    Args:
        w: The weights, an array of a floating dtype.
        axis: The axis or axes the norm is taken over (negative values count from the end);
            ``None`` takes one norm over the whole array.
        keepdims: Keep the summed axes with size 1, so the result broadcasts against ``w``.
        xp: The array namespace; inferred from ``w`` when omitted.

    Returns:
        The norms, in float32 for half-precision ``w`` (their squares may exceed the float16
        range) and in the dtype of ``w`` otherwise.

    Raises:
        TypeError: ``w`` does not have a floating dtype.
        ValueError: ``axis`` is out of range or repeats an axis.

    Example:
        >>> import numpy as np
        >>> from weight_constraints import node_norms
        >>> node_norms(np.array([[3.0, 0.0], [4.0, 1.0]]))
        array([5., 1.])
        >>> node_norms(np.array([[3.0, 0.0], [4.0, 1.0]]), axis=1, keepdims=True)
        array([[3.        ],
               [4.12310563]])
    """
    w, xp = namespace(w, xp)
    acc = accumulation_dtype(float_dtype(w))
    axes = normalize_axes(axis, tuple(w.shape))
    result = norms(w, axes, acc, xp)
    if keepdims:
        return result
    kept_shape = tuple(size for i, size in enumerate(w.shape) if i not in axes)
    return xp.reshape(result, kept_shape)

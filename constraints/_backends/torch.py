"""The torch backend: torch tensors, with torch's CPU kernels and ``out=`` checks.

torch is never imported here: the backend is made with the ``torch`` module the caller already
imported (see ``weight_constraints._backends.for_namespace``).
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any, NamedTuple

from ._common import check_like, type_name

# Block size of the CPU reduction over leading dims: large enough to amortise each step's
# overhead, small enough that a block's squares stay in cache.
_BLOCK_BYTES = 1 << 22


class TorchBackend:
    """torch tensors on any device; ``out=`` supported, checked from metadata only (no host
    synchronisation). See ``weight_constraints._backends`` for the methods.

    Beyond the common methods, ``factor_for_product(w, factor)`` gives the factor as
    :meth:`multiply` uses it (bfloat16 on the CPU for bfloat16 weights, else unchanged), for
    callers that form the product themselves.

    Example:
        >>> import torch
        >>> from weight_constraints._backends import for_namespace
        >>> backend = for_namespace(torch)
        >>> w = torch.tensor([[3.0, 0.0], [4.0, 0.0]])
        >>> n = backend.norms(w, (0,), "float32")
        >>> backend.multiply(w, torch.where(n > 0, 1 / n, 1.0), out=w)
        tensor([[0.6000, 0.0000],
                [0.8000, 0.0000]])
    """

    name = "torch"

    def __init__(self, torch: Any) -> None:
        self.xp = torch

    def accurate_cumsum(self, name: str) -> bool:
        """float32 running sums are accumulated in float64 on the CPU (ATen's ``acc_type``) and
        as a tree scan on CUDA; float64 ones add one entry at a time. Under ``torch.compile``
        the threshold's Newton step is not taken either: TorchInductor's CPU loop fusion (torch
        2.13) fails to compile it when the result is written in place (``KeyError 'buf12'``),
        so compiled float64 nodes of ``m`` entries sum to the radius within ``m · eps``."""
        return name != "float64" or self.xp.compiler.is_compiling()

    def prepare(self, w: Any) -> Any:
        torch = self.xp
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"xp=torch needs a torch.Tensor, got {type_name(w)}")
        if w.layout is not torch.strided:
            raise TypeError(f"weights must be a strided (dense) tensor, got layout {w.layout}")
        return w

    def astype(self, x: Any, name: str) -> Any:
        return x.to(getattr(self.xp, name))

    # -- norms -------------------------------------------------------------------------------

    def norms(self, w: Any, axes: tuple[int, ...], acc: str) -> Any:
        torch = self.xp
        dtype = getattr(torch, acc)
        if not axes:  # every entry is its own node
            return torch.abs(w.to(dtype))
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
            # A fused reduction (no squared temporary); dtype= accumulates half precision in
            # float32.
            return torch.linalg.vector_norm(w, dim=axes, keepdim=True, dtype=dtype)
        return self._cpu_blocked_norms(w, axes, lead, dtype)

    def _cpu_blocked_norms(self, w: Any, axes: tuple[int, ...], lead: int, dtype: Any) -> Any:
        """On the CPU, work in cache-sized blocks of the first dim: torch reduces over leading
        dims (the ConvTranspose layout) some 15x slower than over trailing ones, and dtype=
        converts a half-precision tensor to float32 whole before reducing it. Half-precision
        blocks are converted into one reused float32 buffer (a fresh allocation per block costs
        page faults)."""
        torch = self.xp
        rows = w.reshape(math.prod(w.shape[: max(lead, 1)]), *w.shape[max(lead, 1) :])
        itemsize = max(w.element_size(), torch.finfo(dtype).bits // 8)
        block = max(1, _BLOCK_BYTES * rows.shape[0] // (w.numel() * itemsize))
        buffer = None
        if w.dtype != dtype:
            shape = (min(block, len(rows)), *rows.shape[1:])
            buffer = torch.empty(shape, dtype=dtype, device="cpu")

        def wide(chunk: Any) -> Any:
            if buffer is None:
                return chunk
            return buffer[: len(chunk)].copy_(chunk)

        if lead == 0:  # nodes lie in blocks of the first dim: reduce block by block
            parts = [
                torch.linalg.vector_norm(wide(c), dim=axes, keepdim=True) for c in w.split(block)
            ]
            return torch.cat(parts)
        # Leading dims reduced: add up, block by block, the squared norms over the trailing
        # reduced dims (a fast reduction) or the squares themselves when no trailing dim is.
        suffix = [a for a in axes if a >= lead and all(b in axes for b in range(a, w.ndim))]
        trailing = tuple(a - lead + 1 for a in suffix)  # their dims in rows
        squares: Any = None
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

    # -- products ----------------------------------------------------------------------------

    def factor_for_product(self, w: Any, factor: Any) -> Any:
        """The factor as the product uses it. Mixed-dtype products run some 40x slower on the
        CPU: bfloat16 weights there are scaled in bfloat16 (the factor is rounded once more;
        it is exactly 1 for nodes that stay as they are). Not float16: its narrow range would
        flush small factors to subnormals. Elsewhere the product is formed in the factor's
        dtype (float32 for half precision) and rounded once."""
        if w.dtype == self.xp.bfloat16 and w.device.type == "cpu":
            return factor.to(w.dtype)
        return factor

    def multiply(self, w: Any, factor: Any, out: Any) -> Any:
        factor = self.factor_for_product(w, factor)
        if out is None:
            return (w * factor).to(w.dtype)
        return self._multiply_into(w, factor, out)

    def _multiply_into(self, w: Any, factor: Any, out: Any) -> Any:
        """``out = w * factor``. When ``factor`` broadcasts over leading *and* trailing dims
        (the ConvTranspose layout ``(in, out, *k)``), torch's CPU kernel runs short inner
        loops; the factor is expanded over the trailing dims (a tensor the size of one leading
        slice) so the product runs over long rows."""
        torch = self.xp
        if (
            factor.ndim < 2
            or factor.shape[0] != 1  # no leading broadcast
            or factor.shape[-1] != 1  # or no trailing one
            or factor.numel() == 1
            or w.shape[-1] == 1
            or w.device.type != "cpu"
            or not (w.is_contiguous() and out.is_contiguous())
            or torch.compiler.is_compiling()
        ):
            return torch.mul(w, factor, out=out)
        lead = next(i for i, n in enumerate(factor.shape) if n != 1)
        row = factor.expand(factor.shape[:lead] + w.shape[lead:]).reshape(1, -1)
        torch.mul(w.view(-1, row.shape[1]), row, out=out.view(-1, row.shape[1]))
        return out

    def zero_negatives(self, w: Any, out: Any) -> Any:
        torch = self.xp
        return torch.clamp(w, min=0.0) if out is None else torch.clamp(w, min=0.0, out=out)

    # -- out ---------------------------------------------------------------------------------

    def check_out(self, out: Any, w: Any) -> None:
        """Refuse an ``out`` that cannot be written safely, from metadata only (no sync):
        another type, shape, dtype, layout or device, an inference tensor outside inference
        mode, entries sharing memory, or memory shared with ``w`` in another layout."""
        torch = self.xp
        if out is None:
            return
        if out is not w:
            check_like(out, w, torch.Tensor)
        if torch.compiler.is_compiling():  # out is w in the compiled registries
            return
        if out is not w:  # (w itself was checked by prepare)
            if out.layout is not torch.strided:
                raise TypeError(f"out must be a strided (dense) tensor, got layout {out.layout}")
            if out.device != w.device:
                raise ValueError(
                    f"out must be on the device of w: w is on {w.device}, out on {out.device}"
                )
        if out.requires_grad and out.is_leaf and torch.is_grad_enabled():
            raise ValueError(
                "out is a leaf tensor that requires grad (a parameter): torch does not let it "
                "be written in place while autograd records; project it under torch.no_grad() "
                "(weight_constraints.adapters.torch.project_ does)"
            )
        if out.is_inference() and not torch.is_inference_mode_enabled():
            raise ValueError(
                "out is an inference tensor (made under torch.inference_mode()): it can only be "
                "written inside torch.inference_mode(); clone() it outside, or project inside"
            )
        if may_overlap(tuple(out.shape), out.stride()):
            how = "stride 0, e.g. an expanded tensor" if 0 in out.stride() else "strides overlap"
            raise ValueError(
                f"out has entries that share memory ({how}: shape {tuple(out.shape)}, strides "
                f"{out.stride()}); clone() it first"
            )
        if out is not w and _overlap(out, w):
            raise ValueError(
                "out overlaps the memory of w without being laid out as w (a view of w such as "
                "a transpose or a slice): the projection would read entries it has already "
                "written; pass out=w or a separate tensor"
            )

    def copy_into(self, w: Any, out: Any) -> Any:
        return out.copy_(w)

    # -- per-node projections on rows (``_polyhedral.py``) -----------------------------------

    def permute(self, x: Any, order: tuple[int, ...]) -> Any:
        return x.permute(*order)

    def sort_last(self, x: Any) -> Any:
        return self.xp.sort(x, dim=-1).values

    def argsort_last(self, x: Any) -> Any:
        return self.xp.argsort(x, dim=-1)

    def take_last(self, x: Any, indices: Any) -> Any:
        return self.xp.gather(x, -1, indices)

    def cumsum_last(self, x: Any) -> Any:
        return self.xp.cumsum(x, dim=-1)

    def flip_last(self, x: Any) -> Any:
        return self.xp.flip(x, dims=(-1,))

    def max_last(self, x: Any) -> Any:
        return self.xp.amax(x, dim=-1, keepdim=True)

    def sum_last(self, x: Any) -> Any:
        return self.xp.sum(x, dim=-1, keepdim=True)

    def quiet(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def counts(self, m: int, like: Any) -> Any:
        return self.xp.arange(1, m + 1, dtype=like.dtype, device=like.device)

    def clip(self, x: Any, lower: float, upper: float, out: Any = None) -> Any:
        return self.xp.clamp(x, lower, upper, out=out)

    def write(self, result: Any, out: Any) -> Any:
        return result if out is None else out.copy_(result)


class Region(NamedTuple):
    """Where a tensor's elements lie: its storage (``device``, ``address``), the bytes
    ``[start, end)`` its elements span there, and its element size."""

    device: Any
    address: int
    start: int
    end: int
    itemsize: int


def region(t: Any) -> Region | None:
    """The :class:`Region` of a strided tensor, or None when it has no memory to compare
    (empty, meta, no storage). Metadata only: no host synchronisation.

    Example:
        >>> import torch
        >>> w = torch.zeros(4, 6)
        >>> r = region(w[1])
        >>> (r.start, r.end, r.itemsize), region(w).address == r.address
        ((24, 48, 4), True)
    """
    if t.numel() == 0 or t.device.type == "meta":
        return None
    try:
        address = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    size = t.element_size()
    start = int(t.storage_offset())
    last = start + sum(int(n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True))
    return Region(t.device, address, start * size, (last + 1) * size, size)


# The most elements an exact overlap test lays out (a CPU mask of booleans, 16 MiB); beyond it,
# two tensors whose byte spans meet are taken to share an element.
_EXACT_LIMIT = 1 << 24


def share(ra: Region, rb: Region, a: Any, b: Any) -> bool:
    """Whether the tensors ``a`` and ``b``, of regions ``ra`` and ``rb`` in one storage, have an
    element in common: exact for equal element sizes (interleaved views such as ``w[:, ::2]``
    and ``w[:, 1::2]`` do not share), from metadata only (a CPU mask laid out with their
    strides); conservative (True) for spans that meet over more than 2**24 elements or for
    different element sizes.

    Example:
        >>> import torch
        >>> w = torch.zeros(4, 6)
        >>> left, right = w[:, ::2], w[:, 1::2]
        >>> share(region(left), region(right), left, right), share(region(w), region(left), w, left)
        (False, True)
    """
    if ra.address != rb.address or ra.end <= rb.start or rb.end <= ra.start:
        return False
    if ra.itemsize != rb.itemsize:
        return True  # different element sizes over the same bytes: assume they meet
    size = ra.itemsize
    low, high = min(ra.start, rb.start) // size, max(ra.end, rb.end) // size
    if high - low > _EXACT_LIMIT:
        return True
    torch = sys.modules["torch"]  # a and b are its tensors
    mask = torch.zeros(high - low, dtype=torch.bool)
    mask.as_strided(a.shape, a.stride(), ra.start // size - low).fill_(True)
    return bool(mask.as_strided(b.shape, b.stride(), rb.start // size - low).any())


def may_overlap(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether two elements of a strided tensor may share one memory location (an expanded
    tensor, or strides that interleave). Exact for every layout ``view``/``expand``/``permute``
    and slicing produce; conservative for hand-made ``as_strided`` layouts.

    Example:
        >>> import torch
        >>> may_overlap((3, 4), (4, 1)), may_overlap((3, 4), (0, 1))
        (False, True)
    """
    if 0 in shape:  # no elements
        return False
    reach = 0
    for step, size in sorted((s, n) for n, s in zip(shape, stride, strict=True) if n > 1):
        if step <= reach:
            return True
        reach += (size - 1) * step
    return False


def _overlap(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` share an element, other than as the very same layout (then each
    entry is read before it is written, as with ``out=w``)."""
    if a.data_ptr() == b.data_ptr() and a.stride() == b.stride():
        return False
    ra, rb = region(a), region(b)
    return ra is not None and rb is not None and share(ra, rb, a, b)

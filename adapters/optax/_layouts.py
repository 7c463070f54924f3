"""Flax's layer layouts: the per-node axes of a ``kernel``, read from the layer's name, the
kernel's shape and the bias beside it, only where they prove the layout.

One norm per output unit. A kernel's layout is read as:

- rank 2 (``Dense``, ``nnx.Linear``, a recurrent cell's layers) ``(in, out)``: axis 0;
- ``Conv_N`` ``(*k, in, out)``: every axis but the last; a layer of another name with a bias
  ``(out,)`` (``nnx.Conv``, ``DenseGeneral`` over several input axes): the same;
- ``ConvTranspose`` with a bias telling ``(*k, in, out)`` from the ``transpose_kernel=True``
  layout ``(*k, out, in)``: every axis but the output one;
- ``DenseGeneral`` / ``nnx.LinearGeneral``: the input axes, from the bias shape;
- ``ConvLocal_N`` ``(*positions, k * in, out)``: the axis before the last;
- the attention projections ``query``, ``key``, ``value`` ``(in, heads, head_dim)``: axis 0;
  ``out`` ``(heads, head_dim, out)``: axes 0 and 1.

Anything else raises :class:`Unknown`, whose reason says what to add.

Example:
    >>> kernel_layout("Conv_0", (3, 3, 2, 8), None, attention=False)
    ((0, 1, 2), False)
    >>> kernel_layout("proj", (3, 3, 2, 8), None, attention=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    weight_constraints.adapters.optax._layouts.Unknown: a kernel of rank 4 without a bias, ...
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MASKED", "STACK_HINT", "Unknown", "auto_kind", "kernel_layout"]

MASKED = "masked"
"""The shape recorded for a leaf that ``optax.masked`` hides."""

STACK_HINT = "declare the stacked axes with stacked={path_regex: number of leading axes}"

# The names linen gives layers it names itself (``Conv_0``): proof of the layer's type.
_AUTO_NAME = re.compile(r"(Dense|DenseGeneral|Conv|ConvTranspose|ConvLocal|Embed|Einsum)_\d+")

Shape = tuple[int, ...]


class Unknown(Exception):
    """A leaf whose per-node axes cannot be read from its name, rank and siblings; ``reason``
    says why and what to add (the audit shows it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def auto_kind(parent: str) -> str | None:
    """The layer type linen's automatic name ``parent`` proves (``"Conv"``), else ``None``.

    Example:
        >>> auto_kind("ConvTranspose_3"), auto_kind("encoder")
        ('ConvTranspose', None)
    """
    match = _AUTO_NAME.fullmatch(parent)
    return match.group(1) if match else None


def _beside(shape: Shape, bias: Any, why: str) -> Unknown:
    return Unknown(f"a kernel {shape} beside a bias {bias}: {why}")


def kernel_layout(parent: str, shape: Shape, bias: Any, *, attention: bool) -> tuple[Shape, bool]:
    """``(per-node axes, whether a bias of rank >= 2 beside it is one node)`` of a Flax
    ``kernel`` of ``shape`` in the layer ``parent``, whose sibling bias has shape ``bias``
    (``None``: no bias; :data:`MASKED`: hidden by optax.masked); ``attention``: the layer is
    one of an attention's four projections.

    Raises:
        Unknown: The layout is not proven.
    """
    kind, ndim = auto_kind(parent), len(shape)
    if kind == "Einsum":
        raise Unknown("an Einsum kernel: its per-node axes depend on the equation")
    if ndim < 2:
        raise Unknown(f"a kernel of rank {ndim}")
    if bias == MASKED:
        if ndim > 2:
            raise Unknown(
                "its layout is read from the bias beside it, which optax.masked hides: mask "
                "the kernel and its bias alike, or give the kernel a rule"
            )
        bias = None
    if ndim == 2:  # Dense, nnx.Linear, a recurrent cell's layers: (in, out)
        if bias is not None and bias != shape[-1:]:
            raise _beside(shape, bias, f"a stacked layer? {STACK_HINT}")
        return (0,), False
    if kind in ("Dense", "Embed"):
        raise Unknown(f"a {kind} kernel has rank 2, this one {ndim}: a stacked layer? {STACK_HINT}")
    if attention:
        return _attention_layout(parent, shape, bias)
    if kind == "ConvLocal":  # (*positions, k * in, out) beside a bias (*positions, out)
        if bias is None or (shape[:-2] == bias[:-1] and shape[-1:] == bias[-1:]):
            return (ndim - 2,), True
        raise _beside(shape, bias, f"a stacked layer? {STACK_HINT}")
    if bias is None:
        return _bias_free_layout(kind, ndim), False
    if len(bias) == 1:
        return _vector_bias_layout(kind, shape, bias), False
    if kind in ("Conv", "ConvTranspose"):
        raise _beside(shape, bias, f"a {kind}'s bias has rank 1: a stacked layer? {STACK_HINT}")
    return _general_layout(kind, shape, bias)


def _attention_layout(parent: str, shape: Shape, bias: Shape | None) -> tuple[Shape, bool]:
    """query, key, value: ``(in, heads, head_dim)``; out: ``(heads, head_dim, out)``."""
    wanted = shape[-1:] if parent == "out" else shape[1:]
    if len(shape) == 3 and bias in (None, wanted):
        return ((0, 1) if parent == "out" else (0,)), True
    raise Unknown(f"an attention {parent!r} kernel {shape}: a stacked layer? {STACK_HINT}")


def _bias_free_layout(kind: str | None, ndim: int) -> Shape:
    """A kernel of rank 3 or more without a bias: known only for linen's ``Conv_N``."""
    if kind == "Conv" and ndim <= 5:  # (*k, in, out)
        return tuple(range(ndim - 1))
    if kind == "DenseGeneral":
        raise Unknown("a bias-free DenseGeneral kernel: its input axes are not known")
    if kind == "ConvTranspose":
        raise Unknown(
            "a bias-free ConvTranspose kernel: (*k, in, out), or (*k, out, in) with "
            "transpose_kernel=True; give it a rule with the axes of its layout"
        )
    raise Unknown(
        f"a kernel of rank {ndim} without a bias, under a name of your own: a Conv's "
        "(*k, in, out), a LinearGeneral's (*in, *features), a ConvTranspose's with "
        "transpose_kernel=True (*k, out, in) or a stacked layer's (leading layer axes) "
        "cannot be told apart; give it a rule with its per-node axes"
    )


def _vector_bias_layout(kind: str | None, shape: Shape, bias: Shape) -> Shape:
    """A kernel of rank 3 or more beside a bias ``(out,)``."""
    ndim = len(shape)
    last, before = shape[-1:] == bias, shape[-2:-1] == bias
    if kind == "ConvTranspose" and last == before:
        raise _beside(
            shape,
            bias,
            "a ConvTranspose kernel with as many inputs as outputs: (*k, in, out), or "
            "(*k, out, in) with transpose_kernel=True; give it a rule with the axes of "
            "its layout",
        )
    if kind == "ConvTranspose" and before:  # transpose_kernel=True: (*k, out, in)
        return tuple(a for a in range(ndim) if a != ndim - 2)
    if last and (kind != "Conv" or ndim <= 5):  # Conv (*k, in, out), DenseGeneral (*in, out)
        return tuple(range(ndim - 1))
    raise _beside(shape, bias, "not a layout of a Flax layer; give it a rule")


def _general_layout(kind: str | None, shape: Shape, bias: Shape) -> tuple[Shape, bool]:
    """DenseGeneral / LinearGeneral: ``(*batch, *in, *features)`` beside a bias
    ``(*batch, *features)``."""
    ndim, k = len(shape), len(bias)
    tail = shape[-k:] == bias and ndim > k
    leads = [j for j in range(1, k) if shape[:j] == bias[:j] and shape[ndim - k + j :] == bias[j:]]
    if tail and not leads:
        return tuple(range(ndim - k)), True
    if kind == "DenseGeneral" and leads and not tail and len(leads) == 1:
        j = leads[0]  # batch_dims: the kernel's nodes are known, the bias's are not
        return tuple(range(j, ndim - k + j)), False
    raise _beside(
        shape,
        bias,
        "a LinearGeneral's (*in, *features), or a stacked layer's or a batched layer's "
        f"(leading axes in both); {STACK_HINT} or give it a rule",
    )

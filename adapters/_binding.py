"""How a constraint is given a weight's per-node axes: the axis rule every adapter shares.

The axis rule. A constraint attached *by role* (``kernel=``, ``recurrent=``, ``bias=``,
``embedding=``) to a weight whose per-node axes the adapter knows:

- with its axis left at the default (``MaxNorm(3)``), is applied over the weight's per-node axes;
- with an explicit axis (``MaxNorm(3, axis=0)``, ``axis=[0, 1]``...), is applied over that axis
  when it names the per-node axes, and is rejected with a ValueError otherwise. An explicit axis
  is never replaced, and never read in another framework's layout;
- without an axis (entry-wise constraints such as ``NonNeg``, see :func:`is_per_node`) applies
  entry by entry.

A per-node constraint is given its axes by its own :meth:`~weight_constraints.Constraint.with_axis`
and by nothing else, so a constraint of the user's own works the same way (or says what it
lacks). Its bounds are checked against the weight's dtype when it is bound (a ``radius=1e5`` on
float16 weights raises here, before any step), bounds given as a rule of the weight's shape
(``"sqrt(fan_in)"``) once resolved for it.

One norm per *input* unit (nGPT's attention-output and MLP down-projections, which map into the
embedding space) is a separate, named choice, never a guess: ``per_input=True`` binds a 2-D
weight's other axis instead of its per-node one (:func:`per_input_axes`); an explicit axis on
the constraint must then name that axis.

Example:
    >>> import weight_constraints as wc
    >>> bind(wc.MaxNorm(3), (1,), (4, 8), "fc.weight")  # default axis: the per-node axes
    (MaxNorm(max_value=3.0, axis=1), (1,))
    >>> bind(wc.MaxNorm(3, axis=-1), (1,), (4, 8), "fc.weight")[1]  # the same axes, explicit
    (1,)
    >>> bind(wc.NonNeg(), (1,), (4, 8), "fc.weight")  # entry by entry
    (NonNeg(), None)
    >>> bind(wc.MaxNorm(3, axis=0), (1,), (4, 8), "fc.weight")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: MaxNorm(max_value=3.0, axis=0) has the explicit axis=0, but one norm per ...
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from weight_constraints._base import is_per_node
from weight_constraints._checks import is_default_axis, normalize_axes

__all__ = ["PerInput", "bind", "bind_axes", "is_per_node", "per_input_axes", "with_axes"]


def bind_axes(
    constraint: Any,
    per_node: Iterable[int],
    shape: tuple[int, ...],
    where: str,
    *,
    unit: str = "output",
) -> tuple[int, ...] | None:
    """The axes ``constraint`` is applied over on the weight ``where`` of ``shape``.

    Args:
        constraint: A constraint (anything with the core's ``axis`` attribute, or none).
        per_node: The weight's per-node axes (one norm per output unit).
        shape: The weight's shape, to normalise negative and sequence axes.
        where: The weight's name, for the error message.
        unit: What one norm is taken per, for the error message (``"input"`` for the axes of
            ``per_input``).

    Returns:
        The sorted, non-negative axes, or ``None`` for a constraint without an axis (entry-wise).

    Raises:
        ValueError: The constraint has an explicit axis that is not the per-node one.
    """
    per_node = normalize_axes(tuple(per_node), tuple(shape))
    if not is_per_node(constraint):
        return None
    axis = constraint.axis
    if is_default_axis(axis):
        return per_node
    if normalize_axes(axis, tuple(shape)) == per_node:
        return per_node
    raise ValueError(
        f"{constraint!r} has the explicit axis={axis!r}, but one norm per {unit} unit of "
        f"{where} (shape {tuple(shape)}) is taken over axes {per_node}. Leave the axis at its "
        "default to use the per-node axes, or constrain this weight with the axes you want "
        "directly."
    )


def with_axes(constraint: Any, axes: tuple[int, ...] | None) -> Any:
    """``constraint`` taken over ``axes`` through its ``with_axis`` (unchanged for ``None``).

    Raises:
        TypeError: The constraint has an ``axis`` but no ``with_axis`` method (a constraint
            that is not a :class:`weight_constraints.Constraint`), or its ``with_axis`` says it
            cannot be rebound.
    """
    if axes is None:
        return constraint
    rebind = getattr(constraint, "with_axis", None)
    if rebind is None:
        raise TypeError(
            f"{constraint!r} has an axis attribute but no with_axis(axis) method: subclass "
            "weight_constraints.Constraint and define with_axis(self, axis) returning a copy "
            "of the constraint over that axis (the adapters call it to give the constraint each "
            "weight's per-node axes)"
        )
    return rebind(axes)


def per_input_axes(per_node: Iterable[int], shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    """The axes that give one norm per *input* unit of a 2-D weight whose per-node axes are
    ``per_node``: the other axis (``(0,)`` for a torch ``Linear`` weight ``(out, in)``, ``(1,)``
    for a Keras or Flax ``Dense`` kernel ``(in, out)``).

    Raises:
        ValueError: The weight is not 2-D (a convolution's input units span several axes).

    Example:
        >>> per_input_axes((1,), (8, 4), "down_proj.weight")
        (0,)
    """
    if len(shape) != 2:
        raise ValueError(
            f"{where}: one norm per input unit is defined for 2-D weights (Linear, Dense, "
            f"Embedding), and this weight has shape {tuple(shape)}"
        )
    node = normalize_axes(tuple(per_node), tuple(shape))
    return tuple(a for a in (0, 1) if a not in node)


def bind(
    constraint: Any,
    per_node: Iterable[int],
    shape: tuple[int, ...],
    where: str,
    *,
    dtype: str | None = None,
    per_input: bool = False,
) -> tuple[Any, tuple[int, ...] | None]:
    """``(constraint bound to the weight, its axes)`` by the axis rule (:func:`bind_axes`),
    the axes given through :func:`with_axes` (one norm per input unit with ``per_input``);
    its bounds, rules resolved for ``shape``, checked against ``dtype`` (the weight's dtype by
    name) when given. Axes are ``None`` for an entry-wise constraint, which is returned as it
    is. The bound constraint keeps its rules (``"sqrt(fan_in)"``): resolve it for the shape
    it is projected in (``bound.resolved(shape)``) where a number is needed.

    Raises:
        ValueError: An explicit axis that is not the per-node one (per-input one), a bound the
            weight's dtype cannot represent, or ``per_input`` on a weight that is not 2-D.
        TypeError: A per-node constraint that cannot be given other axes (see
            :func:`with_axes`).
    """
    by_input = per_input and is_per_node(constraint)
    if by_input:
        per_node = per_input_axes(per_node, shape, where)
    axes = bind_axes(constraint, per_node, shape, where, unit="input" if by_input else "output")
    bound = with_axes(constraint, axes)
    concrete = bound.resolved(shape) if hasattr(bound, "resolved") else bound
    if dtype is not None and hasattr(concrete, "check_dtype"):
        try:
            concrete.check_dtype(dtype)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    return bound, axes


class PerInput:
    r"""The layers whose kernels take one norm per input unit: the ``per_input=`` of every
    adapter's ``constrain``/``projection``, one regular expression or several, each matched
    against a whole layer path (``"blocks.0.mlp.down"`` in PyTorch, ``"model/down"`` in Keras,
    ``"Block_0/down/kernel"`` for a leaf in JAX). A pattern that matches nothing raises, so a
    typo is never silently ignored.

    Example:
        >>> choose = PerInput(r".*\.(o_proj|down_proj)")
        >>> choose("layers.0.mlp.down_proj"), choose("layers.0.mlp.up_proj")
        (True, False)
        >>> choose.check(["layers.0.mlp.down_proj"], "module")
        >>> two = PerInput(["down", "out"])
        >>> two("down")
        True
        >>> two.check(["down"], "module")
        Traceback (most recent call last):
        ...
        ValueError: per_input pattern 'out' matches no module (paths look like 'down')
    """

    def __init__(self, patterns: str | Iterable[str] | None) -> None:
        given = [] if patterns is None else [patterns] if isinstance(patterns, str) else patterns
        self._patterns: list[tuple[str, re.Pattern[str]]] = []
        for pattern in given:
            try:
                self._patterns.append((pattern, re.compile(pattern)))
            except (re.error, TypeError) as error:
                raise ValueError(
                    f"per_input: {pattern!r} is not a regular expression ({error})"
                ) from None
        self._used: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def __call__(self, path: str) -> bool:
        """Whether the layer at ``path`` takes one norm per input unit (noting the patterns
        that matched)."""
        hits = [pattern for pattern, regex in self._patterns if regex.fullmatch(path)]
        self._used.update(hits)
        return bool(hits)

    def check(self, paths: Iterable[str], what: str) -> None:
        """Raise a ValueError for a pattern that matched none of the ``paths`` seen (of ``what``:
        ``"module"``, ``"layer"``, ``"parameter"``)."""
        unused = [pattern for pattern, _ in self._patterns if pattern not in self._used]
        if unused:
            example = ", ".join(repr(path) for path in list(paths)[:3]) or "(none)"
            listed = ", ".join(map(repr, unused))
            plural = "s" if len(unused) > 1 else ""
            raise ValueError(
                f"per_input pattern{plural} {listed} match{'' if plural else 'es'} no {what} "
                f"(paths look like {example})"
            )

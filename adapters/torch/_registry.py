"""The registry of constrained tensors (:class:`Constraints`): its entries, the projection it
runs for ``apply()`` and for each optimizer it is attached to (a full check, then the fast path
its guard allows), and the live registries every check looks across.

Example:
    >>> import torch
    >>> from weight_constraints import MaxNorm
    >>> registry = Constraints().add(torch.nn.Linear(4, 3), kernel=MaxNorm(1.0))
    >>> [entry.name for entry in registry]
    ['Linear.weight']
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

import weight_constraints as wc
from weight_constraints._checks import Axis
from weight_constraints.adapters._roles import Request

from ._entries import (
    MISSING,
    Entry,
    Registration,
    bind_again,
    module_registrations,
    tensor_registration,
)
from ._hooks import Guard, StepHook
from ._layers import layout
from ._memory import Conflicts, region
from ._optimizers import (
    check_held,
    check_optimizer,
    check_reachable,
)
from ._project import EagerItem, Selection, project_eagerly
from ._skipped import Skipped, skips, warn_skipped

__all__ = ["MARK", "Constraints", "live_registries"]

# Every registry alive, for audit(model) and norm_stats(model), and to find two registries
# asking different things of one tensor; numbered in the order they were made (or loaded).
_REGISTRIES: weakref.WeakSet[Constraints] = weakref.WeakSet()
_SERIALS = itertools.count()


def live_registries() -> list[Constraints]:
    """Every registry alive, oldest first (a fixed order: audits do not depend on a set's)."""
    return sorted(_REGISTRIES, key=lambda registry: registry._serial)


MARK = "_weight_constraints"
"""The attribute of a module noting, in plain strings and ints, what its parameters were
constrained with. Copies and pickles of the module keep the note while no registry holds the
copy's tensors, so that :func:`~.audit` can tell a copied or reloaded model whose constraints
were lost."""


def _mark(owner: nn.Module, attr: str, registration: Registration) -> None:
    owner.__dict__.setdefault(MARK, {})[attr] = (repr(registration.constraint), registration.dims)


class Constraints:
    """A registry of (parameter, constraint, dims), projected after every optimizer step.

    Example:
        >>> import torch
        >>> from weight_constraints import MaxNorm, UnitNorm
        >>> from weight_constraints.adapters.torch import Constraints
        >>> lstm = torch.nn.LSTM(4, 8)
        >>> registry = Constraints().add(lstm, kernel=MaxNorm(3), recurrent=UnitNorm())
        >>> for entry in registry:
        ...     print(entry.name, entry.dims)
        LSTM.weight_ih_l0 (1,)
        LSTM.weight_hh_l0 (1,)
        >>> extra = torch.nn.Parameter(torch.randn(5, 6))
        >>> _ = registry.add(extra, MaxNorm(2), dims=0)  # any tensor, dims of your choice
        >>> registry.apply()  # project now, e.g. after loading a checkpoint

    A registry can be copied and pickled (``torch.save`` of a model that keeps one as an
    attribute): the copy holds the same entries, bound to the copied tensors, and is attached
    to no optimizer (a copy of an optimizer has no step hooks either): attach it again with
    :meth:`attach`.

    Args:
        compile: Project through ``torch.compile``: one graph for all the registered tensors,
            built on the first :meth:`apply` (seconds; again when tensors are added or change
            shape, dtype or device). Each norm and its scaling then fuse into one kernel.
            Measured against the eager plans: faster on the CPU for most layer sizes
            (0.74-0.95x), slower on a GPU for many small tensors (2.7-3.6x) and faster there
            for large ones (0.76-0.79x); see the performance pages. Needs a working
            ``torch.compile`` (a C++ compiler on the CPU, Triton on CUDA); results agree with
            eager projection to rounding. Distributed tensors (``DTensor``) are always projected
            eagerly.
    """

    def __init__(self, *, compile: bool = False) -> None:
        self._registrations: list[Registration] = []
        self._hooks: list[StepHook] = []
        self._skipped: list[Skipped] = []
        self.compile = compile
        self._version = 0  # bumped whenever an entry is added or bound again
        self._guard: Guard | None = None  # what the last full check found
        self._selection: Selection | None = None  # what apply() projects
        self._serial = next(_SERIALS)
        _REGISTRIES.add(self)

    def __len__(self) -> int:
        return len(self._registrations)

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles check in full and plan anew (the guard holds a C++ object, plans
        # hold buffers), and are attached to no optimizer (hooks hold a weak reference to one).
        return {**self.__dict__, "_guard": None, "_selection": None, "_hooks": []}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._serial = next(_SERIALS)
        for registration in self._registrations:  # the copy's memory, not the original's
            registration.memory = region(registration.parameter)
        _REGISTRIES.add(self)

    def __iter__(self) -> Iterator[Entry]:
        return iter([registration.entry() for registration in self._registrations])

    def __repr__(self) -> str:
        lines = [f"  {r.name}: {r.constraint!r}" for r in self._registrations]
        return "Constraints(\n" + "\n".join(lines) + "\n)" if lines else "Constraints()"

    def add(
        self,
        target: nn.Module | torch.Tensor,
        constraint: Any = None,
        dims: Axis = MISSING,
        *,
        kernel: Any = None,
        recurrent: Any = None,
        bias: Any = None,
        embedding: Any = None,
        name: str | None = None,
        per_input: bool = False,
    ) -> Constraints:
        """Register constraints for a module's roles, or for one tensor.

        ``add(module, kernel=..., recurrent=..., bias=..., embedding=...)`` finds the
        parameters of each role and their per-node dims from the module type (see
        :func:`per_node_dims`); embedding tables take the ``kernel`` constraint unless
        ``embedding=`` is given. ``add(tensor, constraint, dims=...)`` constrains any tensor over
        the dims you give; ``dims`` is required there (``NonNeg`` excepted). An explicit axis on
        the constraint is honoured when it names the per-node dims (or ``dims``) and raises
        otherwise.

        A tensor reached twice (a weight tied between two modules) is constrained once when
        both places ask for the same constraint over the same dims, and raises, naming both,
        when they differ; two entries sharing memory (through ``.data``, views or slices) raise.
        The same holds across every live registry: a tensor (or memory) another registry
        constrains differently raises, naming both entries; the same constraint over the same
        dims is accepted there.

        Everything is checked before anything is registered: an unsupported module type, a role
        the module does not have, an explicit axis that is not the per-node one, a bound the
        weight's dtype cannot represent, a weight the module computes (parametrizations,
        ``weight_norm``), integer, boolean, sparse, inference-mode or self-overlapping tensors
        and dims out of range raise, and nothing is added. A module of a known type that holds
        parameters of its own beyond its type's (a subclass of ``nn.Linear`` with an extra
        weight) has its known roles constrained, with a warning naming the others of two or
        more dims: add those as tensors.

        Args:
            target: A module (roles) or a tensor.
            constraint: The constraint for a tensor: an object, a name or a config dict.
            dims: The dims each norm of the tensor is taken over (torch's ``dim``).
            kernel: For a module: the constraint of its input weights.
            recurrent: For a module: the constraint of its recurrent weights.
            bias: For a module: the constraint of its biases (one norm per bias vector).
            embedding: For an ``Embedding``/``EmbeddingBag``: the constraint of its table (one
                norm per embedding vector); default: the ``kernel`` constraint.
            name: A label for the entries (default: the module type or ``"tensor"``).
            per_input: For a module: its kernels take one norm per *input* unit instead of one
                per output unit (2-D weights; nGPT's down-projections).

        Returns:
            The registry, so calls can be chained.
        """
        request = Request.of(
            wc.get, kernel=kernel, recurrent=recurrent, bias=bias, embedding=embedding
        )
        if isinstance(target, nn.Module):
            if constraint is not None or dims is not MISSING:
                raise TypeError(
                    "for a module, pass constraints as kernel=, recurrent=, bias=, embedding="
                )
            new = _of_module(target, request, name or type(target).__name__, per_input)
        elif isinstance(target, torch.Tensor):
            if request.asked():
                raise TypeError("roles (kernel=, ...) need a module; for a tensor pass constraint")
            if per_input:
                raise TypeError("per_input= needs a module; for a tensor pass the dims you mean")
            new = [tensor_registration(target, constraint, dims, name or "tensor")]
        else:
            raise TypeError(f"can only constrain an nn.Module or a tensor, got {type(target)}")
        self._extend(new)
        if isinstance(target, nn.Module):
            skipped = skips(target, name or type(target).__name__, request)
            self._skipped += skipped
            warn_skipped(skipped)
        return self

    def _extend(self, new: list[Registration]) -> None:
        """Register ``new``: a tensor already here with the same request gains a place. A
        conflicting request or shared memory, in this registry or another live one, raises
        (see :class:`~._memory.Conflicts`), and then nothing is registered."""
        seen = Conflicts()
        for registry in live_registries():
            for known in registry._registrations:
                known.memory = region(known.parameter)  # as it is now (a.half() frees memory)
                seen.add(registry, known)
        own = {id(r.parameter): r for r in self._registrations}
        added: list[Registration] = []
        aliases: list[tuple[Registration, Registration]] = []
        for registration in new:
            seen.check(self, registration)
            same = own.get(id(registration.parameter))
            if same is not None:
                aliases.append((same, registration))
                continue
            own[id(registration.parameter)] = registration
            seen.add(self, registration)
            added.append(registration)
        for known, registration in aliases:
            fresh = [
                p
                for p in registration.places
                if not any(p[0] is o and p[1] == a for o, a, _ in known.places)
            ]
            known.places = (*known.places, *fresh)
        self._registrations.extend(added)
        self._changed()
        for registration in added + [known for known, _ in aliases]:
            for owner, attr, _ in registration.places:
                _mark(owner, attr, registration)

    def _changed(self) -> None:
        """Entries were added or bound again: check them in full and plan them anew."""
        self._version += 1
        self._guard = None

    def _live_hooks(self) -> list[tuple[StepHook, torch.optim.Optimizer]]:
        """The hooks of this registry still registered, with their optimizers."""
        return [(h, o) for h in self._hooks if (o := h.attached()) is not None]

    def _held(self) -> list[frozenset[int]]:
        """The tensors (ids) of each optimizer this registry is attached to."""
        return [hook.members(optimizer) for hook, optimizer in self._live_hooks()]

    def _select(self, members: frozenset[int] | None) -> tuple[list[EagerItem], list[Registration]]:
        """The full check: every entry is checked (O(1) each) and bound again where it changed,
        then what a call projects is listed: all of them, or with ``members`` (a hook) those in
        the optimizer that got a gradient. Raises before anything is projected."""
        items: list[EagerItem] = []
        dtensors: list[Registration] = []
        for registration in self._registrations:
            use = self._current(registration, members)
            if use is None:  # replaced; the optimizer holding it (or the old one) decides
                continue
            if members is not None:
                live = use.parameter
                if id(live) not in members or live.grad is None:
                    continue
            if use.dtensor:
                dtensors.append(use)
            else:
                items.append(use.item)
        return items, dtensors

    def _current(
        self, registration: Registration, members: frozenset[int] | None
    ) -> Registration | None:
        """``registration`` as the tensor at its places is now: bound again when its shape,
        layout or dtype changed or it became an inference tensor; for a replaced tensor, see
        :meth:`_replaced`."""
        tensor = registration.parameter
        for owner, attr, _ in registration.places:
            if owner._parameters.get(attr) is not tensor:
                return self._replaced(registration, members)
        if (
            tensor.shape != registration.shape
            or tensor.stride() != registration.stride
            or tensor.dtype is not registration.dtype
            or tensor.is_inference()
        ):
            registration.take(bind_again(registration))
        return registration

    def _replaced(
        self, registration: Registration, members: frozenset[int] | None
    ) -> Registration | None:
        """``registration``'s parameter is no longer the one at its place: bind the live one.
        A direct apply() projects it (the registration is kept, so hooks still see the change).
        A hook adopts it when its optimizer updates it, and raises when its optimizer holds the
        old tensor. When another optimizer the registry is attached to holds either, that one's
        hook decides: this one returns None and leaves the registration as it is, so that the
        guard keeps failing and the next hook checks in full (and raises if its optimizer holds
        the old tensor). Held by none, the new tensor is adopted (and left alone by hooks)."""
        fresh = bind_again(registration)
        if members is None:
            return fresh
        new, old = id(fresh.parameter), id(registration.parameter)
        if new not in members and old in members:
            raise RuntimeError(
                f"{registration.name} was replaced by a new tensor after it was constrained (e.g. "
                "load_state_dict(..., assign=True), or module.weight = nn.Parameter(...)), and "
                "this optimizer still holds the old one: the step updated a tensor the model no "
                "longer uses, and the new one is neither trained nor constrained. Create the "
                "optimizer (and attach the constraints) after replacing parameters, or load with "
                "assign=False, which copies the values into the existing tensors"
            )
        if new not in members and any(new in held or old in held for held in self._held()):
            return None
        registration.take(fresh)
        return registration

    def _check_memory(self) -> None:
        """The full check of shared memory (after a change, such as ``a.data = b.data``): every
        entry's memory is read again, and an entry of this registry that conflicts with
        another entry (see :class:`~._memory.Conflicts`) raises."""
        seen = Conflicts()
        for registry in live_registries():
            if registry is not self:
                for registration in registry._registrations:
                    registration.memory = region(registration.parameter)
                    seen.add(registry, registration)
        for registration in self._registrations:
            registration.memory = region(registration.parameter)
            seen.check(self, registration)
            seen.add(self, registration)

    def _step(self, optimizer: torch.optim.Optimizer, hook: StepHook) -> None:
        self._run(hook.members(optimizer), hook)

    def _run(self, members: frozenset[int] | None, hook: StepHook | None) -> None:
        """Project for ``apply()`` (``members`` None) or a hook.

        The fast path: the guard finds every entry as the last full check left it (O(1) per
        entry, no host synchronisation), and the plan bound to what this call projects runs.
        Otherwise (the first call, or something changed) see :meth:`_check_and_project`.
        """
        if torch.compiler.is_compiling():  # a compiled optimizer step traces its hooks:
            project_eagerly(*self._select(members), compile=self.compile)  # it guards itself
            return
        guard = self._guard
        if guard is None or not guard.holds():
            self._check_and_project(members, hook)
            return
        version = self._version
        if hook is None:
            selection = self._selection
            if selection is None or selection.version != version:
                selection = self._selection = Selection(self._registrations, version, None)
        else:
            selection = hook.selection
            if (
                selection is None
                or selection.version != version
                or selection.members is not members
            ):
                selection = hook.selection = Selection(self._registrations, version, members)
        selection.project(members is not None, self.compile)

    def _check_and_project(self, members: frozenset[int] | None, hook: StepHook | None) -> None:
        """The slow path: the full check (:meth:`_full_check`), then the tensors are projected
        one by one through the core."""
        items, dtensors = self._full_check(members, hook)
        try:
            project_eagerly(items, dtensors, compile=self.compile)
        except BaseException:
            self._guard = None
            raise

    def _full_check(
        self, members: frozenset[int] | None, hook: StepHook | None
    ) -> tuple[list[EagerItem], list[Registration]]:
        """Every entry is checked in full and bound again where needed (a replaced parameter,
        a new dtype, device, shape or layout, a parametrization...; raising before anything is
        projected), and the guard records the state just checked. Returns what the call
        projects (the fused step's pre-hook runs it alone, before the step)."""
        self._guard = None
        items, dtensors = self._select(members)
        self._check_memory()
        if hook is not None and (optimizer := hook.optimizer()) is not None:
            check_reachable(self._registrations, optimizer, members)
            check_held(self._registrations, self._held())
        self._changed()
        places = [(o, a, r.parameter) for r in self._registrations for o, a, _ in r.places]
        self._guard = Guard(places, [r.parameter for r in self._registrations])
        return items, dtensors

    def apply(self) -> None:
        """Project every registered tensor now (after loading a checkpoint, after swapping in
        averaged EMA/SWA weights, ...), frozen ones included.

        Every entry is checked first; a parameter replaced in its module since it was
        registered is projected in its new form, and one that became a computed weight
        (a parametrization added since) raises. Nothing is projected when one entry raises.
        """
        self._run(None, None)

    def attach(self, optimizer: torch.optim.Optimizer, *, fuse: bool = False) -> RemovableHandle:
        """Project after every step of ``optimizer`` that happens.

        Uses ``Optimizer.register_step_post_hook``: a step that is skipped (an AMP
        ``GradScaler`` that found inf/NaN gradients does not call ``step``) projects nothing.
        A step projects what it updated: the registered tensors in ``optimizer``'s param groups
        that have a gradient. A copy of the optimizer (``copy.deepcopy``, ``torch.save`` of the
        object) does not carry the hook: attach again to the copy.

        An entry no step of ``optimizer`` can project raises, here and at every full check of a
        step: a tensor entry that is not a leaf, or that shares memory with a tensor of the
        optimizer without being it (a view, ``.data`` or ``.detach()`` of a parameter). A
        trainable parameter registered as a tensor that none of the attached optimizers holds
        raises at the next step (one replaced in its module, with a new optimizer made for the
        new tensor, is the usual cause).

        ``fuse=True`` updates and projects in one pass, in a step pre-hook, the tensors the
        native kernels take (contiguous float32 CPU ones with ``MaxNorm``, ``UnitNorm`` or
        ``MinMaxNorm``, stepped by ``SGD``, ``Adam`` or ``AdamW``; see :mod:`._fused`), with the
        results of the step and the projection bit for bit; the others take the usual path (a
        warning says why when nothing can be fused).

        Args:
            optimizer: The optimizer whose steps are followed by the projection.
            fuse: Update and project in one pass where the kernels can.

        Returns:
            The hook's handle; ``handle.remove()`` detaches the registry.

        Raises:
            TypeError: ``optimizer`` is not an initialised torch optimizer, nor accelerate's
                ``AcceleratedOptimizer`` (other wrappers: call :meth:`apply` after their step).
            ValueError: An entry that no step of ``optimizer`` can project (see above), or
                memory shared with an entry that asks for another projection.
        """
        optimizer = check_optimizer(optimizer, "attach")
        self._check_memory()
        check_reachable(self._registrations, optimizer)
        hook = StepHook(self, optimizer)
        self._changed()  # the next step checks in full, with this optimizer among the others
        self._hooks = [h for h in self._hooks if h.attached() is not None]
        self._hooks.append(hook)
        hook.handle = optimizer.register_step_post_hook(hook)
        if fuse:
            from ._fused import start

            start(hook, optimizer)
        return hook.handle

    def clear(self) -> None:
        """Detach from every optimizer and forget every entry: the registry constrains nothing
        afterwards. For constraining the same weights differently (a tensor takes one
        constraint across the live registries).

        Example:
            >>> import torch
            >>> from weight_constraints import MaxNorm
            >>> from weight_constraints.adapters.torch import constrain
            >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
            >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            >>> registry = constrain(model, optimizer, kernel=MaxNorm(1.0))
            >>> registry.clear()
            >>> registry = constrain(model, optimizer, kernel=MaxNorm(2.0))
            >>> len(optimizer._optimizer_step_post_hooks)
            1
        """
        for hook in self._hooks:
            if hook.handle is not None:
                hook.handle.remove()
            if hook.fused is not None:
                hook.fused.restore()  # a step that raised left gradients hidden
                if hook.fused.handle is not None:
                    hook.fused.handle.remove()
        for registration in self._registrations:
            for owner, attr, _ in registration.places:
                owner.__dict__.get(MARK, {}).pop(attr, None)
        self._hooks, self._registrations, self._skipped = [], [], []
        self._selection = None
        self._changed()


def _of_module(
    module: nn.Module, request: Request, label: str, per_input: bool
) -> list[Registration]:
    """The registrations ``add(module, ...)`` makes (a role the module lacks raises)."""
    missing = request.missing(role for role, places in layout(module).items() if places)
    if missing:
        raise ValueError(f"{label} ({type(module).__name__}) has no {missing[0]} weights")
    return module_registrations(module, request, label, per_input=per_input)

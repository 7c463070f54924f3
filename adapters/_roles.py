"""The roles a weight can be constrained by, and which constraint each role gets: one rule for
every adapter.

A user asks for constraints by role (``constrain(model, kernel=..., recurrent=..., bias=...,
embedding=...)``); each adapter's layer tables say which weight has which role. Embedding tables
are input weights too: they take the ``kernel`` constraint unless ``embedding`` is given (as in
``keras.layers.Embedding``, and as a tied input embedding / output head pair needs). A role that
was asked for and that no weight has is an error in every adapter.

Example:
    >>> import weight_constraints as wc
    >>> request = Request.of(wc.get, kernel="max_norm")
    >>> request.constraint_for("embedding")  # the kernel's, since embedding= was not given
    MaxNorm(max_value=2.0, axis=0)
    >>> request.asked(), request.missing({"embedding"}), request.missing({"bias"})
    (['kernel'], [], ['kernel'])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

ROLES = ("kernel", "recurrent", "bias", "embedding")
"""The roles a weight can be constrained by: input weights (``kernel``), recurrent weights
(``recurrent``), bias vectors (``bias``, one norm over each whole vector) and embedding tables
(``embedding``, one norm per embedding vector)."""

PER_INPUT_ROLES = ("kernel", "recurrent")
"""The roles whose 2-D weights take one norm per *input* unit in the layers an adapter's
``per_input=`` chooses (embedding tables and biases keep their per-node axes)."""


@dataclass(frozen=True)
class Request:
    """The constraints a user asked for, by role (``None`` where none was asked).

    The constraints are whatever the adapter works with (core objects, Keras twins); build a
    request with :meth:`of`, which resolves names and configs.
    """

    kernel: Any = None
    recurrent: Any = None
    bias: Any = None
    embedding: Any = None

    @classmethod
    def of(
        cls,
        resolve: Callable[[Any], Any],
        *,
        kernel: Any = None,
        recurrent: Any = None,
        bias: Any = None,
        embedding: Any = None,
    ) -> Request:
        """The request for these roles, each constraint given passed through ``resolve``
        (``weight_constraints.get``, or an adapter's own conversion)."""
        given = {"kernel": kernel, "recurrent": recurrent, "bias": bias, "embedding": embedding}
        return cls(**{role: None if c is None else resolve(c) for role, c in given.items()})

    def constraint_for(self, role: str) -> Any:
        """The constraint a weight of ``role`` gets: embedding tables take the kernel's unless
        ``embedding`` was given; ``None`` when the role gets none."""
        if role == "embedding" and self.embedding is None:
            return self.kernel
        return getattr(self, role)

    def wanted(self) -> dict[str, Any]:
        """Every role with the constraint its weights get (``None``: left alone)."""
        return {role: self.constraint_for(role) for role in ROLES}

    def asked(self) -> list[str]:
        """The roles asked for by name, in ``ROLES`` order (an embedding falling back to the
        kernel constraint is not asked for by itself)."""
        return [role for role in ROLES if getattr(self, role) is not None]

    def missing(self, found: Iterable[str]) -> list[str]:
        """The roles asked for that none of the weights ``found`` (their roles) has. Embedding
        tables that took the kernel constraint count as kernels."""
        present = set(found)
        if self.embedding is None and "embedding" in present:
            present.add("kernel")
        return [role for role in self.asked() if role not in present]

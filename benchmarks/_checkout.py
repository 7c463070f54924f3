"""Make ``weight_constraints`` importable from this checkout when it is not installed.

pyproject.toml maps the folder ``constraints/`` to the package ``weight_constraints`` and
``adapters/`` to ``weight_constraints.adapters``, so ``PYTHONPATH=.`` alone does not make the
package importable. On a machine where it is not installed (a GPU machine with no network),
:func:`ensure_importable` registers the two folders under those names, as the installed package
would have them; an installed package is used as it is.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ensure_importable() -> str:
    """Import ``weight_constraints``; return where it came from ("installed" or "checkout")."""
    try:
        import weight_constraints  # noqa: F401

        return "installed"
    except ModuleNotFoundError as error:
        if error.name != "weight_constraints":
            raise
    for name, folder in (
        ("weight_constraints", "constraints"),
        ("weight_constraints.adapters", "adapters"),
    ):
        spec = importlib.util.spec_from_file_location(
            name, ROOT / folder / "__init__.py", submodule_search_locations=[str(ROOT / folder)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    sys.modules["weight_constraints"].adapters = sys.modules["weight_constraints.adapters"]
    return "checkout"

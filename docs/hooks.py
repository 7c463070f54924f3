"""MkDocs hook: lay out the sources under their import names for the API reference.

The repository keeps the core in ``constraints/`` and the adapters in ``adapters/``, mapped to
``weight_constraints`` and ``weight_constraints.adapters`` by pyproject.toml. The reference is
built by static analysis, which reads packages by folder name, so the build first links the
sources into ``build/api/weight_constraints`` (mkdocs.yml points mkdocstrings there).
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "build" / "api" / "weight_constraints"


def on_startup(**kwargs: object) -> None:
    shutil.rmtree(API, ignore_errors=True)
    API.mkdir(parents=True)
    for source in sorted((ROOT / "constraints").iterdir()):
        if source.suffix == ".py" or (source / "__init__.py").is_file():  # modules, subpackages
            (API / source.name).symlink_to(source, target_is_directory=source.is_dir())
    (API / "adapters").symlink_to(ROOT / "adapters", target_is_directory=True)

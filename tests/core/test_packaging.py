"""A regular (non-editable) install: the wheel holds weight_constraints and nothing else; in
particular no top-level ``constraints`` or ``adapters`` module, names other PyPI projects use."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_contents_and_regular_install(tmp_path):
    # setuptools builds the wheel from build/lib in the source tree: files left there by an
    # earlier build (a module since turned into a package) would be shipped.
    shutil.rmtree(ROOT / "build" / "lib", ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("weight_constraints-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "weight_constraints",
        wheel.name.split("-py")[0] + ".dist-info",
    }
    for module in (
        "__init__.py",
        "_projections.py",
        "py.typed",
        "adapters/keras/__init__.py",
        "adapters/torch/__init__.py",
        "adapters/torch/_native.c",  # the native kernels' source, built at first use
        "adapters/optax/__init__.py",
    ):
        assert f"weight_constraints/{module}" in names
    for gone in ("adapters/keras.py", "adapters/torch.py", "adapters/optax.py", "_namespace.py"):
        assert f"weight_constraints/{gone}" not in names
    # Every module of the source tree, subpackages included (the editable install of the test
    # environment would otherwise find a module the wheel lacks).
    for folder, package in (("constraints", ""), ("adapters", "adapters/")):
        for path in (ROOT / folder).rglob("*.py"):
            module = f"weight_constraints/{package}{path.relative_to(ROOT / folder).as_posix()}"
            assert module in names, f"the wheel lacks {module}"

    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=600,
    )
    script = f"""
import importlib.util, sys
sys.path.insert(0, {str(target)!r})
import weight_constraints, weight_constraints.adapters
assert weight_constraints.__file__.startswith({str(target)!r}), weight_constraints.__file__
assert weight_constraints.adapters.__file__.startswith({str(target)!r})
assert importlib.util.find_spec("weight_constraints.adapters.torch") is not None
assert not (__import__("pathlib").Path({str(target)!r}) / "constraints").exists()
assert not (__import__("pathlib").Path({str(target)!r}) / "adapters").exists()
import numpy as np
assert weight_constraints.max_norm(np.ones((4, 1)), 1.0).sum() == 2.0
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)

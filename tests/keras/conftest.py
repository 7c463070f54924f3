"""Keras tests run once per backend, one backend per process (``.ci/test`` sets KERAS_BACKEND).

``test_tensorflow.py`` holds what only the TensorFlow backend has (``tf.distribute``); it is not
collected under another backend.

``once_per_run``: fixtures whose work starts fresh Python processes (each start imports Keras and
its backend, 10-15 s on 2 cores) compute their result once per pytest run, shared by the
pytest-xdist workers, instead of once in every worker that runs one of the tests using them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import pytest

try:
    import fcntl
except ImportError:  # no file locks (Windows): each worker computes its own result
    fcntl = None

collect_ignore = [] if keras.backend.backend() == "tensorflow" else ["test_tensorflow.py"]


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


@pytest.fixture(scope="session")
def once_per_run(tmp_path_factory) -> Callable[[str, Callable[[Path], Any]], tuple[Path, Any]]:
    """``once_per_run(name, produce)`` gives ``(folder, result)``: ``produce(folder)`` writes
    its files into ``folder`` and returns what JSON can hold (``result`` is that, through JSON).
    The first worker that asks computes it, under a file lock, in the folder that the workers of
    this run share; the others wait for it and read it. A ``produce`` that raises leaves no
    result: the next worker to ask tries again, and fails the same way."""
    root = tmp_path_factory.getbasetemp()
    if fcntl is not None and "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # this run's folder: each worker's basetemp lies inside it

    def once(name: str, produce: Callable[[Path], Any]) -> tuple[Path, Any]:
        folder = root / f"once-{name}"
        done = folder / "result.json"
        with open(root / f"once-{name}.lock", "w") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            if not done.exists():
                folder.mkdir(exist_ok=True)
                done.write_text(json.dumps(produce(folder)))
            return folder, json.loads(done.read_text())

    return once

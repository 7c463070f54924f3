"""Run the docstring examples of a module as tests."""

from __future__ import annotations

import doctest
import importlib


def run_doctests(module_name: str) -> None:
    module = importlib.import_module(module_name)
    flags = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
    result = doctest.testmod(module, optionflags=flags, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"

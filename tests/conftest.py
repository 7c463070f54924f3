"""Shared test set-up: OpenMP threads that sleep when idle, hypothesis profiles, and no silent
skips in CI.

``OMP_WAIT_POLICY=PASSIVE`` (unless set otherwise): the suite runs on two pytest-xdist workers on
two cores, and torch's OpenMP threads spin while they wait for work by default. Two processes
spinning against each other ran a 4000-step moons training (8 s alone) in 218 s; with passive
waiting it takes 8 s, and torch keeps its threads (the native kernels' threaded paths still run).
It is set here, before anything imports torch, so that the xdist workers and the example scripts
that tests start inherit it.

With ``WC_FORBID_SKIPS=1`` (set by ``.ci/test``) a skipped test fails the session: in CI every
framework is installed, so a skip can only mean a missing install step.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before anything imports torch

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100
)
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.register_profile(
    "thorough", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=3000
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and os.environ.get("WC_FORBID_SKIPS") == "1":
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped:
        print(f"\nWC_FORBID_SKIPS=1 but {len(_skipped)} test(s) were skipped:")
        for nodeid in _skipped:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

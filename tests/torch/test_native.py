"""The native per-row kernels (``_native.c``): the build and its cache, the probes, the fallback
when they cannot be used, and their results against torch and the core, bit for bit.

On the CI platform (x86-64 Linux with a C compiler) the kernels must be available: a failed
build or probe fails here rather than silently sending everything through the torch path."""

from __future__ import annotations

import platform

import pytest
import torch

import weight_constraints as wc
from tests.doctests import run_doctests
from weight_constraints.adapters.torch import _native, _probes, _updates
from weight_constraints.adapters.torch._native import Projection, projection, rows_and_cols


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A process state without the loaded library, building into an empty cache; restored
    afterwards (the next user loads the shared one again)."""
    monkeypatch.setenv("WEIGHT_CONSTRAINTS_CACHE", str(tmp_path))
    monkeypatch.delenv("WEIGHT_CONSTRAINTS_NATIVE", raising=False)
    _native._reset_for_tests()
    yield tmp_path
    _native._reset_for_tests()


@pytest.fixture(scope="module")
def native():
    found = _native.library()
    assert found is not None, _native.unavailable()
    return found


def test_docstring_examples():
    run_doctests("weight_constraints.adapters.torch._native")
    run_doctests("weight_constraints.adapters.torch._probes")
    run_doctests("weight_constraints.adapters.torch._updates")


def test_available_on_the_ci_platform():
    if platform.machine().lower() not in ("x86_64", "amd64") or _native._compiler() is None:
        pytest.fail("the CI platform is x86-64 with a C compiler; the kernels must build there")
    assert _native.library() is not None, _native.unavailable()
    assert _native.unavailable() == ""


def test_builds_into_the_cache_and_loads_from_it(fresh):
    assert _native.library() is not None, _native.unavailable()
    built = list(fresh.glob("native-*.so"))
    assert len(built) == 1 and not list(fresh.glob(".native-*"))  # renamed into place
    stamp = built[0].stat().st_mtime_ns
    _native._reset_for_tests()
    assert _native.library() is not None
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not built again


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ({"WEIGHT_CONSTRAINTS_NATIVE": "0"}, "WEIGHT_CONSTRAINTS_NATIVE=0"),
        ({"CC": "false"}, "the C compiler failed"),
        ({"CC": "/nonexistent/cc"}, "could not be run"),
    ],
    ids=["disabled", "compiler-fails", "no-compiler"],
)
def test_none_with_the_reason_when_it_cannot_be_used(fresh, monkeypatch, setting, reason):
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    assert _native.library() is None
    assert reason in _native.unavailable()


def test_no_compiler_found(fresh, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(_native.shutil, "which", lambda name: None)
    assert _native.library() is None
    assert "no C compiler" in _native.unavailable()


def test_a_failed_probe_means_no_library(fresh, monkeypatch):
    monkeypatch.setattr(_probes, "check_norms", lambda native: "row norms of 3 entries differ")
    assert _native.library() is None
    assert "row norms of 3 entries differ" in _native.unavailable()


def test_the_probes_pass(native):
    assert _probes.check_norms(native) == ""
    assert _probes.check_projection(native) == ""
    assert native.foreach_sqrt is not None  # torch.sqrt's square root was reproduced


LENGTHS = [*range(1, 80), 127, 255, 256, 257, 300, 1000, 1023, 1024, 4096, 5000, 100003]


@pytest.mark.parametrize("cols", LENGTHS)
def test_norms_equal_vector_norm(native, cols):
    generator = torch.Generator().manual_seed(cols)
    rows = 3 if cols > 10000 else 6
    w = torch.randn(rows, cols, generator=generator) * torch.logspace(-2, 2, rows).unsqueeze(1)
    expected = torch.linalg.vector_norm(w, 2, (1,), True).view(-1)
    assert _probes.same_bits(native.norms(w), expected)


CONSTRAINTS = [
    wc.MaxNorm(0.5),
    wc.MaxNorm(1.0),
    wc.MaxNorm(0.0),
    wc.UnitNorm(),
    wc.MinMaxNorm(0.25, 0.5),
    wc.MinMaxNorm(0.25, 1.0, rate=0.5),
]


@pytest.mark.parametrize("cols", [1, 7, 8, 13, 64, 256, 300, 1024])
@pytest.mark.parametrize("constraint", CONSTRAINTS, ids=repr)
def test_projection_equals_the_core_bit_for_bit(native, constraint, cols):
    """Zero, NaN, inf, tiny rows and rows on the bounds included."""
    w = _probes.special_rows(16, cols, torch.Generator().manual_seed(cols))
    bound = constraint.with_axis(1)
    expected = w.clone()
    bound(expected, out=expected)
    ours = w.clone()
    native.project([ours], [rows_and_cols(ours, 1)], (Projection * 1)(projection(bound)))
    assert _probes.same_bits(ours, expected)


def test_only_exact_norm_kinds_have_a_projection():
    class Mine(wc.MaxNorm):
        pass

    assert projection(wc.MaxNorm(2)) is not None
    assert projection(Mine(2)) is None
    assert projection(wc.NonNeg()) is None
    assert projection(wc.MaxNorm("sqrt(fan_in)")) is None  # a rule: resolved per shape first


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, maximize=True),
        lambda ps: torch.optim.SGD(ps, lr=0.1, fused=True),
        lambda ps: torch.optim.Adam(ps, lr=0.1, weight_decay=0.01, maximize=True),
        lambda ps: torch.optim.Adam(ps, lr=0.1, betas=(0.2, 0.9), fused=True),
        lambda ps: torch.optim.AdamW(ps, lr=0.1, foreach=True),
        lambda ps: torch.optim.AdamW(ps, lr=0.1, fused=True),
    ],
    ids=[
        "sgd-damp-wd",
        "sgd-nesterov-max",
        "sgd-fused",
        "adam-wd-max",
        "adam-beta",
        "adamw",
        "adamw-fused",
    ],
)
def test_update_probe_passes(native, make):
    optimizer = make([torch.nn.Parameter(torch.ones(2))])
    assert _probes.check_update(native, optimizer, optimizer.param_groups[0]) == ""


def test_refusals_name_the_option():
    def group(**options):
        return torch.optim.Adam([torch.nn.Parameter(torch.ones(2))], **options).param_groups[0]

    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))])
    assert _updates.refusal(optimizer, group(amsgrad=True)) == (
        "amsgrad=True is not implemented by fuse=True"
    )
    assert "tensor lr" in _updates.refusal(optimizer, group(lr=torch.tensor(0.1)))
    assert _updates.refusal(optimizer, group()) == ""
    rmsprop = torch.optim.RMSprop([torch.nn.Parameter(torch.ones(2))])
    assert "not RMSprop" in _updates.unsupported(rmsprop)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_step_counts_are_incremented_as_foreach_add_does(native, dtype):
    steps = [torch.tensor(float(k), dtype=dtype) for k in (0, 1, 2**24 - 1, 7)]
    expected = [s.clone() for s in steps]
    torch._foreach_add_(expected, 1.0)
    versions = [s._version for s in steps]
    values = native.steps(steps)
    assert values == [s.item() for s in expected]
    assert all(torch.equal(a, b) for a, b in zip(steps, expected, strict=True))
    assert all(s._version > v for s, v in zip(steps, versions, strict=True))

"""The digits study: its quick mode end to end (report structure, the constraint in every trained
model), its progress output, and its command line."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

import weight_constraints as wc
from tests.examples.helpers import assert_png, run_script, table_rows

FIGURES = ("errors.png", "learning_rates.png", "norms.png")
MAIN = [
    "none", "l2", "dropout", "max_norm:1", "max_norm:2", "max_norm:3", "max_norm:4",
    "dropout + max_norm:1", "dropout + max_norm:2", "dropout + max_norm:3",
    "dropout + max_norm:4", "dropout + l2", "unit_norm",
]  # fmt: skip
SECTIONS = [
    "# Digits case study",
    "## Test error per configuration",
    "## Learning-rate sweep",
    "## The paper's Table 9 and our ordering",
    "## Keras and JAX",
    "## Figures",
]
TOLERANCE = 1e-6  # float32 rounding of a projected node


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick run shared by the tests below (Keras and JAX included, one seed each)."""
    out = tmp_path_factory.mktemp("digits")
    result = run_script("digits_study.py", "--quick", "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == ""  # --quiet
    return out, (out / "report.md").read_text(), json.loads((out / "results.json").read_text())


def test_report_structure(quick):
    out, report, _ = quick
    positions = [report.find(title) for title in SECTIONS]
    assert -1 not in positions and positions == sorted(positions), positions
    rows = table_rows(report, "## Test error per configuration")
    assert [row.split("|")[1].strip() for row in rows] == MAIN
    for row in rows:
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", cells[1]), cells
        assert cells[2] == "baseline" or re.fullmatch(r"[+-]\d+\.\d\d \[[+-].*, [+-].*\]", cells[2])
    sweep = table_rows(report, "## Learning-rate sweep")
    assert [row.split("|")[1].strip() for row in sweep] == [
        rate for rate in ("0.01", "0.1", "0.3", "1") for _ in range(3)
    ]
    paper = table_rows(report, "## The paper's Table 9")
    quoted = {(row.split("|")[1].strip(), row.split("|")[2].strip()) for row in paper}
    assert quoted == {("L2", "1.62"), ("Max-norm", "1.35"), ("Dropout + L2", "1.25"),
                      ("Dropout + Max-norm", "1.05")}  # fmt: skip
    assert "**Verdict (computed):**" in report
    for c in ("1", "2", "3", "4"):
        assert f"- c = {c}: l2 − max_norm:{c}: " in report
    for name in ("Keras", "JAX"):
        check = rf"- {name} .*: \d+\.\d\d ± \d+\.\d\d % over 1 seed; .*\*\*(agrees|differs)\*\*"
        assert re.search(check, report), name
    assert "3 seeds (1..3)" in report and "500 training images and 1297 test images" in report
    for figure in FIGURES:
        assert_png(out / figure)
        assert f"]({figure})" in report


def test_every_trained_model_satisfies_its_constraint(quick):
    _, _, results = quick
    runs = {(run["label"], run["lr"]): run for run in results["runs"]}
    assert len(runs) == 13 + 9  # the sweep at the study's rate is the main table's run
    acted = set()
    for (label, lr), run in runs.items():
        norms = np.array(run["final_norms"])  # (layers, seeds, [min, max])
        assert norms.shape == (3, 3, 2)
        if run["constraint"] == "unit_norm":
            np.testing.assert_allclose(norms, 1.0, atol=TOLERANCE)
        elif run["constraint"] is not None:
            c = float(run["constraint"].split(":")[1])
            assert norms[..., 1].max() <= c * (1 + TOLERANCE), (label, lr)
            assert max(run["largest_norm"]) <= c * (1 + TOLERANCE), (label, lr)
            twin = runs[(label.rsplit(" + ", 1)[0] if " + " in label else "none", lr)]
            if max(twin["largest_norm"]) > c * 1.01:  # without it the norms exceed c:
                assert norms[..., 1].max() >= c * (1 - 1e-3)  # the bound was reached
                acted.add(c)
    assert acted >= {1.0, 3.0}  # a missing projection cannot pass unnoticed
    for check in results["checks"]:
        assert check["backend"] in {"keras", "jax"} and check["audit_problems"] == 0
        assert max(layer[1] for seed in check["final_norms"] for layer in seed) <= 1 + TOLERANCE


def test_results_hold_every_seed(quick):
    _, _, results = quick
    assert results["seeds"] == 3 and results["settings"]["hidden"] == 32
    for run in results["runs"]:
        assert len(run["test_error"]) == len(run["train_error"]) == 3
        assert all(0.0 <= e <= 1.0 for e in run["test_error"])
    assert [check["backend"] for check in results["checks"]] == ["keras", "jax"]


def test_progress_in_a_log_is_a_few_lines(tmp_path):
    result = run_script(
        "digits_study.py", "--quick", "--check-repeats", "0", "--max-norms", "1",
        "--lrs", "0.1", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    progress = [line for line in result.stderr.splitlines() if line.startswith("digits:")]
    assert 2 <= len(progress) <= 11 and progress[-1].startswith("digits: 100%"), result.stderr
    assert "\r" not in result.stderr
    assert "dropout + max_norm:1: test error" in result.stdout
    assert "## Keras and JAX" in (tmp_path / "report.md").read_text()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_in_place_on_a_terminal_and_lines_elsewhere():
    from study_common import LineProgress, progress_bar

    terminal = _Terminal()
    with progress_bar(1000, "study", file=terminal) as bar:
        assert not isinstance(bar, LineProgress)  # tqdm
        for _ in range(1000):
            bar.update(1)
    assert "\r" in terminal.getvalue() and "\n" not in terminal.getvalue().rstrip("\n")
    log = io.StringIO()
    with progress_bar(1000, "study", file=log) as bar:
        for _ in range(1000):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("study: 100% (1000/1000 epochs")
    quiet = io.StringIO()
    with progress_bar(10, "study", disable=True, file=quiet) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""


def test_a_seed_trains_the_same_in_any_ensemble():
    """A repeat's initial weights and batches come from its own seed: the ensemble's size and
    the other seeds change nothing (without dropout, whose masks are shared)."""
    import digits_study
    from digits_data import Settings, digits

    settings, data = Settings(epochs=2, hidden=16), digits()
    config = digits_study.Config(constraint=wc.MaxNorm(0.5), lr=0.1)
    both = digits_study.train_ensemble(config, [5, 6], settings, data)
    alone = digits_study.train_ensemble(config, [6], settings, data)
    np.testing.assert_allclose(both.largest_norm[1], alone.largest_norm[0], rtol=1e-5)
    assert both.test_error[1] == pytest.approx(alone.test_error[0], abs=2 / 1297)
    for layer in both.final_norms:
        assert layer.max() <= 0.5 * (1 + TOLERANCE)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--repeats", "0"], "--repeats must be >= 1, got 0"),
        (["--lr", "0"], "malformed --lr '0': expected finite numbers > 0"),
        (["--lr", "0.1,0.2"], "--lr takes one number"),
        (["--lrs", "0.1,x"], "malformed --lrs '0.1,x'"),
        (["--max-norms", "-1"], "malformed --max-norms '-1'"),
        (["--check-repeats", "-1"], "--check-repeats must be >= 0, got -1"),
    ],
)
def test_bad_input(args, message, tmp_path):
    result = run_script("digits_study.py", "--quick", "--out", str(tmp_path), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr

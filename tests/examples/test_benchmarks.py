"""The benchmark command at tiny sizes, so that it cannot rot (no timing is asserted)."""

from __future__ import annotations

import json

from tests.examples.helpers import EXAMPLES, assert_png, run_script


def test_benchmark_command_runs_every_section(tmp_path):
    result = run_script(
        str(EXAMPLES.parent / "benchmarks" / "run.py"), "--quick", "--out", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    sections = {row["section"] for row in report["rows"]}
    assert sections == {"numpy", "torch", "keras", "moons", "scaling"}
    for row in report["rows"]:
        assert row["ratio"] > 0 and all(v > 0 for v in row["medians"].values()), row
    assert {"cpu", "numpy", "torch", "keras", "weight_constraints"} <= set(report["machine"])
    markdown = (tmp_path / "performance.md").read_text()
    for title in ("NumPy core", "PyTorch adapter", "Keras adapter", "moons", "Scaling"):
        assert title in markdown
    assert markdown.count("\n| ") > len(report["rows"])
    assert_png(tmp_path / "performance_scaling.png")

"""The benchmark commands at tiny sizes, so that they cannot rot (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.examples.helpers import EXAMPLES, assert_png, run_script

BENCHMARKS = EXAMPLES.parent / "benchmarks"
KINDS = ("MaxNorm", "UnitNorm", "MinMaxNorm", "NonNeg")
TIMED_KINDS = ("MaxNorm", "UnitNorm", "MinMaxNorm")


def test_benchmark_command_runs_every_section(tmp_path):
    result = run_script(str(BENCHMARKS / "run.py"), "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "cpu.json").read_text())
    rows = report["rows"]
    sections = {row["section"] for row in rows}
    assert sections == {
        "numpy",
        "torch",
        "registry",
        "hook",
        "keras",
        "moons",
        "scaling",
        "normalized",
        "step",
    }
    for row in rows:
        assert row["ratio"] > 0 and all(v > 0 for v in row["medians"].values()), row
    # The registry rows: every constraint on every layout, ours against the hand-written loop
    # and compile=True, with the tensor count for the cost per tensor.
    registry = [row for row in rows if row["section"] == "registry"]
    assert [row["case"].split(",")[0] for row in registry] == [k for k in TIMED_KINDS for _ in "ab"]
    for row in registry:
        assert set(row["medians"]) == {"ours", "hand-written", "ours, compile=True"}, row
        assert row["tensors"] == int(row["case"].split(", ")[1].split(" ")[0]) > 0
        assert row["ratio"] == row["medians"]["ours"] / row["medians"]["hand-written"]
        assert row["met"] == (row["ratio"] <= float(row["goal"].strip("≤× ")))
    assert [row["goal"] for row in registry[:2]] == ["≤ 0.5×", "≤ 1.0×"]
    (hook,) = [row for row in rows if row["section"] == "hook"]
    compiled = "step + hook, compile=True"
    assert set(hook["medians"]) == {"step", "step + hook", "hook alone", compiled}
    assert hook["ratio"] == hook["medians"]["step + hook"] / hook["medians"]["step"]
    # The normalized-weight rows: nGPT-style and EDM2-style over every matrix of the layers,
    # ours against the hand-written loop (no compile=True in --quick).
    normalized = [row for row in rows if row["section"] == "normalized"]
    assert [row["case"].split(",")[0] for row in normalized] == ["nGPT-style", "EDM2-style"]
    for row in normalized:
        assert set(row["medians"]) == {"ours", "hand-written"}, row
        assert row["tensors"] == 12 and "(12 matrices" in row["case"]  # 2 layers of 6
        assert row["ratio"] == row["medians"]["ours"] / row["medians"]["hand-written"]
        assert row["goal"] == "≤ 1.0×" and row["met"] == (row["ratio"] <= 1.0)
    # The constrained-step rows: every optimizer, in the foreach and fused=True modes (no
    # compiled mode in --quick), every constraint; the hook against fuse=True.
    step = [row for row in rows if row["section"] == "step"]
    assert len(step) == 3 * 2 * len(TIMED_KINDS)
    for row in step:
        assert set(row["medians"]) == {"step", "step + hook", "step, fuse=True"}, row
        assert row["ratio"] == row["medians"]["step, fuse=True"] / row["medians"]["step"]
        assert row["goal"] == ("" if "(fused=True)" in row["case"] else "≤ 1.05×"), row
    assert "A/A′ control: step again / step" in step[0]["extra"]
    assert {"cpu", "numpy", "torch", "keras", "weight_constraints"} <= set(report["machine"])
    markdown = (tmp_path / "performance.md").read_text()
    for title in (
        "NumPy core",
        "PyTorch adapter",
        "PyTorch registry",
        "hook inside an AdamW step",
        "Keras adapter",
        "moons",
        "Scaling",
        "Normalized-weight training",
        "A constrained optimizer step",
    ):
        assert title in markdown
    assert "µs per tensor" in markdown
    assert "`compile=True` against eager" in markdown
    assert "In this run, foreach: fuse=True" in markdown
    assert markdown.count("\n| ") > len(rows)
    assert_png(tmp_path / "performance_scaling.png")


def test_gpu_script_runs_its_cpu_paths(tmp_path):
    out = tmp_path / "gpu.json"
    result = run_script(str(BENCHMARKS / "gpu.py"), "--quick", "--cpu", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"]["device"] == "cpu" and report["complete"] and not report["failures"]
    sections = report["sections"]
    assert list(sections) == ["correctness", "sync", "graph", "speed"]
    for section in sections.values():
        assert section["status"] == "ok" and section["checks"], section
        assert all(check["ok"] for check in section["checks"])
    names = [check["name"] for check in sections["correctness"]["checks"]]
    for kind in KINDS:
        for dtype in ("float32", "float16", "bfloat16"):
            for what in ("float64 reference", "constraint holds", "bit for bit", "NaN node"):
                assert any(n.startswith(f"{kind}, {dtype},") and what in n for n in names), (
                    kind,
                    dtype,
                    what,
                )
    assert any("compile=True" in n for n in names)
    # What needs CUDA is said not to have run.
    assert "CUDA only" in " ".join(sections["sync"]["not_run"])
    assert "CUDA only" in " ".join(sections["graph"]["not_run"])
    rows = report["rows"]
    assert {row["case"].split(",")[0] for row in rows if row["section"] == "registry"} == set(
        TIMED_KINDS
    )
    hooks = [row["case"] for row in rows if row["section"] == "hook"]
    assert [case.split(")")[0] for case in hooks] == ["AdamW (fused", "AdamW (foreach"]
    assert "weight_constraints on the CPU" in result.stdout


FAILING = """
import sys
sys.path.insert(0, {benchmarks!r})
import gpu

def broken(section, settings):
    raise RuntimeError("this section broke")

gpu.SECTIONS["sync"] = broken
maxnorm = gpu.KINDS["MaxNorm"]
gpu.KINDS["MaxNorm"] = gpu.Kind(maxnorm.constraint, lambda w, dims: w, maxnorm.outside,
                                maxnorm.inside)  # a wrong reference: the checks must see it
sys.exit(gpu.main(["--quick", "--cpu", "--no-compile", "--sections", "correctness,sync,graph",
                   "--out", {out!r}]))
"""


def test_gpu_script_reports_failures_and_keeps_the_other_sections(tmp_path):
    out = tmp_path / "gpu.json"
    code = FAILING.format(benchmarks=str(BENCHMARKS), out=str(out))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr[-3000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    correctness = sections["correctness"]
    assert correctness["status"] == "failed"
    failed = [check["name"] for check in correctness["checks"] if not check["ok"]]
    assert failed and all(
        name.startswith("MaxNorm") and "float64 reference" in name for name in failed
    )
    assert sections["sync"]["status"] == "error"
    assert "this section broke" in sections["sync"]["error"]
    assert sections["graph"]["status"] == "ok"  # ran after the broken section
    assert report["complete"] and len(report["failures"]) == len(failed) + 1
    assert "FAILED MaxNorm" in result.stdout and "this section broke" in result.stdout


NO_CUDA = """
import sys
sys.path.insert(0, {benchmarks!r})
import gpu
gpu.torch.cuda.is_available = lambda: False
sys.exit(gpu.main(["--out", {out!r}]))
"""


def test_gpu_script_without_cuda_asks_for_the_cpu_paths(tmp_path):
    out = tmp_path / "gpu.json"
    code = NO_CUDA.format(benchmarks=str(BENCHMARKS), out=str(out))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "--cpu" in result.stderr and not out.exists()

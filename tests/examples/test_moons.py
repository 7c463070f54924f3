"""The moons examples: smoke runs, the measured reference results, the batched ensemble."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import weight_constraints as wc
from tests.examples.helpers import RESULT, assert_png, run_script, table_rows

from moons_data import result_line


def test_moons_torch_smoke(tmp_path):
    result = run_script("moons_torch.py", "--epochs", "30", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if RESULT.search(line)]
    assert len(lines) == 2 and "no constraint" in lines[0] and "unit_norm" in lines[1]
    assert_png(tmp_path / "moons_torch.png")


def test_moons_torch_measures_what_it_prints():
    import moons_torch

    short = moons_torch.train(1, None, epochs=5)
    longer = moons_torch.train(1, None, epochs=300)
    assert short["final"] != longer["final"]  # measured, not a constant
    assert short["train"].shape == (5,) and short["test"].shape == (5,)


def test_moons_torch_reference_result():
    """The tutorial's numbers, measured: 1.000 / 0.914 without, 1.000 / 0.943 with unit norm."""
    import moons_torch

    baseline = moons_torch.train(1, None)
    constrained = moons_torch.train(1, wc.UnitNorm())
    assert result_line(*baseline["final"]) == "Train: 1.000, Test: 0.914"
    assert result_line(*constrained["final"]) == "Train: 1.000, Test: 0.943"
    hidden = constrained["model"].hidden.weight.detach().numpy()
    np.testing.assert_allclose(wc.node_norms(hidden, axis=1), 1.0, rtol=1e-6)


def test_moons_keras_reference_result(tmp_path):
    """The documented command (``python examples/moons_keras.py --out docs/case_study``, the
    tutorial's 4000 epochs) prints the tutorial's numbers, measured, and draws its figure."""
    result = run_script("moons_keras.py", "--epochs", "4000", "--seed", "1", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if RESULT.search(line)]
    assert lines == [
        "    no constraint: Train: 1.000, Test: 0.914",
        " unit_norm hidden: Train: 1.000, Test: 0.943",
    ]
    assert_png(tmp_path / "moons_keras.png")


@pytest.mark.parametrize("example", ["moons_torch", "moons_keras"])
def test_examples_reject_bad_epochs(example, tmp_path, capsys):
    """In this process: the command line is the example's main(); a fresh process would only
    add the import of the framework (10 s for TensorFlow)."""
    import torch

    threads = torch.get_num_threads()  # moons_torch.main() sets one thread before parsing
    try:
        with pytest.raises(SystemExit) as exit:
            importlib.import_module(example).main(["--epochs", "0", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert exit.value.code != 0 and "--epochs must be >= 1, got 0" in capsys.readouterr().err


# -- the study -----------------------------------------------------------------------------------


def study(tmp_path, *args):
    return run_script("moons_study.py", "--out", str(tmp_path), "--quiet", *args)


@pytest.mark.parametrize("backend", ["torch", "keras"])
def test_study_smoke_with_every_flag(backend, tmp_path):
    result = study(
        tmp_path,
        "--backend", backend,
        "--constraints", "none,unit_norm,max_norm:1.5,min_max_norm:0.5:1:0.5,non_neg",
        "--repeats", "2",
        "--epochs", "4",
        "--seed", "4",
        "--constrain-output",
        "--constrain-bias",
        "--grid", "0.5,1.0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # --quiet
    report = (tmp_path / "report.md").read_text()
    rows = table_rows(report, "## Accuracy")
    labels = [row.split("|")[1].strip() for row in rows]
    assert labels == ["none", "unit_norm", "max_norm:1.5", "min_max_norm:0.5:1:0.5", "non_neg"]
    assert len(table_rows(report, "## Grid")) == 2
    assert "output layer constrained too" in report and "biases constrained too" in report
    for figure in ("learning_curves.png", "norms.png", "boundaries.png", "grid.png"):
        assert_png(tmp_path / figure)
        assert f"]({figure})" in report


def test_study_progress_bar_and_summary(tmp_path):
    result = run_script(
        "moons_study.py", "--out", str(tmp_path), "--repeats", "2", "--epochs", "200",
        "--constraints", "none,unit_norm",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "moons: 100%" in result.stderr  # tqdm
    assert "unit_norm: Train:" in result.stdout
    assert not (tmp_path / "grid.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--constraints", "none,l3_norm"], "unknown constraint 'l3_norm'"),
        (["--constraints", "max_norm:x"], "'max_norm:x'"),
        (["--constraints", "max_norm:-1"], "max_value must be finite and >= 0, got -1.0"),
        (["--repeats", "-3"], "--repeats must be >= 1, got -3"),
        (["--repeats", "two"], "--repeats must be an integer, got 'two'"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--grid", "0.3,,x"], "malformed --grid '0.3,,x'"),
        (["--grid", "0.3,-1"], "malformed --grid '0.3,-1'"),
    ],
)
def test_study_bad_input(args, message, tmp_path):
    result = study(tmp_path, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_study_help():
    result = run_script("moons_study.py", "--help")
    assert result.returncode == 0
    for flag in ("--backend", "--constraints", "--repeats", "--grid", "--quiet"):
        assert flag in result.stdout


@pytest.mark.parametrize(
    "constraint",
    [
        None,
        wc.UnitNorm(),
        wc.MaxNorm(0.5),
        wc.Simplex(),
        wc.BoxMaxNorm(-0.5, 0.5, 1.0),
        wc.MaxL1Norm(0.5),
        wc.Clip(-0.1, 0.1),
    ],
    ids=repr,
)
def test_batched_ensemble_equals_training_each_repeat_alone(constraint):
    import moons_study
    import moons_torch

    seeds = [3, 4, 30]
    epochs = 40
    ensemble = moons_study.train_torch_ensemble(constraint, seeds, epochs)
    for r, seed in enumerate(seeds):
        alone = moons_torch.train(seed, constraint, epochs)
        np.testing.assert_array_equal(ensemble.train_curves[r], alone["train"])
        np.testing.assert_array_equal(ensemble.test_curves[r], alone["test"])
        assert (ensemble.final_train[r], ensemble.final_test[r]) == pytest.approx(alone["final"])
        hidden = alone["model"].hidden.weight.detach().numpy()
        np.testing.assert_allclose(
            ensemble.norms_after[r], wc.node_norms(hidden, axis=1), rtol=1e-5, atol=1e-7
        )

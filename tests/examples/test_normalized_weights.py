"""The normalized-weights example (EDM2 and nGPT recipes): its smoke run prints what it
promises, every matrix on its sphere within float32 rounding after every epoch, and measures
what it prints."""

from __future__ import annotations

import re

import torch

from tests.examples.helpers import run_script

NUMBER = r"([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
EPOCH = re.compile(
    rf"^epoch (\d+)/(\d+): loss {NUMBER}, largest \|norm - target\| {NUMBER} "
    rf"\(relative {NUMBER}\); without the constraint: loss {NUMBER}, largest \|norm - target\| "
    rf"{NUMBER}; step {NUMBER} ms against {NUMBER} ms, overhead {NUMBER}%$"
)
SUMMARY = re.compile(
    rf"^all epochs: largest \|norm - target\| relative to the target {NUMBER} "
    rf"\(float32 spacing {NUMBER}\); step-time overhead {NUMBER}% \(median of (\d+) steps each\)$"
)
# Float32 weights projected in float32: the norm of a node within a few spacings of its target
# (the bound of tests/torch/test_recipes.py for float32).
ROUNDING = 4 * torch.finfo(torch.float32).eps


def test_quick_run_keeps_every_matrix_on_its_sphere():
    result = run_script("normalized_weights.py", "--quick", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warning" not in result.stderr, result.stderr
    sections = result.stdout.strip().split("\n\n")
    assert len(sections) == 2, result.stdout
    calls = (
        'constrain(net, optimizer, kernel=wc.MinMaxNorm("sqrt(fan_in)", "sqrt(fan_in)")).apply()',
        'constrain(model, optimizer, kernel=wc.UnitNorm(), per_input=r".*\\.(attn_out|down)")'
        ".apply()",
    )
    for section, title, call in zip(sections, ("EDM2", "nGPT"), calls, strict=True):
        lines = section.splitlines()
        assert lines[0].startswith(f"{title}-style"), lines[0]
        assert lines[1].strip() == call
        assert re.match(r"^  \d+ constrained matrices \([\d,]+ weights\)", lines[2]), lines[2]
        epochs = [EPOCH.match(line) for line in lines[3:-1]]
        assert all(epochs), lines[3:-1]
        assert [(int(m[1]), int(m[2])) for m in epochs] == [(1, 2), (2, 2)]
        for m in epochs:
            largest, relative, drift = float(m[4]), float(m[5]), float(m[7])
            assert 0 <= relative <= ROUNDING, m[0]
            assert largest <= ROUNDING * 16  # the largest target: sqrt(fan_in) = 16
            assert drift > 100 * largest  # the copy without the constraint leaves its spheres
            with_ms, without_ms, overhead = (float(m[i]) for i in (8, 9, 10))
            assert with_ms > 0 and without_ms > 0
            assert abs(overhead - 100 * (with_ms / without_ms - 1)) < 0.1  # measured, not typed
        summary = SUMMARY.match(lines[-1])
        assert summary, lines[-1]
        assert float(summary[1]) == max(float(m[5]) for m in epochs)
        assert float(summary[1]) <= ROUNDING
        assert int(summary[4]) == 10  # 2 epochs of 5 steps


def test_the_measure_is_of_the_weights():
    """largest_distance measures the weights: zero on the spheres, the distance off them."""
    import normalized_weights

    model = normalized_weights.TinyNGPT(vocab=8, d=4)
    targets = normalized_weights.ngpt_targets(model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            axes, _ = targets[name]
            parameter.div_(torch.linalg.vector_norm(parameter, dim=axes, keepdim=True))
    assert normalized_weights.largest_distance(model, targets)[1] <= ROUNDING
    with torch.no_grad():
        model.blocks[0].down.weight[:, 0] *= 3.0  # one input unit of a down-projection
    largest, relative = normalized_weights.largest_distance(model, targets)
    assert abs(largest - 2.0) < 1e-6 and relative == largest

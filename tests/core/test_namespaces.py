"""The same core code on other array libraries: torch tensors and a generic array-API namespace.

torch and array-api-compat are optional dependencies of the core; the dev extra installs both.
"""

from __future__ import annotations

import numpy as np
import pytest

import weight_constraints as wc

torch = pytest.importorskip("torch")

CASES = {
    "max_norm": lambda w, **kw: wc.max_norm(w, 1.0, (0, 2), **kw),
    "unit_norm": lambda w, **kw: wc.unit_norm(w, -1, **kw),
    "min_max_norm": lambda w, **kw: wc.min_max_norm(w, 0.5, 1.5, 0.5, None, **kw),
    "non_neg": lambda w, **kw: wc.non_neg(w, **kw),
    "node_norms": lambda w, **kw: wc.node_norms(w, (1, 2), keepdims=True, **kw),
}
TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def sample(dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 4, 3)) * rng.uniform(0.1, 2.0, (1, 4, 1))
    w[:, 1, :] = 0.0  # a zero node
    return w.astype(dtype)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_torch_matches_numpy_and_keeps_dtype(name, dtype):
    w64 = sample(np.float64)
    tensor = torch.tensor(w64, dtype=TORCH_DTYPES[dtype])
    result = CASES[name](tensor)
    assert isinstance(result, torch.Tensor)
    expected_dtype = TORCH_DTYPES["float32" if dtype in ("float16", "bfloat16") else dtype]
    assert result.dtype == (expected_dtype if name == "node_norms" else tensor.dtype)
    expected = CASES[name](tensor.double().numpy())
    eps = torch.finfo(TORCH_DTYPES[dtype]).eps
    np.testing.assert_allclose(result.double().numpy(), expected, rtol=4 * eps, atol=4 * eps)


@pytest.mark.parametrize("name", [n for n in CASES if n != "node_norms"])
@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_torch_out_in_place(name, dtype):
    tensor = torch.tensor(sample(np.float64), dtype=TORCH_DTYPES[dtype])
    expected = CASES[name](tensor)
    pointer = tensor.data_ptr()
    returned = CASES[name](tensor, out=tensor)
    assert returned is tensor and tensor.data_ptr() == pointer
    torch.testing.assert_close(tensor, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_torch_zero_ball(dtype):
    tensor = torch.tensor(sample(np.float64), dtype=TORCH_DTYPES[dtype])
    assert torch.equal(wc.max_norm(tensor, 0.0, (0, 2)), torch.zeros_like(tensor))
    assert wc.max_norm(tensor, 0, 1, out=tensor) is tensor
    assert torch.equal(tensor, torch.zeros_like(tensor))


@pytest.mark.parametrize(
    "shape, axis", [((0, 3), 0), ((3, 0), 0), ((0, 2, 2), (0, 2)), ((2, 0), 1)]
)
def test_torch_empty(shape, axis):
    tensor = torch.zeros(shape)
    assert wc.max_norm(tensor, 1.0, axis, out=tensor).shape == shape
    assert wc.unit_norm(tensor, axis).shape == shape
    from_numpy = torch.tensor(np.zeros(shape, np.float32))  # strides may be 0: no entries
    assert wc.unit_norm(from_numpy, axis, out=from_numpy) is from_numpy
    assert wc.non_neg(from_numpy, out=from_numpy) is from_numpy


def test_torch_float16_entries_up_to_65504():
    w = torch.full((4, 3), 65504.0, dtype=torch.float16)
    assert torch.equal(wc.unit_norm(w), torch.full((4, 3), 0.5, dtype=torch.float16))
    assert torch.equal(wc.max_norm(w, 3.0), torch.full((4, 3), 1.5, dtype=torch.float16))
    wc.unit_norm(w, 1, out=w)  # in place: norm 131008, factor 7.6e-6 (a float16 subnormal)
    assert torch.equal(w, torch.full((4, 3), 1 / 3**0.5, dtype=torch.float16))


def test_torch_keeps_autograd_without_out():
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    wc.max_norm(w, 0.5).sum().backward()
    assert w.grad is not None and w.grad.shape == w.shape


def test_torch_errors():
    with pytest.raises(TypeError, match="dtype int64"):
        wc.max_norm(torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="dtype bool"):
        wc.non_neg(torch.ones(3, dtype=torch.bool))
    w = torch.ones(3, 2)
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        wc.unit_norm(w, axis=2, out=w)
    with pytest.raises(TypeError, match="out must be a Tensor"):
        wc.unit_norm(w, out=np.ones((3, 2), np.float32))
    assert (w == 1).all()


def test_explicit_numpy_namespace_for_torch_input_is_refused_cleanly():
    # xp=numpy converts the input with numpy.asarray: fine on CPU, and the result is NumPy.
    result = wc.max_norm(torch.ones(4, 1), 1.0, xp=np)
    assert isinstance(result, np.ndarray)


def test_generic_array_api_namespace():
    compat = pytest.importorskip("array_api_compat")
    xp = compat.array_namespace(torch.empty(0))
    tensor = torch.tensor(sample(np.float64), dtype=torch.float32)
    for name in CASES:
        got = CASES[name](tensor, xp=xp)
        torch.testing.assert_close(got, CASES[name](tensor))
    with pytest.raises(TypeError, match="out= needs NumPy arrays or torch tensors"):
        wc.max_norm(tensor, 1.0, out=tensor, xp=xp)


# Shapes large enough that the CPU paths work in several cache-sized blocks (4 MiB each).
BLOCKED = [
    ((2100, 600), 0),  # Keras Dense layout: a leading reduction, 3 blocks
    ((700, 300, 3, 3), (0, 2, 3)),  # ConvTranspose layout: leading and trailing reductions
    ((3, 3, 300, 500), (0, 1, 2)),  # Keras Conv2D layout
    ((5000, 300), 1),  # Linear layout: trailing reduction (blocks for half precision)
    ((9, 400, 700), (0, 2)),
]


@pytest.mark.parametrize("shape, axis", BLOCKED)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_torch_cpu_blocked_paths_match_numpy(shape, axis, dtype):
    rng = np.random.default_rng(3)
    w64 = rng.standard_normal(shape) * rng.uniform(0.2, 3.0, size=shape[-1])
    tensor = torch.tensor(w64, dtype=TORCH_DTYPES[dtype])
    exact = tensor.double().numpy()
    norms = wc.node_norms(tensor, axis, keepdims=True)
    assert norms.dtype == torch.float32
    np.testing.assert_allclose(norms.numpy(), wc.node_norms(exact, axis, keepdims=True), rtol=1e-5)
    projected = wc.max_norm(tensor, 1.0, axis, out=tensor)
    expected = wc.max_norm(exact, 1.0, axis)
    eps = torch.finfo(TORCH_DTYPES[dtype]).eps
    np.testing.assert_allclose(projected.double().numpy(), expected, rtol=2 * eps, atol=2 * eps)
    assert float(wc.node_norms(projected, axis).max()) <= 1 + 2 * eps


@pytest.mark.parametrize("shape, axis", [((5000, 300), 1), ((700, 300, 3, 3), (0, 2, 3))])
def test_torch_cpu_blocked_paths_ignore_the_default_device(shape, axis):
    # The float32 buffer of the half-precision blocks is made on the CPU, next to the weights,
    # even when the user changed torch's default device.
    tensor = torch.randn(shape).to(torch.bfloat16)
    expected = wc.max_norm(tensor.clone(), 1.0, axis)
    with torch.device("meta"):
        projected = wc.max_norm(tensor, 1.0, axis, out=tensor)
    assert projected.device.type == "cpu"
    assert torch.equal(projected, expected)


# -- out= on torch: refused before anything is written, from metadata only --------------------

OUT_FUNCTIONS = {
    "max_norm": lambda w, **kw: wc.max_norm(w, 1.0, 1, **kw),
    "unit_norm": lambda w, **kw: wc.unit_norm(w, 0, **kw),
    "min_max_norm": lambda w, **kw: wc.min_max_norm(w, 0.5, 1.0, 0.5, None, **kw),
    "non_neg": lambda w, **kw: wc.non_neg(w, **kw),
}


def square() -> torch.Tensor:
    return torch.arange(-8.0, 8.0).view(4, 4)


def bad_outs():
    """(name, make) pairs: make() returns (w, out, error type, message) for one bad out."""

    def other_device():
        w = square()
        return w, torch.empty(4, 4, device="meta"), ValueError, "out must be on the device of w"

    def transposed():
        w = square()
        return w, w.t(), ValueError, "out overlaps the memory of w"

    def shifted():
        base = torch.arange(-8.0, 12.0)
        return base[:16].view(4, 4), base[4:].view(4, 4), ValueError, "out overlaps the memory"

    def expanded_out():
        out = torch.zeros(1, 4).expand(4, 4)
        return square(), out, ValueError, r"share memory \(stride 0"

    def expanded_w():
        w = torch.arange(-2.0, 2.0).view(1, 4).expand(4, 4)
        return w, w, ValueError, r"share memory \(stride 0"

    def inference_w():
        with torch.inference_mode():
            w = square()
        return w, w, ValueError, "inference tensor"

    def sparse_out():
        return square(), square().to_sparse(), TypeError, "out must be a strided"

    def sparse_w():
        w = square().to_sparse()
        return w, w, TypeError, "weights must be a strided"

    return {
        f.__name__: f
        for f in (
            other_device,
            transposed,
            shifted,
            expanded_out,
            expanded_w,
            inference_w,
            sparse_out,
            sparse_w,
        )
    }


@pytest.mark.parametrize("name", OUT_FUNCTIONS)
@pytest.mark.parametrize("case", bad_outs())
def test_torch_bad_out_is_refused_before_writing(name, case):
    w, out, error, message = bad_outs()[case]()
    w_before = w.to_dense().clone()
    out_before = out.to_dense().clone() if out.device.type != "meta" else None
    with pytest.raises(error, match=message):
        OUT_FUNCTIONS[name](w, out=out)
    assert torch.equal(w.to_dense(), w_before)
    if out_before is not None:
        assert torch.equal(out.to_dense(), out_before)


@pytest.mark.parametrize("name", OUT_FUNCTIONS)
def test_torch_out_that_is_not_w_but_the_same_memory_is_fine(name):
    parameter = torch.nn.Parameter(square())
    expected = OUT_FUNCTIONS[name](square())
    with torch.no_grad():
        data = parameter.data  # a new tensor object for the same memory each time
        assert OUT_FUNCTIONS[name](data, out=parameter.data) is not data
    assert torch.equal(parameter.detach(), expected)


@pytest.mark.parametrize("name", OUT_FUNCTIONS)
def test_torch_inference_tensors_inside_inference_mode(name):
    with torch.inference_mode():
        w = square()
        expected = OUT_FUNCTIONS[name](w)
        assert OUT_FUNCTIONS[name](w, out=w) is w
    assert torch.equal(w, expected)


@pytest.mark.parametrize("name", OUT_FUNCTIONS)
def test_torch_out_separate_and_non_contiguous(name):
    w = square()
    out = torch.empty(4, 4).t()  # its own memory, another layout
    assert OUT_FUNCTIONS[name](w, out=out) is out
    assert torch.equal(out, OUT_FUNCTIONS[name](w))


def test_torch_compile_traces_the_core_in_one_graph():
    # fullgraph=True: any graph break (a check or a backend lookup dynamo cannot trace) fails.
    def project_all(tensors):
        for name, w in zip(OUT_FUNCTIONS, tensors, strict=True):
            OUT_FUNCTIONS[name](w, out=w)
        return wc.MaxNorm(0.5, axis=1)(tensors[0]), wc.node_norms(tensors[1], 0)

    torch._dynamo.reset()
    compiled = torch.compile(project_all, fullgraph=True)
    tensors = [torch.randn(6, 5, dtype=torch.float64) * 3 for _ in OUT_FUNCTIONS]
    copies = [t.clone() for t in tensors]
    got, expected = compiled(tensors), project_all(copies)
    for a, b in zip([*tensors, *got], [*copies, *expected], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_torch_compile_needs_no_id_of_a_module(monkeypatch):
    """torch 2.11's Dynamo cannot take ``id()`` of a module (it breaks the graph; newer torch
    can): the backend lookup must not need it. Dynamo's ``id()`` of a module is made to break
    the graph here, as there, and the core with an explicit ``xp=torch`` (and the polyhedral
    kinds, which look their backend up inside) must still compile into one graph."""
    from torch._dynamo.exc import Unsupported
    from torch._dynamo.variables import PythonModuleVariable
    from torch._dynamo.variables.builtin import BuiltinVariable

    original = BuiltinVariable.call_id

    def call_id(self, tx, *args):
        if any(isinstance(arg, PythonModuleVariable) for arg in args):
            raise Unsupported("id() of a module (as in torch 2.11)")
        return original(self, tx, *args)

    monkeypatch.setattr(BuiltinVariable, "call_id", call_id)
    min_max = wc.MinMaxNorm(0.5, 1.5)

    def project(w):
        return (
            wc.max_norm(w, 1.0, xp=torch),
            wc.unit_norm(w, 1, xp=torch),
            wc.node_norms(w, 0, xp=torch),
            wc.simplex(w, 1.0, 1, xp=torch),
            wc.clip(w, -0.5, 0.5, xp=torch),
            min_max(w),
            min_max.factor(wc.node_norms(w, 0, keepdims=True), "float64", torch),
        )

    torch._dynamo.reset()
    try:
        compiled = torch.compile(project, fullgraph=True)
        w = torch.randn(6, 5, dtype=torch.float64) * 3
        for got, want in zip(compiled(w), project(w), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    finally:
        torch._dynamo.reset()

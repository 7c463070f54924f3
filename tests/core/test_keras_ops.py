"""The core through ``xp=keras.ops`` on the current Keras backend (TensorFlow in the core's test
process): every input Keras takes, half precision included, agrees with the NumPy path."""

from __future__ import annotations

import numpy as np
import pytest

import weight_constraints as wc

keras = pytest.importorskip("keras")
ml_dtypes = pytest.importorskip("ml_dtypes")
ops = keras.ops

CASES = {
    "max_norm": lambda w, **kw: wc.max_norm(w, 1.0, (0, 2), **kw),
    "max_norm_0": lambda w, **kw: wc.max_norm(w, 0.0, 1, **kw),
    "unit_norm": lambda w, **kw: wc.unit_norm(w, -1, **kw),
    "min_max_norm": lambda w, **kw: wc.min_max_norm(w, 0.5, 1.5, 1.0, 0, **kw),
    "min_max_rate": lambda w, **kw: wc.min_max_norm(w, 0.5, 1.5, 0.5, None, **kw),
    "non_neg": lambda w, **kw: wc.non_neg(w, **kw),
    "node_norms": lambda w, **kw: wc.node_norms(w, (1, 2), keepdims=True, **kw),
}
NUMPY_DTYPES = {
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float32": np.float32,
    "float64": np.float64,
}
INPUTS = {
    "numpy": lambda w, dtype: w.astype(NUMPY_DTYPES[dtype]),
    "tensor": lambda w, dtype: ops.convert_to_tensor(w, dtype=dtype),
    "variable": lambda w, dtype: keras.Variable(w, dtype=dtype),
}


def sample() -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 4, 3)) * rng.uniform(0.1, 2.0, (1, 4, 1))
    w[:, 1, :] = 0.0  # a zero node
    return w


def dtype_of(x) -> str:
    return keras.backend.standardize_dtype(x.dtype)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
@pytest.mark.parametrize("given", INPUTS)
def test_keras_ops_keeps_the_dtype_and_matches_numpy(name, dtype, given):
    w = INPUTS[given](sample(), dtype)
    result = CASES[name](w, xp=ops)
    wide = "float32" if dtype in ("float16", "bfloat16") else dtype
    assert dtype_of(result) == (wide if name == "node_norms" else dtype)
    exact = sample().astype(NUMPY_DTYPES[dtype])
    expected = np.asarray(CASES[name](exact), np.float64)
    eps = float(ml_dtypes.finfo(NUMPY_DTYPES[dtype]).eps)
    got = np.asarray(ops.convert_to_numpy(result), np.float64)
    np.testing.assert_allclose(got, expected, rtol=2 * eps, atol=2 * eps)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_nodes_inside_the_ball_come_back_bit_for_bit(dtype):
    w = ops.convert_to_tensor(sample() * 0.01, dtype=dtype)
    result = wc.max_norm(w, 1.0, 0, xp=ops)
    np.testing.assert_array_equal(ops.convert_to_numpy(result), ops.convert_to_numpy(w))

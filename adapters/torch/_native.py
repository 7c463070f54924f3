"""The native per-row kernels (``_native.c``): built at first use with the system C compiler into a
per-user cache, loaded with ctypes, and checked by probes against torch and the core before any
of them is used.

The kernels project contiguous float32 rows on the CPU in one pass each (:meth:`Native.project`)
and update and project them in one pass for the fused optimizer step (:meth:`Native.adam`,
:meth:`Native.sgd`). Their arithmetic is torch's and the core's, operation by operation, and the
probes check that it gives the same bits on this machine: the row norms against
``torch.linalg.vector_norm``, the projection against the core (zero, NaN, inf, tiny rows and
rows on the bound included), and the square root of the foreach/single-tensor Adam against
``torch.sqrt``. When anything is missing (no compiler, not x86-64 with AVX2 and FMA, a build
that fails, a probe that fails) :func:`library` returns None and :func:`unavailable` says why:
the callers then keep torch's operations, which changes the speed, never the numbers.

Environment:
    ``WEIGHT_CONSTRAINTS_NATIVE=0``: never build or use the kernels.
    ``WEIGHT_CONSTRAINTS_CACHE``: where the built library is kept (default
    ``$XDG_CACHE_HOME/weight_constraints``, else ``~/.cache/weight_constraints``).
    ``CC``: the C compiler (default: ``cc``, ``gcc`` or ``clang``, the first found).

The library's file name is a hash of the source, the flags and the compiler's version; it is
written to a temporary file and renamed into place, so processes (DDP ranks, test workers)
building at once are safe.

Example:
    >>> native = library()
    >>> native is None or native.norms(torch.tensor([[3.0, 4.0]])).tolist() == [5.0]
    True
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import weight_constraints as wc

__all__ = [
    "AdamScalars",
    "Native",
    "Projection",
    "SgdScalars",
    "library",
    "projection",
    "unavailable",
]

SOURCE = Path(__file__).with_name("_native.c")
ABI = 3
FLAGS = ("-O3", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC", "-pthread")
BUILD_TIMEOUT_S = 120

# torch calls MKL's vmsSqrt with VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE (ATen's vml.h).
_VML_MODE = 0x00000002 | 0x00140000 | 0x00000100

_F = ctypes.c_float
_I32 = ctypes.c_int32


class Projection(ctypes.Structure):
    """One tensor's projection (``wc_proj``): kind 0 none, 1 MaxNorm, 2 UnitNorm, 3 MinMaxNorm,
    4 MaxNorm(0)."""

    _fields_ = [
        ("kind", _I32),
        ("rate_one", _I32),
        ("c", _F),
        ("lo", _F),
        ("hi", _F),
        ("rate", _F),
    ]


class AdamScalars(ctypes.Structure):
    """One tensor's Adam/AdamW scalars (``wc_adam``), rounded to float32 as torch rounds them."""

    _fields_ = [(name, _F) for name in ("decay", "wd", "w1", "b2", "c2", "bc2s", "eps", "ss")] + [
        ("flags", _I32),
        ("pad", _I32),
        ("tail_from", ctypes.c_int64),
    ]


class SgdScalars(ctypes.Structure):
    """One tensor's SGD scalars (``wc_sgd``)."""

    _fields_ = [(name, _F) for name in ("wd", "mom", "damp1", "neg_lr")] + [
        ("flags", _I32),
        ("pad", _I32),
        ("tail_from", ctypes.c_int64),
    ]


MAXIMIZE, COUPLED, DECOUPLED = 1, 2, 4
WEIGHT_DECAY, MOMENTUM, NESTEROV, FIRST = 8, 16, 32, 64
NONE = Projection(0, 1, 0.0, 0.0, 0.0, 1.0)


def projection(constraint: Any) -> Projection | None:
    """What the kernels take for ``constraint`` (bound, its rules resolved), or None when they
    do not have it: exact ``MaxNorm``, ``UnitNorm`` and ``MinMaxNorm`` types only (a subclass
    may override ``__call__``)."""
    kind = type(constraint)
    if kind not in (wc.MaxNorm, wc.UnitNorm, wc.MinMaxNorm) or constraint.rules():
        return None
    if kind is wc.MaxNorm:
        c = float(constraint.max_value)
        return Projection(4 if c == 0 else 1, 1, c, 0.0, 0.0, 1.0)
    if kind is wc.UnitNorm:
        return Projection(2, 1, 0.0, 0.0, 0.0, 1.0)
    lo, hi, rate = (float(x) for x in (constraint.min_value, constraint.max_value, constraint.rate))
    return Projection(3, int(rate == 1.0), 0.0, lo, hi, rate)


def _array(kind: Any, values: Sequence[Any]) -> Any:
    return (kind * len(values))(*values)


def _pointers(tensors: Sequence[torch.Tensor]) -> Any:
    return _array(ctypes.c_void_p, [t.data_ptr() for t in tensors])


def rows_and_cols(tensor: torch.Tensor, node_dims: int) -> tuple[int, int]:
    """A contiguous tensor as rows of its trailing ``node_dims`` dims."""
    cols = 1
    for size in tensor.shape[tensor.ndim - node_dims :]:
        cols *= size
    return tensor.numel() // max(cols, 1), cols


class Native:
    """The loaded library and what its probes found.

    Attributes:
        torch_sqrt: torch.sqrt's own square root (MKL) was found and reproduces it.
        exact_sqrt: torch.sqrt is the correctly rounded square root on this build.
    """

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.torch_sqrt = False
        self.exact_sqrt = False

    @property
    def foreach_sqrt(self) -> int | None:
        """How the foreach/single-tensor Adam's square root is taken: 1 torch's (MKL), 0 the
        correctly rounded one (what torch.sqrt is on this build), None: neither reproduces it."""
        if self.torch_sqrt:
            return 1
        return 0 if self.exact_sqrt else None

    def norms(self, rows: torch.Tensor) -> torch.Tensor:
        """The norm of each row of a contiguous 2-D float32 tensor (for the probes)."""
        out = torch.empty(rows.shape[0], dtype=torch.float32)
        self.lib.wc_norms_f32(rows.data_ptr(), rows.shape[0], rows.shape[1], out.data_ptr())
        return out

    def project(
        self,
        targets: Sequence[torch.Tensor],
        shapes: Sequence[tuple[int, int]],
        projections: Any,
    ) -> None:
        """Project each contiguous float32 tensor in place as ``(rows, cols)`` rows, with its
        :class:`Projection` (an array of them, one per tensor)."""
        n = len(targets)
        rows = _array(ctypes.c_int64, [r for r, _ in shapes])
        cols = _array(ctypes.c_int64, [c for _, c in shapes])
        threads = torch.get_num_threads()
        self.lib.wc_project_many_f32(n, _pointers(targets), rows, cols, projections, threads)

    def steps(self, steps: Sequence[torch.Tensor]) -> list[float]:
        """Add 1 to each one-entry CPU step tensor (all float32 or all float64), as
        ``torch._foreach_add_(steps, 1)`` does, and return their new values."""
        out = (ctypes.c_double * len(steps))()
        f64 = int(steps[0].dtype == torch.float64) if steps else 0
        self.lib.wc_steps(len(steps), _pointers(steps), f64, out)
        torch.autograd.graph.increment_version(list(steps))  # written through their memory
        return list(out)

    def adam(
        self,
        tensors: Sequence[Sequence[torch.Tensor]],
        shapes: Sequence[tuple[int, int]],
        scalars: Any,
        projections: Any,
        sqrt: int,
    ) -> None:
        """One Adam/AdamW step: ``tensors`` is ``(params, grads, exp_avgs, exp_avg_sqs)``;
        ``sqrt`` 1 for torch.sqrt's square root, 0 for the correctly rounded one."""
        params, grads, exp_avgs, exp_avg_sqs = tensors
        rows = _array(ctypes.c_int64, [r for r, _ in shapes])
        cols = _array(ctypes.c_int64, [c for _, c in shapes])
        done = self.lib.wc_adam_f32(
            len(params),
            _pointers(params),
            _pointers(grads),
            _pointers(exp_avgs),
            _pointers(exp_avg_sqs),
            rows,
            cols,
            scalars,
            projections,
            sqrt,
            torch.get_num_threads(),
        )
        if not done:  # never reached: a missing square root is refused before
            raise RuntimeError("the native Adam kernel has no torch square root")

    def sgd(
        self,
        tensors: Sequence[Sequence[torch.Tensor]],
        shapes: Sequence[tuple[int, int]],
        scalars: Any,
        projections: Any,
    ) -> None:
        """One SGD step: ``tensors`` is ``(params, grads, momentum_buffers)`` (the buffers'
        list may hold the params again where there is no momentum: they are not read)."""
        params, grads, buffers = tensors
        rows = _array(ctypes.c_int64, [r for r, _ in shapes])
        cols = _array(ctypes.c_int64, [c for _, c in shapes])
        self.lib.wc_sgd_f32(
            len(params),
            _pointers(params),
            _pointers(grads),
            _pointers(buffers),
            rows,
            cols,
            scalars,
            projections,
            torch.get_num_threads(),
        )


# -- building and loading ------------------------------------------------------------------------


def _cache_dir() -> Path:
    configured = os.environ.get("WEIGHT_CONSTRAINTS_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "weight_constraints"


def _compiler() -> list[str] | None:
    configured = os.environ.get("CC")
    if configured:
        return shlex.split(configured)
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return [found]
    return None


def _version(compiler: list[str]) -> str:
    try:
        done = subprocess.run(
            [*compiler, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown ({error})"
    return done.stdout.strip()


class Unavailable(Exception):
    """Why the kernels cannot be used (its message is the reason)."""


def _build() -> Path:
    """The built library: from the cache, or compiled now into it."""
    compiler = _compiler()
    if compiler is None:
        raise Unavailable("no C compiler was found (cc, gcc or clang; or set CC)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join(
            [
                source,
                " ".join(FLAGS).encode(),
                _version(compiler).encode(),
                " ".join(compiler).encode(),
                platform.machine().encode(),
            ]
        )
    ).hexdigest()[:20]
    folder = _cache_dir()
    path = folder / f"native-{key}.so"
    if path.exists():
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".native-", suffix=".so")
        os.close(handle)
    except OSError as error:
        raise Unavailable(f"the cache folder {folder} cannot be written ({error})") from None
    try:
        command = [*compiler, *FLAGS, str(SOURCE), "-o", temporary, "-lm"]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise Unavailable(f"the C compiler failed ({' '.join(command)}): {' '.join(detail)}")
        os.replace(temporary, path)  # atomic: a parallel build replaces the same bytes
    except (OSError, subprocess.SubprocessError) as error:
        raise Unavailable(f"the C compiler could not be run: {error}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def _declare(lib: ctypes.CDLL) -> None:
    pointer, size, count = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    many = ctypes.POINTER(ctypes.c_void_p)
    sizes = ctypes.POINTER(ctypes.c_int64)
    projections = ctypes.POINTER(Projection)
    lib.wc_abi.restype = ctypes.c_int
    lib.wc_cpu_supported.restype = ctypes.c_int
    lib.wc_norms_f32.argtypes = [pointer, size, size, pointer]
    lib.wc_norms_f32.restype = None
    lib.wc_project_many_f32.argtypes = [count, many, sizes, sizes, projections, count]
    lib.wc_project_many_f32.restype = None
    lib.wc_set_sqrt.argtypes = [pointer, ctypes.c_ulonglong]
    lib.wc_set_sqrt.restype = None
    lib.wc_torch_sqrt_f32.argtypes = [size, pointer, pointer]
    lib.wc_torch_sqrt_f32.restype = ctypes.c_int
    lib.wc_steps.argtypes = [count, many, count, ctypes.POINTER(ctypes.c_double)]
    lib.wc_steps.restype = None
    lib.wc_adam_f32.argtypes = [
        count,
        many,
        many,
        many,
        many,
        sizes,
        sizes,
        ctypes.POINTER(AdamScalars),
        projections,
        count,
        count,
    ]
    lib.wc_adam_f32.restype = ctypes.c_int
    lib.wc_sgd_f32.argtypes = [
        count,
        many,
        many,
        many,
        sizes,
        sizes,
        ctypes.POINTER(SgdScalars),
        projections,
        count,
    ]
    lib.wc_sgd_f32.restype = None


def _load() -> Native:
    if os.environ.get("WEIGHT_CONSTRAINTS_NATIVE", "1").strip().lower() in ("0", "false", "no"):
        raise Unavailable("turned off by WEIGHT_CONSTRAINTS_NATIVE=0")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise Unavailable(f"the kernels are written for x86-64 CPUs (this is {platform.machine()})")
    path = _build()
    try:
        lib = ctypes.CDLL(str(path))
        _declare(lib)
    except (OSError, AttributeError) as error:
        raise Unavailable(f"the built library {path} cannot be loaded ({error})") from None
    if lib.wc_abi() != ABI:
        raise Unavailable(f"the built library {path} is not this version's")
    if not lib.wc_cpu_supported():
        raise Unavailable("the CPU lacks AVX2 or FMA")
    native = Native(lib)
    from ._probes import check_norms, check_projection, check_sqrt  # the probes use this module

    failed = check_norms(native) or check_projection(native)
    if failed:
        raise Unavailable(f"a probe found the kernels disagreeing with torch or the core: {failed}")
    check_sqrt(native, _torch_sqrt_candidates())
    return native


def _torch_sqrt_candidates() -> list[tuple[int, int]]:
    """``(function pointer, mode)`` of the square roots torch.sqrt may be: MKL's vmsSqrt (with
    ATen's mode), then vsSqrt (the global mode), from libtorch_cpu."""
    folder = Path(torch.__file__).parent / "lib"
    found = []
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        if not (folder / name).exists():
            continue
        try:
            library_ = ctypes.CDLL(str(folder / name))
        except OSError:
            continue
        for symbol, mode in (("vmsSqrt", _VML_MODE), ("vsSqrt", 0)):
            function = getattr(library_, symbol, None)
            if function is not None:
                address = ctypes.cast(function, ctypes.c_void_p).value
                if address:
                    found.append((address, mode))
    return found


_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}


def library() -> Native | None:
    """The kernels, built, loaded and probed on the first call (about 2 s for a build, a few
    milliseconds from the cache); None when they cannot be used here (see :func:`unavailable`).
    ``WEIGHT_CONSTRAINTS_NATIVE=0`` is read at every call."""
    if os.environ.get("WEIGHT_CONSTRAINTS_NATIVE", "1").strip().lower() in ("0", "false", "no"):
        return None
    with _LOCK:
        if "native" not in _STATE:
            try:
                _STATE["native"], _STATE["reason"] = _load(), ""
            except Unavailable as error:
                _STATE["native"], _STATE["reason"] = None, str(error)
        return _STATE["native"]


def unavailable() -> str:
    """Why :func:`library` is None ("" when it is not)."""
    if os.environ.get("WEIGHT_CONSTRAINTS_NATIVE", "1").strip().lower() in ("0", "false", "no"):
        return "turned off by WEIGHT_CONSTRAINTS_NATIVE=0"
    library()
    return str(_STATE.get("reason", ""))


def _reset_for_tests() -> None:
    """Forget the loaded library (the tests build and probe again)."""
    with _LOCK:
        _STATE.clear()

"""What every benchmark shares: the result row, side-by-side timing, and how times are written.

Two ways of timing, both interleaved (A B C A B C ...) so that a change in the machine's state
touches every contender of a row alike:

- :func:`interleaved` times single calls (with an untimed ``setup`` before each), for work of a
  millisecond or more;
- :func:`interleaved_loops` times loops of calls with ``sync`` (``torch.cuda.synchronize`` on a
  GPU) around each loop, never around a single call, for work of microseconds and for
  asynchronous devices.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Row:
    """One comparison: the median seconds per call of each contender and the ratio that is the
    goal. ``tensors`` is the number of tensors one call handles (0: not a per-tensor row)."""

    section: str
    case: str
    medians: dict[str, float]
    ratio_name: str
    ratio: float
    goal: str = ""
    met: bool | None = None
    extra: dict[str, float] = field(default_factory=dict)
    tensors: int = 0


def interleaved(
    contenders: dict[str, Callable[[], object]],
    repeats: int,
    setup: Callable[[], object] | None = None,
    warmup: int = 2,
) -> dict[str, float]:
    """Median seconds of each contender, run A B C A B C ... (``setup`` untimed before each)."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(warmup + repeats):
        for name, run in contenders.items():
            if setup is not None:
                setup()
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def interleaved_loops(
    contenders: dict[str, Callable[[], object]],
    repeats: int,
    *,
    target_s: float,
    sync: Callable[[], object] | None = None,
    warmup: int = 3,
    max_calls: int = 1000,
) -> tuple[dict[str, float], int]:
    """Median seconds per call of each contender, and the calls per timed loop.

    Each contender runs ``warmup`` times first; the number of calls per loop is then chosen so
    that a loop of the slowest contender lasts about ``target_s`` (the same count for every
    contender of the row). Each of the ``repeats`` rounds times one loop of each contender in
    turn, with ``sync()`` before the clock starts and before it stops.
    """
    sync = sync or (lambda: None)
    slowest = 0.0
    for run in contenders.values():
        for _ in range(warmup):
            run()
        sync()
        start = time.perf_counter()
        run()
        sync()
        slowest = max(slowest, time.perf_counter() - start)
    calls = max(1, min(max_calls, math.ceil(target_s / max(slowest, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            sync()
            start = time.perf_counter()
            for _ in range(calls):
                run()
            sync()
            times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(values) for name, values in times.items()}, calls


COMPILED = "ours, compile=True"


def compile_extra(medians: dict[str, float]) -> dict[str, float]:
    """The compiled contender's ratios to the hand-written loop and to the eager registry
    (empty when the row has no compiled contender)."""
    if COMPILED not in medians:
        return {}
    return {
        "compile=True / hand-written": medians[COMPILED] / medians["hand-written"],
        "compile=True / eager": medians[COMPILED] / medians["ours"],
    }


def seconds(value: float) -> str:
    """``value`` seconds in s, ms or µs, to three significant figures or so."""
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.2f} ms"
    return f"{value * 1e6:.1f} µs"

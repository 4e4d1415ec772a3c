"""Timing shared by the benchmarks: medians of interleaved calls in the same process."""
from __future__ import annotations

import random
import statistics
import time
from typing import Callable


def median_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time in seconds of each function. After ``warmup`` calls of each, the calls are interleaved in a
    fresh random order every round, so that background load and the position in the round (caches, allocator
    state) hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order, rng = list(fns), random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}

"""Timing helpers shared by the benchmarks."""

import os
import timeit


def best_time(fn, repeats=3):
    """Shortest of `repeats` wall-clock runs of fn(), in seconds."""
    return min(timeit.repeat(fn, number=1, repeat=repeats))


def best_times(fns, repeats=3):
    """Best time of each fn, their runs interleaved so that a change of load hits all alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for j, fn in enumerate(fns):
            best[j] = min(best[j], best_time(fn, 1))
    return best


def load():
    """The 1-minute load average, printed beside every figure."""
    return f"[load {os.getloadavg()[0]:.2f}]"

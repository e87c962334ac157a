"""Timing helpers shared by the benchmarks."""

import os
import timeit

import jax
import jax.numpy as jnp


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


def matmul_peak(size=2048, dtype=jnp.float32, calls=5):
    """FLOP/s of a jitted jnp.dot of two size x size matrices of `dtype`, best of 3 runs."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()

    def run():
        for _ in range(calls):
            out = dot(a, b)
        out.block_until_ready()

    return 2 * size**3 * calls / best_time(run)

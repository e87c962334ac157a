"""Throughput of the nearest-neighbour kernels, against per-query numpy loops.

Run from the repository root:  python -m benchmarks.kernels

Each figure is a ratio measured in this process against a straightforward
baseline (one query at a time, on a subset, extrapolated per query), so that
machine load cancels out. Compilation is excluded (one warm-up call).

What shaped the Hamming kernel, on the 2-core CPU we measured (jax 0.10): the
one-hot matmul (L * q = 96 multiply-adds per pair for L = 16, q = 6) ran at
~0.1 G pairs/s, and XLA:CPU ran reductions fused with integer arithmetic ~10x
slower than float ones; the bit-packed kernel with float32 keys and an unrolled
per-lane minimum runs at ~2 G pairs/s, ~10x the float reduction of a
materialised distance matrix. `jax.lax.top_k` for the two nearest gives the
same winners and ties but ran ~10x slower than two minima there.
"""

import jax
import numpy as np

from benchmarks import timing
from diffusion_bias.kernels import search


def loop_hamming(queries, refs):
    """Baseline: distances of one query to every reference, then a stable sort."""
    out = []
    for q in queries:
        d = (refs != q).sum(axis=1)
        first, second = np.argsort(d, kind="stable")[:2]
        out.append((d[first], first, d[second], second))
    return out


def loop_l2(queries, refs):
    """Baseline: Euclidean distances of one query to every reference, then a stable sort."""
    refs = refs.reshape(len(refs), -1)
    out = []
    for q in queries:
        d = np.sqrt(((refs - q.reshape(-1)) ** 2).sum(axis=1))
        first, second = np.argsort(d, kind="stable")[:2]
        out.append((d[first], first, d[second], second))
    return out


def _check(neighbours, baseline, atol):
    got = np.stack([np.asarray(f[: len(baseline)], np.float64) for f in neighbours], axis=1)
    want = np.asarray(baseline, np.float64)
    np.testing.assert_array_equal(got[:, [1, 3]], want[:, [1, 3]])
    np.testing.assert_allclose(got[:, [0, 2]], want[:, [0, 2]], atol=atol)


def _report(name, n, fast, m, base):
    print(
        f"{name}: {n / fast:,.0f} queries/s ({n} in {fast:.3f} s); per-query numpy loop "
        f"{m / base:,.0f} queries/s; ratio {base / m * n / fast:,.0f}x"
    )


def main():
    print(f"devices: {jax.devices()}")
    rng = np.random.default_rng(0)

    # NN divergence of Setting 2: 50k generated sequences in a 12k training set.
    n, r, length, q = 50_000, 12_000, 16, 6
    queries = rng.integers(0, q, (n, length), dtype=np.int32)
    refs = rng.integers(0, q, (r, length), dtype=np.int32)
    neighbours = search.nearest_neighbours(queries, refs, "hamming")
    fast = timing.best_time(lambda: search.nearest_neighbours(queries, refs, "hamming"))
    m = 300
    base = timing.best_time(lambda: loop_hamming(queries[:m], refs), 1)
    _check(neighbours, loop_hamming(queries[:m], refs), atol=0)
    _report(f"hamming NN {n}x{r} (L={length}, q={q})", n, fast, m, base)

    # Setting 1 at the embedded scale: 2k samples in an 848-image split of 8x8 digits.
    n, r = 2_000, 848
    queries = rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
    refs = rng.normal(size=(r, 8, 8, 1)).astype(np.float32)
    neighbours = search.nearest_neighbours(queries, refs, "l2")
    fast = timing.best_time(lambda: search.nearest_neighbours(queries, refs, "l2"))
    m = 500
    base = timing.best_time(lambda: loop_l2(queries[:m], refs), 1)
    _check(neighbours, loop_l2(queries[:m], refs), atol=1e-4)
    _report(f"l2 NN {n}x{r} (8x8x1)", n, fast, m, base)


if __name__ == "__main__":
    main()

"""Throughput of exact BP and of the grammar sampler, against per-sample loops.

Run from the repository root:  python -m benchmarks.bp_and_grammar

Each figure is a ratio measured in this process against a straightforward
baseline (one sequence at a time), so that machine load cancels out.
"""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from diffusion_bias.exact import bp
from diffusion_bias.exact import grammar as grammar_lib


def loop_leaf_marginals(transitions, log_evidence):
    """Baseline: upward and downward BP for one sequence in numpy. [L, q]."""
    depth = int(np.log2(log_evidence.shape[0]))
    q = transitions.shape[0]
    ups = [None] * (depth + 1)
    ups[depth] = np.exp(log_evidence - log_evidence.max(-1, keepdims=True))
    for level in range(depth - 1, -1, -1):
        child = ups[level + 1]
        msg = np.stack(
            [
                np.einsum("abc,b,c->a", transitions, child[2 * j], child[2 * j + 1])
                for j in range(2**level)
            ]
        )
        ups[level] = msg / msg.max(-1, keepdims=True)
    outside = np.full((1, q), 1.0 / q)
    for level in range(depth):
        child = ups[level + 1]
        rows = []
        for j in range(2**level):
            rows.append(np.einsum("a,abc,c->b", outside[j], transitions, child[2 * j + 1]))
            rows.append(np.einsum("a,abc,b->c", outside[j], transitions, child[2 * j]))
        outside = np.stack(rows)
        outside /= outside.max(-1, keepdims=True)
    marg = outside * ups[depth]
    return marg / marg.sum(-1, keepdims=True)


def loop_sample(grammar, n, seed):
    """Baseline: one tree at a time, one node at a time."""
    rng = np.random.default_rng(seed)
    q = grammar.q
    probs = grammar.transitions.reshape(q, -1)
    out = np.empty((n, grammar.length), np.int32)
    for i in range(n):
        level = [rng.integers(q)]
        for _ in range(grammar.depth):
            nxt = []
            for a in level:
                pair = rng.choice(q * q, p=probs[a])
                nxt += [pair // q, pair % q]
            level = nxt
        out[i] = level
    return out


def main():
    g = grammar_lib.random_grammar(q=6, depth=4, sigma=1.0, q_eff=4, seed=0)
    print(f"devices: {jax.devices()}")

    # BP on noisy grammatical sequences at t/T = 0.15 of the token schedule.
    n = 100_000
    x0 = jax.nn.one_hot(grammar_lib.sample(g, n, seed=1), g.q)
    fields = 2.0 * x0 + jax.random.normal(jax.random.key(0), x0.shape)
    marg = bp.leaf_marginals(g.transitions, fields).block_until_ready()
    fast = timing.best_time(lambda: bp.leaf_marginals(g.transitions, fields).block_until_ready())
    fe = bp.free_energy(g.transitions, jnp.argmax(x0, -1)).block_until_ready()
    fast_fe = timing.best_time(
        lambda: bp.free_energy(g.transitions, jnp.argmax(x0, -1)).block_until_ready()
    )
    m = 300
    np_fields = np.asarray(fields[:m], np.float64)
    base = timing.best_time(lambda: [loop_leaf_marginals(g.transitions, f) for f in np_fields], 1)
    np.testing.assert_allclose(
        np.stack([loop_leaf_marginals(g.transitions, f) for f in np_fields[:20]]),
        marg[:20],
        atol=1e-5,
    )
    print(
        f"BP leaf marginals: {n / fast:,.0f} seq/s (batch {n}); per-sample numpy loop "
        f"{m / base:,.0f} seq/s; ratio {base / m * n / fast:,.0f}x"
    )
    print(
        f"BP free energy:    {n / fast_fe:,.0f} seq/s; finite for all: "
        f"{bool(np.isfinite(fe).all())}"
    )

    # Extreme fields on ungrammatical inputs take the log-space path.
    noise = jax.nn.one_hot(np.random.default_rng(0).integers(0, 6, (10_000, 16)), 6)
    extreme = 5000.0 * noise
    bp.leaf_marginals(g.transitions, extreme).block_until_ready()
    slow = timing.best_time(lambda: bp.leaf_marginals(g.transitions, extreme).block_until_ready())
    print(
        f"BP on ungrammatical inputs with fields 5e3 (log-space path): {10_000 / slow:,.0f} seq/s"
    )

    # Grammar sampler.
    n = 1_000_000
    fast = timing.best_time(lambda: grammar_lib.sample(g, n, seed=0), 2)
    m = 5_000
    base = timing.best_time(lambda: loop_sample(g, m, seed=0), 1)
    print(
        f"grammar sampler: {n / fast:,.0f} seq/s (10^6 in {fast:.2f} s); per-tree loop "
        f"{m / base:,.0f} seq/s; ratio {base / m * n / fast:,.0f}x"
    )


if __name__ == "__main__":
    main()

"""Score divergences against exact belief propagation, per model and per twin.

BP_k is exact belief propagation with the top k layers of the tree factorised
(the root's children to level k treated as independent; BP_0 is exact).
`kl_bp_model` gives KL(BP_k || model) (the paper's Fig. 1b, 6: which
factorisation the model has learned); `kl_from_exact` gives KL(BP_0 || BP_k)
and KL(BP_0 || model) (the authors' Fig. 3b, whose peak along t is the critical
time: `score_divergence_along_t.py` in their code). `kl_along_t_ratios` is
where the analysis reads both along time. Denoiser contract, chunking and
noise: `statistics/controlled.py`.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from diffusion_bias import checks
from diffusion_bias import chunking
from diffusion_bias.diffusion import denoisers
from diffusion_bias.diffusion.schedules import Schedule
from diffusion_bias.exact import bp
from diffusion_bias.statistics import controlled


@functools.partial(jax.jit, static_argnames=("factorized_layers", "from_exact"))
def _kl_kernel(
    denoise_fn, transitions, schedule, x0, key, t, chunk, factorized_layers, from_exact=False
):
    """Per-sequence KLs, summed over tokens, of one chunk at step t.

    Returns:
        KL(BP_k || model) for each k [K, C]; with `from_exact`, KL(BP_0 || BP_k)
        for each k, then KL(BP_0 || model) [K + 1, C].
    """
    _, x_t, t_batch = controlled.noise_chunk(schedule, x0, key, t, chunk, transitions.shape[0])
    probs = denoise_fn(x_t, schedule.timesteps[t_batch])
    fields = denoisers.token_fields(schedule, x_t, t_batch)
    marginals = [
        bp.leaf_marginals(transitions, fields, factorized_layers=k) for k in factorized_layers
    ]
    if from_exact:
        exact = bp.leaf_marginals(transitions, fields, factorized_layers=0)
        return jnp.stack([controlled.token_kl(exact, q).sum(-1) for q in [*marginals, probs]])
    return jnp.stack([controlled.token_kl(bp_k, probs).sum(-1) for bp_k in marginals])


def _over_steps(denoise_fn, transitions, x0, schedule, steps, key, layers, chunk_size, from_exact):
    """[rows, S] the kernel's KLs at every step, mean over the sequences of x0."""
    denoise_fn = controlled.as_pytree(denoise_fn)
    chunks = controlled.token_chunks(x0, chunk_size)
    per_step = [
        jnp.concatenate(
            [
                _kl_kernel(denoise_fn, transitions, schedule, chunk, key, t, c, layers, from_exact)
                for c, chunk in enumerate(chunks)
            ],
            axis=-1,
        )
        for t in steps
    ]
    return chunking.gather([jnp.stack(per_step, axis=1)], x0.shape[0], axis=-1).mean(-1)


def _checked(transitions, schedule, x0, t_values, factorized_layers, low=0):
    """(transitions, x0, steps, layers) checked; layers default to low..depth."""
    transitions = jnp.asarray(transitions, jnp.float32)
    x0 = controlled.check_tokens(transitions, x0)
    steps = controlled.check_steps(schedule, t_values)
    depth = x0.shape[1].bit_length() - 1
    if factorized_layers is None:
        factorized_layers = range(low, depth + 1)
    layers = tuple(int(k) for k in factorized_layers)
    if not layers or any(not low <= k <= depth for k in layers):
        raise ValueError(f"factorized_layers must be in {low}..{depth}, got {factorized_layers}.")
    return transitions, x0, steps, layers


def kl_bp_model(
    denoise_fn: controlled.TokenDenoiser,
    transitions: ArrayLike,
    schedule: Schedule,
    x0: ArrayLike,
    t_values: Sequence[int] | ArrayLike,
    key: jax.Array,
    factorized_layers: Sequence[int] | None = None,
    chunk_size: int = controlled.DEFAULT_CHUNK_SIZE,
) -> dict[str, np.ndarray]:
    """Score divergence KL(BP_k || model) (the paper (arXiv 2603.03469) Fig. 1b, 6).

    At each step t, x_t ~ q(x_t | x_0) is drawn once and shared by every k; the
    per-token categorical KL is summed over q and over the L tokens (the KL
    between the factorised sequence distributions, the paper's unit: "per
    sequence") and averaged over sequences. t is traced: one compile per tuple
    of k.

    Args:
        denoise_fn: the token denoiser (`controlled` module docstring).
        transitions: the grammar's M[a, b, c].  # [q, q, q]
        schedule: the noise schedule.
        x0: clean integer tokens (e.g. held-out grammar samples).  # [N, L]
        t_values: steps of `schedule` in 1..T.  # [S]
        key: base PRNG key of the forward noise; the same key gives the same
            x_t as `loss_decomposition` at the same t and chunk size.
        factorized_layers: the k of BP_k, ints in 0..depth (default all).  # [K]
        chunk_size: sequences per kernel call.

    Returns:
        Dict of numpy arrays: kl [K, S], k [K], t [S].

    Raises:
        ValueError: on malformed tokens, steps or layers.
    """
    transitions, x0, steps, layers = _checked(
        transitions, schedule, x0, t_values, factorized_layers
    )
    kl = _over_steps(
        denoise_fn, transitions, x0, schedule, steps, key, layers, chunk_size, False
    )  # [K, S]
    return {"kl": kl, "k": np.array(layers), "t": np.array(steps)}


def kl_from_exact(
    denoise_fn: controlled.TokenDenoiser,
    transitions: ArrayLike,
    schedule: Schedule,
    x0: ArrayLike,
    t_values: Sequence[int] | ArrayLike,
    key: jax.Array,
    factorized_layers: Sequence[int] | None = None,
    chunk_size: int = controlled.DEFAULT_CHUNK_SIZE,
) -> dict[str, np.ndarray]:
    """KL(BP_0 || BP_k) and KL(BP_0 || model): the authors' Fig. 3b, exact BP first.

    The same draws of x_t, sums and clipping as `kl_bp_model`, the other
    direction: how far a factorised score, and the model, stand from the exact
    one. The BP_k curves know nothing of any data; their peak along t is the
    critical time.

    Args:
        denoise_fn, transitions, schedule, x0, t_values, key, chunk_size: as
            `kl_bp_model`.
        factorized_layers: the k of BP_k, ints in 1..depth (default all; k=0
            would give zero).  # [K]

    Returns:
        Dict of numpy arrays: bp [K, S] KL(BP_0 || BP_k), model [S]
        KL(BP_0 || model), k [K], t [S].
    """
    transitions, x0, steps, layers = _checked(
        transitions, schedule, x0, t_values, factorized_layers, low=1
    )
    kl = _over_steps(denoise_fn, transitions, x0, schedule, steps, key, layers, chunk_size, True)
    return {"bp": kl[:-1], "model": kl[-1], "k": np.array(layers), "t": np.array(steps)}


def twin_kl_bp(
    denoise_fns: Sequence[controlled.TokenDenoiser],
    transitions: ArrayLike,
    schedule: Schedule,
    x0: ArrayLike,
    t_values: Sequence[int] | ArrayLike,
    key: jax.Array,
) -> np.ndarray:
    """KL(BP_k || model) per twin on the same sequences, for k = 0..depth.

    Args:
        denoise_fns: the K twins' denoisers.
        transitions: the grammar's M[a, b, c].  # [q, q, q]
        schedule: the noise schedule.
        x0: clean integer tokens, e.g. held-out sequences.  # [N, L]
        t_values: S steps of `schedule`.
        key: the base PRNG key (the same noise for every twin).

    Returns:
        Mean over sequences of the per-sequence KL.  # [K, depth + 1, S]
    """
    depth = int(np.log2(np.shape(x0)[-1]))
    return np.asarray(
        [
            kl_bp_model(
                fn, transitions, schedule, x0, t_values, key,
                factorized_layers=tuple(range(depth + 1)),
            )["kl"]
            for fn in denoise_fns
        ]
    )  # fmt: skip


def twin_kl_from_exact(
    denoise_fns: Sequence[controlled.TokenDenoiser],
    transitions: ArrayLike,
    schedule: Schedule,
    x0: ArrayLike,
    t_values: Sequence[int] | ArrayLike,
    key: jax.Array,
    bp: ArrayLike | None = None,
) -> dict[str, np.ndarray]:
    """`kl_from_exact` per twin on the same sequences, k = 1..depth.

    Args:
        denoise_fns, transitions, schedule, x0, t_values, key: as `twin_kl_bp`.
        bp: the "bp" rows of an earlier call on the same sequences, steps and
            key, which no model changes; None: computed here.

    Returns:
        Dict of numpy arrays: bp [depth, S] KL(BP_0 || BP_k) (the same x_t for
        every twin: computed once), model [K, S] KL(BP_0 || twin k).
    """
    transitions, x0, steps, layers = _checked(transitions, schedule, x0, t_values, None, low=1)
    rows = [
        np.asarray(
            _over_steps(
                fn,
                transitions,
                x0,
                schedule,
                steps,
                key,
                layers if i == 0 and bp is None else (),
                controlled.DEFAULT_CHUNK_SIZE,
                True,
            )
        )
        for i, fn in enumerate(denoise_fns)
    ]
    bp = rows[0][:-1] if bp is None else np.asarray(bp)
    return {"bp": bp, "model": np.stack([r[-1] for r in rows])}


def kl_along_t_ratios(num_points: int) -> np.ndarray:
    """[R] t/T = 1/R, 2/R, ..., 1: where Fig. 3b reads KL(BP_k || model) along time."""
    if not checks.is_int(num_points) or num_points < 2:
        raise ValueError(f"num_points must be an integer >= 2, got {num_points!r}")
    return np.arange(1, num_points + 1) / num_points

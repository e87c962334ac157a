"""Score divergence KL(BP_k || model) (the paper (arXiv 2603.03469) Fig. 3b, 1b, 6), per model and per twin.

BP_k is exact belief propagation with the k lowest layers factorised (BP_0 is
exact); `kl_along_t_ratios` is where Fig. 3b reads it along time. Denoiser
contract, chunking and noise: `statistics/controlled.py`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_bias import checks
from diffusion_bias import bp
from diffusion_bias import chunking
from diffusion_bias.diffusion import denoisers
from diffusion_bias.diffusion.schedules import Schedule
from diffusion_bias.statistics import controlled


@functools.partial(jax.jit, static_argnames=("factorized_layers",))
def _kl_kernel(denoise_fn, transitions, schedule, x0, key, t, chunk, factorized_layers):
    """Per-sequence KL(BP_k || model), summed over tokens, of one chunk at step t: [K, C]."""
    _, x_t, t_batch = controlled.noise_chunk(schedule, x0, key, t, chunk, transitions.shape[0])
    probs = denoise_fn(x_t, schedule.timesteps[t_batch])
    fields = denoisers.token_fields(schedule, x_t, t_batch)
    marginals = [
        bp.leaf_marginals(transitions, fields, factorized_layers=k) for k in factorized_layers
    ]
    return jnp.stack([controlled.token_kl(bp_k, probs).sum(-1) for bp_k in marginals])


def kl_bp_model(
    denoise_fn: controlled.TokenDenoiser,
    transitions,
    schedule: Schedule,
    x0,
    t_values,
    key: jax.Array,
    factorized_layers=None,
    chunk_size: int = controlled.DEFAULT_CHUNK_SIZE,
) -> dict[str, np.ndarray]:
    """Score divergence KL(BP_k || model) (the paper (arXiv 2603.03469) Fig. 3b, 1b, 6).

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
    transitions = jnp.asarray(transitions, jnp.float32)
    x0 = controlled.check_tokens(transitions, x0)
    steps = controlled.check_steps(schedule, t_values)
    depth = x0.shape[1].bit_length() - 1
    if factorized_layers is None:
        factorized_layers = range(depth + 1)
    layers = tuple(int(k) for k in factorized_layers)
    if not layers or any(not 0 <= k <= depth for k in layers):
        raise ValueError(f"factorized_layers must be in 0..{depth}, got {factorized_layers}.")
    denoise_fn = controlled.as_pytree(denoise_fn)
    chunks = controlled.token_chunks(x0, chunk_size)

    per_step = [
        jnp.concatenate(
            [
                _kl_kernel(denoise_fn, transitions, schedule, chunk, key, t, c, layers)
                for c, chunk in enumerate(chunks)
            ],
            axis=-1,
        )
        for t in steps
    ]
    kl = chunking.gather([jnp.stack(per_step, axis=1)], x0.shape[0], axis=-1).mean(-1)  # [K, S]
    return {"kl": kl, "k": np.array(layers), "t": np.array(steps)}


def twin_kl_bp(denoise_fns, transitions, schedule: Schedule, x0, t_values, key) -> np.ndarray:
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


def kl_along_t_ratios(num_points):
    """[R] t/T = 1/R, 2/R, ..., 1: where Fig. 3b reads KL(BP_k || model) along time."""
    if not checks.is_int(num_points) or num_points < 2:
        raise ValueError(f"num_points must be an integer >= 2, got {num_points!r}")
    return np.arange(1, num_points + 1) / num_points

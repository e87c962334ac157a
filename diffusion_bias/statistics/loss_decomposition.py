"""The loss decomposition CE = l* + l~ (the paper (arXiv 2603.03469) Fig. 4b), per model and per twin.

l* is the distillation of the exact BP denoiser, l~ the data-dependent excess
(zero in expectation on held-out data). Denoiser contract, chunking and noise:
`statistics/controlled.py`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from diffusion_bias import checks
from diffusion_bias import chunking
from diffusion_bias.diffusion import denoisers
from diffusion_bias.diffusion.schedules import Schedule
from diffusion_bias.statistics import controlled


@jax.jit
def _loss_kernel(denoise_fn, transitions, schedule, x0, key, t, chunk):
    """Per-sequence CE, l*, l~ of one chunk at step t: [3, C]."""
    x0_onehot, x_t, t_batch = controlled.noise_chunk(
        schedule, x0, key, t, chunk, transitions.shape[0]
    )
    log_p = controlled.log_probs(denoise_fn(x_t, schedule.timesteps[t_batch]))
    x0_bp = denoisers.exact_denoiser(transitions, schedule, x_t, t_batch)

    def loss(target):
        return -jnp.mean(jnp.sum(target * log_p, axis=-1), axis=-1)

    return jnp.stack([loss(x0_onehot), loss(x0_bp), loss(x0_onehot - x0_bp)])


def loss_decomposition(
    denoise_fn: controlled.TokenDenoiser,
    transitions: ArrayLike,
    schedule: Schedule,
    x0: ArrayLike,
    t_values: Sequence[int] | ArrayLike,
    key: jax.Array,
    chunk_size: int = controlled.DEFAULT_CHUNK_SIZE,
) -> dict[str, np.ndarray]:
    """CE = l* + l~ (the paper (arXiv 2603.03469) Fig. 4b) at each step t.

    With p the model's probabilities on x_t ~ q(x_t | x_0) and x0_BP the exact
    posterior marginals E[x_0 | x_t]: CE = -x_0 . log p, l* = -x0_BP . log p
    (distillation of the exact denoiser), l~ = -(x_0 - x0_BP) . log p (zero in
    expectation over x_0 drawn from the grammar, i.e. on held-out data). Each
    is summed over q and averaged over tokens and sequences; log p is clipped
    at log(1e-12). t is traced: one compile serves every t.

    Args:
        denoise_fn: the token denoiser (`controlled` module docstring).
        transitions: the grammar's M[a, b, c].  # [q, q, q]
        schedule: the noise schedule.
        x0: clean integer tokens.  # [N, L]
        t_values: steps of `schedule` in 1..T.  # [S]
        key: base PRNG key of the forward noise.
        chunk_size: sequences per kernel call.

    Returns:
        Dict of numpy arrays, each [S]: ce, l_star, l_tilde (means over
        sequences), ce_sem, l_star_sem, l_tilde_sem (their standard errors over
        sequences), and t.

    Raises:
        ValueError: on malformed tokens or steps.
    """
    transitions = jnp.asarray(transitions, jnp.float32)
    x0 = controlled.check_tokens(transitions, x0)
    steps = controlled.check_steps(schedule, t_values)
    denoise_fn = controlled.as_pytree(denoise_fn)
    chunks = controlled.token_chunks(x0, chunk_size)

    per_step = [
        jnp.concatenate(
            [
                _loss_kernel(denoise_fn, transitions, schedule, chunk, key, t, c)
                for c, chunk in enumerate(chunks)
            ],
            axis=-1,
        )
        for t in steps
    ]
    values = chunking.gather([jnp.stack(per_step)], x0.shape[0], axis=-1)  # [S, 3, N]
    out = {"t": np.array(steps)}
    for i, name in enumerate(("ce", "l_star", "l_tilde")):
        out[name], out[name + "_sem"] = controlled.mean_sem(values[:, i])
    return out


def decomposition_steps(num_steps: int, num_points: int) -> list[int]:
    """[G] steps whose mean of f(t) is the midpoint estimate of the mean of f over t in 1..T.

    t_g = ceil((g + 1/2) T / G), g = 0..G-1: the midpoints of G equal slices of
    1..T, so uniform t in 1..T is approximated by a fixed, deterministic grid.
    """
    if not checks.is_int(num_points) or num_points < 1:
        raise ValueError(f"num_points must be a positive integer, got {num_points!r}")
    g = np.arange(min(num_points, num_steps))
    return [int(t) for t in np.ceil((g + 0.5) * num_steps / len(g))]


def twin_loss_decomposition(
    denoise_fns: Sequence[controlled.TokenDenoiser],
    transitions: ArrayLike,
    schedule: Schedule,
    own: np.ndarray,
    heldout: ArrayLike,
    t: int,
    grid: Sequence[int],
    key: jax.Array,
) -> tuple[np.ndarray, np.ndarray]:
    """Per twin: l* and l~ on its own and on held-out sequences, at t and over a grid.

    Args:
        denoise_fns: the K twins' denoisers.
        transitions: the grammar's M[a, b, c].  # [q, q, q]
        schedule: the noise schedule.
        own: each twin's training sequences.  # [K, n, L]
        heldout: held-out sequences.  # [m, L]
        t: one step (the paper's panel: t/T = 0.3).
        grid: G steps whose mean estimates the average over t (`decomposition_steps`).
        key: the base PRNG key.

    Returns:
        (at_t [K, 4], mean_over_grid [K, 4]); the 4 columns l*_own, l~_own,
        l*_heldout, l~_heldout, per token.
    """
    at_t, mean_t = [], []
    for fn, items in zip(denoise_fns, own):
        parts = [
            loss_decomposition(fn, transitions, schedule, x, [t] + list(grid), key)
            for x in (items, heldout)
        ]
        values = np.array([d[n] for d in parts for n in ("l_star", "l_tilde")])  # [4, 1 + G]
        at_t.append(values[:, 0])
        mean_t.append(values[:, 1:].mean(-1))
    return np.asarray(at_t), np.asarray(mean_t)

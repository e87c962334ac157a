"""Reference denoisers E[x_0 | x_t] for known data distributions.

For one-hot tokens x_0 in {e_1..e_q}^L the Gaussian likelihood of each token
reduces to exp(h . x_0) with h = sqrt(ab_t)/(1-ab_t) x_t (the |x_0|^2 term is
the same for every symbol), so every token denoiser is a posterior under the
per-token evidence h: uniform prior (`prior_denoiser`), tree grammar
(`exact_denoiser`, belief propagation), or the training set
(`memorizing_denoiser`, which works for any feature shape).
"""

import jax
import jax.numpy as jnp

from diffusion_bias.diffusion import process
from diffusion_bias.diffusion.schedules import Schedule
from diffusion_bias.exact import bp


def token_fields(schedule: Schedule, x_t: jax.Array, t: jax.Array) -> jax.Array:
    """Per-token log-evidence of each symbol, h = sqrt(ab_t)/(1-ab_t) x_t.

    Args:
        schedule: the noise schedule.
        x_t: noisy one-hot tokens.  # [B, L, q]
        t: step indices in 1..T.  # [] or [B]

    Returns:
        h, the log-likelihood of each symbol up to a per-token constant.  # [B, L, q]
    """
    return (
        jnp.sqrt(process.extract(schedule.alpha_bars, t, x_t))
        / process.extract(schedule.one_minus_alpha_bars, t, x_t)
        * x_t
    )


def prior_denoiser(schedule: Schedule, x_t: jax.Array, t: jax.Array) -> jax.Array:
    """E[x_0 | x_t] for independent uniform tokens: softmax(h) per token.

    Args:
        schedule: the noise schedule.
        x_t: noisy one-hot tokens.  # [B, L, q]
        t: step indices in 1..T.  # [] or [B]

    Returns:
        Per-token posterior probabilities.  # [B, L, q]
    """
    return jax.nn.softmax(token_fields(schedule, x_t, t), axis=-1)


def exact_denoiser(
    transitions: jax.Array,
    schedule: Schedule,
    x_t: jax.Array,
    t: jax.Array,
    factorized_layers: int = 0,
) -> jax.Array:
    """E[x_0 | x_t] under the tree grammar: BP leaf marginals given evidence h.

    Args:
        transitions: M[a, b, c], probability that parent a emits children (b, c).
            # [q, q, q]
        schedule: the noise schedule.
        x_t: noisy one-hot leaves.  # [B, L, q]
        t: step indices in 1..T.  # [] or [B]
        factorized_layers: k of BP_k; 0 is exact BP.

    Returns:
        Leaf marginals.  # [B, L, q]
    """

    return bp.leaf_marginals(
        transitions, token_fields(schedule, x_t, t), factorized_layers=factorized_layers
    )


def memorizing_denoiser(
    train_x0: jax.Array, schedule: Schedule, x_t: jax.Array, t: jax.Array, chunk_size: int = 4096
) -> jax.Array:
    """E[x_0 | x_t] when the data distribution is the training set itself.

    The weights softmax_i(-|x_t - sqrt(ab_t) x0_i|^2 / (2(1-ab_t))) are reduced
    chunk by chunk with a streaming log-sum-exp (running max, rescaled sums), so
    no [B, N] array is ever built: N=70,000 and B=1024 stay within memory.

    Args:
        train_x0: the training set; tokens as one-hot floats.  # [N, ...]
        schedule: the noise schedule.
        x_t: noisy queries, same feature shape as train_x0.  # [B, ...]
        t: step indices in 1..T.  # [] or [B]
        chunk_size: training items per chunk (static).

    Returns:
        The posterior mean over the training set.  # [B, ...]
    """
    # One piece: the scan body reads only beside the padding and scales it closes over.
    num_train, feature_shape = train_x0.shape[0], train_x0.shape[1:]
    batch = x_t.shape[0]
    dtype = jnp.promote_types(x_t.dtype, jnp.float32)
    queries = x_t.reshape(batch, -1).astype(dtype)  # [B, D]
    items = train_x0.reshape(num_train, -1).astype(dtype)  # [N, D]
    t = jnp.broadcast_to(jnp.asarray(t), (batch,))
    scale = jnp.sqrt(schedule.alpha_bars[t])[:, None]  # [B, 1]
    variance = schedule.one_minus_alpha_bars[t][:, None]  # [B, 1]

    chunk = min(chunk_size, num_train)
    num_chunks = -(-num_train // chunk)
    padding = num_chunks * chunk - num_train
    items = jnp.pad(items, ((0, padding), (0, 0))).reshape(num_chunks, chunk, -1)
    valid = (jnp.arange(num_chunks * chunk) < num_train).reshape(num_chunks, chunk)

    def accumulate(carry, inputs):
        running_max, total, weighted = carry  # [B], [B], [B, D]
        chunk_items, chunk_valid = inputs  # [C, D], [C]
        dots = jnp.matmul(queries, chunk_items.T, precision=jax.lax.Precision.HIGHEST)  # [B, C]
        sq_norms = jnp.sum(chunk_items**2, axis=-1)  # [C]
        # |x_t|^2 is the same for every item, so it drops out of the softmax; leaving
        # it out also avoids its cancellation at small t.
        logits = (scale * dots - 0.5 * scale**2 * sq_norms) / variance  # [B, C]
        logits = jnp.where(chunk_valid, logits, -jnp.inf)
        new_max = jnp.maximum(running_max, logits.max(axis=-1))  # [B]
        # The first chunk holds at least one valid item, so new_max is finite and
        # exp(-inf - new_max) = 0 clears the initial accumulators.
        rescale = jnp.exp(running_max - new_max)  # [B]
        probs = jnp.exp(logits - new_max[:, None])  # [B, C]
        total = total * rescale + probs.sum(axis=-1)
        weighted = weighted * rescale[:, None] + jnp.matmul(
            probs, chunk_items, precision=jax.lax.Precision.HIGHEST
        )
        return (new_max, total, weighted), None

    init = (
        jnp.full((batch,), -jnp.inf, dtype),
        jnp.zeros((batch,), dtype),
        jnp.zeros((batch, items.shape[-1]), dtype),
    )
    (_, total, weighted), _ = jax.lax.scan(accumulate, init, (items, valid))
    return (weighted / total[:, None]).reshape((batch,) + feature_shape)

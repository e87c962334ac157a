"""Sinusoidal embedding of the diffusion step, shared by every denoiser."""

import math

import jax
import jax.numpy as jnp


def sinusoidal_embedding(
    t: jax.Array, dim: int, max_period: float = 10000.0, denominator: int | None = None
) -> jax.Array:
    """Transformer/DDPM sinusoidal embedding of (integer or real) time steps.

    Channel j < dim/2 is sin(t * w_j) and channel dim/2 + j is cos(t * w_j),
    with frequencies w_j = max_period^(-j / denominator) from 1 down towards
    1/max_period, so steps 0..T stay distinguishable at every scale.

    Args:
        t: time steps, int or float.  # [B]
        dim: number of channels; even and positive.
        max_period: the slowest frequency is about 1/max_period.
        denominator: of the exponent; None is dim/2 (DDPM's); dim/2 - 1 makes the
            slowest frequency exactly 1/max_period (the paper's CelebA U-Net).

    Returns:
        The embedding, float32.  # [B, dim]

    Raises:
        ValueError: if dim is not a positive even integer or t is not 1-D.
    """
    if not isinstance(dim, int) or dim <= 0 or dim % 2:
        raise ValueError(f"sinusoidal_embedding needs a positive even dim, got {dim!r}")
    t = jnp.asarray(t)
    if t.ndim != 1:
        raise ValueError(f"sinusoidal_embedding needs t of shape [B], got {t.shape}")
    half = dim // 2
    denominator = half if denominator is None else denominator
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / denominator)
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]  # [B, dim/2]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)

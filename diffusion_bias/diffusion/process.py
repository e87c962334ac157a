"""Forward process q(x_t | x_0) and Gaussian posteriors q(x_{t-1} | x_t, x_0).

Pure jnp functions, jit-compatible. `t` holds integer indices into the schedule
(0 = clean data), as a scalar or of shape [B] broadcasting against x of shape
[B, ...].
"""

import jax
import jax.numpy as jnp

from diffusion_bias.diffusion.schedules import Schedule


def extract(values: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
    """Looks up a per-step quantity and shapes it to broadcast against x.

    Args:
        values: a per-step array of the schedule.  # [T+1]
        t: step indices, scalar or one per item.  # [] or [B]
        x: the batch it will multiply.  # [B, ...]

    Returns:
        values[t], with trailing singleton axes.  # [] or [B, 1, ..., 1]
    """
    picked = values[jnp.asarray(t)]
    return picked.reshape(picked.shape + (1,) * (x.ndim - picked.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Draws x_t ~ q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I).

    Args:
        schedule: the noise schedule.
        x0: clean data.  # [B, ...]
        t: step indices.  # [] or [B]
        noise: standard normal noise.  # [B, ...]

    Returns:
        x_t.  # [B, ...]
    """
    return (
        jnp.sqrt(extract(schedule.alpha_bars, t, x0)) * x0
        + jnp.sqrt(extract(schedule.one_minus_alpha_bars, t, x0)) * noise
    )


def predict_x0_from_eps(
    schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array
) -> jax.Array:
    """Inverts `q_sample` for x_0 given the noise.

    Args:
        schedule: the noise schedule.
        x_t: noisy data.  # [B, ...]
        t: step indices.  # [] or [B]
        eps: the (predicted) noise.  # [B, ...]

    Returns:
        (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t).  # [B, ...]
    """
    return (x_t - jnp.sqrt(extract(schedule.one_minus_alpha_bars, t, x_t)) * eps) / jnp.sqrt(
        extract(schedule.alpha_bars, t, x_t)
    )


def predict_eps_from_x0(
    schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array
) -> jax.Array:
    """Inverts `q_sample` for the noise given x_0.

    Args:
        schedule: the noise schedule.
        x_t: noisy data.  # [B, ...]
        t: step indices.  # [] or [B]
        x0: the (predicted) clean data.  # [B, ...]

    Returns:
        (x_t - sqrt(ab_t) x_0) / sqrt(1 - ab_t).  # [B, ...]
    """
    return (x_t - jnp.sqrt(extract(schedule.alpha_bars, t, x_t)) * x0) / jnp.sqrt(
        extract(schedule.one_minus_alpha_bars, t, x_t)
    )


def posterior_mean_variance(
    schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The Gaussian q(x_{t-1} | x_t, x_0), for t >= 1.

    The variance is 0 at t=1 (x_0 is then known); as in improved DDPM the
    log-variance there is clipped to the t=2 value so it stays finite.

    Args:
        schedule: the noise schedule.
        x0: clean (or predicted) data.  # [B, ...]
        x_t: noisy data.  # [B, ...]
        t: step indices in 1..T.  # [] or [B]

    Returns:
        mean: sqrt(ab_{t-1}) beta_t/(1-ab_t) x_0
            + sqrt(alpha_t)(1-ab_{t-1})/(1-ab_t) x_t.  # [B, ...]
        variance: beta_t (1-ab_{t-1})/(1-ab_t).  # [] or [B, 1, ..., 1]
        log_variance: log of the variance, clipped at t=1.  # like variance
    """
    t = jnp.asarray(t)
    one_minus_ab = schedule.one_minus_alpha_bars
    # Per-step arrays first, so the t=1 clip can read the t=2 entry.
    variances = jnp.concatenate(
        [
            jnp.zeros((1,), one_minus_ab.dtype),
            schedule.betas[1:] * one_minus_ab[:-1] / one_minus_ab[1:],
        ]
    )  # [T+1]
    # With T=1 there is no t=2; beta_1 is then the only finite choice.
    clip_value = variances[2] if schedule.num_steps >= 2 else schedule.betas[1]
    log_variances = jnp.log(variances.at[:2].set(clip_value))  # [T+1]

    def at(values, offset=0):
        return extract(values, t + offset, x_t)

    coef_x0 = jnp.sqrt(at(schedule.alpha_bars, -1)) * at(schedule.betas) / at(one_minus_ab)
    coef_xt = jnp.sqrt(at(schedule.alphas)) * at(one_minus_ab, -1) / at(one_minus_ab)
    return coef_x0 * x0 + coef_xt * x_t, at(variances), at(log_variances)


def ddpm_step(
    schedule: Schedule, x_t: jax.Array, t: jax.Array, x0_hat: jax.Array, noise: jax.Array
) -> jax.Array:
    """One ancestral step x_t -> x_{t-1} ~ q(x_{t-1} | x_t, x0_hat).

    Args:
        schedule: the noise schedule.
        x_t: current state.  # [B, ...]
        t: step indices in 1..T.  # [] or [B]
        x0_hat: the denoiser's estimate of x_0.  # [B, ...]
        noise: standard normal noise, unused where t == 1.  # [B, ...]

    Returns:
        x_{t-1}; the posterior mean where t == 1.  # [B, ...]
    """
    t = jnp.asarray(t)
    mean, variance, _ = posterior_mean_variance(schedule, x0_hat, x_t, t)
    # The t=1 variance is already 0; the mask also keeps a non-finite noise draw
    # from reaching x_0 and makes the convention explicit.
    last = (t == 1).reshape(t.shape + (1,) * (x_t.ndim - t.ndim))
    return jnp.where(last, mean, mean + jnp.sqrt(variance) * noise)


def ddpm_eps_step(
    schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array, noise: jax.Array
) -> jax.Array:
    """The paper's image step (Ho et al. 2020, Algorithm 2, sigma_t^2 = beta_t).

    x_{t-1} = (x_t - beta_t / sqrt(1 - ab_t) eps) / sqrt(alpha_t) + sqrt(beta_t) z,
    with z = 0 on the last two steps (t <= 2), as in the authors' CelebA sampler;
    the predicted noise is used as is (no clipping of an x_0 estimate).

    Args:
        schedule: the (possibly respaced) noise schedule.
        x_t: current state.  # [B, ...]
        t: step indices in 1..T.  # [] or [B]
        eps: the predicted noise.  # [B, ...]
        noise: standard normal noise z, unused where t <= 2.  # [B, ...]

    Returns:
        x_{t-1}.  # [B, ...]
    """
    t = jnp.asarray(t)
    beta = extract(schedule.betas, t, x_t)
    mean = (x_t - beta / jnp.sqrt(extract(schedule.one_minus_alpha_bars, t, x_t)) * eps) / jnp.sqrt(
        extract(schedule.alphas, t, x_t)
    )
    quiet = (t <= 2).reshape(t.shape + (1,) * (x_t.ndim - t.ndim))
    return jnp.where(quiet, mean, mean + jnp.sqrt(beta) * noise)

"""Tests of the forward process and posteriors against float64 Gaussian algebra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_bias.diffusion import process
from diffusion_bias.diffusion import schedules


def _normal(seed, shape):
    # numpy draws: inputs need no JAX PRNG, whose compile is slow on CPU.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _float64_alpha_bars(schedule):
    # Independent of the stored alpha_bars: rebuilt from the betas in float64.
    return np.cumprod(1.0 - np.asarray(schedule.betas, np.float64))


def test_q_sample_matches_closed_form():
    schedule = schedules.token_schedule(500)
    x0 = _normal(0, (5, 3, 2))
    noise = _normal(1, (5, 3, 2))
    t = jnp.array([1, 10, 100, 250, 500])
    ab = _float64_alpha_bars(schedule)[np.asarray(t)][:, None, None]
    expected = np.sqrt(ab) * np.asarray(x0) + np.sqrt(1 - ab) * np.asarray(noise)
    np.testing.assert_allclose(
        process.q_sample(schedule, x0, t, noise), expected, rtol=1e-5, atol=1e-6
    )


def test_q_sample_moments_over_many_noise_draws():
    schedule = schedules.image_schedule()
    num_draws, t = 200_000, 300
    x0 = jnp.broadcast_to(jnp.array([1.5, -0.5, 0.0]), (num_draws, 3))
    noise = _normal(1, x0.shape)
    x_t = np.asarray(process.q_sample(schedule, x0, jnp.full((num_draws,), t), noise))
    ab = _float64_alpha_bars(schedule)[t]
    # Standard errors: sqrt(v/N) ~ 2e-3 for the mean, v sqrt(2/N) ~ 3e-3 for the variance.
    np.testing.assert_allclose(x_t.mean(0), np.sqrt(ab) * np.array([1.5, -0.5, 0.0]), atol=1e-2)
    np.testing.assert_allclose(x_t.var(0), 1 - ab, rtol=2e-2)


def test_scalar_t_broadcasts_over_the_batch():
    schedule = schedules.token_schedule(500)
    x0 = jnp.ones((4, 2))
    noise = jnp.zeros((4, 2))
    np.testing.assert_allclose(
        process.q_sample(schedule, x0, 7, noise),
        process.q_sample(schedule, x0, jnp.full((4,), 7), noise),
    )


def test_predict_x0_from_eps_inverts_q_sample():
    schedule = schedules.image_schedule()
    x0 = _normal(2, (6, 8))
    noise = _normal(3, (6, 8))
    t = jnp.array([1, 2, 50, 200, 600, 900])
    x_t = process.q_sample(schedule, x0, t, noise)
    np.testing.assert_allclose(process.predict_x0_from_eps(schedule, x_t, t, noise), x0, atol=1e-4)
    np.testing.assert_allclose(process.predict_eps_from_x0(schedule, x_t, t, x0), noise, atol=1e-3)


def _conditional_of_joint(ab_prev, alpha, beta, x0, x_t):
    """q(x_{t-1} | x_t, x_0) by conditioning the joint Gaussian, in float64.

    Given x_0: x_{t-1} ~ N(sqrt(ab_prev) x_0, 1 - ab_prev) and
    x_t = sqrt(alpha) x_{t-1} + sqrt(beta) z.
    """
    mean_prev, var_prev = np.sqrt(ab_prev) * x0, 1.0 - ab_prev
    mean_t = np.sqrt(alpha) * mean_prev
    var_t = alpha * var_prev + beta
    cov = np.sqrt(alpha) * var_prev
    return mean_prev + cov / var_t * (x_t - mean_t), var_prev - cov**2 / var_t


@pytest.mark.parametrize("respaced_steps", [None, 40])
def test_posterior_equals_gaussian_conditioning(respaced_steps):
    schedule = schedules.image_schedule()
    if respaced_steps is not None:
        schedule = schedules.respace(schedule, respaced_steps)
    num_steps = schedule.num_steps
    t = np.array([1, 2, 3, num_steps // 2, num_steps - 1, num_steps])
    x0 = np.asarray(_normal(4, (len(t), 5)), np.float64)
    x_t = np.asarray(_normal(5, (len(t), 5)), np.float64)
    betas = np.asarray(schedule.betas, np.float64)
    ab = np.cumprod(1.0 - betas)
    expected_mean, expected_var = _conditional_of_joint(
        ab[t - 1][:, None], 1.0 - betas[t][:, None], betas[t][:, None], x0, x_t
    )

    mean, variance, log_variance = process.posterior_mean_variance(
        schedule, jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32), jnp.asarray(t)
    )
    assert mean.shape == (len(t), 5) and variance.shape == (len(t), 1)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(variance, expected_var, rtol=1e-5, atol=1e-12)
    assert variance[0, 0] == 0.0  # t = 1: x_0 is known.
    # Clipped as in improved DDPM: the t=1 log-variance is the t=2 one.
    np.testing.assert_allclose(log_variance[1:], np.log(expected_var[1:]), rtol=1e-5)
    np.testing.assert_allclose(log_variance[0], np.log(expected_var[1]), rtol=1e-5)


def test_ddpm_step_adds_posterior_noise_except_at_t_equal_one():
    schedule = schedules.token_schedule(500)
    x_t = jnp.full((3, 4), 0.3)
    x0_hat = jnp.full((3, 4), -1.0)
    noise = _normal(6, (3, 4))
    t = jnp.array([1, 2, 300])
    mean, variance, _ = process.posterior_mean_variance(schedule, x0_hat, x_t, t)
    out = process.ddpm_step(schedule, x_t, t, x0_hat, noise)
    np.testing.assert_array_equal(out[0], mean[0])
    np.testing.assert_allclose(out[1:], mean[1:] + np.sqrt(variance[1:]) * noise[1:], rtol=1e-6)
    # At t=1 the posterior mean is x0_hat itself (ab_0 = 1): the chain ends on it.
    np.testing.assert_allclose(out[0], x0_hat[0], rtol=1e-6)


def test_ddpm_step_ignores_non_finite_noise_at_t_equal_one():
    schedule = schedules.token_schedule(500)
    out = process.ddpm_step(
        schedule, jnp.ones((2, 3)), jnp.array([1, 1]), jnp.zeros((2, 3)), jnp.full((2, 3), jnp.inf)
    )
    assert np.all(np.isfinite(out))


def test_process_functions_jit():
    schedule = schedules.token_schedule(500)
    x = jnp.ones((2, 16, 6))
    t = jnp.array([5, 400])
    step = jax.jit(process.ddpm_step)
    np.testing.assert_allclose(
        step(schedule, x, t, x, x), process.ddpm_step(schedule, x, t, x, x), rtol=1e-6
    )

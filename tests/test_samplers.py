"""Tests of the ancestral sampler: exact denoisers, noise coupling, jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_bias.diffusion import process
from diffusion_bias.diffusion import samplers
from diffusion_bias.diffusion import schedules


def _normal(seed, shape):
    # numpy draws: inputs need no JAX PRNG, whose compile is slow on CPU.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


_MU = np.array([0.7, -1.0, 0.0, 2.0])
_STD = 0.5


def _gaussian_denoiser(original):
    """E[x_0 | x_t] for data N(mu, s^2 I), indexed by the ORIGINAL model time."""
    ab = jnp.asarray(np.cumprod(1.0 - np.asarray(original.betas, np.float64)), jnp.float32)

    def denoise(x_t, t_model):
        a = jnp.sqrt(ab[t_model])[:, None]
        gain = a * _STD**2 / (a**2 * _STD**2 + 1.0 - ab[t_model][:, None])
        return _MU + gain * (x_t - a * _MU)

    return denoise


def _chain_moments(schedule, original):
    """Mean and variance of the sampler output, by the linear-Gaussian recursion.

    With the exact Gaussian denoiser each step is x_{t-1} = A x_t + b + sigma z,
    so the moments follow in closed form (float64), starting from N(0, 1).
    """
    betas = np.asarray(schedule.betas, np.float64)
    ab = np.cumprod(1.0 - betas)
    ab_model = np.cumprod(1.0 - np.asarray(original.betas, np.float64))
    mean, var = np.zeros_like(_MU), 1.0
    for t in range(schedule.num_steps, 0, -1):
        a_model = np.sqrt(ab_model[schedule.timesteps[t]])
        gain = a_model * _STD**2 / (a_model**2 * _STD**2 + 1 - ab_model[schedule.timesteps[t]])
        coef_x0 = np.sqrt(ab[t - 1]) * betas[t] / (1 - ab[t])
        coef_xt = np.sqrt(1 - betas[t]) * (1 - ab[t - 1]) / (1 - ab[t])
        step_var = betas[t] * (1 - ab[t - 1]) / (1 - ab[t])
        slope = coef_x0 * gain + coef_xt
        mean = slope * mean + coef_x0 * (_MU - gain * a_model * _MU)
        var = slope**2 * var + step_var
    return mean, var


def test_point_mass_denoiser_returns_the_point():
    schedule = schedules.respace(schedules.token_schedule(500), 25)
    point = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    x_T = _normal(0, (8, 2, 3))
    out = samplers.sample(
        lambda x, t: jnp.broadcast_to(point, x.shape), schedule, x_T, jax.random.key(1), "x0"
    )
    np.testing.assert_allclose(out, jnp.broadcast_to(point, out.shape), atol=1e-6)


def test_gaussian_data_is_sampled_with_the_chains_exact_moments():
    original = schedules.image_schedule()
    schedule = schedules.respace(original, 100)
    x_T = _normal(2, (4096, 4))
    sampler = jax.jit(
        functools.partial(samplers.sample, _gaussian_denoiser(original), parametrization="x0")
    )
    out = np.asarray(sampler(schedule, x_T, jax.random.key(3)))
    mean, var = _chain_moments(schedule, original)
    # Standard errors with 4096 samples per coordinate: 8e-3 (mean), 5e-3 (var).
    np.testing.assert_allclose(out.mean(0), mean, atol=3e-2)
    np.testing.assert_allclose(out.var(0), var, rtol=8e-2)
    np.testing.assert_allclose(mean, _MU, atol=1e-3)
    # The fixed-small reverse variance under-disperses with few steps, a property
    # of DDPM, not of this code: 100 steps keep 88% of s^2.
    np.testing.assert_allclose(var, _STD**2, rtol=0.15)


def test_full_chain_samples_gaussian_data_with_its_mean_and_variance():
    original = schedules.image_schedule()
    x_T = _normal(4, (4096, 4))
    sampler = jax.jit(
        functools.partial(samplers.sample, _gaussian_denoiser(original), parametrization="x0")
    )
    out = np.asarray(sampler(original, x_T, jax.random.key(5)))
    np.testing.assert_allclose(out.mean(0), _MU, atol=3e-2)
    np.testing.assert_allclose(out.var(0), _STD**2, rtol=0.1)
    np.testing.assert_allclose(((out - out.mean(0)) ** 2).mean(), _STD**2, rtol=0.05)


def test_eps_parametrization_gives_the_same_chain_as_x0():
    original = schedules.image_schedule()
    schedule = schedules.respace(original, 30)
    denoise_x0 = _gaussian_denoiser(original)
    ab_model = original.alpha_bars

    def denoise_eps(x_t, t_model):
        ab = ab_model[t_model][:, None]
        return (x_t - jnp.sqrt(ab) * denoise_x0(x_t, t_model)) / jnp.sqrt(1 - ab)

    x_T = _normal(6, (64, 4))
    key = jax.random.key(7)
    np.testing.assert_allclose(
        samplers.sample(denoise_eps, schedule, x_T, key, "eps"),
        samplers.sample(denoise_x0, schedule, x_T, key, "x0"),
        atol=2e-3,
    )


def test_clip_x0_bounds_the_estimate():
    schedule = schedules.respace(schedules.image_schedule(), 10)
    x_T = _normal(8, (16, 3))
    out = samplers.sample(
        lambda x, t: 100.0 * x, schedule, x_T, jax.random.key(9), "x0", clip_x0=1.0
    )
    # The last step returns the clipped x0_hat itself.
    assert np.abs(np.asarray(out)).max() <= 1.0 + 1e-6


def test_chain_equals_a_float64_loop_with_fold_in_noise():
    original = schedules.token_schedule(500)
    schedule = schedules.respace(original, 12)
    x_T = _normal(10, (5, 3))
    key = jax.random.key(11)
    fn = lambda x, t: 0.3 * x + 1e-3 * t[:, None]
    jitted = jax.jit(functools.partial(samplers.sample, fn, parametrization="x0"))
    for start_step, run in (
        (None, lambda: jitted(schedule, x_T, key)),
        (7, lambda: samplers.sample(fn, schedule, x_T, key, "x0", start_step=7)),
    ):
        betas = np.asarray(schedule.betas, np.float64)
        ab = np.cumprod(1 - betas)
        x = np.asarray(x_T, np.float64)
        for i in range(start_step or schedule.num_steps, 0, -1):
            x0_hat = 0.3 * x + 1e-3 * int(schedule.timesteps[i])
            mean = (
                np.sqrt(ab[i - 1]) * betas[i] * x0_hat + np.sqrt(1 - betas[i]) * (1 - ab[i - 1]) * x
            ) / (1 - ab[i])
            noise = np.asarray(jax.random.normal(jax.random.fold_in(key, i), x.shape))
            x = mean + (i > 1) * np.sqrt(betas[i] * (1 - ab[i - 1]) / (1 - ab[i])) * noise
        np.testing.assert_allclose(run(), x, rtol=1e-4, atol=1e-5)


def test_same_key_same_samples_different_key_different_samples():
    schedule = schedules.respace(schedules.token_schedule(500), 20)
    x_T = _normal(12, (32, 4))
    sampler = jax.jit(
        functools.partial(samplers.sample, lambda x, t: jnp.tanh(x), parametrization="x0")
    )
    first = sampler(schedule, x_T, jax.random.key(13))
    again = sampler(schedule, x_T, jax.random.key(13))
    other = sampler(schedule, x_T, jax.random.key(14))
    np.testing.assert_array_equal(first, again)
    assert np.abs(np.asarray(first - other)).min() > 0


def test_two_denoisers_with_the_same_key_see_the_same_noise():
    # Denoisers differing by a constant make every step affine in that constant:
    # the two chains differ by a deterministic amount iff their noise is shared.
    schedule = schedules.respace(schedules.image_schedule(), 20)
    x_T = _normal(15, (64, 2))
    model_a = jax.jit(
        functools.partial(samplers.sample, lambda x, t: 0.5 * x, parametrization="x0")
    )
    model_b = jax.jit(
        functools.partial(samplers.sample, lambda x, t: 0.5 * x + 0.1, parametrization="x0")
    )
    gaps = []
    for seed in (16, 17):
        key = jax.random.key(seed)
        gap = np.asarray(model_b(schedule, x_T, key) - model_a(schedule, x_T, key))
        np.testing.assert_allclose(gap, gap[0, 0], atol=1e-5)
        gaps.append(gap[0, 0])
    np.testing.assert_allclose(gaps[0], gaps[1], atol=1e-5)
    assert abs(gaps[0]) > 1e-2


def test_model_is_called_with_original_timesteps():
    schedule = schedules.respace(schedules.token_schedule(500), 5)
    seen = []

    def record(x, t):
        jax.debug.callback(lambda v: seen.append(np.asarray(v)), t)
        return x

    jax.block_until_ready(
        samplers.sample(record, schedule, jnp.zeros((3, 2)), jax.random.key(0), "x0")
    )
    jax.effects_barrier()
    assert [v.tolist() for v in seen] == [[s] * 3 for s in (500, 400, 300, 200, 100)]
    assert seen[0].dtype == np.int32


def test_denoising_from_start_step_with_point_mass_returns_the_point():
    schedule = schedules.token_schedule(500)
    # Rank 2 keeps the threefry draw cheap to compile.
    x0 = jax.nn.one_hot(jnp.array([0, 3, 5]), 6)
    x_t = process.q_sample(schedule, x0, 15, jax.random.normal(jax.random.key(20), x0.shape))
    back = samplers.sample(lambda x, t: x0, schedule, x_t, jax.random.key(21), "x0", start_step=15)
    np.testing.assert_allclose(back, x0, atol=1e-6)


def test_item_noise_does_not_depend_on_the_batch_an_item_is_drawn_in():
    schedule = schedules.respace(schedules.image_schedule(1000), 20)
    denoise = lambda x, t: 0.5 * x
    key = jax.random.key(3)
    ids = jnp.arange(6)
    x_T = samplers.item_normal(jax.random.key(4), ids, (3,))
    whole = samplers.sample(denoise, schedule, x_T, key, "x0", item_ids=ids)
    halves = [
        samplers.sample(denoise, schedule, x_T[s], key, "x0", item_ids=ids[s])
        for s in (slice(0, 2), slice(2, 6))
    ]
    np.testing.assert_allclose(whole, jnp.concatenate(halves), rtol=1e-6)
    np.testing.assert_array_equal(x_T[2:], samplers.item_normal(jax.random.key(4), ids[2:], (3,)))

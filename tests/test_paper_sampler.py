"""The paper's image sampler: eps step with sigma^2 = beta, no clipping, quiet last two steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_bias.diffusion import coupled
from diffusion_bias.diffusion import process
from diffusion_bias.diffusion import samplers
from diffusion_bias.diffusion import schedules

T = 40


def _betas(num_steps):
    """float64 [T] the DDPM image betas 1e-4..0.02 (Ho et al.), steps 1..T."""
    return np.linspace(1e-4, 0.02, num_steps)


def _paper_step(x, eps, z, beta, alpha_bar, t):
    """The authors' update in numpy: z is dropped on the last two steps."""
    z = z if t > 2 else 0.0
    return (x - beta / np.sqrt(1.0 - alpha_bar) * eps) / np.sqrt(1.0 - beta) + np.sqrt(beta) * z


def test_one_step_is_the_closed_form():
    rng = np.random.default_rng(0)
    x, eps, z = (rng.normal(size=(3, 4, 4, 1)).astype(np.float32) for _ in range(3))
    betas = _betas(T)
    alpha_bars = np.cumprod(1.0 - betas)
    schedule = schedules.image_schedule(T)
    for t in (3, 10, T):
        got = process.ddpm_eps_step(schedule, jnp.asarray(x), jnp.full((3,), t), eps, z)
        want = _paper_step(x, eps, z, betas[t - 1], alpha_bars[t - 1], t)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_the_last_two_steps_add_no_noise():
    rng = np.random.default_rng(1)
    x, eps = (jnp.asarray(rng.normal(size=(2, 5)), jnp.float32) for _ in range(2))
    schedule = schedules.image_schedule(T)
    big = jnp.full((2, 5), 100.0)
    for t in (1, 2):
        np.testing.assert_array_equal(
            process.ddpm_eps_step(schedule, x, t, eps, big),
            process.ddpm_eps_step(schedule, x, t, eps, jnp.zeros((2, 5))),
        )
    moved = process.ddpm_eps_step(schedule, x, 3, eps, big) - process.ddpm_eps_step(
        schedule, x, 3, eps, jnp.zeros((2, 5))
    )
    np.testing.assert_allclose(moved, 100.0 * np.sqrt(_betas(T)[2]), rtol=1e-5)


def _numpy_chain(x_T, eps_fn, betas, model_times, noises):
    """x_0 of the authors' chain; noises[t] is z of step t (t = T..1)."""
    alpha_bars = np.cumprod(1.0 - betas)
    x = np.asarray(x_T, np.float64)
    for t in range(len(betas), 0, -1):
        eps = eps_fn(x, model_times[t])
        x = _paper_step(x, eps, noises[t], betas[t - 1], alpha_bars[t - 1], t)
    return x


def _eps_fn(scale):
    # A denoiser whose noise estimate grows with x: the chain leaves [-1, 1] unless clipped.
    return lambda x, t: scale * x * (1.0 + t / 1000.0)


@pytest.mark.parametrize("steps", [T, 8])
def test_the_chain_is_unclipped_and_respects_respacing(steps):
    schedule = schedules.respace(schedules.image_schedule(T), steps)
    key = jax.random.key(4)
    x_T = 3.0 * jax.random.normal(jax.random.key(5), (4, 6))
    noises = {
        i: np.asarray(jax.random.normal(jax.random.fold_in(key, i), (4, 6)), np.float64)
        for i in range(1, steps + 1)
    }
    # The respaced chain, written from its definition: kept steps s_k of
    # round(linspace(0, T, K + 1)), betas 1 - ab[s_k] / ab[s_{k-1}].
    full_bars = np.cumprod(1.0 - _betas(T))
    kept = np.round(np.linspace(0, T, steps + 1)).astype(int)
    bars = np.concatenate([[1.0], full_bars[kept[1:] - 1]])
    betas = 1.0 - bars[1:] / bars[:-1]
    fn = _eps_fn(-0.2)
    want = _numpy_chain(x_T, fn, betas, kept, noises)
    got = samplers.sample(
        lambda x, t: fn(x, t[:, None]), schedule, x_T, key, "eps", step_rule="paper"
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.abs(want).max() > 1.5  # outside [-1, 1]: nothing clipped it
    clipped = samplers.sample(
        lambda x, t: fn(x, t[:, None]), schedule, x_T, key, "eps", clip_x0=1.0
    )
    assert not np.allclose(clipped, got)


def test_paper_rule_refuses_clipping_and_x0_models():
    schedule = schedules.image_schedule(T)
    x = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match="paper"):
        samplers.sample(
            lambda x, t: x, schedule, x, jax.random.key(0), "eps", 1.0, step_rule="paper"
        )
    with pytest.raises(ValueError, match="paper"):
        samplers.sample(lambda x, t: x, schedule, x, jax.random.key(0), "x0", step_rule="paper")
    with pytest.raises(ValueError, match="step_rule"):
        samplers.sample(lambda x, t: x, schedule, x, jax.random.key(0), "eps", step_rule="ddim")


def _apply(params, x_t, t):
    return params * x_t * (1.0 + t[:, None, None, None] / 1000.0)


def test_coupled_twins_share_x_T_and_step_noise_under_the_paper_rule():
    schedule = schedules.respace(schedules.image_schedule(T), 10)
    key = jax.random.key(7)
    params = jnp.array([-0.1, -0.1, -0.3])
    out = coupled.coupled_samples(
        _apply, params, schedule, (2, 2, 1), 5, key, kind="images", step_rule="paper"
    )
    np.testing.assert_array_equal(out[0], out[1])
    assert not np.allclose(out[0], out[2])
    # Each twin's chain from the shared x_T and per-item, per-step noise.
    ids = jnp.arange(5)
    x_T = samplers.item_normal(jax.random.fold_in(key, 0), ids, (2, 2, 1))
    step_key = jax.random.fold_in(key, 1)
    noises = {
        i: np.asarray(samplers.item_normal(jax.random.fold_in(step_key, i), ids, (2, 2, 1)))
        for i in range(1, 11)
    }
    full_bars = np.cumprod(1.0 - _betas(T))
    kept = np.round(np.linspace(0, T, 11)).astype(int)
    bars = np.concatenate([[1.0], full_bars[kept[1:] - 1]])
    betas = 1.0 - bars[1:] / bars[:-1]
    for k, p in enumerate((-0.1, -0.1, -0.3)):
        want = _numpy_chain(x_T, _eps_fn(p), betas, kept, noises)
        np.testing.assert_allclose(out[k], want, rtol=1e-4, atol=1e-4)

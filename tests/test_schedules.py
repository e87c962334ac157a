"""Tests of the noise schedules against closed forms and float64 numpy."""

import jax
import numpy as np
import pytest

from diffusion_bias.diffusion import schedules


def test_token_schedule_endpoints_match_paper():
    schedule = schedules.token_schedule(500)
    betas = np.asarray(schedule.betas)
    assert schedule.num_steps == 500
    assert betas.shape == (501,)
    assert betas[0] == 0.0
    np.testing.assert_allclose(betas[1], 2e-4, rtol=1e-6)
    np.testing.assert_allclose(betas[500], 0.04, rtol=1e-6)
    np.testing.assert_allclose(np.diff(betas[1:]), (0.04 - 2e-4) / 499, rtol=1e-4)


def test_image_schedule_endpoints_match_ddpm():
    schedule = schedules.image_schedule()
    betas = np.asarray(schedule.betas)
    assert schedule.num_steps == 1000
    np.testing.assert_allclose(betas[[1, 1000]], [1e-4, 0.02], rtol=1e-6)


def test_alpha_bars_equal_float64_cumprod_of_betas():
    schedule = schedules.token_schedule(500)
    betas64 = np.concatenate([[0.0], np.linspace(2e-4, 0.04, 500)])
    np.testing.assert_allclose(schedule.alphas, 1.0 - betas64, rtol=1e-7)
    np.testing.assert_allclose(schedule.alpha_bars, np.cumprod(1.0 - betas64), rtol=1e-6)
    assert schedule.alpha_bars[0] == 1.0


def test_one_minus_alpha_bars_is_accurate_at_small_t():
    schedule = schedules.image_schedule()
    betas64 = np.concatenate([[0.0], np.linspace(1e-4, 0.02, 1000)])
    expected = 1.0 - np.cumprod(1.0 - betas64)
    np.testing.assert_allclose(schedule.one_minus_alpha_bars[1:], expected[1:], rtol=2e-6)
    assert schedule.one_minus_alpha_bars[0] == 0.0


def test_unrespaced_timesteps_are_the_step_indices():
    schedule = schedules.linear_schedule(7, 0.1, 0.2)
    assert schedule.timesteps.dtype == np.int32
    np.testing.assert_array_equal(schedule.timesteps, np.arange(8))


def test_respace_keeps_alpha_bars_at_kept_steps():
    schedule = schedules.image_schedule()
    respaced = schedules.respace(schedule, 50)
    kept = np.asarray(respaced.timesteps)
    assert respaced.num_steps == 50
    assert kept[0] == 0 and kept[-1] == 1000
    assert np.all(np.diff(kept) > 0)
    np.testing.assert_array_equal(kept, np.round(np.linspace(0, 1000, 51)))
    np.testing.assert_allclose(
        respaced.alpha_bars, np.asarray(schedule.alpha_bars)[kept], rtol=1e-5
    )
    # The respaced chain is a DDPM chain: its alpha_bars are the cumprod of its betas.
    np.testing.assert_allclose(
        respaced.alpha_bars, np.cumprod(1.0 - np.asarray(respaced.betas, np.float64)), rtol=1e-5
    )


def test_respace_to_all_steps_is_the_identity():
    schedule = schedules.token_schedule(500)
    same = schedules.respace(schedule, 500)
    np.testing.assert_array_equal(same.betas, schedule.betas)
    np.testing.assert_array_equal(same.timesteps, schedule.timesteps)
    # The float32 betas are the source of the respaced products: 1 ulp apart.
    for name in ("alphas", "alpha_bars"):
        np.testing.assert_allclose(
            getattr(same, name), getattr(schedule, name), rtol=1e-6, err_msg=name
        )


def test_respace_of_respace_composes_timesteps():
    schedule = schedules.image_schedule()
    twice = schedules.respace(schedules.respace(schedule, 100), 10)
    np.testing.assert_array_equal(twice.timesteps, np.arange(0, 1001, 100))
    np.testing.assert_allclose(
        twice.alpha_bars, np.asarray(schedule.alpha_bars)[np.arange(0, 1001, 100)], rtol=1e-5
    )


def test_respace_to_one_step_jumps_straight_to_clean_data():
    schedule = schedules.token_schedule(500)
    one = schedules.respace(schedule, 1)
    np.testing.assert_array_equal(one.timesteps, [0, 500])
    np.testing.assert_allclose(one.alpha_bars[1], schedule.alpha_bars[500], rtol=1e-5)


def test_schedule_is_a_pytree_usable_under_jit():
    schedule = schedules.token_schedule(100)
    leaves = jax.tree_util.tree_leaves(schedule)
    assert len(leaves) == 4

    @jax.jit
    def last_alpha_bar(s):
        return s.alpha_bars[s.num_steps]

    np.testing.assert_allclose(last_alpha_bar(schedule), schedule.alpha_bars[-1])


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: schedules.linear_schedule(0, 0.1, 0.2), "num_steps"),
        (lambda: schedules.linear_schedule(2.5, 0.1, 0.2), "num_steps"),
        (lambda: schedules.linear_schedule(True, 0.1, 0.2), "num_steps"),
        (lambda: schedules.linear_schedule(10, 0.0, 0.2), "beta_start"),
        (lambda: schedules.linear_schedule(10, -0.1, 0.2), "beta_start"),
        (lambda: schedules.linear_schedule(10, 0.1, 1.0), "beta_end"),
        (lambda: schedules.linear_schedule(10, 0.3, 0.2), "beta_start"),
        (lambda: schedules.linear_schedule(10, "a", 0.2), "beta_start"),
        (lambda: schedules.token_schedule(20), "num_steps"),
        (lambda: schedules.token_schedule(-5), "num_steps"),
        (lambda: schedules.image_schedule(0), "num_steps"),
        (lambda: schedules.respace(schedules.token_schedule(100), 101), "num_steps"),
        (lambda: schedules.respace(schedules.token_schedule(100), 0), "num_steps"),
        (lambda: schedules.respace(schedules.token_schedule(100), 10.0), "num_steps"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()

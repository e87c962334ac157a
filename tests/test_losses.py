"""Denoising losses on fixed grids: per draw and averaged, and the exact BP reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_bias.diffusion import denoisers
from diffusion_bias.diffusion import process
from diffusion_bias.diffusion import samplers
from diffusion_bias.diffusion import schedules
from diffusion_bias.exact import grammar as grammar_lib
from diffusion_bias.statistics import losses

SCHEDULE = schedules.token_schedule(50)


def _grammar_items(n=12):
    g = grammar_lib.random_grammar(q=3, depth=2, sigma=1.0, q_eff=2, seed=0)
    return g, np.asarray(grammar_lib.sample(g, n, seed=1))


def test_per_draw_losses_average_to_the_grid_loss():
    g, items = _grammar_items()
    params = (jnp.asarray(g.transitions, jnp.float32), SCHEDULE)
    t, key = losses.loss_grid(jax.random.key(0), len(items), SCHEDULE.num_steps, 5)
    kwargs = dict(kind="tokens", num_symbols=3)
    mean = losses.item_losses(losses.exact_token_apply, params, items, t, key, SCHEDULE, **kwargs)
    each = losses.item_losses(
        losses.exact_token_apply, params, items, t, key, SCHEDULE, per_repeat=True, **kwargs
    )
    assert each.shape == (len(items), 5)
    np.testing.assert_allclose(each.mean(axis=1), mean, rtol=1e-6)


def test_time_grid_puts_every_item_at_each_ratio_of_t():
    grid = np.asarray(losses.time_grid(4, 500, (0.001, 0.1, 0.5, 1.0)))
    assert grid.shape == (4, 4) and (grid == [1, 50, 250, 500]).all()


def test_the_exact_reference_loss_is_the_cross_entropy_of_the_bp_marginals():
    g, items = _grammar_items()
    transitions = jnp.asarray(g.transitions, jnp.float32)
    t = losses.time_grid(len(items), SCHEDULE.num_steps, (0.3,))
    key = jax.random.key(4)
    got = losses.item_losses(
        losses.exact_token_apply,
        (transitions, SCHEDULE),
        items,
        t,
        key,
        SCHEDULE,
        kind="tokens",
        num_symbols=3,
    )
    # The same draw by hand: item i's noise keyed by (key, draw 0, i).
    x0 = jax.nn.one_hot(items, 3)
    noise = samplers.item_normal(jax.random.fold_in(key, 0), jnp.arange(len(items)), x0.shape[1:])
    x_t = process.q_sample(SCHEDULE, x0, t[:, 0], noise)
    marginals = denoisers.exact_denoiser(transitions, SCHEDULE, x_t, t[:, 0])
    want = -np.sum(x0 * np.log(np.clip(marginals, 1e-12, None)), axis=(1, 2)) / items.shape[1]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert want.min() >= 0


@pytest.mark.parametrize("separated", [True, False])
def test_membership_auc_reads_lower_loss_as_member(separated):
    members = np.arange(10.0) - (20 if separated else 0)
    auc = losses.membership_auc(members, np.arange(10.0))
    assert auc == (1.0 if separated else 0.5)

"""twin_steps: the denoising loss a twin's training step minimises."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_bias.diffusion import schedules
from diffusion_bias.training import twin_steps


class _StepOnly(nn.Module):
    """Predicts eps = t everywhere: its loss reveals which steps were drawn."""

    @nn.compact
    def __call__(self, x_t, t, train=False):
        return jnp.zeros_like(x_t) + t.astype(x_t.dtype)[:, None, None, None]


@pytest.mark.parametrize("min_step,expected", [(1, (1 + 1 + 4 + 1) / 2), (2, 4 + 1)])
def test_training_draws_t_from_min_step_to_t_only(min_step, expected):
    # T = 2: E[(t - eps)^2] = t^2 + 1, so t in {1, 2} gives 3.5 and t = 2 alone gives 5.
    x0 = jnp.zeros((20_000, 1, 1, 1))
    loss = twin_steps.denoising_loss(
        {},
        x0,
        jax.random.key(0),
        model=_StepOnly(),
        schedule=schedules.image_schedule(2),
        kind="images",
        train=True,
        min_step=min_step,
    )
    np.testing.assert_allclose(float(loss), expected, rtol=0.03)

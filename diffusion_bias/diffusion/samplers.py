"""Ancestral (DDPM) sampling as one `lax.scan` over the reverse chain.

The noise of step i is `normal(fold_in(key, i))`: it depends on the step and
the key only, never on the model, so twins sampled with the same key and x_T see
identical noise ("coupled sampling").
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_bias import checks
from diffusion_bias.diffusion import process
from diffusion_bias.diffusion.schedules import Schedule

# denoise_fn(x_t [B, ...], t_model [B] int32) -> x0_hat or eps_hat [B, ...].
DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]

PARAMETRIZATIONS = ("x0", "eps")

# "posterior": x_{t-1} ~ q(x_{t-1} | x_t, x0_hat), x0_hat optionally clipped.
# "paper": the authors' image step `process.ddpm_eps_step` (eps models, no clipping).
STEP_RULES = ("posterior", "paper")


def standard_normal(
    key: jax.Array, shape: tuple[int, ...], dtype: jax.typing.DTypeLike = jnp.float32
) -> jax.Array:
    """Equals `jax.random.normal(key, shape, dtype)`, drawn flat and reshaped.

    The values are identical (threefry counts elements in row-major order), but XLA:CPU
    compiles the rank-1 threefry several times faster than the rank-3 one
    (e.g. 0.4 s against 3-4 s for [4, 16, 6]), and the sampler compiles it once
    per denoiser.

    Args:
        key: a PRNG key.
        shape: the output shape.
        dtype: a float dtype.

    Returns:
        Standard normal noise.  # shape
    """
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def item_normal(
    key: jax.Array,
    item_ids: jax.Array,
    shape: tuple[int, ...],
    dtype: jax.typing.DTypeLike = jnp.float32,
) -> jax.Array:
    """Noise of each item from its own key fold_in(key, id): [B, *shape].

    An item's noise then depends on its id only, not on the batch it is drawn
    in, so results do not change with the chunk size of a long sampling job.
    """
    return jax.vmap(lambda i: standard_normal(jax.random.fold_in(key, i), shape, dtype))(item_ids)


def sample(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    x_T: jax.Array,
    key: jax.Array,
    parametrization: str = "x0",
    clip_x0: float | None = None,
    start_step: int | None = None,
    item_ids: jax.Array | None = None,
    step_rule: str = "posterior",
) -> jax.Array:
    """Runs the reverse chain from step `start_step` (default T) down to 0.

    Jit with the Python arguments bound, e.g.
    `jax.jit(functools.partial(sample, fn, parametrization="x0"))`.

    Args:
        denoise_fn: maps (x_t, t_model) to the model output, where t_model =
            `schedule.timesteps[i]` is the (original) time the model was trained on.
            Token models return softmax probabilities (the expected one-hot).
        schedule: the (possibly respaced) schedule.
        x_T: the starting state, x at step `start_step`.  # [B, ...]
        key: base key of the per-step noise.
        parametrization: "x0" (the output is x0_hat) or "eps" (the output is the
            predicted noise, converted with `predict_x0_from_eps`). Static.
        clip_x0: if given, x0_hat is clipped to [-clip_x0, clip_x0]. Static.
        start_step: static step index to start from, 1..T; a state noised to step
            t by `process.q_sample` is denoised back with `start_step=t` (the U-turn).
        item_ids: optional int [B]: draw each item's step noise from its own key
            (see `item_normal`), independent of the batch composition.
        step_rule: "posterior" (the posterior q(x_{t-1} | x_t, x0_hat)) or "paper"
            (`process.ddpm_eps_step`: eps models only, no clipping, no noise on
            the last two steps). With a respaced schedule "paper" uses the
            respaced betas, a valid DDPM chain; the paper's own is the full one.
            Static.

    Returns:
        x_0, the noise-free output of the last (t=1) step.  # [B, ...]

    Raises:
        ValueError: on an unknown parametrization or step rule, start_step out of
            range, or the "paper" rule with x0 models or clipping.
    """
    start = _check_sample_arguments(
        parametrization, step_rule, clip_x0, start_step, schedule.num_steps
    )

    def step(x_t, i):
        x_prev = reverse_step(
            denoise_fn, schedule, x_t, i, key, parametrization, clip_x0, item_ids, step_rule
        )
        return x_prev, None

    x0, _ = jax.lax.scan(step, x_T, jnp.arange(start, 0, -1, dtype=jnp.int32))
    return x0


def _check_sample_arguments(parametrization, step_rule, clip_x0, start_step, num_steps):
    """The first step of the chain, 1..num_steps; ValueError on a bad argument of `sample`."""
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(
            f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}."
        )
    if step_rule not in STEP_RULES:
        raise ValueError(f"step_rule must be one of {STEP_RULES}, got {step_rule!r}.")
    if step_rule == "paper" and (parametrization != "eps" or clip_x0 is not None):
        raise ValueError(
            "step_rule 'paper' needs parametrization 'eps' and no clip_x0 (it never "
            f"forms x0_hat), got {parametrization!r} and clip_x0={clip_x0!r}."
        )
    start = num_steps if start_step is None else start_step
    if not checks.is_int(start) or not 1 <= start <= num_steps:
        raise ValueError(f"start_step must be an integer in 1..{num_steps}, got {start_step!r}.")
    return start


def reverse_step(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    x_t: jax.Array,
    i: jax.Array,
    key: jax.Array,
    parametrization: str = "x0",
    clip_x0: float | None = None,
    item_ids: jax.Array | None = None,
    step_rule: str = "posterior",
) -> jax.Array:
    """One step x_t -> x_{t-1} of the chain `sample` scans: the body of its loop.

    Public for what runs the chain one step at a time (`benchmarks/sampling.py`'s
    per-step baseline). The arguments are `sample`'s, checked there, not here.

    Args:
        denoise_fn, schedule, key, parametrization, clip_x0, item_ids, step_rule:
            as in `sample`.
        x_t: the state at step i.  # [B, ...]
        i: the step index in 1..T, int32.  # []

    Returns:
        x_{t-1}.  # [B, ...]
    """
    batch = x_t.shape[0]
    t = jnp.full((batch,), i, jnp.int32)
    t_model = jnp.broadcast_to(schedule.timesteps[i], (batch,)).astype(jnp.int32)
    output = denoise_fn(x_t, t_model)
    if item_ids is None:
        noise = standard_normal(jax.random.fold_in(key, i), x_t.shape, x_t.dtype)
    else:
        noise = item_normal(jax.random.fold_in(key, i), item_ids, x_t.shape[1:], x_t.dtype)
    if step_rule == "paper":
        return process.ddpm_eps_step(schedule, x_t, t, output.astype(x_t.dtype), noise)
    if parametrization == "eps":
        x0_hat = process.predict_x0_from_eps(schedule, x_t, t, output)
    else:
        x0_hat = output
    if clip_x0 is not None:
        x0_hat = jnp.clip(x0_hat, -clip_x0, clip_x0)
    return process.ddpm_step(schedule, x_t, t, x0_hat.astype(x_t.dtype), noise)

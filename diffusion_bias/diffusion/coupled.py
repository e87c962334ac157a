"""Coupled sampling: every twin starts from the same x_T and sees the same noise.

While twins generalise, they map the same noise to nearly the same sample;
bias makes them drift apart, each toward its own training set. Item j's start
and step noise come from keys folded with j, so a sample does not depend on
the chunk it was drawn in, and sample j of one checkpoint is coupled to sample
j of every other checkpoint too.
"""

from collections.abc import Callable, Sequence
import functools
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_bias import chunking
from diffusion_bias import setting as setting_lib
from diffusion_bias.diffusion import samplers


def denoiser(model: nn.Module, kind: str) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """fn(params, x_t, t) -> the model's E[x0 | x_t] (tokens) or predicted noise.

    Args:
        model: a linen module of `diffusion_bias.models`.
        kind: "tokens" (x0-logits, returned as probabilities) or "images" (eps).
    """

    setting = setting_lib.of(kind)

    def fn(params, x_t, t):
        out = model.apply({"params": params}, x_t, t, train=False)
        return setting.denoiser_output(out)

    return fn


@functools.partial(
    jax.jit,
    static_argnames=(
        "apply_fn",
        "item_shape",
        "parametrization",
        "clip_x0",
        "twin_strategy",
        "step_rule",
    ),
)
def _chunk(
    stacked_params,
    item_ids,
    key,
    schedule,
    *,
    apply_fn,
    item_shape,
    parametrization,
    clip_x0,
    twin_strategy,
    step_rule,
):
    """[K, B, *item_shape] final x0 of the items `item_ids` for every twin."""
    x_T = samplers.item_normal(jax.random.fold_in(key, 0), item_ids, item_shape)

    def one(params):
        return samplers.sample(
            functools.partial(apply_fn, params),
            schedule,
            x_T,
            jax.random.fold_in(key, 1),
            parametrization,
            clip_x0=clip_x0,
            item_ids=item_ids,
            step_rule=step_rule,
        )

    if twin_strategy == "vmap":
        return jax.vmap(one)(stacked_params)
    return jax.lax.map(one, stacked_params)


def coupled_samples(
    apply_fn: Callable[[Any, jax.Array, jax.Array], jax.Array],
    stacked_params: Any,
    schedule: samplers.Schedule,
    item_shape: Sequence[int],
    num_samples: int,
    key: jax.Array,
    *,
    kind: str,
    twin_strategy: str = "vmap",
    chunk_size: int = 1000,
    clip_x0: float | None = None,
    step_rule: str = "posterior",
) -> np.ndarray:
    """Draws `num_samples` coupled samples from each of K twins.

    Args:
        apply_fn: fn(params, x_t, t) from `denoiser` (hashable: build it once).
        stacked_params: the twins' parameters, leading axis [K].
        schedule: the (respaced) sampling schedule.
        item_shape: shape of one sample, e.g. (L, q) or (H, W, C).
        num_samples: N.
        key: the coupling key; the same key couples samples across checkpoints.
        kind: "tokens" (returns argmax tokens) or "images".
        twin_strategy: "vmap" or "map".
        chunk_size: samples per compiled call.
        clip_x0: clip the predicted x0 of eps models to [-clip_x0, clip_x0].
        step_rule: the reverse step, "posterior" or "paper" (images; see
            `samplers.sample`).

    Returns:
        numpy [K, N, L] int32 tokens or [K, N, H, W, C] float32 images.
    """
    setting = setting_lib.of(kind)
    chunks = []
    ids = np.arange(num_samples, dtype=np.int32)
    for chunk_ids in chunking.padded_chunks(ids, min(chunk_size, num_samples)):
        x0 = _chunk(
            stacked_params,
            jnp.asarray(chunk_ids),
            key,
            schedule,
            apply_fn=apply_fn,
            item_shape=tuple(item_shape),
            parametrization=setting.parametrization,
            clip_x0=clip_x0,
            twin_strategy=twin_strategy,
            step_rule=step_rule,
        )
        chunks.append(setting.decode(x0))
    return chunking.gather(chunks, num_samples, axis=1)

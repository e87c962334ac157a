"""Denoising losses on a fixed grid, and membership inference from them.

The grid fixes, for every item, `repeats` diffusion times and noises from one
key, so the losses of successive checkpoints differ only by the parameters.
"""

import functools
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from diffusion_bias import chunking
from diffusion_bias import setting as setting_lib
from diffusion_bias.diffusion import denoisers
from diffusion_bias.diffusion import process
from diffusion_bias.diffusion import samplers


def every_step_grid(num_items: int, num_steps: int) -> jax.Array:
    """int32 [num_items, T]: every step 1..T once for each item (the authors' image test loss)."""
    return jnp.broadcast_to(jnp.arange(1, num_steps + 1, dtype=jnp.int32), (num_items, num_steps))


def loss_grid(
    key: jax.Array, num_items: int, num_steps: int, repeats: int
) -> tuple[jax.Array, jax.Array]:
    """Fixed diffusion times int32 [num_items, repeats] in 1..T, and noise key."""
    t = jax.random.randint(jax.random.fold_in(key, 0), (num_items, repeats), 1, num_steps + 1)
    return t, jax.random.fold_in(key, 1)


@functools.partial(jax.jit, static_argnames=("apply_fn", "kind", "num_symbols", "per_repeat"))
def _item_losses(
    params, items, item_ids, t, noise_key, schedule, *, apply_fn, kind, num_symbols, per_repeat
):
    """Per-item loss [B] averaged over its repeats ([B, R] if `per_repeat`); t [B, R]."""

    def one_repeat(r):
        tr = t[:, r]
        setting = setting_lib.of(kind)
        clean = setting.encode(items, num_symbols)
        noise = samplers.item_normal(jax.random.fold_in(noise_key, r), item_ids, clean.shape[1:])
        x_t = process.q_sample(schedule, clean, tr, noise)
        return setting.item_loss(apply_fn(params, x_t, tr), clean, noise)

    values = jax.lax.map(one_repeat, jnp.arange(t.shape[1]))  # [R, B]
    return values.T if per_repeat else values.mean(axis=0)


def item_losses(
    apply_fn: Callable[[Any, jax.Array, jax.Array], jax.Array],
    params: Any,
    items: np.ndarray,
    t: np.ndarray | jax.Array,
    noise_key: jax.Array,
    schedule: Any,
    *,
    kind: str,
    num_symbols: int | None = None,
    chunk_size: int = 512,
    per_repeat: bool = False,
) -> np.ndarray:
    """Denoising loss of one model on each item, on the fixed grid.

    Args:
        apply_fn: fn(params, x_t, t) from `coupled.denoiser`.
        params: one model's parameters.
        items: [M, ...] int tokens or images.
        t: int [M, R] times of the grid (`loss_grid`).
        noise_key: the grid's noise key; item i's noise depends on i only.
        schedule: the training schedule.
        kind: "tokens" (cross-entropy, mean per token) or "images" (noise MSE).
        num_symbols: q, for tokens.
        per_repeat: keep each (t, noise) draw apart instead of their mean.

    Returns:
        numpy float [M], or [M, R] with `per_repeat`.
    """
    out = []
    num = len(items)
    for idx in chunking.padded_chunks(np.arange(num), min(chunk_size, num)):
        out.append(
            _item_losses(
                params,
                jnp.asarray(items[idx]),
                jnp.asarray(idx),
                t[idx],
                noise_key,
                schedule,
                apply_fn=apply_fn,
                kind=kind,
                num_symbols=num_symbols,
                per_repeat=per_repeat,
            )
        )
    return chunking.gather(out, num)


def time_grid(num_items: int, num_steps: int, ratios: Sequence[float] | ArrayLike) -> jax.Array:
    """Every item at the same diffusion times: int32 [num_items, S], t = round(r * T) >= 1.

    With `item_losses(..., per_repeat=True)` it gives each item's loss at each
    time of `ratios` (t/T), one noise draw per item and time.
    """
    steps = np.maximum(1, np.round(np.asarray(ratios, np.float64) * num_steps)).astype(np.int32)
    return jnp.asarray(np.broadcast_to(steps, (num_items, len(steps))))


def exact_token_apply(params: tuple[jax.Array, Any], x_t: jax.Array, t: jax.Array) -> jax.Array:
    """The exact BP denoiser with the contract of `coupled.denoiser`: params = (M, schedule).

    A reference model that knows the grammar and nothing of any training set:
    `item_losses` with it gives the exact denoiser's loss of each item on the
    same (t, noise) grid as a twin's.
    """
    transitions, schedule = params
    return denoisers.exact_denoiser(transitions, schedule, x_t, t)


def membership_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """ROC AUC of "lower loss means a training member" (0.5 = no leak)."""
    # Imported here: scikit-learn takes a second to import, which every program
    # importing this module (launchers checking a config) would otherwise pay.
    from sklearn import metrics

    labels = np.r_[np.ones(len(member_losses)), np.zeros(len(nonmember_losses))]
    return float(metrics.roc_auc_score(labels, -np.r_[member_losses, nonmember_losses]))

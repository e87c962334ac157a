"""The snapshot probe: what the analysis and the bias monitor both measure at a snapshot.

The K twins' coupled samples (sample j shares x_T and the step noise across
twins and across snapshots), their similarity across twin pairs and their
nearest neighbours, and each twin's denoising loss on a fixed (item, t, noise)
grid on held-out items, its own training items and its partner's (twin
(k + 1) mod K). The analysis (`measure.Instrument`) probes with the
protocol's settings and adds its costlier statistics; the bias monitor
(`monitor.BiasMonitor`) probes with cheap ones (fewer samples, a short chain)
inside the training loop. A statistic both read is computed here, once.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_bias import setting as setting_lib
from diffusion_bias.data import sources
from diffusion_bias.diffusion import coupled
from diffusion_bias.diffusion.schedules import Schedule
from diffusion_bias.statistics import losses
from diffusion_bias.statistics import nearest
from diffusion_bias.statistics import sample_split


class Probe:
    """What stays fixed across snapshots: the data, the coupled noise, the loss grid.

    Twin k lives in its own space, the items minus `offsets[k]` (its centring
    shift, images): its losses are taken there (held-out and partner items
    shifted by the same offset, as the paper's authors transform a split's test
    set); its samples are mapped back (plus offsets[k]) so that they, `train`
    and `heldout` compare in one common space, the items as drawn.

    Args:
        apply_fn: fn(params, x_t [B, ...], t [B]) -> predicted noise (images)
            or x0 probabilities (tokens), for one twin's params
            (`coupled.denoiser`). Built once: it is a static argument of the
            compiled sampler.
        schedule: the training schedule (T steps), the loss grid's.
        sampling: the schedule the reverse chain runs on (`schedule`, or a
            respacing of it).
        kind: "images" or "tokens".
        train: [K, n, ...] the twins' training sets as drawn (images float
            [K, n, H, W, C], tokens int [K, n, L]).
        heldout: [m, ...] held-out items as drawn: the reference of the
            nearest-neighbour distances and the items of the test loss.
        key: a JAX key; fold 0 draws the coupled noise, fold 1 the loss grid.
        num_samples: N, coupled samples per twin.
        loss_items: own (and partner) items per twin on the loss grid (at most n).
        loss_repeats: (t, noise) draws per item on the grid.
        offsets: images: [K, C] twin k's shift, or None (tokens, or no centring).
        num_symbols: tokens: q.
        clip_x0, step_rule, twin_strategy: as `coupled.coupled_samples` (clip_x0
            applies to eps models only: tokens' x0 models ignore it).
        seeds_per_split: S, models a split (`config.splits.seeds_per_split`):
            model k trains on split k // S, its partner is `sample_split.partner`.
    """

    def __init__(
        self,
        apply_fn,
        schedule: Schedule,
        sampling: Schedule,
        kind: str,
        train,
        heldout,
        *,
        key: jax.Array,
        num_samples: int,
        loss_items: int,
        loss_repeats: int,
        offsets=None,
        num_symbols: int | None = None,
        clip_x0: float | None = None,
        step_rule: str = "posterior",
        twin_strategy: str = "vmap",
        seeds_per_split: int = 1,
    ):
        self.apply_fn, self.schedule, self.sampling, self.kind = apply_fn, schedule, sampling, kind
        self.train, self.heldout = np.asarray(train), np.asarray(heldout)
        self.offsets = offsets
        self.num_samples, self.num_symbols = num_samples, num_symbols
        self.clip_x0, self.step_rule, self.twin_strategy = clip_x0, step_rule, twin_strategy
        num_twins, n_items = len(self.train), min(loss_items, self.train.shape[1])
        self.seeds_per_split = seeds_per_split
        partner = sample_split.partner(num_twins, seeds_per_split)
        # [K, n'] each twin's own items and its partner's, in that twin's space.
        self.own_items = np.stack(
            [np.asarray(self.in_twin_space(self.train[k, :n_items], k)) for k in range(num_twins)]
        )
        self.partner_items = np.stack(
            [
                np.asarray(self.in_twin_space(self.train[partner[k], :n_items], k))
                for k in range(num_twins)
            ]
        )
        self.sample_key = jax.random.fold_in(key, 0)
        self.loss_t, self.loss_noise = losses.loss_grid(
            jax.random.fold_in(key, 1),
            max(n_items, len(self.heldout)),
            schedule.num_steps,
            loss_repeats,
        )
        # What the sampler draws: one-hot sequences [L, q] for tokens, the images' shape.
        self.setting = setting_lib.of(kind)
        self.item_shape = self.setting.sample_shape(self.train.shape[2:], num_symbols)

    def in_twin_space(
        self, items: np.ndarray | jax.Array, k: int, scale: float = 1.0
    ) -> np.ndarray | jax.Array:
        """Items of the common space as twin k sees them: minus scale * offsets[k].

        `scale` = sqrt(alpha_bar_t) shifts noisy items x_t (the offset scales with x_0).
        """
        if self.offsets is None or not np.any(self.offsets[k]):
            return items
        return items - scale * jnp.asarray(self.offsets[k], items.dtype)

    def to_common_space(self, samples: np.ndarray) -> np.ndarray:
        """[K, N, ...] samples of each twin's space plus that twin's offset."""
        if self.offsets is None or not np.any(self.offsets):
            return samples
        shift = sources.twin_offsets(self.offsets, samples.ndim)
        return (samples + shift).astype(samples.dtype)

    def losses_of(
        self,
        params: Any,
        items: np.ndarray,
        apply_fn: Callable[[Any, jax.Array, jax.Array], jax.Array] | None = None,
    ) -> np.ndarray:
        """[B] per-item losses of one twin on items of its own space, on the loss grid."""
        return losses.item_losses(
            apply_fn or self.apply_fn,
            params,
            items,
            self.loss_t[: len(items)],
            self.loss_noise,
            self.schedule,
            kind=self.kind,
            num_symbols=self.num_symbols,
        )

    def samples(self, stacked: Any) -> np.ndarray:
        """[K, N, ...] the twins' coupled samples, in the common space."""
        samples = coupled.coupled_samples(
            self.apply_fn,
            stacked,
            self.sampling,
            self.item_shape,
            self.num_samples,
            self.sample_key,
            kind=self.kind,
            twin_strategy=self.twin_strategy,
            clip_x0=self.clip_x0 if self.setting.parametrization == "eps" else None,
            step_rule=self.step_rule,
        )
        return samples if self.setting.discrete else self.to_common_space(samples)

    def measure(self, stacked: Any) -> tuple[dict[str, np.ndarray], np.ndarray, list[Any]]:
        """The probe's statistics of one snapshot.

        Args:
            stacked: the K twins' parameters, stacked on a leading axis.

        Returns:
            (statistics, samples [K, N, ...] in the common space, [K] per-twin
            params). statistics, numpy: similarity [P, N] (twin pairs P = K(K-1)/2),
            `nearest.nearest_statistics` (own_d1, own_d2, own_index, other_d1
            [K, N]; heldout_d1, heldout_d2 [K, m]; ...), test_losses [K, m],
            train_losses [K, n'] and partner_losses [K, n'] (twin k on the
            items of its partner, `sample_split.partner`).
        """
        params = [jax.tree.map(lambda x, k=k: x[k], stacked) for k in range(len(self.train))]
        samples = self.samples(stacked)
        out = dict(similarity=sample_split.pair_similarity(samples, self.kind))
        out.update(
            nearest.nearest_statistics(
                samples, self.train, self.heldout, self.kind, self.seeds_per_split
            )
        )
        out["test_losses"] = np.stack(
            [
                self.losses_of(p, np.asarray(self.in_twin_space(self.heldout, k)))
                for k, p in enumerate(params)
            ]
        )
        out["train_losses"] = np.stack(
            [self.losses_of(p, items) for p, items in zip(params, self.own_items)]
        )
        out["partner_losses"] = np.stack(
            [self.losses_of(p, items) for p, items in zip(params, self.partner_items)]
        )
        return out, samples, params

"""The instrument: what the analysis computes at one snapshot.

Built once per analysis (data, loss grid, compiled samplers and denoisers);
`Instrument.compute(snapshot)` draws the twins' coupled samples and evaluates
every statistic of `statistics/` on them, returning the per-snapshot arrays
that `analysis` caches and `summary` turns into curves and the verdict.
"""

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_bias import run as run_lib
from diffusion_bias import setting as setting_lib
from diffusion_bias.config import config_checks
from diffusion_bias.diffusion import coupled
from diffusion_bias.diffusion import process
from diffusion_bias.diffusion import samplers
from diffusion_bias.diffusion import schedules
from diffusion_bias.instrument import probe as probe_lib
from diffusion_bias.instrument import record as record_lib
from diffusion_bias.statistics import controlled
from diffusion_bias.statistics import kl_bp
from diffusion_bias.statistics import loss_decomposition
from diffusion_bias.statistics import losses
from diffusion_bias.statistics import quality
from diffusion_bias.statistics import score_cosine
from diffusion_bias.statistics import uturn


def sampling_schedule(
    schedule: schedules.Schedule, sampling_steps: int | None
) -> schedules.Schedule:
    """The schedule the coupled samples run on.

    Args:
        schedule: the training schedule (T steps).
        sampling_steps: 0 or None for the full chain of T steps (the paper's
            protocol); else a respacing to min(sampling_steps, T) steps (the
            config check owns the rule: a non-negative integer, at most T).
    """
    if not sampling_steps:
        return schedule
    return schedules.respace(schedule, min(sampling_steps, schedule.num_steps))


class Instrument:
    """What stays fixed across snapshots: the probe (data, coupled noise, loss
    grid, in `probe.Probe`), the analysis' other grids, compiled functions.

    Images: twin k lives in its own space, the items minus `offsets[k]` (its
    centring shift); see `probe.Probe`.
    """

    def __init__(self, config, workdir):
        run = run_lib.prepare(config, workdir)
        self.config, self.a = config, config.analysis
        self.kind, self.model, self.schedule = run.kind, run.model, run.schedule
        self.setting = setting_lib.of(self.kind)
        self.train = np.asarray(run.twin_data.train)  # [K, n, ...] common space
        self.heldout = np.asarray(run.twin_data.heldout)  # [m, ...] common space
        self.offsets = run.offsets  # [K, C] images, None for tokens
        # One offset for every twin's evaluation inputs (analysis.eval_centering "common").
        self.eval_offset = None
        if not self.setting.discrete and self.a.eval_centering == "common":
            items = run.pool.items[: self.a.eval_centering_items or None]
            self.eval_offset = items.mean(axis=(0, 1, 2), dtype=np.float64)  # [C], no copy
        self.grammar = run.pool.grammar
        self.q = self.grammar.q if self.setting.discrete else None
        self.apply_fn = coupled.denoiser(self.model, self.kind)
        self.apply_jit = jax.jit(self.apply_fn)
        self.sampling = sampling_schedule(self.schedule, self.a.sampling_steps)
        key = jax.random.key(self.a.seed)
        paper_step = self.setting.parametrization == "eps" and self.a.image_sampler == "paper"
        self.probe = probe_lib.Probe(
            self.apply_fn,
            self.schedule,
            self.sampling,
            self.kind,
            self.train,
            self.heldout,
            key=key,
            num_samples=self.a.num_samples,
            loss_items=self.a.loss_items,
            loss_repeats=self.a.loss_repeats,
            offsets=self.offsets,
            num_symbols=self.q,
            clip_x0=None if paper_step else self.a.clip_x0 or None,
            step_rule="paper" if paper_step else "posterior",
            twin_strategy=config.training.twin_strategy,
            seeds_per_split=config_checks.seeds_per_split(config),
        )
        self.train_items = self.probe.own_items  # [K, n'] each twin's own space
        self.item_shape = self.probe.item_shape
        self.score_key = jax.random.fold_in(key, 2)
        self.stat_key = jax.random.fold_in(key, 3)
        # Membership scores: every item at each time of a grid (t/T = privacy_times).
        n_items = self.train_items.shape[1]
        self.privacy_t = losses.time_grid(
            max(n_items, len(self.heldout)), self.schedule.num_steps, self.a.privacy_times
        )
        self.privacy_noise = jax.random.fold_in(key, 4)
        # The verdict's test loss at every step (analysis.test_loss_every_step).
        self.every_step_t = None
        if self.a.test_loss_every_step:
            m = min(self.a.test_loss_items or len(self.heldout), len(self.heldout))
            self.every_step_t = losses.every_step_grid(m, self.schedule.num_steps)
            self.every_step_noise = jax.random.fold_in(key, 5)
        self._bp_losses = None
        self._bp_uturn = None  # exact BP's U-turn overlaps, the same at every snapshot
        self._random_baselines = None  # BP_k and memorising overlaps on random sequences
        self._exact_bp_along_t = None  # KL(BP_0 || BP_k) along t, the same at every snapshot
        canary = run.twin_data.splits.canary_twin  # [n] with splits.assignment = "coin"
        self.canary_twin = None if canary is None else canary[:n_items]
        labels = run.pool.labels
        self.classifier = None
        if not self.setting.discrete and labels is not None:
            # Sample quality: a classifier of the held-out items (never the training sets).
            held_labels = labels[run.twin_data.splits.heldout]
            self.classifier = quality.fit_classifier(self.heldout, held_labels)

    def in_twin_space(
        self, items: np.ndarray | jax.Array, k: int, scale: float = 1.0
    ) -> np.ndarray | jax.Array:
        """`probe.Probe.in_twin_space`."""
        return self.probe.in_twin_space(items, k, scale)

    def in_eval_space(
        self, items: np.ndarray | jax.Array, k: int, scale: float = 1.0
    ) -> np.ndarray | jax.Array:
        """Evaluation inputs as twin k is shown them: its own space (`in_twin_space`), or
        the common offset's (analysis.eval_centering "common", the same for every twin)."""
        if self.eval_offset is None:
            return self.in_twin_space(items, k, scale)
        return items - scale * jnp.asarray(self.eval_offset, items.dtype)

    def losses_of(
        self,
        params: Any,
        items: np.ndarray,
        apply_fn: Callable[[Any, jax.Array, jax.Array], jax.Array] | None = None,
    ) -> np.ndarray:
        """[B] per-item losses of one twin on items of its own space, on the loss grid."""
        return self.probe.losses_of(params, items, apply_fn)

    def losses_at_times(self, params: Any, items: np.ndarray) -> np.ndarray:
        """[S, B] losses of one twin on items of its own space at each time of the privacy grid."""
        return losses.item_losses(
            self.apply_fn,
            params,
            items,
            self.privacy_t[: len(items)],
            self.privacy_noise,
            self.schedule,
            kind=self.kind,
            num_symbols=self.q,
            per_repeat=True,
        ).T

    def every_step_losses(self, params: Sequence[Any]) -> np.ndarray:
        """[K, m'] each twin's mean loss over every step 1..T, one noise draw a step,
        on the first m' held-out items in its evaluation space (`in_eval_space`)."""
        held = self.heldout[: len(self.every_step_t)]
        return np.stack(
            [
                losses.item_losses(
                    self.apply_fn,
                    p,
                    np.asarray(self.in_eval_space(held, k)),
                    self.every_step_t,
                    self.every_step_noise,
                    self.schedule,
                    kind=self.kind,
                    num_symbols=self.q,
                )
                for k, p in enumerate(params)
            ]
        )

    def membership_losses(self, params: Sequence[Any]) -> dict[str, np.ndarray]:
        """Each twin's losses on its own items, its partner's (twin k + 1 mod K) and the held-out
        items at each time of the privacy grid (`statistics.privacy`); tokens: exact BP's losses."""
        out = {}
        for k, p in enumerate(params):
            heldout = np.asarray(self.in_twin_space(self.heldout, k))
            for name, items in (
                ("own", self.train_items[k]),
                ("partner", self.probe.partner_items[k]),
                ("heldout", heldout),
            ):
                out.setdefault(f"{name}_losses_t", []).append(self.losses_at_times(p, items))
        out = {name: np.stack(v) for name, v in out.items()}
        if self.canary_twin is not None:
            out["canary_twin"] = self.canary_twin
        if self.setting.exact_reference:
            out.update(self.bp_losses())
        return out

    def bp_losses(self) -> dict[str, np.ndarray]:
        """Tokens: the exact BP denoiser's losses on the loss grid, own items [K, n], held-out [m].

        The same at every snapshot: computed once.
        """
        if self._bp_losses is None:
            bp_params = (jnp.asarray(self.grammar.transitions, jnp.float32), self.schedule)
            exact = losses.exact_token_apply
            self._bp_losses = dict(
                bp_own_losses=np.stack(
                    [self.losses_of(bp_params, items, exact) for items in self.train_items]
                ),
                bp_heldout_losses=self.losses_of(bp_params, self.heldout, exact),
            )
        return self._bp_losses

    def compute(self, snapshot: Any) -> record_lib.SnapshotRecord:
        """The snapshot's record: the probe's arrays (`probe.Probe.measure`), the
        membership losses, then those of the kind."""
        out, samples, params = self.probe.measure(snapshot.evaluated_params())
        num_twins = len(params)
        out.update(self.membership_losses(params))
        if self.every_step_t is not None:
            out["test_losses_every_step"] = self.every_step_losses(params)
        if self.classifier is not None:
            out["quality"] = np.stack(
                [quality.classifier_confidence(self.classifier, x) for x in samples]
            )  # [K, N]
        if not self.setting.discrete:
            out["score_cosine_heldout"], out["score_cosine_train"] = self._score_cosines(params)
            e = min(8, self.a.num_samples)
            out["example_samples"] = samples[:, :e]
            out["example_nearest"] = np.stack(
                [self.train[k][out["own_index"][k, :e]] for k in range(num_twins)]
            )
        else:
            out.update(self._token_statistics(params, samples))
        return record_lib.SnapshotRecord.from_arrays(out)

    def twin_denoisers(self, stacked: Any) -> list[jax.tree_util.Partial]:
        """Twin k's denoiser per twin, its params bound in a Partial.

        A Partial keeps the parameters traced: one compilation for all snapshots.
        """
        return [
            jax.tree_util.Partial(self.apply_fn, jax.tree.map(lambda x, k=k: x[k], stacked))
            for k in range(self.train.shape[0])
        ]

    def _score_cosines(self, params):
        """[P, T] twin-pair cosine of predicted noise, held-out and own-train inputs."""

        def noisy(items, t):
            items = jnp.asarray(items)
            tt = jnp.full((len(items),), t)
            noise = samplers.item_normal(
                jax.random.fold_in(self.score_key, t), jnp.arange(len(items)), items.shape[1:]
            )
            return process.q_sample(self.schedule, items, tt, noise), tt

        heldout, train_ = [], []
        # score_items of each (0: every held-out item and the loss grid's training items).
        m = self.a.score_items or len(self.heldout)
        n_items = self.a.score_items or self.train_items.shape[1]
        for t in self.a.score_times:
            # Noised in the common space, then shifted into each twin's evaluation space.
            scale = float(np.sqrt(self.schedule.alpha_bars[t]))
            x_t, tt = noisy(self.heldout[:m], t)
            eps = [
                self.apply_jit(p, self.in_eval_space(x_t, k, scale), tt)
                for k, p in enumerate(params)
            ]
            heldout.append(score_cosine.pair_cosines(eps))
            # eps[own][k]: twin k on twin `own`'s training images, each computed once.
            own_inputs = [noisy(items[:n_items], t) for items in self.train]
            eps = [
                [
                    self.apply_jit(p, self.in_eval_space(x, k, scale), tt)
                    for k, p in enumerate(params)
                ]
                for x, tt in own_inputs
            ]
            train_.append(score_cosine.own_inputs_pair_cosines(eps))
        return np.asarray(heldout).T, np.asarray(train_).T

    def _token_statistics(self, params, samples):
        transitions = jnp.asarray(self.grammar.transitions, jnp.float32)
        out = {}
        out["grammatical"] = np.array(
            [controlled.grammatical_fraction(transitions, s) for s in samples]
        )
        t_crit = max(1, int(round(self.a.critical_ratio * self.schedule.num_steps)))
        # kl_items held-out sequences, each noised kl_repeats times (rows draw their own noise).
        kl_x0 = np.tile(self.heldout[: self.a.kl_items], (self.a.kl_repeats, 1))
        x0 = jax.nn.one_hot(kl_x0, self.q)
        noise = samplers.item_normal(self.stat_key, jnp.arange(len(kl_x0)), x0.shape[1:])
        tt = jnp.full((len(kl_x0),), t_crit)
        x_t = process.q_sample(self.schedule, x0, tt, noise)
        # Per pair and sequence, summed over the L tokens (as the paper).
        out["twin_kl"] = controlled.twin_sequence_kl([self.apply_jit(p, x_t, tt) for p in params])
        fns = [jax.tree_util.Partial(self.apply_fn, p) for p in params]
        kl = kl_bp.twin_kl_bp(fns, transitions, self.schedule, kl_x0, [t_crit], self.stat_key)
        out["kl_bp"] = kl[:, :, 0]  # [K, depth + 1]
        # Every training item (0), or the first decomposition_items, and as many held out.
        items = self.a.decomposition_items or self.train.shape[1]
        # t/T = 0.3 (the paper's panel), then the grid whose mean is the average over t.
        grid = loss_decomposition.decomposition_steps(
            self.schedule.num_steps, self.a.decomposition_times
        )
        out["decomposition"], out["decomposition_mean_t"] = (
            loss_decomposition.twin_loss_decomposition(
                fns,
                transitions,
                self.schedule,
                self.train[:, :items],
                self.heldout[:items],
                max(1, int(round(0.3 * self.schedule.num_steps))),
                grid,
                self.stat_key,
            )
        )  # [K, 4] each: at t/T = 0.3, mean over t
        out["decomposition_steps"] = np.asarray(grid)
        return out

    def uturn(self, snapshot: Any) -> dict[str, np.ndarray]:
        """U-turn ratios model / exact BP, [K, R] on own training and on held-out sequences.

        Exact BP's overlaps depend on no model: computed at the first snapshot, reused.
        """
        a = self.a
        args = (
            jnp.asarray(self.grammar.transitions, jnp.float32),
            self.schedule,
            self.train[:, : a.uturn_items],
            self.heldout[: a.uturn_items],
            a.uturn_ratios,
            self.stat_key,
            a.uturn_repeats,
        )
        if self._bp_uturn is None:
            self._bp_uturn = uturn.twin_bp_overlaps(*args)
        fns = self.twin_denoisers(snapshot.evaluated_params())
        return uturn.twin_uturn_ratios(fns, *args, bp=self._bp_uturn)

    def uturn_random(self, snapshot: Any) -> dict[str, np.ndarray]:
        """The U-turn on uniform random sequences (the paper's Fig. 11): overlaps with x_0.

        Returns:
            overlaps per ratio and sequence: model [K, R, N] (each twin),
            memorizing [K, R, N] (each twin's empirical-score denoiser of its
            first memorizing_items training sequences), bp [depth + 1, R, N]
            (BP_k, k = 0..depth). The baselines depend on no snapshot: computed
            once, reused.
        """
        a = self.a
        transitions = jnp.asarray(self.grammar.transitions, jnp.float32)
        key = jax.random.fold_in(self.stat_key, 1)
        x0 = uturn.random_sequences(
            jax.random.fold_in(key, 0), a.uturn_random_items, self.train.shape[-1], self.q
        )
        args = (transitions, self.schedule, x0, a.uturn_random_ratios, jax.random.fold_in(key, 1))
        if self._random_baselines is None:
            bp_k = [
                controlled.bp_k_token_denoiser(transitions, self.schedule, k)
                for k in range(self.grammar.depth + 1)
            ]
            memorizing = [
                controlled.memorizing_token_denoiser(
                    items[: a.memorizing_items], self.q, self.schedule
                )
                for items in self.train
            ]
            self._random_baselines = dict(
                bp=uturn.overlaps_on(bp_k, *args), memorizing=uturn.overlaps_on(memorizing, *args)
            )
        fns = self.twin_denoisers(snapshot.evaluated_params())
        return dict(self._random_baselines, model=uturn.overlaps_on(fns, *args))

    def kl_along_t(self, snapshot: Any) -> dict[str, np.ndarray]:
        """Score divergences along t on held-out sequences, the same x_t for all.

        Returns:
            values [twins, k, R] KL(BP_k || model), k = 0..depth; exact_bp
            [depth, R] KL(BP_0 || BP_k), k = 1..depth, and exact_model [twins, R]
            KL(BP_0 || model) (the authors' Fig. 3b); steps [R], ratios [R].
        """
        ratios = kl_bp.kl_along_t_ratios(self.a.kl_along_t_points)
        steps = uturn.uturn_steps(self.schedule, ratios)
        args = (
            self.twin_denoisers(snapshot.evaluated_params()),
            jnp.asarray(self.grammar.transitions, jnp.float32),
            self.schedule,
            self.heldout[: self.a.uturn_items],
            steps,
            self.stat_key,
        )
        # KL(BP_0 || BP_k) depends on no model: computed at the first snapshot, reused.
        exact = kl_bp.twin_kl_from_exact(*args, bp=self._exact_bp_along_t)
        self._exact_bp_along_t = exact["bp"]
        return dict(
            values=kl_bp.twin_kl_bp(*args),
            exact_bp=exact["bp"],
            exact_model=exact["model"],
            steps=np.asarray(steps),
            ratios=ratios,
        )

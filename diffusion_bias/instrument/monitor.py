"""The bias monitor: the instrument at low cost, inside a training loop.

Called with the twins' stacked parameters at each snapshot, it draws a few
coupled samples with a short respaced chain, finds their nearest neighbours,
evaluates the denoising loss on a fixed grid and the membership attack on it
(AUC, TPR at 1% FPR, the one-run epsilon lower bound), and lets
a stopping rule (`diffusion_bias.instrument.stopping`) decide whether training should
end, and which snapshot to keep. It needs no files and no config: any model
with the denoiser contract of `coupled.coupled_samples` works,

    monitor = BiasMonitor(apply_fn, schedule, train_sets, heldout, "images")
    for epoch in ...:
        ...  # train the stacked twins
        row = monitor(stacked_params, epoch)
        if row["decision"] == "stop":
            break  # row["kept_epoch"] is the snapshot to keep

and `launch.train` runs it at every snapshot when `config.monitor.enabled`.
Everything random is fixed by `seed`: sample j is coupled across twins and
across snapshots, the loss grid is the same at every call.
"""

from collections.abc import Callable
from collections.abc import Mapping
import dataclasses
from typing import Any

import jax
import numpy as np

from diffusion_bias import checks
from diffusion_bias import setting as setting_lib
from diffusion_bias.diffusion import schedules
from diffusion_bias.instrument import probe as probe_lib
from diffusion_bias.instrument import stopping
from diffusion_bias.instrument import verdict
from diffusion_bias.statistics import losses
from diffusion_bias.statistics import nearest
from diffusion_bias.statistics import privacy


@dataclasses.dataclass(frozen=True)
class MonitorSettings:
    """What the monitor measures and how its rule decides: `config.monitor`'s fields.

    Attributes:
        stop: the stopping rule, one of `stopping.RULES`.
        num_samples: coupled samples per twin and snapshot.
        sampling_steps: steps of the respaced reverse chain.
        loss_items: items per twin (and held out) on the loss grid.
        loss_repeats: (t, noise) draws per item on the loss grid.
        patience: snapshots confirming a stop.
        auc_threshold, memorized_threshold: the privacy budget.
        epsilon_threshold, tpr_threshold: the privacy budget in the auditors'
            units, 0 = not used: the one-run epsilon lower bound (95%, delta
            1e-5) and the TPR at 1% FPR of the loss attack (`statistics.privacy`;
            the monitor scores every item with the loss, a score that chooses nothing).
        bootstrap: replicates for the bias rule's noise.
        seed: fixes the coupling noise, the loss grid and the bootstrap.
    """

    stop: str = "none"
    num_samples: int = 128
    sampling_steps: int = 100
    loss_items: int = 128
    loss_repeats: int = 4
    patience: int = 2
    auc_threshold: float = 0.6
    memorized_threshold: float = 0.0
    epsilon_threshold: float = 0.0
    tpr_threshold: float = 0.0
    bootstrap: int = 200
    seed: int = 0

    @classmethod
    def from_config(cls, monitor_config: Mapping[str, Any]) -> "MonitorSettings":
        """The settings of a `config.monitor` (fields it lacks keep their defaults)."""
        names = [field.name for field in dataclasses.fields(cls)]
        return cls(**{name: monitor_config[name] for name in names if name in monitor_config})


class BiasMonitor:
    """Cheap bias statistics per snapshot, and a stopping rule over them.

    Nothing is compiled until the first call.

    Args:
        apply_fn: fn(params, x_t [B, ...], t [B]) -> predicted noise
            (images) or x0 probabilities (tokens), for one twin's params.
            Build it once: it is a static argument of the compiled sampler.
        schedule: the training schedule (`diffusion.schedules`).
        train_sets: [K, n, ...] the twins' training sets (images float
            [K, n, H, W, C], tokens int [K, n, L]), K >= 2.
        heldout: [m, ...] held-out items, disjoint from every split.
        kind: "images" or "tokens".
        settings: the `MonitorSettings` (default: their defaults); any of their
            fields may also be given as a keyword, e.g. `stop="bias_onset"`.
        num_symbols: q, for tokens.
        clip_x0: images: clip the predicted x0 to [-c, c] while sampling.
        twin_strategy: "vmap" or "map" over the twins while sampling.
        offsets: images: optional [K, C] per-channel shift of each twin's
            space (per-split centring): twin k trains on items minus
            offsets[k]; its losses are taken there and its samples mapped
            back (plus offsets[k]) to compare with `train_sets`/`heldout`,
            which are given un-shifted.

    Attributes:
        rows: one dict per snapshot seen (see `__call__`).
        kept_epoch: the epoch the rule kept once it stopped, else None.
        kept_index: that snapshot's index in `rows`, else None.
    """

    def __init__(
        self,
        apply_fn: Callable[[Any, jax.Array, jax.Array], jax.Array],
        schedule: schedules.Schedule,
        train_sets: np.ndarray,
        heldout: np.ndarray,
        kind: str,
        settings: MonitorSettings | None = None,
        *,
        num_symbols: int | None = None,
        clip_x0: float | None = None,
        twin_strategy: str = "vmap",
        offsets: np.ndarray | None = None,
        **fields: Any,
    ):
        """Builds the monitor (see the class for the arguments); raises ValueError on a bad one."""
        try:
            settings = dataclasses.replace(settings or MonitorSettings(), **fields)
        except TypeError as err:  # a keyword that is no field of the settings
            raise ValueError(f"BiasMonitor: {err}") from None
        self.settings = s = settings
        train_sets, heldout = np.asarray(train_sets), np.asarray(heldout)
        _check_arguments(
            train_sets,
            heldout,
            kind,
            s.stop,
            num_symbols,
            num_samples=s.num_samples,
            sampling_steps=s.sampling_steps,
            loss_items=s.loss_items,
            loss_repeats=s.loss_repeats,
            patience=s.patience,
            bootstrap=s.bootstrap,
        )
        _check_items(train_sets, heldout, kind, num_symbols, offsets)
        _check_thresholds(
            auc_threshold=s.auc_threshold,
            memorized_threshold=s.memorized_threshold,
            tpr_threshold=s.tpr_threshold,
            epsilon_threshold=s.epsilon_threshold,
        )
        self.kind, self.stop, self.patience = kind, s.stop, s.patience
        self.auc_threshold, self.memorized_threshold = s.auc_threshold, s.memorized_threshold
        self.epsilon_threshold, self.tpr_threshold = s.epsilon_threshold, s.tpr_threshold
        self.num_samples, self.bootstrap, self.seed = s.num_samples, s.bootstrap, s.seed
        num_samples, sampling_steps, seed = s.num_samples, s.sampling_steps, s.seed
        loss_items, loss_repeats = s.loss_items, s.loss_repeats
        n_items = min(loss_items, train_sets.shape[1], len(heldout))
        self._length, self._num_twins = train_sets.shape[-1], len(train_sets)
        self._probe = probe_lib.Probe(
            apply_fn,
            schedule,
            schedules.respace(schedule, min(sampling_steps, schedule.num_steps)),
            kind,
            train_sets,
            heldout[:n_items],
            key=jax.random.key(seed),
            num_samples=num_samples,
            loss_items=n_items,
            loss_repeats=loss_repeats,
            offsets=None if offsets is None else np.asarray(offsets, np.float32),
            num_symbols=num_symbols,
            clip_x0=clip_x0,
            twin_strategy=twin_strategy,
        )
        self.rows = []
        self._history = {}  # name -> list of per-snapshot arrays
        self._scalars = []  # per snapshot: {statistic: value}
        self.kept_epoch, self.kept_index, self.reason = None, None, ""

    @property
    def bias_mode(self) -> str:
        """The bias curve's extremum: similarity peak (images), NN-divergence minimum (tokens)."""
        return setting_lib.of(self.kind).bias_direction

    def statistics(self, stacked_params: Any) -> dict[str, np.ndarray]:
        """The per-item arrays of one snapshot (numpy): `probe.Probe.measure`'s.

        Returns:
            dict: similarity [N] (mean over twin pairs), own_d1, own_d2,
            other_d1 [K, N], heldout_d1 [K, m], test_losses, train_losses,
            partner_losses [K, m] (twin k on the items of twin (k + 1) mod K).
        """
        stats = self._probe.measure(stacked_params)[0]
        out = dict(similarity=stats["similarity"].mean(axis=0))
        keep = ("own_d1", "own_d2", "other_d1", "heldout_d1")
        keep += ("test_losses", "train_losses", "partner_losses")
        out.update({k: stats[k] for k in keep})
        return out

    def __call__(self, stacked_params, epoch):
        """Measures one snapshot and applies the stopping rule.

        Args:
            stacked_params: the K twins' parameters, stacked on a leading axis.
            epoch: the snapshot's epoch (or step), increasing across calls.

        Returns:
            The row appended to `rows`: epoch, the scalar statistics,
            "decision" ("continue" or "stop"), "reason", and "kept_epoch" and
            "kept_index" (into `rows`) once the rule has stopped (it stays stopped).
        """
        if self.rows and epoch <= self.rows[-1]["epoch"]:
            raise ValueError(f"epochs must increase: {epoch} after {self.rows[-1]['epoch']}")
        twins = {np.shape(leaf)[0] if np.ndim(leaf) else None
                 for leaf in jax.tree.leaves(stacked_params)}  # fmt: skip
        if twins != {self._num_twins}:
            raise ValueError(
                f"stacked_params must stack {self._num_twins} twins (train_sets' K) on the "
                f"leading axis of every leaf, got leading sizes {sorted(twins, key=str)}"
            )
        stats = self.statistics(stacked_params)
        self._append(stats)
        return self._decide(float(epoch))

    def _append(self, stats):
        """Adds one snapshot: its per-item arrays, and its scalars computed once."""
        for name, value in stats.items():
            self._history.setdefault(name, []).append(value)
        self._scalars.append(
            dict(
                test_loss=stats["test_losses"].mean(),
                train_loss=stats["train_losses"].mean(),
                membership_auc=np.mean(
                    [
                        losses.membership_auc(tr, te)
                        for tr, te in zip(stats["train_losses"], stats["test_losses"])
                    ]
                ),
                memorized_fraction=nearest.memorized_fraction(stats["own_d1"], stats["own_d2"]),
                closer_to_own=nearest.closer_to_own_share(stats["own_d1"], stats["other_d1"]),
                **_loss_attack(stats),
            )
        )

    def _curves(self):
        """[C] scalar curves, and the bias curve with its bootstrap over the whole history."""
        curves = {name: np.array([s[name] for s in self._scalars]) for name in self._scalars[0]}
        h = {name: np.stack(self._history[name]) for name in ("similarity", "own_d1", "heldout_d1")}
        rng = np.random.default_rng(self.seed)
        # The analysis's bias curve (`verdict.bias_curve`), over the history so far.
        bias, bias_boot = verdict.bias_curve(
            setting_lib.of(self.kind).bias_statistic,
            rng,
            self.bootstrap,
            similarity=h["similarity"],  # [C, N]: already the mean over pairs
            own_d1=h["own_d1"],
            heldout_d1=h["heldout_d1"][0],
            length=self._length,
        )
        return dict(curves, bias=bias, bias_boot=bias_boot)

    def _decide(self, epoch):
        curves = self._curves()
        row = dict(epoch=epoch)
        names = [
            "test_loss",
            "train_loss",
            "membership_auc",
            "tpr",
            "epsilon",
            "memorized_fraction",
            "closer_to_own",
        ]
        row.update({name: float(curves[name][-1]) for name in names})
        bias_name = setting_lib.of(self.kind).bias_statistic
        row[bias_name] = float(curves["bias"][-1])
        if self.kept_epoch is None:
            decision = stopping.decide(
                self.stop,
                curves,
                patience=self.patience,
                auc_threshold=self.auc_threshold,
                memorized_threshold=self.memorized_threshold,
                epsilon_threshold=self.epsilon_threshold,
                tpr_threshold=self.tpr_threshold,
                bias_mode=self.bias_mode,
            )
            if decision.stop:
                epochs = [r["epoch"] for r in self.rows] + [epoch]
                kept = decision.kept_index
                self.kept_index = kept
                self.kept_epoch = epochs[kept] if kept is not None else float("nan")
                self.reason = decision.reason
            row["decision"] = "stop" if decision.stop else "continue"
            row["reason"] = decision.reason
        else:
            row["decision"], row["reason"] = "stop", self.reason
        if self.kept_epoch is not None:
            row["kept_epoch"], row["kept_index"] = self.kept_epoch, self.kept_index
        self.rows.append(row)
        return row

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to continue after a restart, as numpy arrays."""
        state = {f"history/{k}": np.stack(v) for k, v in self._history.items()}
        state["epochs"] = np.array([r["epoch"] for r in self.rows], np.float64)
        return state

    def load_state_dict(
        self, state: Mapping[str, np.ndarray], upto_epoch: float | None = None
    ) -> None:
        """Replays a saved state (up to `upto_epoch`), rebuilding rows and the rule's state.

        Args:
            state: from `state_dict`.
            upto_epoch: keep the snapshots at or before this epoch (a resumed
                run restarts from its latest checkpoint, which may predate the
                monitor's last row).
        """
        epochs = np.asarray(state["epochs"], np.float64)
        keep = len(epochs) if upto_epoch is None else int(np.sum(epochs <= upto_epoch))
        self.rows, self._history, self._scalars = [], {}, []
        self.kept_epoch, self.kept_index = None, None
        for c in range(keep):
            stats = {k.split("/", 1)[1]: np.asarray(v[c]) for k, v in state.items() if "/" in k}
            self._append(stats)
            self._decide(float(epochs[c]))


def _loss_attack(stats):
    """The loss attack's TPR at 1% FPR (against the held-out items, pooled over twins) and
    its one-run epsilon lower bound (own against partner items); NaN for a state saved
    before the monitor kept partner losses."""
    tpr = privacy.tpr_at_fpr(-stats["train_losses"], -stats["test_losses"], privacy.FPRS[:1])[0]
    if "partner_losses" not in stats:
        return dict(tpr=tpr, epsilon=float("nan"))
    epsilon, _ = privacy.epsilon_lower_bound(
        -stats["train_losses"],
        -stats["partner_losses"],
        confidence=privacy.CONFIDENCE,
        delta=privacy.DELTA,
    )
    return dict(tpr=tpr, epsilon=epsilon)


def _check_thresholds(**thresholds):
    """Raises ValueError on a privacy budget out of range (rates in [0, 1], epsilon >= 0)."""
    for name, value in thresholds.items():
        high = np.inf if name == "epsilon_threshold" else 1.0
        if not checks.is_number(value) or not 0 <= value <= high or np.isnan(value):
            raise ValueError(f"{name} must be a number in [0, {high:g}], got {value!r}")


def _check_items(train_sets, heldout, kind, num_symbols, offsets):
    """Raises ValueError on items the twins cannot have been trained on.

    Images must be finite floats, the held-out ones on the training items' scale
    (uint8 pixels in 0..255 beside training items in [-1, 1] give a test loss
    of about 1000, not an error); tokens integers in [0, q).
    """
    if setting_lib.of(kind).discrete:
        for name, items in (("train_sets", train_sets), ("heldout", heldout)):
            if items.dtype.kind not in "iu" or items.min() < 0 or items.max() >= num_symbols:
                raise ValueError(
                    f"{name} must be integer tokens in [0, num_symbols={num_symbols}), got "
                    f"{items.dtype} in [{items.min()}, {items.max()}]"
                )
        return
    for name, items in (("train_sets", train_sets), ("heldout", heldout)):
        if not jax.numpy.issubdtype(items.dtype, jax.numpy.floating):
            raise ValueError(
                f"{name} must be float images on the scale the twins were trained on, "
                f"got {items.dtype}"
            )
        checks.finite(name, items)
    low, high = float(train_sets.min()), float(train_sets.max())
    span = max(high - low, 1e-6)
    if heldout.min() < low - span or heldout.max() > high + span:
        raise ValueError(
            f"heldout spans [{heldout.min():.3g}, {heldout.max():.3g}], far from "
            f"train_sets' [{low:.3g}, {high:.3g}]: give both on the scale the twins were "
            "trained on"
        )
    want = (len(train_sets), train_sets.shape[-1])
    if offsets is not None and np.shape(offsets) != want:
        raise ValueError(f"offsets must be [K, C] = {list(want)}, got {list(np.shape(offsets))}")
    if offsets is not None:
        checks.finite("offsets", offsets)


def _check_arguments(train_sets, heldout, kind, stop, num_symbols, **counts):
    """Raises ValueError on the first bad argument of `BiasMonitor` (`counts`: positive ints)."""
    setting = setting_lib.of(kind)
    if stop not in stopping.RULES:
        raise ValueError(f"stop must be one of {stopping.RULES}, got {stop!r}")
    if train_sets.ndim < 3 or len(train_sets) < 2:
        raise ValueError(
            f"train_sets must be [K >= 2, n, ...] (twins stacked), got {train_sets.shape}"
        )
    if heldout.shape[1:] != train_sets.shape[2:] or len(heldout) < 2:
        raise ValueError(
            f"heldout must be [m >= 2, {', '.join(map(str, train_sets.shape[2:]))}], "
            f"got {heldout.shape}"
        )
    if setting.discrete and not num_symbols:
        raise ValueError("tokens need num_symbols (the vocabulary size q)")
    for name, value in counts.items():
        if not checks.is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")

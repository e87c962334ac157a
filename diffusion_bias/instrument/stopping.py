"""Stopping rules: when to end training, and which snapshot to keep.

Each rule reads the curves seen so far (one value per snapshot, oldest first)
and returns a `Decision`. They are pure, so the same function decides online
(the monitor calls it after every snapshot) and offline (the report replays
it over a finished run's curves to show what each rule would have cost).

- "test_loss": the usual rule; the held-out loss has not improved on its
  minimum for `patience` snapshots; keeps the minimum.
- "bias_onset": the bias curve (similarity: peak; divergence: minimum) has
  moved away from its extremum beyond bootstrap noise at each of the last
  `patience` snapshots; keeps the extremum, the onset of biased
  generalisation (the paper (arXiv 2603.03469), "The claim").
- "privacy_budget": the membership AUC, the memorised fraction, or (where
  their thresholds are set) the one-run epsilon lower bound or the TPR at 1%
  FPR has exceeded its threshold; keeps the last snapshot under all of them.
- "none": only monitors.
"""

from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

RULES = ("none", "test_loss", "bias_onset", "privacy_budget")


@dataclasses.dataclass(frozen=True)
class Decision:
    """What a rule says after the latest snapshot.

    Attributes:
        stop: end training now.
        kept_index: index of the snapshot to keep as the run's result (None
            while running, or when no snapshot satisfies the rule).
        reason: one sentence, for logs and the report.
    """

    stop: bool
    kept_index: int | None
    reason: str


_CONTINUE = Decision(False, None, "")


def test_loss_rule(test_loss: npt.ArrayLike, patience: int) -> Decision:
    """Stops once the held-out loss has not reached a new minimum for `patience` snapshots.

    Args:
        test_loss: [C] held-out loss at the snapshots seen so far.
        patience: snapshots without a new minimum before stopping, >= 1.
    """
    test_loss = np.asarray(test_loss, np.float64)
    best = int(np.argmin(test_loss))
    waited = len(test_loss) - 1 - best
    if waited < patience:
        return _CONTINUE
    return Decision(
        True,
        best,
        f"the held-out loss has not improved on its minimum ({test_loss[best]:.5g}, snapshot "
        f"{best}) for {waited} snapshots",
    )


def bias_onset_rule(
    bias: npt.ArrayLike,
    bias_boot: npt.ArrayLike,
    mode: str,
    patience: int,
    valid: npt.ArrayLike | None = None,
) -> Decision:
    """Stops once the bias curve has left its extremum beyond noise for `patience` snapshots.

    The extremum e of `bias` is confirmed when, at each of the last `patience`
    snapshots j > e, the curve has departed from its value at e (fallen below a
    peak, risen above a minimum) in 97.5% of the bootstrap replicates. An
    extremum at the first valid snapshot is no onset: the curve must first
    rise to a peak or fall to a minimum.

    Args:
        bias: [C] the bias curve at the snapshots seen so far.
        bias_boot: [B, C] its bootstrap replicates, items resampled jointly
            across snapshots.
        mode: "max" (sample-split similarity) or "min" (NN divergence).
        patience: confirming snapshots, >= 1.
        valid: optional bool [C], snapshots where the extremum may sit.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    bias = np.asarray(bias, np.float64)
    bias_boot = np.asarray(bias_boot, np.float64)
    valid = np.ones(len(bias), bool) if valid is None else np.asarray(valid, bool)
    if not valid.any():
        return _CONTINUE
    sign = 1.0 if mode == "max" else -1.0
    extremum = int(np.argmax(np.where(valid, sign * bias, -np.inf)))
    later = np.arange(extremum + 1, len(bias))
    if extremum == np.flatnonzero(valid)[0] or len(later) < patience:
        return _CONTINUE
    away = np.percentile(sign * (bias_boot[:, extremum, None] - bias_boot[:, later]), 2.5, axis=0)
    if not np.all(away[-patience:] > 0):
        return _CONTINUE
    return Decision(
        True,
        extremum,
        f"the bias curve left its {'peak' if mode == 'max' else 'minimum'} at snapshot "
        f"{extremum} beyond bootstrap noise at each of the last {patience} snapshots",
    )


def privacy_budget_rule(
    auc: npt.ArrayLike,
    memorized: npt.ArrayLike,
    auc_threshold: float,
    memorized_threshold: float,
    epsilon: npt.ArrayLike | None = None,
    epsilon_threshold: float = 0.0,
    tpr: npt.ArrayLike | None = None,
    tpr_threshold: float = 0.0,
) -> Decision:
    """Stops at the first snapshot over budget; keeps the one before it.

    Args:
        auc: [C] membership-inference AUC at the snapshots seen so far.
        memorized: [C] memorised fraction of the samples.
        auc_threshold: the largest acceptable AUC (0.5 = no leak).
        memorized_threshold: the largest acceptable memorised fraction.
        epsilon: optional [C] one-run epsilon lower bound.
        epsilon_threshold: the largest acceptable bound; 0 leaves it unused.
        tpr: optional [C] TPR at 1% FPR of the membership attack.
        tpr_threshold: the largest acceptable TPR; 0 leaves it unused.
    """
    budgets = [
        ("membership AUC", auc, auc_threshold),
        ("memorised fraction", memorized, memorized_threshold),
    ]
    if epsilon_threshold:
        budgets.append(("epsilon lower bound", epsilon, epsilon_threshold))
    if tpr_threshold:
        budgets.append(("TPR at 1% FPR", tpr, tpr_threshold))
    over = {name: np.asarray(v, np.float64) > limit for name, v, limit in budgets}
    any_over = np.any(list(over.values()), axis=0)
    if not any_over.any():
        return _CONTINUE
    first = int(np.argmax(any_over))
    kept = first - 1 if first > 0 else None
    exceeded = ", ".join(
        f"{name} {float(np.asarray(v)[first]):.3f} > {limit:g}"
        for name, v, limit in budgets
        if over[name][first]
    )
    return Decision(True, kept, f"snapshot {first} exceeds the privacy budget ({exceeded})")


def decide(
    rule: str,
    curves: Mapping[str, npt.ArrayLike],
    *,
    patience: int,
    auc_threshold: float,
    memorized_threshold: float,
    bias_mode: str,
    epsilon_threshold: float = 0.0,
    tpr_threshold: float = 0.0,
) -> Decision:
    """The decision of `rule` on the curves seen so far.

    Args:
        rule: one of `RULES`.
        curves: dict with "test_loss" [C], "bias" [C], "bias_boot" [B, C], "membership_auc"
            [C], "memorized_fraction" [C], optional "valid" [C] bool, "epsilon" [C]
            and "tpr" [C] (TPR at 1% FPR; needed where their thresholds are set).
        patience, auc_threshold, memorized_threshold, epsilon_threshold,
            tpr_threshold: the rules' settings.
        bias_mode: "max" or "min", the kind of extremum of the bias curve.
    """
    if rule == "none":
        return _CONTINUE
    if rule == "test_loss":
        return test_loss_rule(curves["test_loss"], patience)
    if rule == "bias_onset":
        return bias_onset_rule(
            curves["bias"], curves["bias_boot"], bias_mode, patience, curves.get("valid")
        )
    if rule == "privacy_budget":
        return privacy_budget_rule(
            curves["membership_auc"],
            curves["memorized_fraction"],
            auc_threshold,
            memorized_threshold,
            curves.get("epsilon"),
            epsilon_threshold,
            curves.get("tpr"),
            tpr_threshold,
        )
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


def replay(
    rule: str, curves: Mapping[str, npt.ArrayLike], **settings: Any
) -> tuple[int | None, Decision]:
    """Runs `rule` as it would have run online: the first snapshot where it stops.

    Args:
        rule, curves, settings: as `decide`, with the curves of a whole run.

    Returns:
        (stop_index, Decision): the snapshot after which the rule stopped and
        its decision; (None, last decision) if it never stopped.
    """
    num = len(curves["test_loss"])
    decision = _CONTINUE
    for c in range(1, num + 1):
        seen = {
            name: (np.asarray(v)[:, :c] if name == "bias_boot" else np.asarray(v)[:c])
            for name, v in curves.items()
        }
        decision = decide(rule, seen, **settings)
        if decision.stop:
            return c - 1, decision
    return None, decision


def rule_costs(
    epochs: npt.ArrayLike,
    curves: Mapping[str, npt.ArrayLike],
    quality: Sequence[float] | np.ndarray | None = None,
    **settings: Any,
) -> list[dict[str, Any]]:
    """What stopping by each rule would have cost on a finished run's curves.

    Each rule is replayed as it would have run online; the row describes the
    snapshot it keeps (for "none": the last one).

    Args:
        epochs: [C] epochs of the snapshots.
        curves: as `decide`, over the whole run, plus "closer_to_own" [C].
        quality: optional [C] sample quality (higher is better).
        settings: patience, auc_threshold, memorized_threshold, bias_mode.

    Returns:
        list of dicts, one per rule of `RULES`: rule, stop_epoch and kept_epoch
        (None where the rule never fired; "none" keeps the last snapshot),
        test_loss_excess (relative to the run's minimum), membership_auc,
        memorized_fraction, closer_to_own, epsilon and tpr (where the curves
        have them), quality, reason.
    """
    epochs = np.asarray(epochs, np.float64)
    test = np.asarray(curves["test_loss"], np.float64)
    rows = []
    for rule in RULES:
        stop, decision = replay(rule, curves, **settings) if rule != "none" else (None, None)
        kept = len(epochs) - 1 if rule == "none" else decision.kept_index
        row = dict(
            rule=rule,
            stop_epoch=None if stop is None else float(epochs[stop]),
            kept_epoch=None if kept is None else float(epochs[kept]),
            reason="" if decision is None else decision.reason,
        )
        for name in ("membership_auc", "memorized_fraction", "closer_to_own", "epsilon", "tpr"):
            if name in curves:
                row[name] = None if kept is None else float(curves[name][kept])
        row["test_loss_excess"] = None if kept is None else float(test[kept] / test.min() - 1)
        row["quality"] = None if kept is None or quality is None else float(quality[kept])
        rows.append(row)
    return rows

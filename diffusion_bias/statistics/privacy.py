"""Membership inference as privacy auditors measure it: TPR at low FPR and a one-run epsilon.

The attacker holds one twin's parameters and scores an item by how well the
twin denoises it (higher score: more likely a training member). Four scores:

- "loss": minus the item's denoising loss, the mean over the fixed (t, noise) grid;
- "loss_at_t": minus the loss at the one diffusion time of a grid where members
  separate best;
- "calibrated_bp" (tokens): minus (the twin's loss - the exact BP denoiser's
  loss) on the same grid: BP knows the grammar and nothing of any training set,
  so what is left is the data-dependent part of the loss (the excess term of
  the loss decomposition);
- "calibrated_twin": minus (the twin's loss - a reference twin's loss), as
  LiRA calibrates by reference models: the reference is twin (k - 1) mod K,
  trained on disjoint data.

Twin k is audited twice:

- against the held-out items (TPR at FPR 1% and 0.1%, AUC): members are its
  own training items, non-members the held-out items, pooled over the twins
  (one threshold for all twins);
- by the one-run audit (Steinke, Nasr, Jagielski 2023) for an epsilon lower
  bound: the candidates are its own items and its partner's, twin (k + 1) mod K,
  each candidate's side decided by the split's random assignment. The bound
  may use only the audited twin and what is independent of that assignment
  (the held-out items, BP): "calibrated_twin" is not valid for it (the
  reference's training set is the partner's or a complement of the audited
  twin's, so it reveals the assignment).

The bound assumes that each candidate is in by an independent fair coin. With
`splits.assignment="coin"` that holds for the canaries (`data.splits`: the
item of position i that the coins dealt to twin k or its partner, a fair coin
between them); the audit then uses those alone. The default fixed-size split
puts exactly half of the candidates in: dependent coins, which the bound
does not cover in theory; against a mechanism that is exactly epsilon-DP, the
bound exceeded epsilon no more often under the fixed-size split than under
independent coins (tests/test_privacy.py, docs/privacy.md).

No choice is made on the items scored: items at even positions choose (the
time of "loss_at_t", the strongest score); items at odd positions are scored.
The metrics and bounds are `jax_privacy.auditing`'s.
"""

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np
from jax.typing import ArrayLike

from diffusion_bias.statistics import sample_split

FPRS = (0.01, 0.001)
CONFIDENCE = 0.95  # of the epsilon lower bound and the intervals, unless configured
DELTA = 1e-5  # the DP delta of the bound, unless configured
SCORES = ("loss", "loss_at_t", "calibrated_bp", "calibrated_twin")
EPSILON_VALID = ("loss", "loss_at_t", "calibrated_bp")


def _auditing():
    # Imported on first use: jax_privacy loads in about 1.5 s, which every
    # program importing the statistics (launchers checking a config) would pay.
    from jax_privacy import auditing  # pylint: disable=import-outside-toplevel

    return auditing


def selection_half(items: np.ndarray) -> np.ndarray:
    """Items at even positions along the last axis: they choose, they are not scored."""
    return items[..., 0::2]


def evaluation_half(items: np.ndarray) -> np.ndarray:
    """Items at odd positions along the last axis: they are scored."""
    return items[..., 1::2]


def auc(in_scores: ArrayLike, out_scores: ArrayLike) -> float:
    """ROC AUC of "higher score means member" (0.5: no leak), `jax_privacy`'s."""
    in_scores, out_scores = np.ravel(in_scores), np.ravel(out_scores)
    return float(_auditing().CanaryScoreAuditor(in_scores, out_scores).attack_auroc())


def best_time(member_losses_t: np.ndarray, heldout_losses_t: np.ndarray) -> int:
    """Index of the time where members separate best from held-out items, on the selection half.

    Args:
        member_losses_t: [K, S, n] each twin's loss on its own items at S times.
        heldout_losses_t: [K, S, m] on the held-out items.

    Returns:
        int in [0, S): the time of the largest AUC, chosen on even positions only.
    """
    members, heldout = selection_half(member_losses_t), selection_half(heldout_losses_t)
    aucs = [auc(-members[:, s], -heldout[:, s]) for s in range(members.shape[1])]
    return int(np.argmax(aucs))


def attack_scores(
    losses: Mapping[str, np.ndarray],
    *,
    bp: Mapping[str, ArrayLike] | None = None,
    seeds_per_split: int = 1,
) -> tuple[dict[str, dict[str, np.ndarray | None]], int]:
    """Each score's members, held-out non-members and partner candidates, per twin.

    Args:
        losses: dict of one snapshot's losses, each twin k's on
            own [K, n] (its training items), partner [K, n] (the items of its
            partner, `sample_split.partner`: twin (k + 1) mod K with one seed a
            split), heldout [K, m] (the mean over the fixed grid), and
            own_t [K, S, n], partner_t [K, S, n], heldout_t [K, S, m] (at each
            time of a grid).
        bp: tokens: dict own [K, n], heldout [m], the exact BP denoiser's losses
            on the same grid; None leaves out "calibrated_bp".
        seeds_per_split: S, twins a split (twin k on split k // S).

    Returns:
        (scores, time_index): scores maps a name of `SCORES` to dict
        members [K, n], heldout [K, m], partner [K, n] (None where the score
        is not valid for the one-run bound); time_index is the chosen time of
        "loss_at_t".
    """
    own, partner, heldout = losses["own"], losses["partner"], losses["heldout"]
    s = best_time(losses["own_t"], losses["heldout_t"])
    # Twin k's reference is the twin r whose partner is k: its `partner`
    # losses are on k's items (r = (k - S) mod K, of the previous split).
    partner_of = sample_split.partner(len(own), seeds_per_split)
    reference = np.argsort(partner_of)
    scores = dict(
        loss=dict(members=-own, heldout=-heldout, partner=-partner),
        loss_at_t=dict(
            members=-losses["own_t"][:, s],
            heldout=-losses["heldout_t"][:, s],
            partner=-losses["partner_t"][:, s],
        ),
        calibrated_twin=dict(
            members=-(own - partner[reference]),
            heldout=-(heldout - heldout[reference]),
            partner=None,
        ),
    )
    if bp is not None:
        bp_own = np.asarray(bp["own"])
        scores["calibrated_bp"] = dict(
            members=-(own - bp_own),
            heldout=-(heldout - np.asarray(bp["heldout"])[None]),
            partner=-(partner - bp_own[partner_of]),
        )
    return {name: scores[name] for name in SCORES if name in scores}, s


def tpr_at_fpr(
    in_scores: ArrayLike, out_scores: ArrayLike, fprs: Sequence[float] = FPRS
) -> np.ndarray:
    """[F] the largest TPR at each FPR (randomising between two thresholds), `jax_privacy`'s."""
    auditor = _auditing().CanaryScoreAuditor(np.ravel(in_scores), np.ravel(out_scores))
    return np.atleast_1d(auditor.tpr_at_given_fpr(np.asarray(fprs))).astype(float)


def intervals(
    in_scores: ArrayLike,
    out_scores: ArrayLike,
    fprs: Sequence[float],
    *,
    num_resamples: int,
    confidence: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap intervals of the AUC and of the TPR at each FPR (items resampled).

    Returns:
        (auc [2], tpr [F, 2]).
    """
    auditing = _auditing()
    auditor = auditing.CanaryScoreAuditor(np.ravel(in_scores), np.ravel(out_scores))
    params = auditing.BootstrapParams.confidence_interval(num_resamples, confidence, seed)
    auc_interval = auditor.attack_auroc(bootstrap_params=params)
    tpr = [auditor.tpr_at_given_fpr(f, bootstrap_params=params) for f in fprs]
    return np.asarray(auc_interval, float), np.asarray(tpr, float)


def canaries(
    members: np.ndarray, partner: np.ndarray, canary_twin: ArrayLike | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each twin's in and out candidates: [(in [a], out [b])] over the twins.

    Args:
        members: [K, n] each twin's scores of its own items, by position.
        partner: [K, n] its scores of its partner's (twin (k + 1) mod K) items.
        canary_twin: None (fixed-size split: every own item is in, every
            partner item out), or [n] the twin each position's canary went to
            (`splits.assign_by_coins`): twin k's candidates are then the
            canaries dealt to k (in, its own item there) or to its partner
            (out, the partner's item there).
    """
    if canary_twin is None:
        return [(np.ravel(m), np.ravel(p)) for m, p in zip(members, partner)]
    canary_twin = np.asarray(canary_twin)
    num_twins = len(members)
    return [
        (members[k][canary_twin == k], partner[k][canary_twin == (k + 1) % num_twins])
        for k in range(num_twins)
    ]


def epsilon_lower_bound(
    members: np.ndarray,
    partner: np.ndarray,
    *,
    confidence: float,
    delta: float,
    canary_twin: ArrayLike | None = None,
) -> tuple[float, np.ndarray]:
    """One-run epsilon lower bound, the largest over the twins (a Bonferroni union bound).

    Args:
        members: [K, n] each twin's scores of its own candidates (in).
        partner: [K, n] its scores of its partner's candidates (out).
        confidence: of the statement "some twin's training is not
            (epsilon, delta)-DP", shared over the K twins.
        delta: the DP delta.
        canary_twin: optional [n], see `canaries`.

    Returns:
        (epsilon, per_twin [K]); 0 for a twin with no candidate on a side.
    """
    auditing = _auditing()
    significance = (1 - confidence) / len(members)
    per_twin = np.array(
        [
            auditing.CanaryScoreAuditor(in_, out).epsilon_one_run(significance, delta)
            if len(in_) and len(out)
            else 0.0
            for in_, out in canaries(members, partner, canary_twin)
        ],
        dtype=float,
    )
    return float(per_twin.max()), per_twin


def audit(
    scores: Mapping[str, Mapping[str, np.ndarray | None]],
    *,
    fprs: Sequence[float] = FPRS,
    num_resamples: int = 200,
    confidence: float = CONFIDENCE,
    delta: float = DELTA,
    seed: int = 0,
    canary_twin: ArrayLike | None = None,
) -> dict[str, Any]:
    """One snapshot's audit: every score's AUC and TPRs, the strongest's intervals and epsilon.

    Each score's numbers come from the evaluation half. The strongest score
    (the largest AUC on the selection half) gets bootstrap intervals; the
    strongest of `EPSILON_VALID` gets the one-run bound.

    Args:
        scores: from `attack_scores`.
        fprs: [F] false-positive rates of the TPRs.
        num_resamples, confidence, seed: of the bootstrap intervals.
        confidence, delta: of the epsilon lower bound.
        canary_twin: optional [n], the coins of `splits.assign_by_coins` (see `canaries`).

    Returns:
        dict: auc {score: float}, tpr {score: [F]}, strongest, auc_interval [2],
        tpr_interval [F, 2] (the strongest's), epsilon, epsilon_score,
        epsilon_per_twin [K].
    """
    evaluated = {
        name: (evaluation_half(s["members"]), evaluation_half(s["heldout"]))
        for name, s in scores.items()
    }
    chosen = {
        name: auc(selection_half(s["members"]), selection_half(s["heldout"]))
        for name, s in scores.items()
    }
    strongest = max(chosen, key=chosen.get)
    auc_interval, tpr_interval = intervals(
        *evaluated[strongest], fprs, num_resamples=num_resamples, confidence=confidence, seed=seed
    )
    valid = [n for n in chosen if n in EPSILON_VALID and scores[n]["partner"] is not None]
    epsilon_score = max(valid, key=chosen.get)
    epsilon, per_twin = epsilon_lower_bound(
        evaluation_half(scores[epsilon_score]["members"]),
        evaluation_half(scores[epsilon_score]["partner"]),
        confidence=confidence,
        delta=delta,
        canary_twin=None if canary_twin is None else evaluation_half(np.asarray(canary_twin)),
    )
    return dict(
        auc={name: auc(*e) for name, e in evaluated.items()},
        tpr={name: tpr_at_fpr(*e, fprs).tolist() for name, e in evaluated.items()},
        strongest=strongest,
        auc_interval=auc_interval.tolist(),
        tpr_interval=tpr_interval.tolist(),
        epsilon=epsilon,
        epsilon_score=epsilon_score,
        epsilon_per_twin=per_twin.tolist(),
    )


def roc(in_scores: ArrayLike, out_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve of "higher score means member": (fpr [P], tpr [P]) for a log-log plot."""
    from sklearn import metrics  # pylint: disable=import-outside-toplevel

    in_scores, out_scores = np.ravel(in_scores), np.ravel(out_scores)
    labels = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    fpr, tpr, _ = metrics.roc_curve(labels, np.r_[in_scores, out_scores])
    return fpr, tpr

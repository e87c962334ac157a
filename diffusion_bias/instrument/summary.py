"""statistics.json from the per-snapshot arrays: the curves, then the verdict.

The analysis walks the snapshots and hands each one's arrays (a dict per
snapshot, see `measure.Instrument.compute`) here; the entries are described
in `STATISTICS_SCHEMA`. Curves are assembled per kind (images,
tokens), then the verdict, the stopping rules replayed over the curves, and
what the onset and the test-loss minimum hold.

The bootstrap draws from one generator seeded by config.analysis.seed, in a
fixed order (test loss, the bias statistic, then the other onset statistics),
so a rerun gives the same intervals.
"""

from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
import functools
from typing import Any

import ml_collections
import numpy as np

from diffusion_bias import run as run_lib
from diffusion_bias import setting as setting_lib
from diffusion_bias.config import config_checks
from diffusion_bias.instrument import record as record_lib
from diffusion_bias.instrument import stopping
from diffusion_bias.instrument import verdict
from diffusion_bias.statistics import controlled
from diffusion_bias.statistics import losses
from diffusion_bias.statistics import nearest
from diffusion_bias.statistics import privacy
from diffusion_bias.statistics import sample_split

STATISTICS_SCHEMA = """\
statistics.json: one entry per snapshot (checkpoint) in every list.
  setting            "images" or "tokens"
  checkpoints        [C] epochs of the snapshots; steps: [C] their steps
  test_loss          [C] held-out denoising loss on a fixed (item, t, noise) grid:
                     the curve the verdict reads, each twin's mean over items, then
                     the mean (or median: protocol.aggregate) over twins;
                     test_loss_sem [C] s.e.m. over items of the mean over twins
  train_loss         [C] the same on the twins' own training items
  sample_split       {mean, sem: [C]; hist: [C][bins]; edges: [bins+1]} similarity of
                     coupled twin samples (tokens: fraction of equal tokens; images:
                     cosine of standardised images); with protocol.aggregate "median"
                     also median [C]: the median over twin pairs of each pair's mean
                     (the images' bias curve then)
  nearest            [C] lists: own_d1, other_d1, heldout_d1 (mean NN distance of
                     samples to their own set, to the closest other set, and of
                     held-out items to the training sets), closer_to_own (share of
                     samples nearer their own set), memorized_fraction and
                     heldout_memorized_fraction (strict ratio test d1/d2 < 1/3:
                     d1 = d2 = 0 is 0/0, not counted), copy_fraction and
                     heldout_copy_fraction (d1 = 0, exact copies)
  membership_auc     [C] ROC AUC of "lower loss = training member", mean over twins
  privacy            the membership audit (statistics/privacy.py), every number on the
                     evaluation half of the items (odd positions; even ones choose):
                     scores [names], fprs [F], times [S] (t/T grid), time_index [C]
                     (the best-time score's), confidence, delta; auc {score: [C]},
                     tpr {score: [C][F]} (members: own items, non-members: held-out,
                     pooled over twins); strongest [C] (the largest AUC on the
                     selection half), auc_interval [C][2], tpr_interval [C][F][2]
                     (its bootstrap intervals); epsilon [C] (one-run lower bound at
                     `confidence`, the largest over twins, Bonferroni), epsilon_score
                     [C], epsilon_per_twin [C][K], canaries ("coin": the coin-dealt
                     canaries only, or "fixed-size split": every own and partner
                     item); roc {indices, epochs, score: [E], fpr, tpr: [E][P]} at
                     the onset, the test-loss minimum, the last
  refined            with `analyze --refine` only (null when nothing was replayed):
                     checkpoints, steps, test_loss, test_loss_sem, verdict, nearest,
                     grammatical_fraction (tokens), bias (the bias statistic) over the
                     grid plus the snapshots replayed around the onset and the minimum;
                     replays [{start, steps}]. Its verdict is the run's
                     (`verdict.final`): the extrema located between grid snapshots
  damaged_snapshots  [{step, epoch, reason}] snapshots left out: unreadable, or their
                     parameters differ from the checksum saved with them
  with K >= 3 twins only (the bootstrap then resamples twins, or twin pairs, and
  items; verdict.MIN_RESAMPLED_UNITS): test_loss_per_model [C][K];
                     sample_split.mean_per_pair [C][P]; tokens: twin_kl_per_pair [C][P]
  score_cosine       images: {t: [T], heldout: [C][T], train: [C][T]} cosine of the
                     twins' predicted noise on the same noisy inputs
  tokens only:
  grammatical_fraction [C]; nn_divergence_per_model [C][K]: per twin k,
                     KL(hist of its samples' NN Hamming distances to its own
                     training set || hist of the held-out distances to that set),
                     20 bins on [0, L], histograms normalised then clipped to
                     [1e-8, 1] (the paper's code); nn_divergence [C] their mean
                     (or median: protocol.aggregate) over twins; nn_hist {generated: [C][20], heldout: [20]}
                     counts summed over twins (for display)
  KL divergences between token sequences are summed over the L positions (per sequence):
  twin_kl            [C] KL(model_a || model_b) of x0 distributions at t/T =
                     critical_ratio on held-out inputs, mean over pairs and sequences
  kl_bp              {k: [K], values: [C][K]} KL(BP_k || model) at critical_ratio
  kl_bp_along_t      {ratios: [R], steps: [R], k: [K], indices: [E], epochs: [E],
                     values: [E][K][R], peak_ratio: [E][K]} KL(BP_k || model) along
                     t at the test-loss minimum and the onset (snapshot indices
                     into checkpoints), mean over twins; peak_ratio the t/T of
                     each curve's maximum; from_exact {k: [depth] (1..depth), bp:
                     [depth][R] KL(BP_0 || BP_k) (no data: the same at every
                     snapshot), bp_peak_ratio: [depth] their maxima (the critical
                     time of the authors' Fig. 3b), model: [E][R] KL(BP_0 || model),
                     mean over twins}
  uturn              {ratios: [R], indices: [U], epochs: [U], repeats, items,
                     train: [U][R], heldout: [U][R]} overlap ratio model / exact BP
                     at the onset and test-loss minimum: per sequence, mean model overlap over the
                     repeats / mean BP overlap, then the mean over sequences and twins
  loss_decomposition {l_star_train, l_tilde_train, l_star_heldout, l_tilde_heldout:
                     [C]} at t/T = t_ratio = 0.3, per token; the same names with
                     suffix _mean_t: averaged over t uniform in 1..T, estimated on
                     the midpoint grid mean_t_steps [G]
  verdict            {bias_onset_epoch, bias_onset_interval, test_loss_min_epoch,
                     test_loss_min_interval, gap_epochs, gap_interval, conclusive,
                     reasons, bias_onset_index, test_loss_min_index (the snapshots
                     of the onset and the minimum: indices into checkpoints, None
                     with the epochs), bias_statistic, grammaticality_gate (tokens: the
                     share of grammatical samples a snapshot needs to hold the
                     onset, 0 = off as in the paper), ungated (tokens, when the
                     gate is on: the verdict without it), other_statistics: {name: the same
                     fields for the other onset statistics (tokens: similarity peak,
                     sample-split KL minimum)}, test_loss_min_contrast {first, last}:
                     how many paired standard errors (per-item differences on the
                     fixed grid) the first and last snapshots' held-out loss stands
                     above the minimum's}
  protocol           {num_steps: T, chain_steps: steps of the sampling chain (T = the
                     full chain), num_samples, twins, aggregate ("mean" or "median":
                     how the verdict's curves aggregate twins and twin pairs; with
                     fewer than 3, the median is the mean); tokens: uturn_items,
                     uturn_repeats, uturn_ratios, kl_items, kl_repeats,
                     decomposition_items, min_grammatical; images: clip_x0,
                     image_sampler; with seeds_per_split > 1: splits,
                     seeds_per_split (twins is then every model); with
                     analysis.test_loss_every_step: test_loss_every_step_items
                     (test_loss and the verdict then read every step 1..T on
                     that many held-out items)}
  same_split         with config.splits.seeds_per_split > 1 only (every other pair
                     statistic is then over cross-split pairs): seeds_per_split,
                     pairs {cross, same}, similarity {cross, same: {mean, sem: [C]}}
                     (each sample's mean over the group's pairs; sem over samples),
                     z [C] (the same-split minus cross-split similarity in paired
                     standard errors), part_index, part_epoch (the first snapshot
                     from which z >= 3 at every later one; None if never),
                     tokens: twin_kl {cross, same: [C]}
  examples           images: {samples: [K][E][H][W], nearest: [K][E][H][W]} for the
                     snapshot at the bias onset
  sample_quality     images with class labels (digits): [C] mean confidence of a
                     classifier fitted on the held-out items, over the samples
  stopping_rules     one row per rule of diffusion_bias.instrument.stopping.RULES, replayed over
                     the snapshots as online with the config.monitor settings: rule,
                     stop_epoch, kept_epoch, test_loss_excess (relative to the
                     minimum), membership_auc, memorized_fraction, closer_to_own,
                     epsilon, tpr (the strongest score's TPR at 1% FPR), quality
                     (sample_quality, or grammatical_fraction), reason
"""


def _col(per_step: Sequence[record_lib.SnapshotRecord], name: str) -> np.ndarray:
    """[C, ...] the field `name` of every snapshot's record, stacked."""
    return np.stack([getattr(r, name) for r in per_step])


# The analysis config the summary reads is `analysis.analysis_config`'s: every field
# present (a saved config's missing ones take the defaults) and checked by
# `config_checks.check_analysis`.


def grammaticality_gate(a: ml_collections.ConfigDict) -> float:
    """The share of grammatical samples a snapshot needs to hold the onset; 0 is off."""
    return float(a.min_grammatical)


def aggregate_of(a: ml_collections.ConfigDict) -> str:
    """config.analysis.aggregate: "mean" or "median"."""
    return a.aggregate


def protocol(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What the statistics of a run were computed with (the report states it)."""
    a = config.analysis
    total = config.diffusion.num_steps
    out = dict(
        num_steps=total,
        chain_steps=total if not a.sampling_steps else min(a.sampling_steps, total),
        num_samples=a.num_samples,
        twins=config_checks.num_models(config),
        aggregate=aggregate_of(a),
    )
    if a.test_loss_every_step:
        held = config.splits.heldout_size
        out["test_loss_every_step_items"] = min(a.test_loss_items or held, held)
    if config_checks.seeds_per_split(config) > 1:
        out.update(splits=config.splits.num_splits, seeds_per_split=config.splits.seeds_per_split)
    if config.diffusion.schedule == "token":
        out.update(
            uturn_items=a.uturn_items,
            uturn_repeats=a.uturn_repeats,
            kl_items=a.kl_items,
            kl_repeats=a.kl_repeats,
            decomposition_items=min(
                a.decomposition_items or config.splits.split_size, config.splits.split_size
            ),
            uturn_ratios=list(a.uturn_ratios),
            min_grammatical=grammaticality_gate(a),
        )
    else:
        # The paper's eps step clips nothing (measure.Instrument passes no clip_x0).
        clip = None if a.image_sampler == "paper" else a.clip_x0 or None
        out.update(clip_x0=clip, image_sampler=a.image_sampler)
        if a.eval_centering == "common":
            out["eval_centering_items"] = a.eval_centering_items  # 0: the whole pool
    return out


def _nearest_curves(per_step):
    """The nearest entry: [C] lists of mean distances and shares."""
    return dict(
        own_d1=_col(per_step, "own_d1").mean(axis=(1, 2)).tolist(),
        other_d1=_col(per_step, "other_d1").mean(axis=(1, 2)).tolist(),
        heldout_d1=_col(per_step, "heldout_d1").mean(axis=(1, 2)).tolist(),
        closer_to_own=[nearest.closer_to_own_share(r.own_d1, r.other_d1) for r in per_step],
        memorized_fraction=[nearest.memorized_fraction(r.own_d1, r.own_d2) for r in per_step],
        heldout_memorized_fraction=[
            nearest.memorized_fraction(r.heldout_d1, r.heldout_d2) for r in per_step
        ],
        copy_fraction=[nearest.exact_copy_fraction(r.own_d1) for r in per_step],
        heldout_copy_fraction=[nearest.exact_copy_fraction(r.heldout_d1) for r in per_step],
    )


def common_curves(
    kind: str,
    epochs: Sequence[float],
    steps: Sequence[int],
    per_step: Sequence[record_lib.SnapshotRecord],
    aggregate: str = "mean",
) -> dict[str, Any]:
    """The entries both kinds have: losses, sample split, nearest, membership AUC.

    `aggregate` ("mean" or "median", `verdict.unit_curve`) makes the test-loss
    curve over twins, and adds the sample-split median over pairs if "median".
    """
    test_losses = verdict_test_losses(per_step)  # [C, K, m]
    test = test_losses.mean(axis=1)  # [C, m]: mean over twins
    sim = _col(per_step, "similarity")  # [C, P, N]
    bins = setting_lib.of(kind).histogram_bins()
    split = [sample_split.summarize(s, bins) for s in sim]
    stats = dict(
        setting=kind,
        checkpoints=epochs,
        steps=[int(s) for s in steps],
        test_loss=verdict.unit_curve(test_losses, aggregate).tolist(),
        test_loss_sem=(test.std(axis=1, ddof=1) / np.sqrt(test.shape[1])).tolist(),
        train_loss=_col(per_step, "train_losses").mean(axis=(1, 2)).tolist(),
        sample_split=dict(
            mean=[s["mean"] for s in split],
            sem=[s["sem"] for s in split],
            hist=[s["hist"] for s in split],
            edges=split[0]["edges"],
        ),
        nearest=_nearest_curves(per_step),
        membership_auc=[
            float(
                np.mean(
                    [losses.membership_auc(tr, te) for tr, te in zip(r.train_losses, r.test_losses)]
                )
            )
            for r in per_step
        ],
    )
    if aggregate == "median":
        stats["sample_split"]["median"] = verdict.unit_curve(sim, aggregate).tolist()
    if _resample_twins(per_step):
        # Enough twins for their spread to be resampled: the curves of each twin
        # and each pair are kept, so that one twin apart from the others shows.
        stats["test_loss_per_model"] = test_losses.mean(axis=2).tolist()
        stats["sample_split"]["mean_per_pair"] = sim.mean(axis=2).tolist()
    return stats


def verdict_test_losses(per_step: Sequence[record_lib.SnapshotRecord]) -> np.ndarray:
    """[C, K, m] the held-out losses the test-loss curve and the verdict read: at every
    step where the analysis computed them (analysis.test_loss_every_step), else the grid's."""
    every_step = per_step[0].test_losses_every_step is not None
    return _col(per_step, "test_losses_every_step" if every_step else "test_losses")


def _resample_twins(per_step):
    return per_step[0].test_losses.shape[0] >= verdict.MIN_RESAMPLED_UNITS


def image_curves(
    a: ml_collections.ConfigDict, per_step: Sequence[record_lib.SnapshotRecord]
) -> dict[str, Any]:
    """The image entries: score_cosine (t [T], heldout [C][T], train [C][T])."""
    return dict(
        score_cosine=dict(
            t=list(a.score_times),
            heldout=_col(per_step, "score_cosine_heldout").mean(axis=1).tolist(),
            train=_col(per_step, "score_cosine_train").mean(axis=1).tolist(),
        )
    )


def _loss_decomposition(per_step):
    """The loss_decomposition entry: l* and l~ on own and held-out sequences, per token."""
    names = ("l_star_train", "l_tilde_train", "l_star_heldout", "l_tilde_heldout")
    dec = _col(per_step, "decomposition").mean(axis=1)  # [C, 4]
    out = dict(t_ratio=0.3, **{n: dec[:, i].tolist() for i, n in enumerate(names)})
    if per_step[0].decomposition_mean_t is not None:
        dec_t = _col(per_step, "decomposition_mean_t").mean(axis=1)  # [C, 4]
        out["mean_t_steps"] = per_step[0].decomposition_steps.tolist()
        out.update({n + "_mean_t": dec_t[:, i].tolist() for i, n in enumerate(names)})
    return out


def token_curves(
    per_step: Sequence[record_lib.SnapshotRecord], length: int, aggregate: str = "mean"
) -> dict[str, Any]:
    """The token entries: grammaticality, NN divergence, twin KL, KL(BP_k || model), l*, l~.

    The NN divergence over models is their mean, or median (`aggregate`).
    """
    own_d1, heldout_d1 = _col(per_step, "own_d1"), per_step[0].heldout_d1
    # The paper's NN divergence: one KL per model, both histograms in its own training set.
    per_model = nearest.nn_divergence(own_d1, heldout_d1[None], length)  # [C, K]
    gen_hist = nearest.nn_histogram(own_d1, length)  # [C, K, bins]
    held_hist = nearest.nn_histogram(heldout_d1, length)  # [K, bins]
    kl_bp = _col(per_step, "kl_bp")  # [C, K, depth + 1]
    stats = dict(
        grammatical_fraction=_col(per_step, "grammatical").mean(axis=1).tolist(),
        nn_divergence=verdict.over_units(per_model, aggregate).tolist(),
        nn_divergence_per_model=per_model.tolist(),
        nn_hist=dict(generated=gen_hist.sum(1).tolist(), heldout=held_hist.sum(0).tolist()),
        twin_kl=_col(per_step, "twin_kl").mean(axis=(1, 2)).tolist(),
        kl_bp=dict(k=list(range(kl_bp.shape[-1])), values=kl_bp.mean(axis=1).tolist()),
        loss_decomposition=_loss_decomposition(per_step),
    )
    if _resample_twins(per_step):
        stats["twin_kl_per_pair"] = _col(per_step, "twin_kl").mean(axis=2).tolist()
    return stats


def examples(
    epochs: Sequence[float],
    per_step: Sequence[record_lib.SnapshotRecord],
    decision: Mapping[str, Any],
) -> dict[str, Any]:
    """The examples entry: samples and their nearest training items at the onset."""
    onset = decision["bias_onset_index"]
    return dict(
        epoch=epochs[onset],
        samples=per_step[onset].example_samples[..., 0].tolist(),
        nearest=per_step[onset].example_nearest[..., 0].tolist(),
    )


def image_verdict(
    epochs: Sequence[float],
    per_step: Sequence[record_lib.SnapshotRecord],
    loss: np.ndarray,
    loss_boot: np.ndarray,
    rng: np.random.Generator,
    num_resamples: int,
    aggregate: str = "mean",
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The onset of the sample-split similarity peak against the test-loss minimum.

    The bias curve: the mean over twin pairs and samples, or ("median") the
    median over pairs of each pair's mean over samples (the authors' CelebA
    aggregation; its maximum is their minimum of the median cosine distance,
    1 - the median similarity).

    Returns:
        (bias [C], bias_boot [B, C], decision).
    """
    sim = _col(per_step, "similarity")  # [C, P, N]
    bias, bias_boot = verdict.bias_curve(
        "similarity", rng, num_resamples, aggregate, similarity=sim
    )
    decision = verdict.decide(
        epochs, bias, bias_boot, loss, loss_boot, "max", bias_name="sample-split similarity"
    )
    decision["bias_statistic"] = "sample_split similarity (peak)"
    return bias, bias_boot, decision


def token_verdict(
    a: ml_collections.ConfigDict,
    epochs: Sequence[float],
    per_step: Sequence[record_lib.SnapshotRecord],
    length: int,
    loss: np.ndarray,
    loss_boot: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The onset of the NN-divergence minimum, gated by grammaticality if asked,
    with the paper's other onset statistics beside it.

    Every curve over twins or twin pairs is their mean, or their median
    (config.analysis.aggregate; the paper's token figures take the mean).

    Returns:
        (bias [C], bias_boot [B, C], decision).
    """
    aggregate = aggregate_of(a)
    divergence, bias_boot = verdict.bias_curve(
        "nn_divergence",
        rng,
        a.bootstrap,
        aggregate,
        own_d1=_col(per_step, "own_d1"),
        heldout_d1=per_step[0].heldout_d1,
        length=length,
    )
    gate = grammaticality_gate(a)
    decide_nn = functools.partial(
        verdict.decide, epochs, divergence, bias_boot, loss, loss_boot, "min",
        bias_name="NN divergence",
    )  # fmt: skip
    grammatical = _col(per_step, "grammatical").mean(axis=1)
    decision = decide_nn(valid=grammatical >= gate if gate else None)
    decision["bias_statistic"] = "nn_divergence (minimum)"
    decision["grammaticality_gate"] = gate
    if gate:
        # The paper searches every snapshot; the gated onset is this
        # package's option, so the paper's one is reported beside it.
        decision["ungated"] = decide_nn()
    # The other onset statistics of the paper, reported beside the primary one.
    # They compare the twins with each other, so ungrammatical early samples
    # give no false extrema: every snapshot is searched.
    for name, values, mode in (
        ("sample_split similarity (peak)", _col(per_step, "similarity"), "max"),
        ("sample_split KL at the critical time (minimum)", _col(per_step, "twin_kl"), "min"),
    ):
        other = verdict.decide(
            epochs,
            verdict.unit_curve(values, aggregate),
            verdict.bootstrap_mean_curves(values, rng, a.bootstrap, aggregate),
            loss,
            loss_boot,
            mode,
            bias_name=name,
        )
        decision.setdefault("other_statistics", {})[name] = other
    return divergence, bias_boot, decision


def _membership_losses(record):
    """One snapshot's losses in the layout of `privacy.attack_scores` (and its BP reference)."""
    losses_ = dict(
        own=record.train_losses,
        partner=record.partner_losses,
        heldout=record.test_losses,
        own_t=record.own_losses_t,
        partner_t=record.partner_losses_t,
        heldout_t=record.heldout_losses_t,
    )
    bp = None
    if record.bp_own_losses is not None:
        bp = dict(own=record.bp_own_losses, heldout=record.bp_heldout_losses)
    return losses_, bp


def privacy_audit(
    a: ml_collections.ConfigDict,
    per_step: Sequence[record_lib.SnapshotRecord],
    seeds_per_split: int = 1,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The privacy entry (without its roc) and each snapshot's attack scores."""
    scores, time_index, audits = [], [], []
    for record in per_step:
        losses_, bp = _membership_losses(record)
        snapshot_scores, s = privacy.attack_scores(losses_, bp=bp, seeds_per_split=seeds_per_split)
        scores.append(snapshot_scores)
        time_index.append(s)
        audits.append(
            privacy.audit(
                snapshot_scores,
                num_resamples=a.privacy_bootstrap,
                confidence=a.privacy_confidence,
                delta=a.privacy_delta,
                seed=a.seed,
                canary_twin=record.canary_twin,
            )
        )
    names = list(scores[0])
    entry = dict(
        scores=names,
        fprs=list(privacy.FPRS),
        times=list(a.privacy_times),
        time_index=time_index,
        confidence=a.privacy_confidence,
        delta=a.privacy_delta,
        canaries="coin" if per_step[0].canary_twin is not None else "fixed-size split",
        auc={n: [r["auc"][n] for r in audits] for n in names},
        tpr={n: [r["tpr"][n] for r in audits] for n in names},
    )
    for field in (
        "strongest",
        "auc_interval",
        "tpr_interval",
        "epsilon",
        "epsilon_score",
        "epsilon_per_twin",
    ):
        entry[field] = [r[field] for r in audits]
    return entry, scores


def privacy_roc(
    entry: Mapping[str, Any],
    scores: Sequence[Mapping[str, Any]],
    indices: Sequence[int],
    epochs: Sequence[float],
) -> dict[str, Any]:
    """The privacy roc entry: the strongest score's ROC (evaluation half) at snapshots `indices`."""
    out = dict(indices=list(indices), epochs=list(epochs), score=[], fpr=[], tpr=[])
    for i in indices:
        name = entry["strongest"][i]
        s = scores[i][name]
        fpr, tpr = privacy.roc(
            privacy.evaluation_half(s["members"]), privacy.evaluation_half(s["heldout"])
        )
        out["score"].append(name)
        out["fpr"].append(fpr.tolist())
        out["tpr"].append(tpr.tolist())
    return out


def strongest_tpr(entry: Mapping[str, Any], fpr_index: int = 0) -> list[float]:
    """[C] the strongest score's TPR at `fprs[fpr_index]` (1% FPR by default)."""
    return [t[s][fpr_index] for t, s in zip(_transpose(entry["tpr"]), entry["strongest"])]


def _transpose(per_score):
    """{score: [C] values} -> [C] dicts {score: value}."""
    names = list(per_score)
    return [dict(zip(names, values)) for values in zip(*per_score.values())]


def stopping_rules(
    config: ml_collections.ConfigDict,
    stats: Mapping[str, Any],
    loss: np.ndarray,
    bias: np.ndarray,
    bias_boot: np.ndarray,
) -> list[dict[str, Any]]:
    """The stopping_rules entry: each rule replayed over the curves as it would run online."""
    m = config.monitor
    return stopping.rule_costs(
        stats["checkpoints"],
        dict(
            test_loss=loss,
            bias=bias,
            bias_boot=bias_boot,
            membership_auc=np.asarray(stats["membership_auc"]),
            memorized_fraction=np.asarray(stats["nearest"]["memorized_fraction"]),
            closer_to_own=np.asarray(stats["nearest"]["closer_to_own"]),
            epsilon=np.asarray(stats["privacy"]["epsilon"]),
            tpr=np.asarray(strongest_tpr(stats["privacy"])),
        ),
        quality=stats.get("sample_quality", stats.get("grammatical_fraction")),
        patience=m.patience,
        auc_threshold=m.auc_threshold,
        memorized_threshold=m.memorized_threshold,
        epsilon_threshold=m.epsilon_threshold,
        tpr_threshold=m.tpr_threshold,
        bias_mode=setting_lib.of(stats["setting"]).bias_direction,
    )


def at_onset_and_test_min(stats: Mapping[str, Any]) -> dict[str, list[float | None]]:
    """{name: [value at the onset, value at the test-loss minimum]}, None where absent."""
    v = stats["verdict"]
    where = [v["bias_onset_index"], v["test_loss_min_index"]]
    curves = dict(
        membership_auc=stats["membership_auc"],
        memorized_fraction=stats["nearest"]["memorized_fraction"],
        copy_fraction=stats["nearest"]["copy_fraction"],
        epsilon=stats["privacy"]["epsilon"],
        tpr_at_1pct_fpr=strongest_tpr(stats["privacy"]),
    )
    return {
        name: [curve[i] if i is not None else None for i in where] for name, curve in curves.items()
    }


# Per-snapshot entries with a row per twin pair [P, ...].
PAIR_KEYS = ("similarity", "twin_kl", "score_cosine_heldout", "score_cosine_train")
PART_Z = 3.0  # paired standard errors by which same-split pairs must stay more alike


def split_pairs(
    per_step: Sequence[record_lib.SnapshotRecord], seeds_per_split: int
) -> tuple[Sequence[record_lib.SnapshotRecord], list[record_lib.SnapshotRecord] | None]:
    """(per_step with cross-split pairs only, per_step with same-split pairs only).

    With one seed a split every pair is cross-split: (per_step, None).
    """
    if seeds_per_split == 1:
        return per_step, None
    num_models = per_step[0].num_models
    cross, same = sample_split.pair_groups(num_models, seeds_per_split)

    def keep(record, mask):
        pairs = {k: getattr(record, k) for k in PAIR_KEYS if getattr(record, k) is not None}
        return dataclasses.replace(record, **{k: v[mask] for k, v in pairs.items()})

    return [keep(r, cross) for r in per_step], [keep(r, same) for r in per_step]


def same_split_curves(
    epochs: Sequence[float],
    cross: Sequence[record_lib.SnapshotRecord],
    same: Sequence[record_lib.SnapshotRecord],
    seeds_per_split: int,
) -> dict[str, Any]:
    """The same_split entry: similarity of same-split pairs beside cross-split pairs.

    Args:
        epochs: [C].
        cross, same: per snapshot, records of `split_pairs`: similarity [P, N].
        seeds_per_split: S.

    The pairs part at the first snapshot from which, at every later one, the
    same-split similarity exceeds the cross-split one by `PART_Z` standard
    errors of the per-sample difference (each sample's mean over the pairs of
    a group; the samples are coupled, so the difference is paired).
    """
    sim_cross, sim_same = _col(cross, "similarity"), _col(same, "similarity")  # [C, P, N]
    diff_mean, diff_sem = controlled.mean_sem(sim_same.mean(axis=1) - sim_cross.mean(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):  # equal samples: 0/0 is not apart
        z = diff_mean / diff_sem  # [C]
    together = np.flatnonzero(~(np.nan_to_num(z, nan=0.0) >= PART_Z))
    # The snapshot after the last one where they are not apart (None: apart nowhere at the end).
    part = int(together[-1]) + 1 if len(together) else 0
    part = part if part < len(epochs) else None

    def curve(sim):
        mean, sem = controlled.mean_sem(sim.mean(axis=1))  # each sample's mean over the pairs
        return dict(mean=mean.tolist(), sem=sem.tolist())

    out = dict(
        seeds_per_split=seeds_per_split,
        pairs=dict(cross=sim_cross.shape[1], same=sim_same.shape[1]),
        similarity=dict(cross=curve(sim_cross), same=curve(sim_same)),
        z=z.tolist(),
        part_index=part,
        part_epoch=None if part is None else epochs[part],
    )
    if same[0].twin_kl is not None:
        out["twin_kl"] = dict(
            cross=_col(cross, "twin_kl").mean(axis=(1, 2)).tolist(),
            same=_col(same, "twin_kl").mean(axis=(1, 2)).tolist(),
        )
    return out


def summarize(
    config: ml_collections.ConfigDict,
    steps: Sequence[int],
    per_step: Sequence[record_lib.SnapshotRecord],
) -> dict[str, Any]:
    """statistics.json from the per-snapshot arrays (see `STATISTICS_SCHEMA`).

    With `splits.seeds_per_split` > 1 every statistic of twin pairs is over
    cross-split pairs; the same-split pairs go to the same_split entry.
    """
    a = config.analysis
    epochs = [s / run_lib.steps_per_epoch(config) for s in steps]
    kind = "tokens" if config.diffusion.schedule == "token" else "images"
    aggregate = aggregate_of(a)
    seeds = config_checks.seeds_per_split(config)
    per_step, same = split_pairs(per_step, seeds)
    stats = common_curves(kind, epochs, steps, per_step, aggregate)
    if same is not None:
        stats["same_split"] = same_split_curves(epochs, per_step, same, seeds)
    test_losses = verdict_test_losses(per_step)  # [C, K, m]
    # Each twin's mean over items, then the mean (or median) over twins.
    loss = verdict.unit_curve(test_losses, aggregate)
    rng = np.random.default_rng(a.seed)
    # [B, C]: twins resampled as well as items when there are enough of them.
    loss_boot = verdict.bootstrap_mean_curves(test_losses, rng, a.bootstrap, aggregate)
    if setting_lib.of(kind).bias_statistic == "similarity":
        stats.update(image_curves(a, per_step))
        bias, bias_boot, decision = image_verdict(
            epochs, per_step, loss, loss_boot, rng, a.bootstrap, aggregate
        )
        stats["examples"] = examples(epochs, per_step, decision)
    else:
        length = 2**config.data.depth
        stats.update(token_curves(per_step, length, aggregate))
        bias, bias_boot, decision = token_verdict(a, epochs, per_step, length, loss, loss_boot, rng)
    decision["test_loss_min_contrast"] = verdict.minimum_contrast(
        test_losses.mean(axis=1), decision["test_loss_min_index"]
    )
    stats["verdict"] = decision
    stats["protocol"] = protocol(config)
    stats["privacy"], scores = privacy_audit(a, per_step, seeds)
    last = len(steps) - 1
    roc_at = sorted({decision["bias_onset_index"], decision["test_loss_min_index"], last} - {None})
    stats["privacy"]["roc"] = privacy_roc(
        stats["privacy"], scores, roc_at, [epochs[i] for i in roc_at]
    )
    if per_step[0].quality is not None:
        stats["sample_quality"] = _col(per_step, "quality").mean(axis=(1, 2)).tolist()
    stats["stopping_rules"] = stopping_rules(config, stats, loss, bias, bias_boot)
    stats["at_onset_and_test_min"] = at_onset_and_test_min(stats)
    return stats


def bias_curve(stats: Mapping[str, Any]) -> list[float]:
    """[C] the verdict's bias statistic: tokens, the NN divergence; images, the similarity
    (its median over pairs where the protocol aggregates by the median)."""
    if setting_lib.of(stats["setting"]).bias_statistic == "nn_divergence":
        return stats["nn_divergence"]
    return stats["sample_split"].get("median", stats["sample_split"]["mean"])


def kl_along_t(
    curves: Sequence[Mapping[str, np.ndarray]],
    indices: Sequence[int],
    epochs: Sequence[float],
) -> dict[str, Any]:
    """The kl_bp_along_t entry from `kl_bp.twin_kl_bp` curves at snapshots `indices`.

    Args:
        curves: per snapshot, dict values [K, k, R] (twins, BP depth, t), steps [R], ratios [R].
        indices: [E] the snapshots' indices in `checkpoints`.
        epochs: [E] their epochs.
    """
    values = np.stack([c["values"].mean(0) for c in curves])  # [E, k, R]: mean over twins
    ratios = curves[0]["ratios"]
    exact_bp = np.asarray(curves[0]["exact_bp"])  # [depth, R]: the same at every snapshot
    return dict(
        ratios=ratios.tolist(),
        steps=curves[0]["steps"].tolist(),
        k=list(range(values.shape[1])),
        indices=list(indices),
        epochs=list(epochs),
        values=values.tolist(),
        peak_ratio=ratios[values.argmax(-1)].tolist(),
        from_exact=dict(
            k=list(range(1, len(exact_bp) + 1)),
            bp=exact_bp.tolist(),
            bp_peak_ratio=ratios[exact_bp.argmax(-1)].tolist(),
            model=[np.mean(c["exact_model"], axis=0).tolist() for c in curves],
        ),
    )


def uturn_random(
    config: ml_collections.ConfigDict,
    indices: Sequence[int],
    epochs: Sequence[float],
    results: Sequence[Mapping[str, np.ndarray]],
) -> dict[str, Any]:
    """The uturn_random entry (Fig. 11) from `Instrument.uturn_random` at snapshots `indices`.

    Each sequence's overlap is averaged over the twins (the model's at each
    snapshot; the memorising denoiser's, each twin's own training set), then
    over the sequences, with its standard error; BP_k's, one row per k.
    """
    a, first = config.analysis, results[0]
    model = [controlled.mean_sem(np.asarray(r["model"]).mean(0)) for r in results]  # [R] twice
    memorizing = controlled.mean_sem(np.asarray(first["memorizing"]).mean(0))
    bp = controlled.mean_sem(np.asarray(first["bp"]))  # [depth + 1, R] twice
    return dict(
        ratios=list(a.uturn_random_ratios),
        items=int(a.uturn_random_items),
        memorizing_items=min(int(a.memorizing_items), config.splits.split_size),
        indices=list(indices),
        epochs=list(epochs),
        model=[m.tolist() for m, _ in model],
        model_sem=[s.tolist() for _, s in model],
        memorizing=memorizing[0].tolist(),
        memorizing_sem=memorizing[1].tolist(),
        bp=bp[0].tolist(),
        bp_sem=bp[1].tolist(),
    )


def uturn(
    a: ml_collections.ConfigDict,
    indices: Sequence[int],
    epochs: Sequence[float],
    ratios: Sequence[Mapping[str, np.ndarray]],
) -> dict[str, Any]:
    """The uturn entry from `uturn.twin_uturn_ratios` results at snapshots `indices`."""
    return dict(
        ratios=list(a.uturn_ratios),
        indices=list(indices),
        epochs=list(epochs),
        repeats=a.uturn_repeats,
        items=int(a.uturn_items),
        train=[u["train"].mean(0).tolist() for u in ratios],
        heldout=[u["heldout"].mean(0).tolist() for u in ratios],
    )

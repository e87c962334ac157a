"""When does bias start, relative to the test-loss minimum, and how sure is it?

The bias onset is the extremum of a bias curve over checkpoints (the peak of
the sample-split similarity, or the minimum of a divergence); the reference is
the minimum of the held-out loss. Both come with bootstrap intervals over the
items the curves average, and the verdict is "conclusive" only when:
  - neither extremum sits at the first or last snapshot (it would not be an
    extremum of the process, only of the window we looked at);
  - the bias extremum stands out of both ends of its curve in 97.5% of the
    bootstrap replicates (a flat or noisy curve has no onset);
  - the gap (test-loss minimum minus onset) is positive in 97.5% of them.
Otherwise the reasons are listed and nothing is forced.

With K >= 3 twins the bootstrap is hierarchical: a replicate first resamples
the units (twins, or twin pairs) with replacement, then the items, so the
intervals carry the spread between independently trained twins as well as the
noise of the samples. With 2 twins (1 pair) a bootstrap over units is
degenerate (two values say little about their spread), so only items are
resampled, exactly as before: the same random draws, the same numbers.
Measured on synthetic twins whose own peaks scatter around the population's
(60 runs each): the onset interval covered the population extremum in 0.92,
0.97 and 1.0 of runs with 3, 4 and 6 twins, against 0.70-0.77 with items
alone. The percentile interval of a curve's value over so few twins stays
narrower than 95% (0.67, 0.80, 0.87 of 100 runs with 3, 4, 6 twins): a
bootstrap cannot know the spread of a handful of units.

Curves over units are aggregated by the mean (the default) or the median
(`config.analysis.aggregate`): the median over units of each unit's mean over
items, as the authors' CelebA aggregation (cos_dis_aggregate.py: the median
over the 105 twin pairs of each pair's mean cosine similarity, the median over
the 15 models of each model's test loss). A median replicate draws the same
units and items as a mean replicate, then takes the median of the drawn units'
item means. With fewer than MIN_RESAMPLED_UNITS units the median of one or two
values is their mean, and the mean is taken: the same numbers, bit for bit.
"""

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from diffusion_bias.statistics import nearest

# Fewer units than this are averaged, not resampled (see the module docstring).
MIN_RESAMPLED_UNITS = 3

# How curves over units (twins, twin pairs) are aggregated: config.analysis.aggregate.
AGGREGATES = ("mean", "median")


def _median_over_units(aggregate, num_units):
    """Whether `aggregate` takes the median over `num_units` units (else the mean)."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    return aggregate == "median" and num_units >= MIN_RESAMPLED_UNITS


def unit_curve(values: npt.ArrayLike, aggregate: str = "mean") -> np.ndarray:
    """[C] the curve of per-unit, per-item values [C, U, N] (or [C, N]: items alone).

    "mean": the mean over units and items (over units first, as always);
    "median": the median over units of each unit's mean over items (with
    fewer than MIN_RESAMPLED_UNITS units, the mean).
    """
    values = np.asarray(values)
    if values.ndim == 2:
        return values.mean(axis=1)
    if _median_over_units(aggregate, values.shape[1]):
        return np.median(values.mean(axis=2), axis=1)
    return values.mean(axis=1).mean(axis=1)


def over_units(values: npt.ArrayLike, aggregate: str = "mean") -> np.ndarray:
    """[...] the mean, or the median (`aggregate`), of values [..., U] over their last axis, the units.

    With fewer than MIN_RESAMPLED_UNITS units, the mean (the median of one or two values).
    """
    values = np.asarray(values)
    if _median_over_units(aggregate, values.shape[-1]):
        return np.median(values, axis=-1)
    return values.mean(axis=-1)


def bootstrap_mean_curves(
    values: npt.ArrayLike,
    rng: np.random.Generator,
    num_resamples: int = 1000,
    aggregate: str = "mean",
) -> np.ndarray:
    """[B, C] means over items (and units) resampled with replacement, jointly for all checkpoints.

    Args:
        values: [C, N] per-item values of C checkpoints (item j is the same item,
            or the same coupled noise, at every checkpoint); or [C, U, N] per
            unit u (twin or twin pair) and item, item j shared by all units.
            With U >= MIN_RESAMPLED_UNITS a replicate draws U units, then N
            items (the same for every unit and checkpoint), and averages the
            U x N values; with fewer units their mean is taken first and only
            items are drawn.
        rng: numpy Generator.
        aggregate: "mean", or "median": a replicate (the same draws) is then
            the median over the drawn units of their means over the drawn
            items (`unit_curve` of the replicate); with fewer than
            MIN_RESAMPLED_UNITS units, the mean.
    """
    values = np.asarray(values)
    median = _median_over_units(aggregate, values.shape[1] if values.ndim == 3 else 1)
    if values.ndim == 3 and values.shape[1] < MIN_RESAMPLED_UNITS:
        # In the values' own precision: the mean a caller takes itself, bit for bit.
        values = values.mean(axis=1)
    values = values.astype(np.float64)
    if values.ndim == 2:
        idx = rng.integers(0, values.shape[1], (num_resamples, values.shape[1]))
        return np.stack([values[:, i].mean(axis=1) for i in idx])
    num_units, num = values.shape[1:]
    out = np.empty((num_resamples, len(values)))
    for b in range(num_resamples):
        units, items = rng.integers(0, num_units, num_units), rng.integers(0, num, num)
        drawn = values[:, units][:, :, items]
        out[b] = np.median(drawn.mean(axis=2), axis=1) if median else drawn.mean(axis=(1, 2))
    return out


def bootstrap_binned_kl_curves(
    sample_bins: npt.ArrayLike,
    reference_bins: npt.ArrayLike,
    num_bins: int,
    kl_fn: Callable[[np.ndarray, np.ndarray], npt.ArrayLike],
    rng: np.random.Generator,
    num_resamples: int = 1000,
    aggregate: str = "mean",
) -> np.ndarray:
    """[B, C] mean (or median) over models of KL(samples || reference), items resampled jointly.

    Coupled sampling gives sample j of every model and every checkpoint the same
    x_T and noise, and the held-out items are the same at every checkpoint: a
    replicate draws one set of sample indices for all models and checkpoints,
    and one set of held-out indices for all models (not independent
    histograms per checkpoint, which would ignore that coupling and misstate
    the noise of differences between checkpoints). With K >= MIN_RESAMPLED_UNITS
    models a replicate first draws K models with replacement (the same for
    every checkpoint) and averages their KLs; with fewer, every model counts once.

    Args:
        sample_bins: int [C, K, N] histogram bin of sample j of model k at
            checkpoint c (e.g. `nearest.nn_bins` of its NN distance).
        reference_bins: int [K, m] bin of held-out item i in model k's reference.
        num_bins: the number of bins.
        kl_fn: kl_fn(p [..., bins], q [..., bins]) -> [...] of count histograms.
        rng: numpy Generator.
        aggregate: "mean", or "median" over the drawn models (the same draws;
            with fewer than MIN_RESAMPLED_UNITS models, the mean).

    Returns:
        [B, C] replicates of the mean (median) over models of the KL curve.
    """
    sample_bins = np.asarray(sample_bins, np.int64)
    reference_bins = np.asarray(reference_bins, np.int64)
    num_c, num_k, num = sample_bins.shape
    m = reference_bins.shape[-1]
    # Offsets give every (checkpoint, model) its own range of bins in one bincount.
    sample_keys = sample_bins + num_bins * np.arange(num_c * num_k).reshape(num_c, num_k, 1)
    reference_keys = reference_bins + num_bins * np.arange(num_k)[:, None]
    out = np.empty((num_resamples, num_c))
    resample_models = num_k >= MIN_RESAMPLED_UNITS
    median = _median_over_units(aggregate, num_k)
    for b in range(num_resamples):
        models = rng.integers(0, num_k, num_k) if resample_models else slice(None)
        items, held = rng.integers(0, num, num), rng.integers(0, m, m)
        counts = np.bincount(sample_keys[:, :, items].ravel(), minlength=num_c * num_k * num_bins)
        reference = np.bincount(reference_keys[:, held].ravel(), minlength=num_k * num_bins)
        counts = counts.reshape(num_c, num_k, num_bins)
        kl = np.asarray(kl_fn(counts, reference.reshape(num_k, num_bins)[None]))  # [C, K]
        out[b] = np.median(kl[:, models], axis=-1) if median else kl[:, models].mean(-1)
    return out


def nn_divergence_curves(
    own_d1: np.ndarray,
    heldout_d1: np.ndarray,
    length: int,
    rng: np.random.Generator,
    num_resamples: int,
    aggregate: str = "mean",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The NN-divergence bias curve over snapshots, its bootstrap and its per-model values.

    One KL per model (`nearest.nn_divergence`: its samples against the held-out
    sequences, both in its own training set), aggregated over models.

    Args:
        own_d1: [C, K, N] NN distances of model k's samples to its training set.
        heldout_d1: [K, m] the held-out items' distances to the same sets.
        length: sequence length L (the histogram range).
        rng: numpy Generator of the bootstrap.
        aggregate: "mean" or "median" over models (`over_units`).

    Returns:
        (curve [C], replicates [B, C] (`bootstrap_binned_kl_curves`), per_model [C, K]).
    """
    per_model = nearest.nn_divergence(own_d1, np.asarray(heldout_d1)[None], length)
    boot = bootstrap_binned_kl_curves(
        nearest.nn_bins(own_d1, length),
        nearest.nn_bins(heldout_d1, length),
        nearest.NN_BINS,
        nearest.histogram_kl,
        rng,
        num_resamples,
        aggregate,
    )
    return over_units(per_model, aggregate), boot, per_model


def bias_curve(
    bias_statistic: str,
    rng: np.random.Generator,
    num_resamples: int,
    aggregate: str = "mean",
    *,
    similarity: np.ndarray | None = None,
    own_d1: np.ndarray | None = None,
    heldout_d1: np.ndarray | None = None,
    length: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The bias curve over snapshots and its bootstrap, for the analysis and the monitor.

    Args:
        bias_statistic: the Setting's: "similarity" (images) or "nn_divergence" (tokens).
        rng: numpy Generator of the bootstrap.
        num_resamples: B.
        aggregate: "mean" or "median" over twin pairs or models (`unit_curve`,
            `over_units`).
        similarity: [C, P, N] the coupled pairs' similarity (or [C, N], already
            averaged over pairs), for "similarity".
        own_d1, heldout_d1, length: `nn_divergence_curves`' arguments, for
            "nn_divergence".

    Returns:
        (curve [C], replicates [B, C]).
    """
    if bias_statistic == "similarity":
        curve = unit_curve(similarity, aggregate)
        return curve, bootstrap_mean_curves(similarity, rng, num_resamples, aggregate)
    curve, boot, _ = nn_divergence_curves(own_d1, heldout_d1, length, rng, num_resamples, aggregate)
    return curve, boot


def _arg_extremum(curves, mode, valid):
    masked = np.where(valid, curves, -np.inf if mode == "max" else np.inf)
    return masked.argmax(-1) if mode == "max" else masked.argmin(-1)


def _interval(x):
    lo, hi = np.percentile(x, [2.5, 97.5])
    return [float(lo), float(hi)]


def _reasons(epochs, bias_boot, onset, loss_min, gap_b, valid, mode, bias_name):
    """Why the verdict is inconclusive (empty when it is conclusive), in words.

    Args:
        epochs: [C] epochs of the checkpoints.
        bias_boot: [B, C] bootstrap replicates of the bias curve.
        onset: index of the bias extremum; loss_min: of the test-loss minimum.
        gap_b: [B] bootstrap replicates of the gap, in epochs.
        valid, mode, bias_name: as in `decide`.
    """
    reasons = []
    first, last = np.flatnonzero(valid)[[0, -1]]
    if onset in (first, last):
        reasons.append(
            f"the {bias_name} extremum is at the {'first' if onset == first else 'last'}"
            " valid snapshot"
        )
    if loss_min in (0, len(epochs) - 1):
        reasons.append(
            "the test loss is lowest at the "
            f"{'first' if loss_min == 0 else 'last'} snapshot (no minimum inside "
            "the run)"
        )
    sign = 1.0 if mode == "max" else -1.0
    for end in {first, last} - {onset}:
        stand_out = sign * (bias_boot[:, onset] - bias_boot[:, end])
        if np.percentile(stand_out, 2.5) <= 0:
            reasons.append(
                f"the {bias_name} extremum does not stand out of the snapshot at "
                f"epoch {epochs[end]:g} beyond bootstrap noise"
            )
    if np.percentile(gap_b, 2.5) <= 0:
        reasons.append(
            "the onset does not precede the test-loss minimum in 97.5% of bootstrap replicates"
        )
    return reasons


def decide(
    epochs: npt.ArrayLike,
    bias: npt.ArrayLike,
    bias_boot: np.ndarray,
    loss: npt.ArrayLike,
    loss_boot: npt.ArrayLike,
    mode: str,
    valid: npt.ArrayLike | None = None,
    bias_name: str = "bias",
) -> dict[str, Any]:
    """The verdict of one setting.

    Args:
        epochs: [C] epochs of the checkpoints, increasing.
        bias: [C] the bias curve; `mode` "max" (similarity) or "min" (divergence).
        bias_boot: [B, C] bootstrap replicates of `bias`.
        loss: [C] held-out loss; loss_boot: [B, C] its replicates.
        valid: optional bool [C], checkpoints where the bias extremum may sit
            (e.g. enough grammatical samples); all by default.
        bias_name: how the report names the bias curve.

    Returns:
        dict: bias_onset_epoch, test_loss_min_epoch, gap_epochs, their 95%
        intervals, conclusive (bool) and reasons (list of str); and
        bias_onset_index, test_loss_min_index, the snapshots (indices into
        `epochs`) at the onset and the minimum, so that readers address them
        by index rather than by matching float epochs. Without a valid
        checkpoint, the epochs and indices are None.
    """
    epochs = np.asarray(epochs, np.float64)
    valid = np.ones(len(epochs), bool) if valid is None else np.asarray(valid, bool)
    if not valid.any():
        return dict(
            conclusive=False,
            reasons=[f"no checkpoint is valid for the {bias_name}"],
            bias_onset_epoch=None,
            test_loss_min_epoch=None,
            gap_epochs=None,
            bias_onset_index=None,
            test_loss_min_index=None,
        )
    onset = int(_arg_extremum(np.asarray(bias), mode, valid))
    loss_min = int(np.argmin(loss))
    onset_b = _arg_extremum(np.asarray(bias_boot), mode, valid)
    loss_b = np.argmin(loss_boot, axis=-1)
    gap_b = epochs[loss_b] - epochs[onset_b]

    reasons = _reasons(epochs, bias_boot, onset, loss_min, gap_b, valid, mode, bias_name)
    return dict(
        bias_onset_epoch=float(epochs[onset]),
        bias_onset_interval=_interval(epochs[onset_b]),
        test_loss_min_epoch=float(epochs[loss_min]),
        test_loss_min_interval=_interval(epochs[loss_b]),
        gap_epochs=float(epochs[loss_min] - epochs[onset]),
        gap_interval=_interval(gap_b),
        conclusive=not reasons,
        reasons=reasons,
        bias_onset_index=onset,
        test_loss_min_index=loss_min,
    )


# ---------------------------------------------------------------------------
# The verdict in words: the console, the figures and the report all say it so.


def minimum_contrast(item_losses: np.ndarray, index: int) -> dict[str, float]:
    """How far the loss curve's ends stand above snapshot `index`, in paired standard errors.

    The held-out loss is measured on one fixed (item, t, noise) grid at every
    snapshot, so two snapshots' losses are paired by item: the standard error
    of their difference is that of the per-item differences, far below the
    unpaired one.

    Args:
        item_losses: [C, m] per snapshot, each held-out item's loss (mean over twins).
        index: the snapshot compared with the others (the test-loss minimum).

    Returns:
        {"first": z, "last": z}: mean(L_end - L_index) / (sd / sqrt(m)); 0 where
        the end is `index` itself.
    """

    def z(end):
        if end == index:
            return 0.0
        diff = item_losses[end] - item_losses[index]
        return float(diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff))))

    return {"first": z(0), "last": z(len(item_losses) - 1)}


def number(x: object, digits: int = 3) -> str:
    """A value as text: "n/a" for None; epochs and other large values in full (10000, not 1e+04)."""
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.0f}" if 10**digits <= abs(x) < 1e9 else f"{x:.{digits}g}"
    return str(x)


def interval(pair: Sequence[float | None] | None) -> str:
    """A 95% interval as "[lo, hi]", "n/a" when absent."""
    return "n/a" if not pair else f"[{number(pair[0])}, {number(pair[1])}]"


def with_interval(value: float | None, pair: Sequence[float | None] | None) -> str:
    """ "value [lo, hi]", or "n/a" when there is no value."""
    return f"{number(value)} {interval(pair)}" if value is not None else "n/a"


def conclusion(v: Mapping[str, Any]) -> str:
    """One word for a verdict dict: "conclusive", or "inconclusive" naming the other
    onset statistics that are conclusive where there are some."""
    if v.get("conclusive"):
        return "conclusive"
    others = [name for name, o in v.get("other_statistics", {}).items() if o.get("conclusive")]
    return "inconclusive" + (f" (conclusive by {'; '.join(others)})" if others else "")


def in_words(v: Mapping[str, Any]) -> dict[str, str]:
    """A verdict dict (`decide`'s, with the fields the analysis adds) as sentences.

    Returns:
        dict of sentences: "onset" (onset, test-loss minimum and gap with their
        intervals; absent when there is no onset), "gate" (only when the onset
        was searched under a grammaticality gate: the ungated onset beside it),
        and "conclusion" (conclusive, or inconclusive with the reasons).
    """
    words = {}
    if v.get("bias_onset_epoch") is not None:
        words["onset"] = (
            f"Bias onset ({v.get('bias_statistic', 'bias')}) at epoch "
            f"{with_interval(v['bias_onset_epoch'], v.get('bias_onset_interval'))}, "
            "test-loss minimum at epoch "
            f"{with_interval(v.get('test_loss_min_epoch'), v.get('test_loss_min_interval'))}, "
            f"gap {with_interval(v.get('gap_epochs'), v.get('gap_interval'))} epochs."
        )
    gate, ungated = v.get("grammaticality_gate"), v.get("ungated")
    if gate and ungated:
        words["gate"] = (
            f"The onset is searched where at least {number(gate)} of the samples are "
            "grammatical. Without that gate (the paper's definition): onset at epoch "
            f"{with_interval(ungated.get('bias_onset_epoch'), ungated.get('bias_onset_interval'))}"
            f", gap {with_interval(ungated.get('gap_epochs'), ungated.get('gap_interval'))}, "
            f"{conclusion(ungated)}."
        )
    contrast = v.get("test_loss_min_contrast")
    if contrast is not None:
        words["minimum"] = (
            "The held-out loss at the first and at the last snapshot stands "
            f"{number(contrast['first'])} and {number(contrast['last'])} paired standard errors "
            "above its minimum."
        )
    if v.get("conclusive"):
        words["conclusion"] = "Conclusive: bias sets in before the test-loss minimum."
    else:
        words["conclusion"] = "Inconclusive: " + "; ".join(v.get("reasons") or []) + "."
    return words


def sentence(v: Mapping[str, Any]) -> str:
    """The verdict in one paragraph (the console, a notebook)."""
    return " ".join(in_words(v).values())


def final(stats: dict) -> tuple[dict, dict]:
    """(verdict, grid) a run's finding rests on, from its statistics.json dict.

    Where snapshots were replayed around the onset and the test-loss minimum
    (`stats["refined"]`), the verdict over that denser grid: the same statistics
    and rules, the extrema located between the log-spaced snapshots. Otherwise
    the log-spaced grid's. `grid` is the entry the verdict's indices point into
    (`stats["refined"]` or `stats`).
    """
    refined = stats.get("refined")
    return (refined["verdict"], refined) if refined else (stats["verdict"], stats)


def final_sentence(stats: dict) -> str:
    """`sentence` of `final(stats)`, saying which grid it is on when refined."""
    v, grid = final(stats)
    if grid is stats:
        return sentence(v)
    return (
        f"On the refined grid ({len(grid['steps'])} snapshots): {sentence(v)} "
        f"(Log-spaced grid alone: {conclusion(stats['verdict'])}.)"
    )

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
"""

import numpy as np


def bootstrap_mean_curves(values, rng, num_resamples=1000):
    """[B, C] means over items resampled with replacement, jointly for all checkpoints.

    Args:
        values: [C, N] per-item values of C checkpoints (item j is the same item,
            or the same coupled noise, at every checkpoint).
    """
    values = np.asarray(values, np.float64)
    idx = rng.integers(0, values.shape[1], (num_resamples, values.shape[1]))
    return np.stack([values[:, i].mean(axis=1) for i in idx])


def bootstrap_kl_curves(sample_counts, reference_counts, kl_fn, rng, num_resamples=1000):
    """[B, C] mean over models of KL(sample || reference) of resampled histograms.

    Resampling a histogram's counts (multinomially) is resampling the items it
    counts. Each model has its own reference (the held-out distances to its
    own training set), resampled once per replicate and shared by all
    checkpoints, as the held-out items are.

    Args:
        sample_counts: [C, K, bins] counts of model k at checkpoint c ([C, bins]
            is one model).
        reference_counts: [K, bins] the models' references ([bins] for one).
        kl_fn: kl_fn(p [..., bins], q [..., bins]) -> [...], broadcasting.
    """
    sample_counts = np.asarray(sample_counts, np.int64)
    reference_counts = np.asarray(reference_counts, np.int64)
    if sample_counts.ndim == 2:
        sample_counts, reference_counts = sample_counts[:, None], reference_counts[None]

    def resample(counts, size):
        total = counts.sum(-1)
        probs = counts / np.maximum(total, 1)[..., None]
        return rng.multinomial(total, probs, size=size)

    ref = resample(reference_counts, (num_resamples,) + reference_counts.shape[:-1])
    samples = resample(sample_counts, (num_resamples,) + sample_counts.shape[:-1])
    return np.asarray(kl_fn(samples, ref[:, None])).mean(-1)  # [B, C, K] -> [B, C]


def _arg_extremum(curves, mode, valid):
    masked = np.where(valid, curves, -np.inf if mode == "max" else np.inf)
    return masked.argmax(-1) if mode == "max" else masked.argmin(-1)


def _interval(x):
    lo, hi = np.percentile(x, [2.5, 97.5])
    return [float(lo), float(hi)]


def decide(epochs, bias, bias_boot, loss, loss_boot, mode, valid=None, bias_name="bias"):
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
        intervals, conclusive (bool) and reasons (list of str).
    """
    epochs = np.asarray(epochs, np.float64)
    valid = np.ones(len(epochs), bool) if valid is None else np.asarray(valid, bool)
    reasons = []
    if not valid.any():
        return dict(
            conclusive=False,
            reasons=[f"no checkpoint is valid for the {bias_name}"],
            bias_onset_epoch=None,
            test_loss_min_epoch=None,
            gap_epochs=None,
        )
    onset = int(_arg_extremum(np.asarray(bias), mode, valid))
    loss_min = int(np.argmin(loss))
    onset_b = _arg_extremum(np.asarray(bias_boot), mode, valid)
    loss_b = np.argmin(loss_boot, axis=-1)
    gap_b = epochs[loss_b] - epochs[onset_b]

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
    return dict(
        bias_onset_epoch=float(epochs[onset]),
        bias_onset_interval=_interval(epochs[onset_b]),
        test_loss_min_epoch=float(epochs[loss_min]),
        test_loss_min_interval=_interval(epochs[loss_b]),
        gap_epochs=float(epochs[loss_min] - epochs[onset]),
        gap_interval=_interval(gap_b),
        conclusive=not reasons,
        reasons=reasons,
    )

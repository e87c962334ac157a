"""Nearest neighbours of samples in the training sets (PAPER.md, statistic NN).

A sample closer to its own twin's training set than to the other twins' sets,
or a copy of a training item, is the signature of biased generalisation; the
held-out pool's distances to each training set are the unbiased baseline.
"""

import numpy as np

from diffusion_bias import kernels


def _metric(kind):
    return "hamming" if kind == "tokens" else "l2"


def nearest_statistics(samples, train, heldout, kind):
    """Distances of samples and held-out items to every training set.

    Args:
        samples: [K, N, ...] coupled samples of the K twins.
        train: [K, n, ...] the twins' training sets.
        heldout: [m, ...] held-out items.
        kind: "tokens" (Hamming distance) or "images" (Euclidean distance).

    Returns:
        dict of numpy arrays:
          own_d1, own_d2: [K, N] nearest and second-nearest distance of twin k's
              samples in training set k;
          other_d1: [K, N] nearest distance in the closest other training set;
          heldout_d1, heldout_d2: [K, m] the held-out items in training set k;
          own_index: [K, N] index of the nearest item of training set k.
    """
    metric = _metric(kind)
    num_twins = len(train)
    nn = kernels.nearest_in_each(samples, train, metric)  # [K, K, N]
    base = kernels.nearest_in_each(heldout[None], train, metric)  # [1, K, m]
    own = np.arange(num_twins)
    others = np.where(np.eye(num_twins, dtype=bool)[:, :, None], np.inf, nn.d1)
    return dict(
        own_d1=np.asarray(nn.d1[own, own], np.float64),
        own_d2=np.asarray(nn.d2[own, own], np.float64),
        own_index=np.asarray(nn.i1[own, own]),
        other_d1=others.min(axis=1) if num_twins > 1 else np.full_like(nn.d1[0], np.nan),
        heldout_d1=np.asarray(base.d1[0], np.float64),
        heldout_d2=np.asarray(base.d2[0], np.float64),
    )


def memorized_fraction(d1, d2):
    """Share of items whose nearest neighbour is 3x closer than the second one.

    The standard copy criterion d1 / d2 < 1/3; an item with d1 = d2 = 0 (a copy
    of a duplicated training item) counts as memorised.
    """
    d1, d2 = np.asarray(d1, np.float64), np.asarray(d2, np.float64)
    return float(np.mean((d1 < d2 / 3) | ((d1 == 0) & (d2 == 0))))


def closer_to_own_share(own_d1, other_d1):
    """Share of samples strictly closer to their own training set; ties count half."""
    return float(np.mean((own_d1 < other_d1) + 0.5 * (own_d1 == other_d1)))


def histogram_kl(p_counts, q_counts, eps=1e-10):
    """KL(p || q) of two count histograms, both smoothed by `eps`."""
    p = np.asarray(p_counts, np.float64) + eps
    q = np.asarray(q_counts, np.float64) + eps
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def nn_histogram(distances, length, bins=20):
    """Counts of Hamming NN distances in `bins` equal bins on [0, length]."""
    return np.histogram(distances, bins=bins, range=(0, length))[0]


def nn_divergence(sample_d1, heldout_d1, length, bins=20):
    """KL(generated || held-out) of the NN-distance histograms (PAPER.md, Fig. 4a).

    Args:
        sample_d1: [N] NN distances of generated samples to a training set.
        heldout_d1: [m] NN distances of held-out sequences to the same set.
        length: sequence length L (the histogram range).
    """
    return histogram_kl(
        nn_histogram(sample_d1, length, bins), nn_histogram(heldout_d1, length, bins)
    )

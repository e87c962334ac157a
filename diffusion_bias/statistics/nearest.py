"""Nearest neighbours of samples in the training sets (the paper (arXiv 2603.03469), statistic NN).

A sample closer to its own twin's training set than to the other twins' sets,
or a copy of a training item, is the signature of biased generalisation; the
held-out pool's distances to each training set are the unbiased baseline.
"""

import numpy as np
from jax.typing import ArrayLike

from diffusion_bias import checks
from diffusion_bias import setting as setting_lib
from diffusion_bias.kernels import search
from diffusion_bias.statistics import sample_split

# The paper's NN-distance histograms: 20 equal bins on [0, L].
NN_BINS = 20


def nearest_statistics(
    samples: ArrayLike, train: ArrayLike, heldout: ArrayLike, kind: str, seeds_per_split: int = 1
) -> dict[str, np.ndarray]:
    """Distances of samples and held-out items to every training set.

    Args:
        samples: [K, N, ...] coupled samples of the K twins.
        train: [K, n, ...] the twins' training sets.
        heldout: [m, ...] held-out items.
        kind: "tokens" (Hamming distance) or "images" (Euclidean distance).
        seeds_per_split: S, twins trained on each split (twin k on split
            k // S): the other sets are those of the other splits.

    Returns:
        dict of numpy arrays:
          own_d1, own_d2: [K, N] nearest and second-nearest distance of twin k's
              samples in training set k;
          other_d1: [K, N] nearest distance in the closest other split's set;
          heldout_d1, heldout_d2: [K, m] the held-out items in training set k;
          own_index: [K, N] index of the nearest item of training set k.
    """
    metric = setting_lib.of(kind).metric
    samples, train, heldout = (
        checks.finite(name, a)
        for name, a in (("samples", samples), ("train", train), ("heldout", heldout))
    )
    if train.ndim < 2 or len(samples) != len(train):
        raise ValueError(
            f"samples [K, N, ...] and train [K, n, ...] need one K, got {samples.shape} "
            f"and {train.shape}"
        )
    num_twins = len(train)
    nn = search.nearest_in_each(samples, train, metric)  # [K, K, N]
    base = search.nearest_in_each(heldout[None], train, metric)  # [1, K, m]
    own = np.arange(num_twins)
    split = sample_split.split_of(num_twins, seeds_per_split)
    same = split[:, None] == split[None, :]  # [K, K]: own split, whatever the seed
    others = np.where(same[:, :, None], np.inf, nn.d1)
    return dict(
        own_d1=np.asarray(nn.d1[own, own], np.float64),
        own_d2=np.asarray(nn.d2[own, own], np.float64),
        own_index=np.asarray(nn.i1[own, own]),
        other_d1=others.min(axis=1) if split[-1] > 0 else np.full_like(nn.d1[0], np.nan),
        heldout_d1=np.asarray(base.d1[0], np.float64),
        heldout_d2=np.asarray(base.d2[0], np.float64),
    )


def memorized_fraction(d1: ArrayLike, d2: ArrayLike) -> float:
    """Share of items whose nearest neighbour is 3x closer than the second one.

    The copy criterion of Bonnaire et al., d1 / d2 < 1/3, as a strict ratio test:
    an item with d1 = d2 = 0 (a copy of a training item present twice) has the
    undefined ratio 0/0 and is not counted; `exact_copy_fraction` counts copies.
    """
    d1, d2 = np.asarray(d1, np.float64), np.asarray(d2, np.float64)
    return float(np.mean(d1 < d2 / 3))


def exact_copy_fraction(d1: ArrayLike) -> float:
    """Share of items at distance 0 from the training set (exact copies)."""
    return float(np.mean(np.asarray(d1) == 0))


def closer_to_own_share(own_d1: ArrayLike, other_d1: ArrayLike) -> float:
    """Share of samples strictly closer to their own training set; ties count half."""
    return float(np.mean((own_d1 < other_d1) + 0.5 * (own_d1 == other_d1)))


def histogram_kl(
    p_counts: ArrayLike, q_counts: ArrayLike, floor: float = 1e-8
) -> float | np.ndarray:
    """KL(p || q) of two count histograms, smoothed as the paper's code does.

    Each histogram is normalised to probabilities, then clipped to [floor, 1]
    without renormalising, and the KL is sum p log(p / q): an empty bin of p
    adds ~floor log(floor / q), an empty bin of q a large finite term. A
    histogram with no counts is all zeros before clipping.

    Args:
        p_counts, q_counts: [..., bins] counts; leading axes broadcast.

    Returns:
        [...] KL values (a float for 1-d inputs).
    """
    p, q = (np.asarray(c, np.float64) for c in (p_counts, q_counts))
    p, q = (c / np.maximum(c.sum(-1, keepdims=True), 1e-300) for c in (p, q))
    p, q = np.clip(p, floor, 1.0), np.clip(q, floor, 1.0)
    kl = np.sum(p * np.log(p / q), axis=-1)
    return float(kl) if kl.ndim == 0 else kl


def nn_bins(distances: ArrayLike, length: float, bins: int = NN_BINS) -> np.ndarray:
    """Bin of each NN distance among `bins` equal bins on [0, length], as `np.histogram`.

    A bin holds [lo, hi), the last one [lo, length]; distances outside [0, length]
    get -1 (not counted).

    Args:
        distances: [...] distances.

    Returns:
        int64 [...] bin indices.
    """
    distances = np.asarray(distances, np.float64)
    edges = np.linspace(0, length, bins + 1)
    index = np.searchsorted(edges, distances, side="right") - 1
    index = np.where(distances == length, bins - 1, index)
    return np.where((distances < 0) | (distances > length), -1, index).astype(np.int64)


def nn_histogram(distances: ArrayLike, length: float, bins: int = NN_BINS) -> np.ndarray:
    """Counts of NN distances in `bins` equal bins on [0, length]: [..., bins].

    Args:
        distances: [..., N] distances; one histogram per leading index.
    """
    index = nn_bins(distances, length, bins)
    flat = index.reshape(-1, index.shape[-1])
    counts = [np.bincount(row[row >= 0], minlength=bins) for row in flat]
    return np.asarray(counts).reshape(index.shape[:-1] + (bins,))


def nn_divergence(
    sample_d1: ArrayLike, heldout_d1: ArrayLike, length: float, bins: int = NN_BINS
) -> float | np.ndarray:
    """KL(generated || held-out) of the NN-distance histograms (the paper (arXiv 2603.03469), Fig. 4a).

    One KL per model, as in the paper: model k's samples against the held-out
    sequences, both measured in model k's own training set. The paper's curve
    is the mean of these over models.

    Args:
        sample_d1: [..., N] NN distances of generated samples to a training set
            (e.g. [K, N]: twin k's samples in training set k).
        heldout_d1: [..., m] NN distances of held-out sequences to the same set.
        length: sequence length L (the histogram range).

    Returns:
        [...] one KL per leading index (a float for 1-d inputs).
    """
    return histogram_kl(
        nn_histogram(sample_d1, length, bins), nn_histogram(heldout_d1, length, bins)
    )

"""Sample-split similarity: how alike twins' coupled samples are (PAPER.md, statistic 1).

Sample j of every twin comes from the same x_T and step noise. While the twins
generalise without bias they map it to nearly the same sample; as each drifts
toward its own training set, the pairs part.
"""

import itertools

import numpy as np

from diffusion_bias import kernels


def twin_pairs(num_twins):
    """All pairs (a, b), a < b, of K twins: list of P = K(K-1)/2 tuples."""
    return list(itertools.combinations(range(num_twins), 2))


def pair_similarity(samples, kind):
    """Similarity of every coupled pair.

    Args:
        samples: [K, N, ...] coupled samples (int tokens [K, N, L] or images).
        kind: "tokens" (fraction of equal tokens) or "images" (cosine of the
            per-image standardised pixels).

    Returns:
        float [P, N], one row per pair of `twin_pairs(K)`.
    """
    paired = kernels.paired_token_similarity if kind == "tokens" else kernels.paired_cosine
    return np.stack(
        [np.asarray(paired(samples[a], samples[b])) for a, b in twin_pairs(len(samples))]
    )


def summarize(values, bins):
    """Mean, standard error over items, and histogram of [P, N] similarities.

    The s.e.m. is over the N coupled items (pairs of one item share its noise).
    """
    per_item = values.mean(axis=0)
    hist, edges = np.histogram(values, bins=bins)
    return dict(
        mean=float(per_item.mean()),
        sem=float(per_item.std(ddof=1) / np.sqrt(len(per_item))),
        hist=hist.tolist(),
        edges=edges.tolist(),
    )

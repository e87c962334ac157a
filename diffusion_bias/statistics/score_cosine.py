"""Score cosine: how alike twins' predicted noise is on the same noisy inputs.

the paper (arXiv 2603.03469), the score divergence of the image setting: at a diffusion step t the
twins see the same x_t; while they generalise without bias they predict nearly
the same noise, and the cosine of their predictions falls as each drifts
toward its own training set.
"""

from collections.abc import Sequence

import numpy as np
from jax.typing import ArrayLike

from diffusion_bias.statistics import sample_split


def cosine(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """[B] cosine of a[i] and b[i], flattened (raw vectors, not standardised)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return (a * b).sum(-1) / np.maximum(
        np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12
    )


def pair_cosines(eps: Sequence[ArrayLike]) -> list[float]:
    """[P] mean cosine over inputs of each twin pair's predictions on shared inputs.

    Args:
        eps: K arrays [B, ...], twin k's predicted noise on the same B inputs.
    """
    return [np.mean(cosine(eps[a], eps[b])) for a, b in sample_split.twin_pairs(len(eps))]


def own_inputs_pair_cosines(eps: Sequence[Sequence[ArrayLike]]) -> list[float]:
    """[P] per pair (a, b): the mean of its cosine on a's and on b's training inputs.

    Args:
        eps: eps[own][k] [B, ...], twin k's predicted noise on B noisy training
            items of twin `own` (K x K arrays).
    """
    return [
        np.mean([np.mean(cosine(eps[own][a], eps[own][b])) for own in (a, b)])
        for a, b in sample_split.twin_pairs(len(eps))
    ]

"""Sample-split similarity: how alike twins' coupled samples are (the paper (arXiv 2603.03469), statistic 1).

Sample j of every twin comes from the same x_T and step noise. While the twins
generalise without bias they map it to nearly the same sample; as each drifts
toward its own training set, the pairs part.
"""

import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from diffusion_bias import setting as setting_lib

# A channel whose std is below this is treated as constant: it contributes
# zeros to the standardised image, so a constant image has similarity 0 with
# every image, never NaN.
STD_EPS = 1e-6
_NORM_EPS = 1e-12


def twin_pairs(num_twins: int) -> list[tuple[int, int]]:
    """All pairs (a, b), a < b, of K twins: list of P = K(K-1)/2 tuples."""
    return list(itertools.combinations(range(num_twins), 2))


def _check_seeds(num_models, seeds_per_split):
    if seeds_per_split < 1 or num_models % seeds_per_split:
        raise ValueError(
            f"seeds_per_split = {seeds_per_split} must be >= 1 and divide the {num_models} models"
        )


def split_of(num_models: int, seeds_per_split: int = 1) -> np.ndarray:
    """int [M] the split each model trains on: model m on split m // seeds_per_split."""
    _check_seeds(num_models, seeds_per_split)
    return np.arange(num_models) // seeds_per_split


def partner(num_models: int, seeds_per_split: int = 1) -> np.ndarray:
    """int [M] each model's partner: the next split's model of its seed index, (m + S) mod M.

    The partner's training items are out of model m's training set (its
    non-members); with one seed a split, twin k's partner is twin (k + 1) mod K.
    """
    _check_seeds(num_models, seeds_per_split)
    return (np.arange(num_models) + seeds_per_split) % num_models


def pair_groups(num_models: int, seeds_per_split: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """bool [P] masks over `twin_pairs(M)`: (cross-split pairs, same-split pairs).

    A same-split pair is two models of one split from different seeds (the
    paper's Fig. 1b baseline); the bias statistics compare cross-split pairs.
    """
    split = split_of(num_models, seeds_per_split)
    same = np.array([split[a] == split[b] for a, b in twin_pairs(num_models)], bool)
    return ~same, same


@jax.jit
def standardize_images(x: ArrayLike) -> jax.Array:
    """The paper's image standardisation, so that a dot product is a cosine.

    Args:
        x: [N, H, W, C] images.

    Returns:
        float32 [N, H*W*C]: per image and channel minus the mean and over the
        std (population std over the H*W pixels), flattened, each row then
        L2-normalised. Channels with std below `STD_EPS` become zeros, so a
        constant image is an all-zero row.
    """
    if x.ndim != 4:
        raise ValueError(f"images must have shape [N, H, W, C], got {x.shape}")
    x = x.astype(jnp.float32)
    mean = x.mean(axis=(1, 2), keepdims=True)  # [N, 1, 1, C]
    std = x.std(axis=(1, 2), keepdims=True)
    z = jnp.where(std > STD_EPS, (x - mean) / jnp.maximum(std, STD_EPS), 0.0)
    z = z.reshape(x.shape[0], -1)
    norm = jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True))
    return z / jnp.maximum(norm, _NORM_EPS)


@jax.jit
def paired_cosine(a: ArrayLike, b: ArrayLike) -> jax.Array:
    """Cosine similarity of each standardised pair of images.

    Args:
        a: [N, H, W, C] images.
        b: [N, H, W, C] images.

    Returns:
        float32 [N] (a jax array, so the function composes with jit and vmap):
        `standardize_images(a)[i] . standardize_images(b)[i]`, in [-1, 1];
        0 where either image is constant.
    """
    if a.shape != b.shape:
        raise ValueError(f"paired images must have equal shapes, got {a.shape} and {b.shape}")
    return jnp.sum(standardize_images(a) * standardize_images(b), axis=-1)


@jax.jit
def paired_token_similarity(a: ArrayLike, b: ArrayLike) -> jax.Array:
    """Fraction of equal tokens of each pair of sequences.

    Args:
        a: [N, L] int tokens (any trailing shape is flattened).
        b: [N, L] int tokens.

    Returns:
        float32 [N] (a jax array): mean over positions of `a[i] == b[i]`.
    """
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(
            f"paired sequences must have equal shapes [N, L], got {a.shape} and {b.shape}"
        )
    equal = (a == b).reshape(a.shape[0], -1)
    return jnp.mean(equal.astype(jnp.float32), axis=-1)


def pair_similarity(samples: np.ndarray | jax.Array, kind: str) -> np.ndarray:
    """Similarity of every coupled pair.

    Args:
        samples: [K, N, ...] coupled samples (int tokens [K, N, L] or images).
        kind: "tokens" (fraction of equal tokens) or "images" (cosine of the
            per-image standardised pixels).

    Returns:
        float [P, N], one row per pair of `twin_pairs(K)`.
    """
    paired = {"overlap": paired_token_similarity, "cosine": paired_cosine}[
        setting_lib.of(kind).similarity
    ]
    return np.stack(
        [np.asarray(paired(samples[a], samples[b])) for a, b in twin_pairs(len(samples))]
    )


def summarize(values: np.ndarray, bins: int | Sequence[float] | np.ndarray) -> dict[str, Any]:
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

"""Nearest-neighbour statistics: brute force agreement and refused inputs."""

import numpy as np
import pytest

from diffusion_bias.statistics import nearest
from diffusion_bias.statistics import sample_split


def _brute(a, b):
    """[len(a), 2] the two smallest Euclidean distances of each row of a to rows of b."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    d = np.sort(np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)), axis=1)
    return d[:, :2]


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((3, 7, 2, 2, 1)),  # samples [K, N, ...]
        rng.standard_normal((3, 9, 2, 2, 1)),  # train [K, n, ...]
        rng.standard_normal((5, 2, 2, 1)),  # heldout [m, ...]
    )


def test_nearest_statistics_equal_brute_force_distances():
    samples, train, heldout = _images()
    stats = nearest.nearest_statistics(samples, train, heldout, "images")
    for k in range(3):
        own = _brute(samples[k], train[k])
        np.testing.assert_allclose(stats["own_d1"][k], own[:, 0], rtol=1e-5)
        np.testing.assert_allclose(stats["own_d2"][k], own[:, 1], rtol=1e-5)
        other = np.min([_brute(samples[k], train[j])[:, 0] for j in range(3) if j != k], axis=0)
        np.testing.assert_allclose(stats["other_d1"][k], other, rtol=1e-5)
        np.testing.assert_allclose(
            stats["heldout_d1"][k], _brute(heldout, train[k])[:, 0], rtol=1e-5
        )


def test_with_two_seeds_a_split_the_other_sets_are_the_other_splits_not_the_twin_of_one_seed():
    samples, train, heldout = _images(1)
    split_train = train[:2]
    models_train = np.repeat(split_train, 2, axis=0)  # models 0, 1 on split 0; 2, 3 on split 1
    models_samples = np.concatenate([samples, samples[:1]])  # [4, N, ...]
    stats = nearest.nearest_statistics(models_samples, models_train, heldout, "images", 2)
    for m in range(4):
        own = _brute(models_samples[m], split_train[m // 2])
        other = _brute(models_samples[m], split_train[1 - m // 2])
        np.testing.assert_allclose(stats["own_d1"][m], own[:, 0], rtol=1e-5)
        # Not 0-distance to the same items held by the other seed's model.
        np.testing.assert_allclose(stats["other_d1"][m], other[:, 0], rtol=1e-5)


def test_nan_data_a_wrong_k_and_an_unknown_kind_are_refused_with_the_argument_named():
    samples, train, heldout = _images()
    broken = samples.copy()
    broken[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="samples holds 1 NaN"):
        nearest.nearest_statistics(broken, train, heldout, "images")
    far = heldout.copy()
    far[2, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="heldout holds 1 NaN or infinite"):
        nearest.nearest_statistics(samples, train, far, "images")
    with pytest.raises(ValueError, match="need one K"):
        nearest.nearest_statistics(samples[:2], train, heldout, "images")
    with pytest.raises(ValueError, match="kind must be one of"):
        nearest.nearest_statistics(samples, train, heldout, "image")
    with pytest.raises(ValueError, match="kind must be one of"):
        sample_split.pair_similarity(samples, "image")

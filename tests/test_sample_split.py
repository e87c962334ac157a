"""The paired similarities of sample-split similarity against direct numpy computations."""

import numpy as np
import pytest

from diffusion_bias.statistics import sample_split


def _standardize(x):
    """Numpy float64 reference of the paper's standardisation. [N, H*W*C]."""
    x = np.asarray(x, np.float64)
    std = x.std(axis=(1, 2), keepdims=True)
    z = np.where(
        std > sample_split.STD_EPS,
        (x - x.mean(axis=(1, 2), keepdims=True)) / np.maximum(std, 1e-30),
        0.0,
    )
    z = z.reshape(len(x), -1)
    norm = np.linalg.norm(z, axis=-1, keepdims=True)
    return z / np.where(norm > 0, norm, 1.0)


def test_standardize_images_matches_numpy_and_zeroes_constant_images():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4, 3, 2)).astype(np.float32)
    x[1] = 0.7  # constant image
    x[2, ..., 0] = -3.0  # one constant channel
    z = np.asarray(sample_split.standardize_images(x))
    assert z.shape == (5, 24) and z.dtype == np.float32
    np.testing.assert_allclose(z, _standardize(x), atol=1e-6)
    np.testing.assert_array_equal(z[1], 0.0)
    # Per image and channel, the statistic ignores offset and positive scale.
    shifted = 2.5 * x + rng.normal(size=(5, 1, 1, 2)).astype(np.float32)
    np.testing.assert_allclose(sample_split.standardize_images(shifted), z, atol=1e-5)


def test_paired_cosine_matches_numpy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 4, 4, 3)).astype(np.float32)
    b = a + 0.5 * rng.normal(size=a.shape).astype(np.float32)
    b[2] = 1.0
    got = np.asarray(sample_split.paired_cosine(a, b))
    want = np.sum(_standardize(a) * _standardize(b), axis=-1)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[2] == 0.0
    np.testing.assert_allclose(sample_split.paired_cosine(a, a), 1.0, atol=1e-6)


def test_paired_token_similarity_matches_numpy():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 3, (7, 16))
    b = rng.integers(0, 3, (7, 16))
    got = np.asarray(sample_split.paired_token_similarity(a, b))
    np.testing.assert_allclose(got, (a == b).mean(-1), atol=1e-7)
    np.testing.assert_array_equal(sample_split.paired_token_similarity(a, a), 1.0)


def test_paired_shapes_must_match():
    with pytest.raises(ValueError, match="equal shapes"):
        sample_split.paired_cosine(np.zeros((2, 2, 2, 1)), np.zeros((3, 2, 2, 1)))
    with pytest.raises(ValueError, match="equal shapes"):
        sample_split.paired_token_similarity(np.zeros((2, 4), int), np.zeros((2, 5), int))


def test_models_of_a_split_are_adjacent_and_each_partner_is_of_the_next_split():
    for num_splits, seeds in ((2, 1), (3, 1), (2, 2), (3, 2), (2, 3)):
        num_models = num_splits * seeds
        split = sample_split.split_of(num_models, seeds)
        partner = sample_split.partner(num_models, seeds)
        assert split.tolist() == [m // seeds for m in range(num_models)]
        # A permutation whose every model is of the next split (cyclically).
        assert sorted(partner.tolist()) == list(range(num_models))
        assert all(split[partner[m]] == (split[m] + 1) % num_splits for m in range(num_models))
    # One seed a split: twin k's partner is twin (k + 1) mod K, as before the field.
    assert sample_split.partner(3).tolist() == [1, 2, 0]


def test_pair_groups_split_every_pair_by_whether_its_models_share_a_split():
    cross, same = sample_split.pair_groups(6, 2)
    pairs = sample_split.twin_pairs(6)
    assert [pairs[i] for i in np.flatnonzero(same)] == [(0, 1), (2, 3), (4, 5)]
    assert cross.sum() == 15 - 3 and not (cross & same).any()
    cross, same = sample_split.pair_groups(3)
    assert cross.all() and not same.any()


def test_seeds_per_split_must_divide_the_models():
    with pytest.raises(ValueError, match="must be >= 1 and divide the 5 models"):
        sample_split.partner(5, 2)

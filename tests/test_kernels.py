"""Similarity and nearest-neighbour kernels against direct numpy computations."""

import numpy as np
import pytest

from diffusion_bias import kernels


def _standardize(x):
    """Numpy float64 reference of the paper's standardisation. [N, H*W*C]."""
    x = np.asarray(x, np.float64)
    std = x.std(axis=(1, 2), keepdims=True)
    z = np.where(
        std > kernels.STD_EPS,
        (x - x.mean(axis=(1, 2), keepdims=True)) / np.maximum(std, 1e-30),
        0.0,
    )
    z = z.reshape(len(x), -1)
    norm = np.linalg.norm(z, axis=-1, keepdims=True)
    return z / np.where(norm > 0, norm, 1.0)


def _distances(queries, refs, metric):
    """[Q, R] distances computed directly."""
    if metric == "hamming":
        return (queries.reshape(len(queries), 1, -1) != refs.reshape(1, len(refs), -1)).sum(-1)
    if metric == "cosine":
        return 1.0 - _standardize(queries) @ _standardize(refs).T
    diff = queries.reshape(len(queries), 1, -1).astype(np.float64) - refs.reshape(1, len(refs), -1)
    return np.sqrt((diff**2).sum(-1))


def _brute(queries, refs, metric):
    """(d1, i1, d2, i2) by a stable sort of every row: ties to the lowest index."""
    d = _distances(queries, refs, metric)
    order = np.argsort(d, axis=1, kind="stable")[:, :2]
    rows = np.arange(len(d))
    return d[rows, order[:, 0]], order[:, 0], d[rows, order[:, 1]], order[:, 1]


def _assert_neighbours(got, want, atol=0.0):
    d1, i1, d2, i2 = want
    np.testing.assert_array_equal(got.i1, i1)
    np.testing.assert_array_equal(got.i2, i2)
    np.testing.assert_allclose(got.d1, d1, atol=atol)
    np.testing.assert_allclose(got.d2, d2, atol=atol)


def _tokens(rng, q, n_queries, n_refs, length):
    """Few symbols and short sequences, so distances tie often; plus planted duplicates."""
    queries = rng.integers(0, q, (n_queries, length))
    refs = rng.integers(0, q, (n_refs, length))
    refs[n_refs // 2 :: 3] = refs[1]  # duplicated references
    queries[:3] = refs[[1, 4, 7]]  # queries present in the references
    queries[3:6] = queries[6]  # duplicated queries
    return queries, refs


def test_standardize_images_matches_numpy_and_zeroes_constant_images():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4, 3, 2)).astype(np.float32)
    x[1] = 0.7  # constant image
    x[2, ..., 0] = -3.0  # one constant channel
    z = np.asarray(kernels.standardize_images(x))
    assert z.shape == (5, 24) and z.dtype == np.float32
    np.testing.assert_allclose(z, _standardize(x), atol=1e-6)
    np.testing.assert_array_equal(z[1], 0.0)
    # Per image and channel, the statistic ignores offset and positive scale.
    shifted = 2.5 * x + rng.normal(size=(5, 1, 1, 2)).astype(np.float32)
    np.testing.assert_allclose(kernels.standardize_images(shifted), z, atol=1e-5)


def test_paired_cosine_matches_numpy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 4, 4, 3)).astype(np.float32)
    b = a + 0.5 * rng.normal(size=a.shape).astype(np.float32)
    b[2] = 1.0
    got = np.asarray(kernels.paired_cosine(a, b))
    want = np.sum(_standardize(a) * _standardize(b), axis=-1)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[2] == 0.0
    np.testing.assert_allclose(kernels.paired_cosine(a, a), 1.0, atol=1e-6)


def test_paired_token_similarity_matches_numpy():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 3, (7, 16))
    b = rng.integers(0, 3, (7, 16))
    got = np.asarray(kernels.paired_token_similarity(a, b))
    np.testing.assert_allclose(got, (a == b).mean(-1), atol=1e-7)
    np.testing.assert_array_equal(kernels.paired_token_similarity(a, a), 1.0)


@pytest.mark.parametrize(
    "chunk_size, ref_chunk_size",
    [(256, None), (7, None), (1, 5), (16, 2)],
)
def test_hamming_neighbours_match_brute_force(chunk_size, ref_chunk_size):
    rng = np.random.default_rng(3)
    queries, refs = _tokens(rng, q=3, n_queries=37, n_refs=23, length=6)
    got = kernels.nearest_neighbours(
        queries, refs, "hamming", chunk_size=chunk_size, ref_chunk_size=ref_chunk_size
    )
    assert got.d1.dtype == np.int32 and got.i1.dtype == np.int32 and got.d1.shape == (37,)
    _assert_neighbours(got, _brute(queries, refs, "hamming"))
    np.testing.assert_array_equal(got.d1[:3], 0)


@pytest.mark.parametrize("q, length", [(2, 70), (6, 16), (300, 9), (70_000, 5)])
def test_hamming_packing_for_any_alphabet(q, length):
    """Binary tokens (32 a word), the paper's q = 6, wide slots, and relabelled symbols."""
    rng = np.random.default_rng(4)
    queries, refs = _tokens(rng, q=q, n_queries=20, n_refs=1100, length=length)
    got = kernels.nearest_neighbours(queries, refs, "hamming", chunk_size=8)
    _assert_neighbours(got, _brute(queries, refs, "hamming"))


def test_ties_go_to_the_lowest_index():
    refs = np.zeros((9, 4), np.int32)
    refs[[2, 6]] = 1
    queries = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2]])
    got = kernels.nearest_neighbours(queries, refs, "hamming", chunk_size=2, ref_chunk_size=4)
    np.testing.assert_array_equal(got.i1, [0, 2, 0])
    np.testing.assert_array_equal(got.i2, [1, 6, 1])
    np.testing.assert_array_equal(got.d1, [0, 0, 4])
    np.testing.assert_array_equal(got.d2, [0, 0, 4])
    images = np.ones((5, 2, 2, 1), np.float32)
    images[:, 0, 0, 0] = 2.0  # five identical images
    got = kernels.nearest_neighbours(images[:2], images, "cosine")
    np.testing.assert_array_equal(got.i1, [0, 0])
    np.testing.assert_array_equal(got.i2, [1, 1])


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("chunk_size, ref_chunk_size", [(256, None), (1, 9), (8, 4)])
def test_float_neighbours_match_brute_force(metric, chunk_size, ref_chunk_size):
    rng = np.random.default_rng(5)
    queries = rng.normal(size=(13, 4, 4, 2)).astype(np.float32)
    refs = rng.normal(size=(30, 4, 4, 2)).astype(np.float32)
    refs[3] = 1.0  # constant image: cosine distance 1 to everything
    queries[0] = 1.0
    queries[1] = 3.0 * refs[7] - 1.0  # the same image up to an affine map
    got = kernels.nearest_neighbours(
        queries, refs, metric, chunk_size=chunk_size, ref_chunk_size=ref_chunk_size
    )
    assert got.d1.dtype == np.float32
    _assert_neighbours(got, _brute(queries, refs, metric), atol=1e-4)
    if metric == "cosine":
        assert got.i1[1] == 7 and abs(got.similarity1[1] - 1.0) < 1e-5
        np.testing.assert_allclose(got.d1[0], 1.0, atol=1e-6)


def test_l2_copies_are_at_distance_zero():
    """Large pixel values make |q|^2 + |r|^2 - 2 q.r cancel; the winners are exact."""
    rng = np.random.default_rng(8)
    refs = 100.0 + rng.normal(size=(20, 8, 8, 1)).astype(np.float32)
    refs[9] = refs[4]
    got = kernels.nearest_neighbours(refs[[4, 5]], refs, "l2")
    np.testing.assert_array_equal(got.d1, [0.0, 0.0])
    np.testing.assert_array_equal(got.i1, [4, 5])
    np.testing.assert_array_equal(got.d2[0], 0.0)
    assert got.i2[0] == 9 and got.d2[1] > 1.0


def test_nearest_in_each_matches_loops():
    rng = np.random.default_rng(6)
    queries = rng.integers(0, 4, (3, 11, 8))
    refs = rng.integers(0, 4, (2, 17, 8))
    queries[1, :4] = refs[0, :4]
    got = kernels.nearest_in_each(queries, refs, "hamming", chunk_size=5)
    assert got.d1.shape == (3, 2, 11)
    for k in range(3):
        for j in range(2):
            want = kernels.nearest_neighbours(queries[k], refs[j], "hamming", chunk_size=5)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g[k, j], w)
    images = rng.normal(size=(2, 5, 3, 3, 1)).astype(np.float32)
    got = kernels.nearest_in_each(images, images[:, :4], "cosine", chunk_size=3)
    for k in range(2):
        for j in range(2):
            _assert_neighbours(
                kernels.Neighbours(*(f[k, j] for f in got)),
                _brute(images[k], images[j, :4], "cosine"),
                atol=1e-5,
            )


def test_compiles_once_per_chunk_and_reference_shape():
    rng = np.random.default_rng(7)
    refs = rng.integers(0, 6, (40, 16))
    kernels.nearest_neighbours(rng.integers(0, 6, (10, 16)), refs, "hamming", chunk_size=13)
    before = kernels._hamming_top2._cache_size()
    for n in (1, 26, 100):
        kernels.nearest_neighbours(rng.integers(0, 6, (n, 16)), refs, "hamming", chunk_size=13)
    assert kernels._hamming_top2._cache_size() == before


def test_empty_queries():
    got = kernels.nearest_neighbours(
        np.zeros((0, 4), np.int32), np.zeros((3, 4), np.int32), "hamming"
    )
    assert got.d1.shape == (0,) and got.i2.dtype == np.int32


@pytest.mark.parametrize(
    "queries, refs, metric, message",
    [
        (np.zeros((2, 4), int), np.zeros((3, 4), int), "jaccard", "metric"),
        (np.zeros((2, 4), int), np.zeros((3, 5), int), "hamming", "item shape"),
        (np.zeros((2, 4), int), np.zeros((1, 4), int), "hamming", "at least 2 references"),
        (np.zeros((2, 4)), np.zeros((3, 4)), "hamming", "integer tokens"),
        (-np.ones((2, 4), int), np.zeros((3, 4), int), "hamming", "non-negative"),
        (np.zeros((2, 4)), np.zeros((3, 4)), "cosine", "images"),
        (np.zeros(2), np.zeros(3), "l2", "feature axis"),
    ],
)
def test_bad_inputs_raise_value_errors(queries, refs, metric, message):
    with pytest.raises(ValueError, match=message):
        kernels.nearest_neighbours(queries, refs, metric)


def test_bad_chunk_sizes_and_stacks_raise_value_errors():
    tokens = np.zeros((3, 4), int)
    with pytest.raises(ValueError, match="chunk_size"):
        kernels.nearest_neighbours(tokens, tokens, "hamming", chunk_size=0)
    with pytest.raises(ValueError, match="ref_chunk_size"):
        kernels.nearest_neighbours(tokens, tokens, "hamming", ref_chunk_size=0)
    with pytest.raises(ValueError, match="stacked sets"):
        kernels.nearest_in_each(tokens, tokens[None], "hamming")
    with pytest.raises(ValueError, match="equal shapes"):
        kernels.paired_cosine(np.zeros((2, 2, 2, 1)), np.zeros((3, 2, 2, 1)))

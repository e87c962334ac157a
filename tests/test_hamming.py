"""The bit-packed Hamming search against a brute-force stable sort."""

import numpy as np
import pytest

from diffusion_bias.kernels import hamming
from diffusion_bias.kernels import search


def _brute(queries, refs):
    """(d1, i1, d2, i2) by a stable sort of every row: ties to the lowest index."""
    d = (queries.reshape(len(queries), 1, -1) != refs.reshape(1, len(refs), -1)).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :2]
    rows = np.arange(len(d))
    return d[rows, order[:, 0]], order[:, 0], d[rows, order[:, 1]], order[:, 1]


def _assert_neighbours(got, want):
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def _tokens(rng, q, n_queries, n_refs, length):
    """Few symbols and short sequences, so distances tie often; plus planted duplicates."""
    queries = rng.integers(0, q, (n_queries, length))
    refs = rng.integers(0, q, (n_refs, length))
    refs[n_refs // 2 :: 3] = refs[1]  # duplicated references
    queries[:3] = refs[[1, 4, 7]]  # queries present in the references
    queries[3:6] = queries[6]  # duplicated queries
    return queries, refs


@pytest.mark.parametrize(
    "chunk_size, ref_chunk_size",
    [(256, None), (7, None), (1, 5), (16, 2)],
)
def test_hamming_neighbours_match_brute_force(chunk_size, ref_chunk_size):
    rng = np.random.default_rng(3)
    queries, refs = _tokens(rng, q=3, n_queries=37, n_refs=23, length=6)
    got = search.nearest_neighbours(
        queries, refs, "hamming", chunk_size=chunk_size, ref_chunk_size=ref_chunk_size
    )
    assert got.d1.dtype == np.int32 and got.i1.dtype == np.int32 and got.d1.shape == (37,)
    _assert_neighbours(got, _brute(queries, refs))
    np.testing.assert_array_equal(got.d1[:3], 0)


@pytest.mark.parametrize("q, length", [(2, 70), (6, 16), (300, 9), (70_000, 5)])
def test_hamming_packing_for_any_alphabet(q, length):
    """Binary tokens (32 a word), the paper's q = 6, wide slots, and relabelled symbols."""
    rng = np.random.default_rng(4)
    queries, refs = _tokens(rng, q=q, n_queries=20, n_refs=1100, length=length)
    got = search.nearest_neighbours(queries, refs, "hamming", chunk_size=8)
    _assert_neighbours(got, _brute(queries, refs))


def test_ties_go_to_the_lowest_index():
    refs = np.zeros((9, 4), np.int32)
    refs[[2, 6]] = 1
    queries = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2]])
    got = search.nearest_neighbours(queries, refs, "hamming", chunk_size=2, ref_chunk_size=4)
    np.testing.assert_array_equal(got.i1, [0, 2, 0])
    np.testing.assert_array_equal(got.i2, [1, 6, 1])
    np.testing.assert_array_equal(got.d1, [0, 0, 4])
    np.testing.assert_array_equal(got.d2, [0, 0, 4])


def test_compiles_once_per_chunk_and_reference_shape():
    rng = np.random.default_rng(7)
    refs = rng.integers(0, 6, (40, 16))
    search.nearest_neighbours(rng.integers(0, 6, (10, 16)), refs, "hamming", chunk_size=13)
    before = hamming._hamming_top2._cache_size()
    for n in (1, 26, 100):
        search.nearest_neighbours(rng.integers(0, 6, (n, 16)), refs, "hamming", chunk_size=13)
    assert hamming._hamming_top2._cache_size() == before


def test_empty_queries():
    got = search.nearest_neighbours(
        np.zeros((0, 4), np.int32), np.zeros((3, 4), np.int32), "hamming"
    )
    assert got.d1.shape == (0,) and got.i2.dtype == np.int32


@pytest.mark.parametrize(
    "queries, message",
    [(np.zeros((2, 4)), "integer tokens"), (-np.ones((2, 4), int), "non-negative")],
)
def test_non_tokens_raise_value_errors(queries, message):
    with pytest.raises(ValueError, match=message):
        search.nearest_neighbours(queries, np.zeros((3, 4), int), "hamming")

"""The search driver: stacked sets, chunking arguments and input checks."""

import numpy as np
import pytest

from diffusion_bias.kernels import search


def test_nearest_in_each_matches_loops():
    rng = np.random.default_rng(6)
    queries = rng.integers(0, 4, (3, 11, 8))
    refs = rng.integers(0, 4, (2, 17, 8))
    queries[1, :4] = refs[0, :4]
    images = rng.normal(size=(2, 5, 3, 3, 1)).astype(np.float32)
    for metric, q, r in (("hamming", queries, refs), ("l2", images, images[:, :4])):
        got = search.nearest_in_each(q, r, metric, chunk_size=3)
        assert got.d1.shape == (len(q), len(r), q.shape[1])
        for k in range(len(q)):
            for j in range(len(r)):
                want = search.nearest_neighbours(q[k], r[j], metric, chunk_size=3)
                for g, w in zip(got, want):
                    np.testing.assert_array_equal(g[k, j], w)


@pytest.mark.parametrize(
    "queries, refs, metric, message",
    [
        (np.zeros((2, 4), int), np.zeros((3, 4), int), "cosine", "metric"),
        (np.zeros((2, 4), int), np.zeros((3, 5), int), "hamming", "item shape"),
        (np.zeros((2, 4), int), np.zeros((1, 4), int), "hamming", "at least 2 references"),
        (np.zeros(2), np.zeros(3), "l2", "feature axis"),
    ],
)
def test_bad_inputs_raise_value_errors(queries, refs, metric, message):
    with pytest.raises(ValueError, match=message):
        search.nearest_neighbours(queries, refs, metric)


def test_bad_chunk_sizes_and_stacks_raise_value_errors():
    tokens = np.zeros((3, 4), int)
    with pytest.raises(ValueError, match="chunk_size"):
        search.nearest_neighbours(tokens, tokens, "hamming", chunk_size=0)
    with pytest.raises(ValueError, match="ref_chunk_size"):
        search.nearest_neighbours(tokens, tokens, "hamming", ref_chunk_size=0)
    with pytest.raises(ValueError, match="stacked sets"):
        search.nearest_in_each(tokens, tokens[None], "hamming")

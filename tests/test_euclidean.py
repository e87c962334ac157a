"""The Euclidean search against a brute-force stable sort of exact distances."""

import numpy as np
import pytest

from diffusion_bias.kernels import search


def _brute(queries, refs):
    """(d1, i1, d2, i2) by a stable sort of every row: ties to the lowest index."""
    diff = queries.reshape(len(queries), 1, -1).astype(np.float64) - refs.reshape(1, len(refs), -1)
    d = np.sqrt((diff**2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")[:, :2]
    rows = np.arange(len(d))
    return d[rows, order[:, 0]], order[:, 0], d[rows, order[:, 1]], order[:, 1]


@pytest.mark.parametrize("chunk_size, ref_chunk_size", [(256, None), (1, 9), (8, 4)])
def test_l2_neighbours_match_brute_force(chunk_size, ref_chunk_size):
    rng = np.random.default_rng(5)
    queries = rng.normal(size=(13, 4, 4, 2)).astype(np.float32)
    refs = rng.normal(size=(30, 4, 4, 2)).astype(np.float32)
    refs[3] = 1.0
    queries[0] = 1.0
    got = search.nearest_neighbours(
        queries, refs, "l2", chunk_size=chunk_size, ref_chunk_size=ref_chunk_size
    )
    assert got.d1.dtype == np.float32
    d1, i1, d2, i2 = _brute(queries, refs)
    np.testing.assert_array_equal(got.i1, i1)
    np.testing.assert_array_equal(got.i2, i2)
    np.testing.assert_allclose(got.d1, d1, atol=1e-4)
    np.testing.assert_allclose(got.d2, d2, atol=1e-4)
    assert got.i1[0] == 3 and got.d1[0] == 0.0


def test_l2_copies_are_at_distance_zero():
    """Large pixel values make |q|^2 + |r|^2 - 2 q.r cancel; the winners are exact."""
    rng = np.random.default_rng(8)
    refs = 100.0 + rng.normal(size=(20, 8, 8, 1)).astype(np.float32)
    refs[9] = refs[4]
    got = search.nearest_neighbours(refs[[4, 5]], refs, "l2")
    np.testing.assert_array_equal(got.d1, [0.0, 0.0])
    np.testing.assert_array_equal(got.i1, [4, 5])
    np.testing.assert_array_equal(got.d2[0], 0.0)
    assert got.i2[0] == 9 and got.d2[1] > 1.0


def test_ties_go_to_the_lowest_index():
    images = np.ones((5, 2, 2, 1), np.float32)
    images[:, 0, 0, 0] = 2.0  # five identical images
    got = search.nearest_neighbours(images[:2], images, "l2", ref_chunk_size=2)
    np.testing.assert_array_equal(got.i1, [0, 0])
    np.testing.assert_array_equal(got.i2, [1, 1])
    np.testing.assert_array_equal(got.d1, [0.0, 0.0])

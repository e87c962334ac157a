"""The twins' score cosine: per pair, on shared inputs and on each twin's own inputs."""

import numpy as np
import pytest

from diffusion_bias.statistics import score_cosine


def test_cosine_is_one_for_scaled_copies_and_zero_for_orthogonal_predictions():
    a = np.random.default_rng(0).normal(size=(4, 3, 5))
    np.testing.assert_allclose(score_cosine.cosine(a, 2.5 * a), 1.0)
    np.testing.assert_allclose(score_cosine.cosine(a, -a), -1.0)
    x, y = np.eye(2)[None, 0], np.eye(2)[None, 1]
    assert score_cosine.cosine(x, y)[0] == 0.0
    # An all-zero prediction gives 0, not NaN.
    assert score_cosine.cosine(np.zeros((1, 3)), np.ones((1, 3)))[0] == 0.0


def test_pair_cosines_follow_twin_pairs_order():
    rng = np.random.default_rng(1)
    eps = [rng.normal(size=(6, 4)) for _ in range(3)]
    eps[1] = 3.0 * eps[0]
    out = score_cosine.pair_cosines(eps)
    assert len(out) == 3 and out[0] == pytest.approx(1.0)  # pairs (0, 1), (0, 2), (1, 2)
    assert out[1] == pytest.approx(np.mean(score_cosine.cosine(eps[0], eps[2])))
    assert out[2] == pytest.approx(out[1])


def test_own_inputs_pair_cosines_average_the_pair_over_both_twins_inputs():
    rng = np.random.default_rng(2)
    eps = [[rng.normal(size=(5, 4)) for _ in range(2)] for _ in range(2)]  # eps[own][k]
    eps[0][1] = eps[0][0]  # the twins agree on twin 0's inputs only
    (out,) = score_cosine.own_inputs_pair_cosines(eps)
    on_1 = np.mean(score_cosine.cosine(eps[1][0], eps[1][1]))
    assert out == pytest.approx((1.0 + on_1) / 2)

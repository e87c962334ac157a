"""The snapshot probe: each twin scored in its own space on its own and its partner's items."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_bias.diffusion import denoisers
from diffusion_bias.diffusion import process
from diffusion_bias.diffusion import schedules
from diffusion_bias.instrument import probe as probe_lib

SCHEDULE = schedules.image_schedule(50)
SHAPE = (4, 4, 1)
K, N_TRAIN, M = 3, 12, 10


def _memorizing_eps(train_x0, x_t, t):
    """Predicted noise of a model that has memorised `train_x0` (its "parameters")."""
    x0 = denoisers.memorizing_denoiser(train_x0, SCHEDULE, x_t, t)
    return process.predict_eps_from_x0(SCHEDULE, x_t, t, x0)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((K * N_TRAIN + M,) + SHAPE).astype(np.float32)
    return items[: K * N_TRAIN].reshape((K, N_TRAIN) + SHAPE), items[K * N_TRAIN :]


def _probe(train, heldout, offsets=None, loss_items=8):
    return probe_lib.Probe(
        _memorizing_eps,
        SCHEDULE,
        schedules.respace(SCHEDULE, 10),
        "images",
        train,
        heldout,
        key=jax.random.PRNGKey(7),
        num_samples=16,
        loss_items=loss_items,
        loss_repeats=2,
        offsets=offsets,
    )


OFFSETS = np.array([[0.7], [-0.4], [0.2]], np.float32)  # [K, C]: per-split centring


def test_each_twin_holds_its_own_and_its_partners_items_shifted_by_its_own_offset():
    train, heldout = _data()
    probe = _probe(train, heldout, OFFSETS)
    for k in range(K):
        np.testing.assert_allclose(probe.own_items[k], train[k, :8] - OFFSETS[k], atol=1e-6)
        partner = train[(k + 1) % K, :8] - OFFSETS[k]
        np.testing.assert_allclose(probe.partner_items[k], partner, atol=1e-6)
    twin_space = np.stack([probe.in_twin_space(train[k], k) for k in range(K)])
    np.testing.assert_allclose(probe.to_common_space(twin_space), train, atol=1e-6)


def test_partner_losses_are_the_own_losses_of_a_probe_with_the_splits_rotated():
    train, heldout = _data()
    params = jnp.asarray(train)  # each twin memorises its own split
    stats, _, _ = _probe(train, heldout).measure(params)
    rotated, _, _ = _probe(np.roll(train, -1, axis=0), heldout).measure(params)
    np.testing.assert_allclose(stats["partner_losses"], rotated["train_losses"], rtol=1e-6)
    np.testing.assert_allclose(stats["test_losses"], rotated["test_losses"], rtol=1e-6)
    # A memorising twin knows its own items better than its partner's or held-out ones.
    assert np.all(stats["train_losses"].mean(1) < stats["partner_losses"].mean(1))
    assert np.all(stats["train_losses"].mean(1) < stats["test_losses"].mean(1))


def test_twins_in_their_own_shifted_spaces_measure_as_unshifted_twins():
    train, heldout = _data()
    shifted = train - OFFSETS[:, None, None, None, :]
    plain, _, _ = _probe(train, heldout).measure(jnp.asarray(train))
    moved, samples, _ = _probe(train, heldout, OFFSETS).measure(jnp.asarray(shifted))
    for name in ("test_losses", "train_losses", "partner_losses"):
        np.testing.assert_allclose(moved[name], plain[name], rtol=1e-3, atol=1e-4, err_msg=name)
    # The samples come back to the common space: copies of each twin's own raw items.
    assert samples.shape == (K, 16) + SHAPE
    assert np.median(moved["own_d1"]) < 0.1 * np.median(moved["other_d1"])


def test_repeated_measures_are_identical_and_similarity_has_one_row_per_twin_pair():
    train, heldout = _data()
    probe = _probe(train, heldout)
    first, samples, params = probe.measure(jnp.asarray(train))
    second, again, _ = probe.measure(jnp.asarray(train))
    np.testing.assert_array_equal(samples, again)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    assert first["similarity"].shape == (K * (K - 1) // 2, 16)
    assert len(params) == K
    np.testing.assert_array_equal(params[2], train[2])


@pytest.mark.parametrize("loss_items", [4, 50])
def test_loss_items_are_capped_by_the_split_size(loss_items):
    train, heldout = _data()
    probe = _probe(train, heldout, loss_items=loss_items)
    assert probe.own_items.shape == (K, min(loss_items, N_TRAIN)) + SHAPE
    # One grid serves the held-out and the training items: the longer of the two.
    assert probe.loss_t.shape == (max(min(loss_items, N_TRAIN), M), 2)

"""Images as the paper scales them: [0, 1] pixels, each twin centred by its own mean."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import smoke
from diffusion_bias import run as run_lib
from diffusion_bias.config import config_checks
from diffusion_bias.data import sources
from diffusion_bias.diffusion import coupled
from diffusion_bias.instrument import measure
from diffusion_bias.statistics import losses
from diffusion_bias.statistics import nearest
from diffusion_bias.training import twin_steps


def test_twin_means_per_split_pooled_and_none():
    rng = np.random.default_rng(1)
    items = rng.normal(size=(3, 7, 4, 4, 2)).astype(np.float32) + np.array([1.0, -2.0], np.float32)
    items[1] += 5.0  # splits with different means
    per_split = np.zeros((3, 2))
    for k in range(3):
        for c in range(2):
            per_split[k, c] = np.mean(items[k, ..., c].astype(np.float64))
    np.testing.assert_allclose(sources.twin_means(items, "per_split"), per_split, rtol=1e-6)
    pooled = [np.mean(items[..., c].astype(np.float64)) for c in range(2)]
    np.testing.assert_allclose(sources.twin_means(items, "pooled"), [pooled] * 3, rtol=1e-6)
    np.testing.assert_array_equal(sources.twin_means(items, "none"), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="centering"):
        sources.twin_means(items, "mean")


def _config(centering, pixel_range="symmetric", image_sampler="posterior"):
    config = smoke.get_config()
    with config.unlocked():
        config.centering = centering
        config.data.pixel_range = pixel_range
        config.analysis.image_sampler = image_sampler
    return config


def test_prepare_centres_each_twin_by_its_own_split_mean(tmp_path):
    run = run_lib.prepare(_config("per_split", "unit"), str(tmp_path))
    raw = np.asarray(run.twin_data.train, np.float64)  # [K, n, 8, 8, 1]
    assert raw.min() >= 0.0 and raw.max() <= 1.0
    for k in range(raw.shape[0]):
        mean_k = raw[k].mean()
        np.testing.assert_allclose(run.offsets[k], [mean_k], rtol=1e-6)
        np.testing.assert_allclose(run.train[k], raw[k] - mean_k, atol=1e-6)
        assert abs(float(np.mean(run.train[k]))) < 1e-6
    assert abs(run.offsets[0, 0] - run.offsets[1, 0]) > 1e-4
    # The held-out items stay as drawn: each twin shifts them by its own mean.
    assert run.twin_data.heldout.min() >= 0.0


def test_prepare_without_centring_trains_on_the_items_as_drawn(tmp_path):
    run = run_lib.prepare(smoke.get_config(), str(tmp_path))
    np.testing.assert_array_equal(run.train, run.twin_data.train)
    np.testing.assert_array_equal(run.offsets, np.zeros((2, 1)))
    with pytest.raises(config_checks.ConfigError, match="centering"):
        config_checks.check_config(_config("per-split"))


def _instrument_and_snapshot(centering, workdir, image_sampler="posterior"):
    config = _config(centering, "unit", image_sampler)
    inst = measure.Instrument(config, workdir)
    example = jnp.asarray(inst.train_items[0, :1])
    state = twin_steps.init_state(config, inst.model, example, twin_steps.get_optimizer(config))
    return inst, state.replace(ema_params=None)


def _nn(a, b):
    """[N] Euclidean distance of each row of a to its nearest row of b (brute force)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min(axis=1)


def test_instrument_compares_twins_in_the_common_space_and_scores_in_their_own(tmp_path):
    # The paper's protocol: per-split centring and the paper's (unclipped) sampler.
    inst, snapshot = _instrument_and_snapshot("per_split", str(tmp_path), "paper")
    out = inst.compute(snapshot)
    offsets = np.asarray(inst.offsets, np.float64)  # [K, 1]
    # The samples as each twin draws them, in its own (centred) space.
    own_space = coupled.coupled_samples(
        inst.apply_fn,
        snapshot.params,
        inst.sampling,
        inst.item_shape,
        inst.a.num_samples,
        inst.probe.sample_key,
        kind="images",
        step_rule="paper",
    )
    raw_train = np.asarray(inst.train, np.float64)
    for k in range(2):
        # Centred sample + its twin's mean is compared with the training set as drawn.
        common = own_space[k].astype(np.float64) + offsets[k]
        np.testing.assert_allclose(out.own_d1[k], _nn(common, raw_train[k]), rtol=1e-4)
        np.testing.assert_allclose(
            out.example_samples[k], common[: out.example_samples.shape[1]], atol=1e-6
        )
        # Held-out losses of twin k on held-out items shifted by twin k's own mean.
        shifted = (np.asarray(inst.heldout, np.float64) - offsets[k]).astype(np.float32)
        params_k = jax.tree.map(lambda x, k=k: x[k], snapshot.params)
        expected = losses.item_losses(
            inst.apply_fn,
            params_k,
            shifted,
            inst.probe.loss_t[: len(shifted)],
            inst.probe.loss_noise,
            inst.schedule,
            kind="images",
        )
        np.testing.assert_allclose(out.test_losses[k], expected, rtol=1e-4, atol=1e-6)
    # The held-out statistics do not depend on how the twins are centred.
    plain, _ = _instrument_and_snapshot("none", str(tmp_path))
    reference = plain.compute(snapshot)
    np.testing.assert_allclose(out.heldout_d1, reference.heldout_d1, rtol=1e-6)


def test_instrument_nn_distances_are_invariant_to_the_twin_shift(tmp_path):
    """The same raw samples, expressed centred + mean or as drawn, give the same NN."""
    inst, _ = _instrument_and_snapshot("per_split", str(tmp_path))
    rng = np.random.default_rng(3)
    raw = rng.uniform(0, 1, (2, 16) + inst.item_shape).astype(np.float32)
    centred = (raw - inst.offsets[:, None, None, None, :]).astype(np.float32)
    back = inst.probe.to_common_space(centred)
    np.testing.assert_allclose(back, raw, atol=1e-6)
    a = nearest.nearest_statistics(back, inst.train, inst.heldout, "images")
    b = nearest.nearest_statistics(raw, inst.train, inst.heldout, "images")
    for key in ("own_d1", "own_d2", "other_d1"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_score_cosine_takes_the_first_score_items_of_each_set(tmp_path):
    inst, snapshot = _instrument_and_snapshot("none", str(tmp_path))
    params = [jax.tree.map(lambda x, k=k: x[k], snapshot.params) for k in range(2)]
    m, n_items = len(inst.heldout), inst.train_items.shape[1]
    every = inst._score_cosines(params)  # score_items = 0: all held-out, the loss grid's
    with inst.a.unlocked():
        inst.a.score_items = 4
    first_four = inst._score_cosines(params)
    assert not np.allclose(every[0], first_four[0]) and not np.allclose(every[1], first_four[1])
    # The smoke config holds 32 held-out items and puts 32 training items on the loss
    # grid: counted out explicitly, the same items give the same cosines.
    assert m == n_items == 32
    with inst.a.unlocked():
        inst.a.score_items = m
    for a, b in zip(every, inst._score_cosines(params)):
        np.testing.assert_allclose(a, b, rtol=1e-6)

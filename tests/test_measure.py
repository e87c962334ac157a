"""The bias instrument on reference "models" whose answer is known.

A memorising denoiser (the posterior over its own training set) is biased from
the start: its samples copy its training set. The exact BP denoiser, shared by
both "twins", generalises without bias: twins agree, samples are no closer to
one training set than to held-out data.
"""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_bias.diffusion import coupled
from diffusion_bias.diffusion import denoisers
from diffusion_bias.diffusion import schedules
from diffusion_bias.exact import grammar as grammar_lib
from diffusion_bias.statistics import nearest
from diffusion_bias.statistics import sample_split

Q, DEPTH, N_TRAIN, N_SAMPLES = 4, 3, 60, 200
SCHEDULE = schedules.token_schedule(500)
SAMPLING = schedules.respace(SCHEDULE, 50)
GRAMMAR = grammar_lib.random_grammar(q=Q, depth=DEPTH, q_eff=2, seed=1)
POOL = grammar_lib.sample(GRAMMAR, 2 * N_TRAIN + 400, seed=2)
TRAIN = POOL[: 2 * N_TRAIN].reshape(2, N_TRAIN, -1)
HELDOUT = POOL[2 * N_TRAIN :]


def _memorising(params, x_t, t):
    return denoisers.memorizing_denoiser(params, SCHEDULE, x_t, t, chunk_size=64)


def _exact(params, x_t, t):
    del params  # the same exact denoiser for every twin
    return denoisers.exact_denoiser(GRAMMAR.transitions, SCHEDULE, x_t, t)


def _samples(apply_fn, params, key=0):
    return coupled.coupled_samples(
        apply_fn, params, SAMPLING, (2**DEPTH, Q), N_SAMPLES, jax.random.key(key), kind="tokens"
    )


def test_coupled_sampling_is_identical_for_identical_parameters_and_not_otherwise():
    same = jnp.stack([jax.nn.one_hot(TRAIN[0], Q)] * 2)
    samples = _samples(_memorising, same)
    np.testing.assert_array_equal(samples[0], samples[1])
    different = jnp.asarray(jax.nn.one_hot(TRAIN, Q))
    samples = _samples(_memorising, different)
    assert np.mean(np.all(samples[0] == samples[1], axis=-1)) < 0.5
    np.testing.assert_array_equal(samples, _samples(_memorising, different))
    assert not np.array_equal(samples, _samples(_memorising, different, key=1))


def test_memorising_twins_copy_their_own_training_sets():
    samples = _samples(_memorising, jnp.asarray(jax.nn.one_hot(TRAIN, Q)))
    stats = nearest.nearest_statistics(samples, TRAIN, HELDOUT, "tokens")
    assert np.all(stats["own_d1"] == 0)  # every sample is a training sequence
    assert nearest.exact_copy_fraction(stats["own_d1"]) == 1.0
    # The ratio test counts the copies of items that occur once in the training
    # set; a copy of a duplicated item (d1 = d2 = 0) is 0/0 and not counted.
    unique = np.mean(stats["own_d2"] > 0)
    assert 0 < unique < 1
    assert nearest.memorized_fraction(stats["own_d1"], stats["own_d2"]) == unique
    assert nearest.closer_to_own_share(stats["own_d1"], stats["other_d1"]) > 0.8
    length = 2**DEPTH
    for k in range(2):
        div = nearest.nn_divergence(stats["own_d1"][k], stats["heldout_d1"][k], length)
        assert div > 0.5
    similarity = sample_split.pair_similarity(samples, "tokens")
    assert similarity.mean() < 0.9


def test_exact_denoiser_twins_agree_and_are_not_closer_to_either_training_set():
    params = jnp.zeros((2, 1))
    samples = _samples(_exact, params)
    np.testing.assert_array_equal(samples[0], samples[1])
    assert sample_split.pair_similarity(samples, "tokens").mean() == 1.0
    stats = nearest.nearest_statistics(samples, TRAIN, HELDOUT, "tokens")
    # Identical samples: their distances to the two sets are exchangeable.
    assert 0.3 < nearest.closer_to_own_share(stats["own_d1"], stats["other_d1"]) < 0.7
    # Generated and held-out sequences sit at the same distances from a training set.
    for k in range(2):
        gen = nearest.nn_histogram(stats["own_d1"][k], 2**DEPTH)
        held = nearest.nn_histogram(stats["heldout_d1"][k], 2**DEPTH)
        assert nearest.histogram_kl(gen, held) < 0.1
        assert abs(stats["own_d1"][k].mean() - stats["heldout_d1"][k].mean()) < 0.3
    # And the memorised-copy rate is the held-out one, not 1.
    copies = nearest.memorized_fraction(stats["own_d1"], stats["own_d2"])
    held_copies = nearest.memorized_fraction(stats["heldout_d1"], stats["heldout_d2"])
    assert abs(copies - held_copies) < 0.15


def test_critical_time_kls_repeat_each_sequence_with_fresh_noise_and_decomposition_takes_all(
    tmp_path,
):
    from configs import smoke
    from diffusion_bias.instrument import measure
    from diffusion_bias.training import twin_steps

    config = smoke.get_config("grammar")
    with config.unlocked():
        config.analysis.update(kl_items=4, kl_repeats=3, decomposition_items=0)
    inst = measure.Instrument(config, str(tmp_path))
    example = jax.nn.one_hot(jnp.asarray(inst.train[0, :1]), inst.q)
    state = twin_steps.init_state(config, inst.model, example, twin_steps.get_optimizer(config))
    params = [jax.tree.map(lambda x, k=k: x[k], state.params) for k in range(2)]
    samples = inst.probe.samples(state.params)
    out = inst._token_statistics(params, samples)
    twin_kl = out["twin_kl"]  # [pairs, kl_items * kl_repeats]
    assert twin_kl.shape == (1, 12)
    # The same 4 sequences three times, each time under other noise.
    repeats = twin_kl.reshape(3, 4)
    assert not np.allclose(repeats[0], repeats[1]) and not np.allclose(repeats[1], repeats[2])
    # The decomposition over every training item equals the one asked for all n by count.
    with config.unlocked():
        config.analysis.decomposition_items = inst.train.shape[1]
    every = measure.Instrument(config, str(tmp_path))._token_statistics(params, samples)
    np.testing.assert_allclose(out["decomposition"], every["decomposition"], rtol=1e-6)
    with config.unlocked():
        config.analysis.decomposition_items = 8
    few = measure.Instrument(config, str(tmp_path))._token_statistics(params, samples)
    assert not np.allclose(out["decomposition"], few["decomposition"])


def test_every_step_test_loss_is_each_items_mean_noise_error_over_every_step(tmp_path):
    from configs import smoke
    from diffusion_bias.diffusion import samplers
    from diffusion_bias.instrument import measure
    from diffusion_bias.training import twin_steps

    config = smoke.get_config()  # digits, T = 100
    with config.unlocked():
        config.analysis.update(test_loss_every_step=True, test_loss_items=3)
    inst = measure.Instrument(config, str(tmp_path))
    state = twin_steps.init_state(
        config, inst.model, inst.train[0, :1], twin_steps.get_optimizer(config)
    )
    params = [jax.tree.map(lambda x, k=k: x[k], state.params) for k in range(2)]
    got = inst.every_step_losses(params)  # [K, 3]
    assert got.shape == (2, 3)
    # Recomputed step by step: q_sample at each t with that step's noise, the pixel mean
    # of the squared error, then the mean over the T steps (the authors' estimator).
    schedule, k = inst.schedule, 1
    items = np.asarray(inst.in_twin_space(inst.heldout[:3], k))
    per_step = []
    for t in range(1, schedule.num_steps + 1):
        noise = samplers.item_normal(
            jax.random.fold_in(inst.every_step_noise, t - 1), jnp.arange(3), items.shape[1:]
        )
        ab = float(schedule.alpha_bars[t])
        x_t = np.sqrt(ab) * items + np.sqrt(1 - ab) * np.asarray(noise)
        eps = inst.apply_fn(params[k], jnp.asarray(x_t, jnp.float32), jnp.full((3,), t))
        per_step.append(((np.asarray(eps) - np.asarray(noise)) ** 2).mean(axis=(1, 2, 3)))
    np.testing.assert_allclose(got[k], np.mean(per_step, axis=0), rtol=2e-5)


def test_common_evaluation_centring_shows_every_twin_the_same_inputs(tmp_path):
    from configs import smoke
    from diffusion_bias import run as run_lib
    from diffusion_bias.instrument import measure
    from diffusion_bias.training import twin_steps

    config = smoke.get_config()  # digits
    with config.unlocked():
        config.centering = "per_split"  # the twins' own offsets differ
        config.analysis.update(score_items=8, test_loss_every_step=True, test_loss_items=2)
    own = measure.Instrument(config, str(tmp_path))
    x = jnp.asarray(own.heldout[:4])
    assert not np.array_equal(own.in_eval_space(x, 0), own.in_eval_space(x, 1))
    with config.unlocked():
        config.analysis.update(eval_centering="common", eval_centering_items=100)
    common = measure.Instrument(config, str(tmp_path))
    pool = np.asarray(run_lib.prepare(config, str(tmp_path)).pool.items[:100], np.float64)
    np.testing.assert_allclose(common.eval_offset, pool.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(common.in_eval_space(x, 0), common.in_eval_space(x, 1))
    # Identical twins on the same inputs: cosine 1 and equal losses.
    state = twin_steps.init_state(
        config, common.model, common.train[0, :1], twin_steps.get_optimizer(config)
    )
    twin = jax.tree.map(lambda a: a[0], state.params)
    heldout, train = common._score_cosines([twin, twin])
    np.testing.assert_allclose(heldout, 1.0, rtol=1e-6)
    np.testing.assert_allclose(train, 1.0, rtol=1e-6)
    losses = common.every_step_losses([twin, twin])
    np.testing.assert_array_equal(losses[0], losses[1])

"""Tests of KL(BP_k || model) against enumeration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_bias.diffusion import denoisers
from diffusion_bias.diffusion import schedules
from diffusion_bias.exact import bp
from diffusion_bias.statistics import controlled
from diffusion_bias.statistics import kl_bp
from tests import enumeration
from tests import small_grammar


def test_kl_between_bp_k_and_the_exact_and_prior_denoisers():
    x0, t_values = small_grammar.samples(small_grammar.N, seed=4), [30, 60]
    exact = kl_bp.kl_bp_model(
        small_grammar.exact(),
        small_grammar.GRAMMAR.transitions,
        small_grammar.SCHEDULE,
        x0,
        t_values,
        jax.random.key(4),
    )
    np.testing.assert_array_equal(exact["k"], [0, 1, 2, 3])
    assert exact["kl"].shape == (4, 2)
    assert np.all(exact["kl"][0] < 1e-5)
    assert np.all(exact["kl"][1:] >= 0)
    # BP_depth keeps only root-to-leaf channels: it must differ from the exact tree.
    assert np.all(exact["kl"][-1] > 1e-4)

    prior = kl_bp.kl_bp_model(
        small_grammar.prior(),
        small_grammar.GRAMMAR.transitions,
        small_grammar.SCHEDULE,
        x0,
        t_values,
        jax.random.key(4),
    )
    assert np.all(prior["kl"] > 0)


def test_twin_kl_bp_is_each_twins_kl_bp_model_at_every_layer():
    x0, t_values, key = small_grammar.samples(small_grammar.N, seed=4), [30, 60], jax.random.key(4)
    kl = kl_bp.twin_kl_bp(
        [small_grammar.exact(), small_grammar.prior()],
        small_grammar.GRAMMAR.transitions,
        small_grammar.SCHEDULE,
        x0,
        t_values,
        key,
    )
    assert kl.shape == (2, small_grammar.GRAMMAR.depth + 1, 2)
    for row, fn in zip(kl, (small_grammar.exact(), small_grammar.prior())):
        single = kl_bp.kl_bp_model(
            fn, small_grammar.GRAMMAR.transitions, small_grammar.SCHEDULE, x0, t_values, key
        )
        np.testing.assert_array_equal(row, single["kl"])


def test_kl_along_t_ratios_are_1_over_r_to_1():
    np.testing.assert_allclose(kl_bp.kl_along_t_ratios(25), np.arange(1, 26) / 25)
    with pytest.raises(ValueError):
        kl_bp.kl_along_t_ratios(1)


def _enumerated_marginals(transitions, depth, k, fields, q):
    """BP_k leaf marginals [N, L, q] by enumerating the sequences the k-factorised tree allows."""
    seqs_k, probs_k = enumeration.sequence_distribution(transitions, depth, k)
    keep = probs_k > 0
    log_w = np.log(probs_k[keep]) + fields[:, np.arange(2**depth), seqs_k[keep]].sum(-1)
    w = np.exp(log_w - log_w.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("ns,slq->nlq", w, np.eye(q)[seqs_k[keep]])


def _kl(p, q):
    """Per-sequence KL(p || q) summed over tokens, both clipped at 1e-8 (the paper's), mean."""
    p, q = np.maximum(p, 1e-8), np.maximum(q, 1e-8)
    return np.maximum((p * np.log(p / q)).sum(-1), 0).sum(-1).mean()


def test_kl_bp_k_along_t_matches_enumeration_on_a_depth_2_tree():
    """KL(BP_k || model) at every t, per sequence, against brute force over q**4 sequences."""
    rng = np.random.default_rng(7)
    q, depth, schedule = 3, 2, schedules.token_schedule(40)
    transitions = enumeration.random_transitions(rng, q, zero_fraction=0.3)
    seqs, probs = enumeration.sequence_distribution(transitions, depth)
    x0 = seqs[rng.choice(len(seqs), size=24, p=probs)]
    t_values, key = [1, 4, 10, 20, 30, 40], jax.random.key(7)
    model = jax.tree_util.Partial(denoisers.prior_denoiser, schedule)
    out = kl_bp.kl_bp_model(model, transitions, schedule, x0, t_values, key)
    ab = np.cumprod(1.0 - np.asarray(schedule.betas, np.float64))
    for j, t in enumerate(t_values):
        x_t = controlled.noisy_inputs(transitions, schedule, x0, t, key).astype(np.float64)
        model_probs = np.asarray(model(jnp.asarray(x_t, jnp.float32), jnp.full(len(x0), t)))
        fields = np.sqrt(ab[t]) / (1.0 - ab[t]) * x_t  # [N, L, q]
        for k in range(depth + 1):
            marginals = _enumerated_marginals(transitions, depth, k, fields, q)
            expected = _kl(marginals, model_probs)
            np.testing.assert_allclose(out["kl"][k, j], expected, rtol=2e-4, atol=1e-5)


def test_kl_from_exact_bp_along_t_matches_enumeration_on_a_depth_2_tree():
    """KL(BP_0 || BP_k) and KL(BP_0 || model) at every t against brute force over q**4 sequences."""
    rng = np.random.default_rng(8)
    q, depth, schedule = 3, 2, schedules.token_schedule(40)
    transitions = enumeration.random_transitions(rng, q, zero_fraction=0.3)
    seqs, probs = enumeration.sequence_distribution(transitions, depth)
    x0 = seqs[rng.choice(len(seqs), size=24, p=probs)]
    t_values, key = [1, 4, 10, 20, 30, 40], jax.random.key(8)
    model = jax.tree_util.Partial(denoisers.prior_denoiser, schedule)
    out = kl_bp.kl_from_exact(model, transitions, schedule, x0, t_values, key)
    np.testing.assert_array_equal(out["k"], [1, 2])
    ab = np.cumprod(1.0 - np.asarray(schedule.betas, np.float64))
    for j, t in enumerate(t_values):
        x_t = controlled.noisy_inputs(transitions, schedule, x0, t, key).astype(np.float64)
        model_probs = np.asarray(model(jnp.asarray(x_t, jnp.float32), jnp.full(len(x0), t)))
        fields = np.sqrt(ab[t]) / (1.0 - ab[t]) * x_t  # [N, L, q]
        exact = _enumerated_marginals(transitions, depth, 0, fields, q)
        for i, k in enumerate(out["k"]):
            factorised = _enumerated_marginals(transitions, depth, k, fields, q)
            np.testing.assert_allclose(
                out["bp"][i, j], _kl(exact, factorised), rtol=2e-4, atol=1e-5
            )
        np.testing.assert_allclose(out["model"][j], _kl(exact, model_probs), rtol=2e-4, atol=1e-5)


def _bp_1_denoiser(transitions, schedule):
    """A model whose output is BP_1's leaf marginals (the top layer factorised)."""

    def denoise(x_t, t_model):
        t = controlled._step_of(schedule, t_model)
        fields = denoisers.token_fields(schedule, x_t, t)
        return bp.leaf_marginals(jnp.asarray(transitions, jnp.float32), fields, factorized_layers=1)

    return denoise


def test_a_model_that_is_bp_k_stands_from_exact_bp_as_bp_k_does_and_twins_share_the_bp_curves():
    x0, t_values, key = small_grammar.samples(small_grammar.N, seed=4), [30, 60], jax.random.key(4)
    transitions, schedule = small_grammar.GRAMMAR.transitions, small_grammar.SCHEDULE
    exact, prior = small_grammar.exact(), small_grammar.prior()
    from_exact = kl_bp.kl_from_exact(exact, transitions, schedule, x0, t_values, key)
    assert np.all(from_exact["model"] < 1e-5)  # KL(BP_0 || BP_0)
    bp_1 = _bp_1_denoiser(transitions, schedule)
    as_bp_1 = kl_bp.kl_from_exact(bp_1, transitions, schedule, x0, t_values, key)
    np.testing.assert_allclose(as_bp_1["model"], as_bp_1["bp"][0], rtol=1e-5, atol=1e-7)
    assert np.all(from_exact["bp"][-1] > 1e-4)
    twins = kl_bp.twin_kl_from_exact([exact, prior], transitions, schedule, x0, t_values, key)
    np.testing.assert_allclose(twins["bp"], from_exact["bp"], rtol=1e-6)
    np.testing.assert_allclose(twins["model"][0], from_exact["model"], rtol=1e-6, atol=1e-9)
    alone = kl_bp.kl_from_exact(prior, transitions, schedule, x0, t_values, key)
    np.testing.assert_allclose(twins["model"][1], alone["model"], rtol=1e-6)
    # Given the BP rows of an earlier call, only the models' rows are computed: the same.
    again = kl_bp.twin_kl_from_exact(
        [exact, prior], transitions, schedule, x0, t_values, key, bp=twins["bp"]
    )
    np.testing.assert_array_equal(again["model"], twins["model"])
    np.testing.assert_array_equal(again["bp"], twins["bp"])
    # Not the reverse direction: KL(BP_k || BP_0) differs from KL(BP_0 || BP_k).
    reverse = kl_bp.kl_bp_model(exact, transitions, schedule, x0, t_values, key)["kl"][1:]
    assert not np.allclose(reverse, from_exact["bp"], rtol=1e-2)
    with pytest.raises(ValueError, match="factorized_layers must be in 1"):
        kl_bp.kl_from_exact(exact, transitions, schedule, x0, t_values, key, [0])


@pytest.mark.parametrize(
    "call",
    [
        lambda: kl_bp.kl_bp_model(
            small_grammar.prior(),
            small_grammar.TRANSITIONS,
            small_grammar.SCHEDULE,
            np.zeros((2, 8), int),
            [5],
            jax.random.key(0),
            [4],
        ),
    ],
)
def test_malformed_arguments_raise(call):
    with pytest.raises(ValueError):
        call()

"""Tests of the controlled-setting statistics against the reference denoisers.

Compiling belief propagation dominates the run time (seconds per kernel on CPU),
so the exact and prior-only denoisers are one function of a traced weight,
sharing each compiled kernel, and references come from enumeration, not BP.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_bias import grammar
from diffusion_bias.diffusion import denoisers
from diffusion_bias.diffusion import schedules
from diffusion_bias.statistics import controlled
from tests import enumeration

_GRAMMAR = grammar.random_grammar(q=4, depth=3, q_eff=2, seed=0)
_TRANSITIONS = jnp.asarray(_GRAMMAR.transitions, jnp.float32)
_SCHEDULE = schedules.token_schedule(100)
_N = 64


# The support of the grammar: every sequence with positive probability.
_SEQS, _PROBS = enumeration.sequence_distribution(_GRAMMAR.transitions, _GRAMMAR.depth)
_SUPPORT, _SUPPORT_PROBS = _SEQS[_PROBS > 0], _PROBS[_PROBS > 0]


def _blend(weight, transitions, schedule, x_t, t):
    # weight 1 gives the exact denoiser bit for bit (1*e + 0*p == e), weight 0
    # the prior-only one.
    exact = denoisers.exact_denoiser(transitions, schedule, x_t, t)
    return weight * exact + (1.0 - weight) * denoisers.prior_denoiser(schedule, x_t, t)


def _exact(transitions=_TRANSITIONS):
    return jax.tree_util.Partial(_blend, 1.0, transitions, _SCHEDULE)


def _prior():
    return jax.tree_util.Partial(_blend, 0.0, _TRANSITIONS, _SCHEDULE)


def _enumerated_marginals(x_t, t):
    """E[x_0 | x_t] by summing over the grammar's support, float64.  # [N, L, q]"""
    ab = np.cumprod(1.0 - np.asarray(_SCHEDULE.betas, np.float64))[t]
    fields = np.sqrt(ab) / (1.0 - ab) * np.asarray(x_t, np.float64)  # [N, L, q]
    positions = np.arange(_GRAMMAR.length)
    log_w = np.log(_SUPPORT_PROBS) + fields[:, positions, _SUPPORT].sum(-1)  # [N, S]
    weights = np.exp(log_w - log_w.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("ns,slq->nlq", weights, np.eye(_GRAMMAR.q)[_SUPPORT])


def _samples(n, seed):
    return grammar.sample(_GRAMMAR, n, seed=seed)


def test_uturn_with_the_exact_denoiser_matches_bp_exactly():
    x0 = _samples(_N, seed=1)
    exact = controlled.exact_token_denoiser(_GRAMMAR.transitions, _SCHEDULE)
    out = controlled.uturn_overlap(
        exact, _GRAMMAR.transitions, _SCHEDULE, x0, [0.05, 0.2], jax.random.key(0)
    )
    np.testing.assert_array_equal(out["t"], [5, 20])
    assert out["model"].shape == out["bp"].shape == (2, _N)
    # Same x_t, same chain noise, same denoiser: identical trajectories.
    np.testing.assert_array_equal(out["model"], out["bp"])
    np.testing.assert_array_equal(out["ratio"], [1.0, 1.0])
    # At r = 0.2 the noise destroys tokens: the comparison is not vacuous.
    assert out["bp"][1].mean() < 0.95

    # New arrays (new "params") for the same function reuse the compiled chains.
    before = controlled._uturn_overlap._cache_size()
    other = controlled.exact_token_denoiser(_TRANSITIONS + 0.0, _SCHEDULE)
    controlled.uturn_overlap(other, _TRANSITIONS, _SCHEDULE, x0, [0.05], jax.random.key(1))
    assert controlled._uturn_overlap._cache_size() == before


def test_uturn_steps_truncate_like_the_papers_code():
    schedule = schedules.token_schedule(500)
    ratios = [0.01, 0.03, 0.05, 0.085, 0.12, 0.999, 0.0001]
    expected = [max(1, int(r * 500)) for r in ratios]  # the paper's int(r * T_final)
    assert expected == [5, 15, 25, 42, 60, 499, 1]
    assert controlled.uturn_steps(schedule, ratios) == expected
    # A float product just under an integer stays on it.
    assert controlled.uturn_steps(_SCHEDULE, [0.29]) == [29]


def test_uturn_ratio_averages_overlaps_over_repetitions_before_dividing():
    """Paper: per sequence, (mean over repeats of model overlap) / (mean of BP's), then mean."""
    x0, key, r = _samples(_N, seed=8), jax.random.key(8), [0.3]

    def run(repeats):
        return controlled.uturn_overlap(
            _prior(), _GRAMMAR.transitions, _SCHEDULE, x0, r, key, repeats=repeats, chunk_size=40
        )

    one, three = run(1), run(3)
    length = x0.shape[1]
    # Repeat 0 is the same noise with 1 or 3 repeats; the others are new draws, so
    # the 3-repeat means are overlaps summed over three chains, in steps of 1/(3L).
    for name in ("model", "bp"):
        counts = three[name] * 3 * length
        np.testing.assert_allclose(counts, np.round(counts), atol=1e-4)
        rest = three[name] * 3 - one[name]
        assert np.all((rest >= -1e-6) & (rest <= 2 + 1e-6))
    keep = three["bp"][0] > 0
    expected = np.mean(three["model"][0, keep] / three["bp"][0, keep])
    np.testing.assert_allclose(three["ratio"][0], expected, rtol=1e-6)
    sem = np.std(three["model"][0, keep] / three["bp"][0, keep], ddof=1) / np.sqrt(keep.sum())
    np.testing.assert_allclose(three["ratio_sem"][0], sem, rtol=1e-6)


def test_uturn_of_a_memorising_denoiser_favours_its_training_set():
    pool = np.unique(_samples(1000, seed=2), axis=0)
    assert len(pool) >= 2 * _N
    pool = np.random.default_rng(0).permutation(pool)
    train, held_out = pool[:_N], pool[_N : 2 * _N]
    memorizer = jax.tree_util.Partial(
        denoisers.memorizing_denoiser, jax.nn.one_hot(train, _GRAMMAR.q), _SCHEDULE
    )

    def run(x0):
        return controlled.uturn_overlap(
            memorizer, _GRAMMAR.transitions, _SCHEDULE, x0, [0.2], jax.random.key(2), repeats=2
        )

    on_train, on_test = run(train), run(held_out)
    assert on_train["model"].mean() >= on_train["bp"].mean()
    assert on_train["ratio"][0] > 1.0
    assert on_test["model"].mean() < on_train["model"].mean()


def test_loss_decomposition_of_the_exact_and_prior_denoisers():
    x0, t_values, key = _samples(256, seed=3), [10, 30, 60], jax.random.key(3)
    exact = controlled.loss_decomposition(
        _exact(), _GRAMMAR.transitions, _SCHEDULE, x0, t_values, key
    )
    np.testing.assert_array_equal(exact["t"], t_values)
    np.testing.assert_allclose(exact["ce"], exact["l_star"] + exact["l_tilde"], atol=1e-6)
    # On fresh grammar samples the excess term vanishes in expectation.
    assert np.all(np.abs(exact["l_tilde"]) < 3 * exact["l_tilde_sem"])

    # With p = x0_BP, l* is the mean per-token entropy of the posterior
    # marginals on the same noisy inputs.
    for i, t in enumerate(t_values):
        x_t = controlled.noisy_inputs(_GRAMMAR.transitions, _SCHEDULE, x0, t, key)
        marginals = _enumerated_marginals(x_t, t)
        entropy = -np.sum(marginals * np.log(np.maximum(marginals, 1e-12)), -1).mean()
        np.testing.assert_allclose(exact["l_star"][i], entropy, rtol=1e-4, atol=1e-6)

    prior = controlled.loss_decomposition(
        _prior(), _GRAMMAR.transitions, _SCHEDULE, x0, t_values, key
    )
    np.testing.assert_allclose(prior["ce"], prior["l_star"] + prior["l_tilde"], atol=1e-6)
    # Same x_t: l*(prior) - l*(BP) = E KL(x0_BP || prior) > 0.
    assert np.all(prior["l_star"] > exact["l_star"])


def test_twin_uturn_ratios_are_each_twins_ratio_on_its_own_and_on_held_out_sequences():
    pool = np.random.default_rng(0).permutation(np.unique(_samples(1000, seed=2), axis=0))
    train, held_out = pool[:_N], pool[_N : 2 * _N]
    memorizer = jax.tree_util.Partial(
        denoisers.memorizing_denoiser, jax.nn.one_hot(train, _GRAMMAR.q), _SCHEDULE
    )
    args = (_GRAMMAR.transitions, _SCHEDULE)
    key = jax.random.key(2)
    out = controlled.twin_uturn_ratios(
        [memorizer, _exact()], *args, np.stack([train, held_out]), held_out, [0.2], key, repeats=2
    )
    assert out["train"].shape == out["heldout"].shape == (2, 1)
    for name, x0 in (("train", train), ("heldout", held_out)):
        ratio = controlled.uturn_overlap(memorizer, *args, x0, [0.2], key, repeats=2)["ratio"]
        np.testing.assert_array_equal(out[name][0], ratio)
    # The memoriser favours its own set; the exact denoiser is BP itself.
    assert out["train"][0, 0] > out["heldout"][0, 0]
    np.testing.assert_array_equal(out["train"][1], [1.0])


def test_twin_loss_decomposition_is_each_twins_at_t_and_mean_over_the_grid():
    x0, key = _samples(256, seed=3), jax.random.key(3)
    own = np.stack([x0, _samples(256, seed=6)])
    at_t, mean_t = controlled.twin_loss_decomposition(
        [_exact(), _prior()], _GRAMMAR.transitions, _SCHEDULE, own, x0, 10, [30, 60], key
    )
    assert at_t.shape == mean_t.shape == (2, 4)
    for k, fn in enumerate((_exact(), _prior())):
        parts = [
            controlled.loss_decomposition(fn, _GRAMMAR.transitions, _SCHEDULE, x, [10, 30, 60], key)
            for x in (own[k], x0)
        ]
        values = np.array([d[n] for d in parts for n in ("l_star", "l_tilde")])  # [4, 3]
        np.testing.assert_array_equal(at_t[k], values[:, 0])
        np.testing.assert_array_equal(mean_t[k], values[:, 1:].mean(-1))
    # Twin 0 is scored on the same sequences as its own and as held-out ones.
    np.testing.assert_array_equal(at_t[0, :2], at_t[0, 2:])


def test_decomposition_steps_are_the_midpoints_of_equal_slices_of_1_to_T():
    steps = controlled.decomposition_steps(500, 20)
    assert len(steps) == 20 and steps[0] == 13 and steps[-1] == 488
    # The grid mean of a linear function of t is its mean over t uniform in 1..T.
    assert np.mean(steps) == pytest.approx(np.mean(np.arange(1, 501)), abs=0.5)
    assert controlled.decomposition_steps(10, 20) == list(range(1, 11))
    with pytest.raises(ValueError):
        controlled.decomposition_steps(500, 0)


def test_kl_between_bp_k_and_the_exact_and_prior_denoisers():
    x0, t_values = _samples(_N, seed=4), [30, 60]
    exact = controlled.kl_bp_model(
        _exact(), _GRAMMAR.transitions, _SCHEDULE, x0, t_values, jax.random.key(4)
    )
    np.testing.assert_array_equal(exact["k"], [0, 1, 2, 3])
    assert exact["kl"].shape == (4, 2)
    assert np.all(exact["kl"][0] < 1e-5)
    assert np.all(exact["kl"][1:] >= 0)
    # BP_depth keeps only root-to-leaf channels: it must differ from the exact tree.
    assert np.all(exact["kl"][-1] > 1e-4)

    prior = controlled.kl_bp_model(
        _prior(), _GRAMMAR.transitions, _SCHEDULE, x0, t_values, jax.random.key(4)
    )
    assert np.all(prior["kl"] > 0)


def test_sequence_kl_matches_numpy_and_is_exactly_zero_between_equal_models():
    rng = np.random.default_rng(5)
    a = rng.dirichlet(np.ones(4), size=(3, 8))
    b = rng.dirichlet(np.ones(4), size=(3, 8))
    a[0, 0] = [0.0, 0.5, 0.5, 0.0]  # zeros in a are clipped at 1e-8
    b[1, 1] = [0.0, 1.0, 0.0, 0.0]  # zeros in b are clipped at 1e-8
    a32, b32 = (jnp.asarray(x, jnp.float32) for x in (a, b))
    np.testing.assert_array_equal(controlled.sequence_kl(a32, a32), 0.0)
    # The paper's kl_divergence_batch: clip both at 1e-8, sum over q and the L = 8 positions.
    pa, pb = np.clip(a, 1e-8, None), np.clip(b, 1e-8, None)
    per_sequence = (pa * np.log(pa / pb)).sum((-1, -2))
    assert per_sequence.mean() > 0
    np.testing.assert_allclose(controlled.sequence_kl(a32, b32), per_sequence, rtol=1e-5)


def test_twin_kl_bp_is_each_twins_kl_bp_model_at_every_layer():
    x0, t_values, key = _samples(_N, seed=4), [30, 60], jax.random.key(4)
    kl = controlled.twin_kl_bp(
        [_exact(), _prior()], _GRAMMAR.transitions, _SCHEDULE, x0, t_values, key
    )
    assert kl.shape == (2, _GRAMMAR.depth + 1, 2)
    for row, fn in zip(kl, (_exact(), _prior())):
        single = controlled.kl_bp_model(fn, _GRAMMAR.transitions, _SCHEDULE, x0, t_values, key)
        np.testing.assert_array_equal(row, single["kl"])


def test_kl_along_t_ratios_are_1_over_r_to_1():
    np.testing.assert_allclose(controlled.kl_along_t_ratios(25), np.arange(1, 26) / 25)
    with pytest.raises(ValueError):
        controlled.kl_along_t_ratios(1)


def test_twin_sequence_kl_has_a_row_per_pair_in_twin_pairs_order():
    rng = np.random.default_rng(8)
    probs = [jnp.asarray(rng.dirichlet(np.ones(4), size=(5, 8)), jnp.float32) for _ in range(3)]
    probs[1] = probs[0]
    out = controlled.twin_sequence_kl(probs)
    assert out.shape == (3, 5) and out.dtype == np.float64
    np.testing.assert_array_equal(out[0], 0.0)  # twins 0 and 1 agree
    np.testing.assert_array_equal(out[1], controlled.sequence_kl(probs[0], probs[2]))
    np.testing.assert_array_equal(out[2], controlled.sequence_kl(probs[1], probs[2]))


def test_kl_bp_k_along_t_matches_enumeration_on_a_depth_2_tree():
    """KL(BP_k || model) at every t, per sequence, against brute force over q**4 sequences."""
    rng = np.random.default_rng(7)
    q, depth, schedule = 3, 2, schedules.token_schedule(40)
    transitions = enumeration.random_transitions(rng, q, zero_fraction=0.3)
    seqs, probs = enumeration.sequence_distribution(transitions, depth)
    x0 = seqs[rng.choice(len(seqs), size=24, p=probs)]
    t_values, key = [1, 4, 10, 20, 30, 40], jax.random.key(7)
    model = jax.tree_util.Partial(denoisers.prior_denoiser, schedule)
    out = controlled.kl_bp_model(model, transitions, schedule, x0, t_values, key)
    ab = np.cumprod(1.0 - np.asarray(schedule.betas, np.float64))
    for j, t in enumerate(t_values):
        x_t = controlled.noisy_inputs(transitions, schedule, x0, t, key).astype(np.float64)
        model_probs = np.asarray(model(jnp.asarray(x_t, jnp.float32), jnp.full(len(x0), t)))
        fields = np.sqrt(ab[t]) / (1.0 - ab[t]) * x_t  # [N, L, q]
        for k in range(depth + 1):
            seqs_k, probs_k = enumeration.sequence_distribution(transitions, depth, k)
            keep = probs_k > 0
            log_w = np.log(probs_k[keep]) + fields[:, np.arange(4), seqs_k[keep]].sum(-1)
            w = np.exp(log_w - log_w.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            marg = np.einsum("ns,slq->nlq", w, np.eye(q)[seqs_k[keep]])  # BP_k marginals
            pm, pq = np.maximum(marg, 1e-8), np.maximum(model_probs, 1e-8)  # the paper's clip
            expected = np.maximum((pm * np.log(pm / pq)).sum(-1), 0).sum(-1).mean()
            np.testing.assert_allclose(out["kl"][k, j], expected, rtol=2e-4, atol=1e-5)


def test_grammatical_fraction():
    samples = _samples(30, seed=6)
    assert controlled.grammatical_fraction(_GRAMMAR.transitions, samples, chunk_size=24) == 1.0
    uniform = np.random.default_rng(6).integers(_GRAMMAR.q, size=(30, _GRAMMAR.length))
    fraction = controlled.grammatical_fraction(_GRAMMAR.transitions, uniform, chunk_size=24)
    # _SEQS is lexicographic: a sequence's index is its base-q number.
    index = uniform @ _GRAMMAR.q ** np.arange(_GRAMMAR.length)[::-1]
    assert fraction == pytest.approx(np.mean(_PROBS[index] > 0))
    assert fraction < 1.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: controlled.uturn_steps(_SCHEDULE, [0.0]),
        lambda: controlled.uturn_steps(_SCHEDULE, [1.5]),
        lambda: controlled.loss_decomposition(
            _prior(), _TRANSITIONS, _SCHEDULE, np.zeros((2, 8), int), [0], jax.random.key(0)
        ),
        lambda: controlled.kl_bp_model(
            _prior(), _TRANSITIONS, _SCHEDULE, np.zeros((2, 8), int), [5], jax.random.key(0), [4]
        ),
        lambda: controlled.grammatical_fraction(_TRANSITIONS, np.full((2, 8), 4)),
        lambda: controlled.grammatical_fraction(_TRANSITIONS, np.zeros((2, 6), int)),
    ],
)
def test_malformed_arguments_raise(call):
    with pytest.raises(ValueError):
        call()

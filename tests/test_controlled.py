"""Tests of the controlled setting's shared statistics: twin KLs, grammaticality."""

import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_bias.diffusion import denoisers
from diffusion_bias.diffusion import schedules
from diffusion_bias.statistics import controlled
from tests import small_grammar


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


def test_twin_sequence_kl_has_a_row_per_pair_in_twin_pairs_order():
    rng = np.random.default_rng(8)
    probs = [jnp.asarray(rng.dirichlet(np.ones(4), size=(5, 8)), jnp.float32) for _ in range(3)]
    probs[1] = probs[0]
    out = controlled.twin_sequence_kl(probs)
    assert out.shape == (3, 5) and out.dtype == np.float64
    np.testing.assert_array_equal(out[0], 0.0)  # twins 0 and 1 agree
    np.testing.assert_array_equal(out[1], controlled.sequence_kl(probs[0], probs[2]))
    np.testing.assert_array_equal(out[2], controlled.sequence_kl(probs[1], probs[2]))


def test_grammatical_fraction():
    samples = small_grammar.samples(30, seed=6)
    assert (
        controlled.grammatical_fraction(small_grammar.GRAMMAR.transitions, samples, chunk_size=24)
        == 1.0
    )
    uniform = np.random.default_rng(6).integers(
        small_grammar.GRAMMAR.q, size=(30, small_grammar.GRAMMAR.length)
    )
    fraction = controlled.grammatical_fraction(
        small_grammar.GRAMMAR.transitions, uniform, chunk_size=24
    )
    # small_grammar.SEQS is lexicographic: a sequence's index is its base-q number.
    index = uniform @ small_grammar.GRAMMAR.q ** np.arange(small_grammar.GRAMMAR.length)[::-1]
    assert fraction == pytest.approx(np.mean(small_grammar.PROBS[index] > 0))
    assert fraction < 1.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: controlled.grammatical_fraction(small_grammar.TRANSITIONS, np.full((2, 8), 4)),
        lambda: controlled.grammatical_fraction(small_grammar.TRANSITIONS, np.zeros((2, 6), int)),
    ],
)
def test_malformed_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


def _noisy(schedule, x0, step, seed=0):
    """x_t of one-hot x0 at `step` of `schedule` (float64 numpy) and its model time."""
    rng = np.random.default_rng(seed)
    onehot = np.eye(small_grammar.GRAMMAR.q)[x0]
    ab = float(schedule.alpha_bars[step])
    x_t = np.sqrt(ab) * onehot + np.sqrt(1 - ab) * rng.standard_normal(onehot.shape)
    t_model = np.full(len(x0), int(schedule.timesteps[step]), np.int32)
    return x_t.astype(np.float32), t_model, ab


def test_memorizing_token_denoiser_is_the_empirical_posterior_mean_at_the_model_time():
    respaced = schedules.respace(small_grammar.SCHEDULE, 20)
    train = small_grammar.samples(12, seed=3)
    x_t, t_model, ab = _noisy(respaced, small_grammar.samples(5, seed=4), step=3)
    fn = controlled.memorizing_token_denoiser(train, small_grammar.GRAMMAR.q, respaced)
    # The authors' empirical score: softmax over items of -|x_t - sqrt(ab) x0_i|^2 / (2(1-ab)).
    items = np.eye(small_grammar.GRAMMAR.q)[train]  # [P, L, q]
    sq = ((x_t[:, None].astype(np.float64) - np.sqrt(ab) * items[None]) ** 2).sum(axis=(2, 3))
    logits = -0.5 * sq / (1 - ab)
    weights = np.exp(logits - logits.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    expected = np.einsum("bp,plq->blq", weights, items)
    np.testing.assert_allclose(fn(jnp.asarray(x_t), jnp.asarray(t_model)), expected, atol=1e-5)


def test_bp_k_token_denoiser_is_exact_bp_at_k_0_and_bp_k_beyond():
    respaced = schedules.respace(small_grammar.SCHEDULE, 20)
    x_t, t_model, ab = _noisy(respaced, small_grammar.samples(6, seed=5), step=4, seed=1)
    step = jnp.full((6,), 4)
    exact = controlled.exact_token_denoiser(small_grammar.TRANSITIONS, respaced)
    for k in range(small_grammar.GRAMMAR.depth + 1):
        fn = controlled.bp_k_token_denoiser(small_grammar.TRANSITIONS, respaced, k)
        out = np.asarray(fn(jnp.asarray(x_t), jnp.asarray(t_model)))
        want = denoisers.exact_denoiser(
            small_grammar.TRANSITIONS, respaced, jnp.asarray(x_t), step, factorized_layers=k
        )
        np.testing.assert_allclose(out, want, atol=1e-6)
        if k == 0:
            np.testing.assert_allclose(out, exact(jnp.asarray(x_t), jnp.asarray(t_model)))
    # Exact BP is the posterior mean under the grammar, by enumeration of its support.
    onehot = np.eye(small_grammar.GRAMMAR.q)[small_grammar.SUPPORT]  # [S, L, q]
    sq = ((x_t[:, None].astype(np.float64) - np.sqrt(ab) * onehot[None]) ** 2).sum(axis=(2, 3))
    logits = np.log(small_grammar.SUPPORT_PROBS)[None] - 0.5 * sq / (1 - ab)
    weights = np.exp(logits - logits.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    bp0 = controlled.bp_k_token_denoiser(small_grammar.TRANSITIONS, respaced, 0)
    np.testing.assert_allclose(
        bp0(jnp.asarray(x_t), jnp.asarray(t_model)),
        np.einsum("bs,slq->blq", weights, onehot),
        atol=1e-4,
    )

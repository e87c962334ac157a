"""Belief propagation against brute-force enumeration (tests/enumeration.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import softmax

from diffusion_bias.exact import bp
from diffusion_bias.exact import grammar as grammar_lib
from tests import enumeration


def _posterior_leaf_marginals(transitions, depth, log_evidence, k):
    """E[one_hot(leaves) | evidence] by summing over every sequence."""
    seqs, probs = enumeration.sequence_distribution(transitions, depth, k)
    length = seqs.shape[1]
    with np.errstate(divide="ignore"):
        log_w = np.log(probs) + log_evidence[..., np.arange(length), seqs].sum(-1)
    w = softmax(log_w, axis=-1)  # [..., S]
    one_hot = np.eye(transitions.shape[0])[seqs]  # [S, L, q]
    return np.einsum("...s,slq->...lq", w, one_hot)


def _transitions(q, zeros, seed):
    rng = np.random.default_rng(seed)
    return enumeration.random_transitions(rng, q, zero_fraction=0.8 if zeros else 0.0)


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("zeros", [False, True])
def test_leaf_marginals_equal_enumeration_for_every_k(depth, zeros):
    q = 3
    transitions = _transitions(q, zeros, seed=depth)
    rng = np.random.default_rng(10 + depth)
    log_evidence = 2.0 * rng.standard_normal((5, 2**depth, q))
    for k in range(depth + 1):
        want = _posterior_leaf_marginals(transitions, depth, log_evidence, k)
        got = bp.leaf_marginals(
            transitions, jnp.asarray(log_evidence, jnp.float32), factorized_layers=k
        )
        np.testing.assert_allclose(got, want, atol=2e-6, err_msg=f"k={k}")


@pytest.mark.parametrize("q,depth", [(3, 2), (2, 3)])
@pytest.mark.parametrize("zeros", [False, True])
def test_every_level_marginal_equals_enumeration(q, depth, zeros):
    transitions = _transitions(q, zeros, seed=7 * q + depth)
    rng = np.random.default_rng(q)
    log_evidence = 1.5 * rng.standard_normal((3, 2**depth, q))
    for k in range(depth + 1):
        levels, prior = enumeration.tree_configurations(transitions, depth, k)
        leaves = levels[depth]
        log_w = np.log(np.maximum(prior, 1e-300)) + np.where(prior > 0, 0.0, -np.inf)
        log_w = log_w + log_evidence[:, np.arange(2**depth), leaves].sum(-1)
        w = softmax(log_w, axis=-1)  # [B, C]
        got = bp.level_marginals(
            transitions, jnp.asarray(log_evidence, jnp.float32), factorized_layers=k
        )
        for d in range(depth + 1):
            if levels[d] is None:
                assert got[d] is None
                continue
            want = np.einsum("bc,cnq->bnq", w, np.eye(q)[levels[d]])
            np.testing.assert_allclose(got[d], want, atol=2e-6, err_msg=f"k={k} d={d}")


@pytest.mark.parametrize("zeros", [False, True])
def test_free_energy_equals_enumeration_and_is_inf_where_impossible(zeros):
    q, depth = 3, 3
    transitions = _transitions(q, zeros, seed=3)
    for k in range(depth + 1):
        seqs, probs = enumeration.sequence_distribution(transitions, depth, k)
        got = np.asarray(bp.free_energy(transitions, seqs, factorized_layers=k))
        possible = probs > 0
        if zeros and k == 0:
            assert not possible.all()
        assert np.all(np.isinf(got[~possible])) and np.all(got[~possible] > 0)
        np.testing.assert_allclose(
            got[possible], -np.log(probs[possible]) / np.log(q), rtol=2e-6, err_msg=f"k={k}"
        )


def test_free_energy_marginalises_unobserved_leaves():
    q, depth = 3, 3
    transitions = _transitions(q, zeros=True, seed=5)
    seqs, probs = enumeration.sequence_distribution(transitions, depth)
    probs = probs.reshape((q,) * 2**depth)
    rng = np.random.default_rng(0)
    for _ in range(10):
        partial = rng.integers(0, q, 2**depth)
        partial[rng.random(2**depth) < 0.5] = -1
        index = tuple(slice(None) if s < 0 else s for s in partial)
        with np.errstate(divide="ignore"):
            want = -np.log(probs[index].sum()) / np.log(q)
        got = float(bp.free_energy(transitions, partial))
        if np.isinf(want):
            assert np.isinf(got) and got > 0
        else:
            np.testing.assert_allclose(got, want, rtol=2e-6)
    assert float(bp.free_energy(transitions, -np.ones(2**depth, int))) == pytest.approx(0, abs=1e-6)


def test_grammar_samples_have_finite_free_energy_and_mutations_can_be_impossible():
    g = grammar_lib.random_grammar(q=6, depth=4, q_eff=4, seed=0)
    x = grammar_lib.sample(g, 2000, seed=1)
    assert np.all(np.isfinite(bp.free_energy(g.transitions, x)))
    noise = np.random.default_rng(0).integers(0, 6, x.shape)
    assert np.any(np.isinf(bp.free_energy(g.transitions, noise)))


def test_extreme_fields_give_finite_exact_marginals_in_float32():
    # Fields of the exact denoiser at t = 1 of the token schedule (~1e4) on
    # ungrammatical inputs force impossible combinations, which is where the
    # scaled arithmetic underflows and the log-space path must take over.
    q, depth = 3, 3
    transitions = _transitions(q, zeros=True, seed=11)
    rng = np.random.default_rng(1)
    one_hot = np.eye(q)[rng.integers(0, q, (20, 2**depth))]
    log_evidence = 5000.0 * (one_hot + 0.01 * rng.standard_normal(one_hot.shape))
    for k in range(depth + 1):
        got = np.asarray(
            bp.leaf_marginals(
                transitions, jnp.asarray(log_evidence, jnp.float32), factorized_layers=k
            )
        )
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)
        want = _posterior_leaf_marginals(transitions, depth, log_evidence, k)
        np.testing.assert_allclose(got, want, atol=1e-3, err_msg=f"k={k}")
    huge = 1e30 * rng.standard_normal((4, 16, 6))
    g = grammar_lib.random_grammar()
    for marg in bp.level_marginals(g.transitions, jnp.asarray(huge, jnp.float32)):
        assert np.all(np.isfinite(marg))


def test_scaled_and_log_space_sweeps_agree_on_moderate_fields():
    g = grammar_lib.random_grammar()
    transitions = jnp.asarray(g.transitions, jnp.float32)
    log_evidence = 3.0 * jax.random.normal(jax.random.key(0), (64, 16, 6))
    sweep = jax.jit(bp._sweep, static_argnums=(0, 3, 4))
    for k in (0, 4):
        log_z_fast, fast, ok = sweep(bp._Scaled, transitions, log_evidence, k, True)
        log_z_log, slow, _ = sweep(bp._LogSpace, transitions, log_evidence, k, True)
        assert bool(ok.all())
        np.testing.assert_allclose(log_z_fast, log_z_log, rtol=1e-5)
        for a, b in zip(fast, slow):
            if a is not None:
                np.testing.assert_allclose(a, b, atol=2e-6)


def test_channels_are_path_products_of_marginal_transitions():
    transitions = _transitions(4, zeros=True, seed=2)
    for k in range(4):
        np.testing.assert_allclose(
            bp.channels(jnp.asarray(transitions), k),
            enumeration.path_channels(transitions, k),
            atol=1e-6,
        )


def test_marginals_are_invariant_to_per_leaf_constants():
    g = grammar_lib.random_grammar()
    ev = jax.random.normal(jax.random.key(1), (8, 16, 6))
    shifted = ev + 100.0 * jax.random.normal(jax.random.key(2), (8, 16, 1))
    np.testing.assert_allclose(
        bp.leaf_marginals(g.transitions, ev), bp.leaf_marginals(g.transitions, shifted), atol=1e-5
    )


@pytest.mark.parametrize(
    "transitions_shape,evidence_shape,k,match",
    [
        ((3, 3, 2), (4, 3), 0, "transitions"),
        ((3, 3, 3), (4, 2), 0, "leaf evidence"),
        ((3, 3, 3), (6, 3), 0, "leaf evidence"),
        ((3, 3, 3), (1, 3), 0, "leaf evidence"),
        ((3, 3, 3), (4, 3), 3, "factorized_layers"),
        ((3, 3, 3), (4, 3), -1, "factorized_layers"),
    ],
)
def test_bad_shapes_and_layers_raise_value_error(transitions_shape, evidence_shape, k, match):
    with pytest.raises(ValueError, match=match):
        bp.leaf_marginals(
            np.ones(transitions_shape) / 9, np.zeros(evidence_shape), factorized_layers=k
        )

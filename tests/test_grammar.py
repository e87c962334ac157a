"""The random tree grammar: structure, validation, and exact sampling."""

import numpy as np
import pytest
from scipy import stats

from diffusion_bias import grammar as grammar_lib
from tests import enumeration


def test_random_grammar_has_disjoint_blocks_of_q_eff_allowed_pairs():
    g = grammar_lib.random_grammar(q=6, depth=4, sigma=1.0, q_eff=4, seed=0)
    assert g.transitions.shape == (6, 6, 6) and g.q == 6 and g.length == 16
    np.testing.assert_allclose(g.transitions.sum(axis=(1, 2)), 1.0)
    allowed = g.transitions > 0
    assert np.all(allowed.sum(axis=(1, 2)) == 4)
    # Each (left, right) pair has at most one parent: the grammar is unambiguous.
    assert allowed.sum(axis=0).max() == 1


def test_random_grammar_is_determined_by_its_seed():
    a = grammar_lib.random_grammar(seed=3)
    b = grammar_lib.random_grammar(seed=3)
    c = grammar_lib.random_grammar(seed=4)
    np.testing.assert_array_equal(a.transitions, b.transitions)
    assert not np.array_equal(a.transitions, c.transitions)


def test_zero_sigma_gives_uniform_allowed_pairs():
    g = grammar_lib.random_grammar(q=5, depth=2, sigma=0.0, q_eff=3, seed=1)
    probs = g.transitions[g.transitions > 0]
    np.testing.assert_allclose(probs, 1.0 / 3)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(q=1), "q"),
        (dict(q=2.5), "q"),
        (dict(q=True), "q"),
        (dict(depth=0), "depth"),
        (dict(depth=2.0), "depth"),
        (dict(q_eff=0), "q_eff"),
        (dict(q_eff=7), "q_eff"),
        (dict(sigma=-1.0), "sigma"),
        (dict(sigma=float("nan")), "sigma"),
        (dict(sigma="1"), "sigma"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_grammar_parameters_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} "):
        grammar_lib.random_grammar(**kwargs)


def test_grammar_rejects_transitions_that_are_not_distributions():
    with pytest.raises(ValueError, match="sum to one"):
        grammar_lib.Grammar(transitions=np.ones((2, 2, 2)), depth=2)
    with pytest.raises(ValueError, match="shape"):
        grammar_lib.Grammar(transitions=np.ones((2, 4)) / 4, depth=2)
    with pytest.raises(ValueError, match="non-negative"):
        t = np.full((2, 2, 2), 0.25)
        t[0, 0, 0], t[0, 0, 1] = -0.25, 0.75
        grammar_lib.Grammar(transitions=t, depth=2)


def test_sampler_empirical_distribution_matches_exact_distribution():
    rng = np.random.default_rng(0)
    transitions = enumeration.random_transitions(rng, 3, zero_fraction=0.5)
    g = grammar_lib.Grammar(transitions=transitions, depth=2)
    seqs, probs = enumeration.sequence_distribution(transitions, 2)
    n = 200_000
    x = grammar_lib.sample(g, n, seed=1)
    index = np.ravel_multi_index(x.T, (3,) * 4)
    counts = np.bincount(index, minlength=len(probs))
    assert counts[probs == 0].sum() == 0
    support = probs > 0
    _, p_value = stats.chisquare(counts[support], n * probs[support])
    assert p_value > 1e-3
    # Total variation bound independent of the test's distributional assumptions.
    assert 0.5 * np.abs(counts / n - probs).sum() < 0.02


def test_sample_levels_are_consistent_parent_child_draws():
    g = grammar_lib.random_grammar(q=4, depth=3, q_eff=2, seed=2)
    levels = grammar_lib.sample_levels(g, 500, seed=3)
    assert [lv.shape for lv in levels] == [(500, 2**d) for d in range(4)]
    for parent, child in zip(levels[:-1], levels[1:]):
        assert np.all(g.transitions[parent, child[:, 0::2], child[:, 1::2]] > 0)
    np.testing.assert_array_equal(levels[-1], grammar_lib.sample(g, 500, seed=3))


def test_samples_are_determined_by_the_seed():
    g = grammar_lib.random_grammar()
    a = grammar_lib.sample(g, 1000, seed=5)
    np.testing.assert_array_equal(a, grammar_lib.sample(g, 1000, seed=5))
    assert not np.array_equal(a, grammar_lib.sample(g, 1000, seed=6))
    assert a.dtype == np.int32 and a.min() >= 0 and a.max() < 6


def test_bad_sample_arguments_raise_value_error():
    g = grammar_lib.random_grammar()
    with pytest.raises(ValueError, match="^n "):
        grammar_lib.sample(g, 0, seed=0)
    with pytest.raises(ValueError, match="^seed "):
        grammar_lib.sample(g, 10, seed=1.5)

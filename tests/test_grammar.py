"""The random tree grammar: structure, validation, and exact sampling."""

import numpy as np
import pytest
from scipy import special
from scipy import stats

from configs import grammar_paper
from diffusion_bias.data import grammar_pool
from diffusion_bias.exact import grammar as grammar_lib
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


# ----------------------------------------------------------------------------
# The authors' grammar ("legacy")
# ----------------------------------------------------------------------------


def _authors_transitions(q, sigma, q_eff, seed):
    """The authors' grammar, as their code draws it, on numpy's global state.

    `generate_dataset` seeds the global state with `np.random.seed(seed)` and
    calls `get_M_wforbidden(q, sigma, q_eff)` (their
    modules/gen_filtered_hierarchical_data_wforbidden.py), re-implemented here
    loop for loop. The global state is restored afterwards.
    """
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        h = np.full((q, q, q), -np.inf)
        m = np.empty((q, q, q))
        tuples = np.array([(i, j) for i in range(q) for j in range(q)])
        np.random.shuffle(tuples)
        for i in range(q):
            for j in range(i * q, i * q + q_eff):
                left, right = tuples[j]
                h[i, left, right] = sigma * np.random.randn()
            m[i, :, :] = special.softmax(h[i, :, :])
        return m
    finally:
        np.random.set_state(saved)


@pytest.mark.parametrize(
    "q,sigma,q_eff,seed",
    [
        (6, 1.0, 4, 0),  # grammar_paper
        (6, 1.0, 4, 1),
        (6, 1.0, 4, 12345),
        (3, 0.5, 2, 7),
        (4, 0.0, 3, 2),
        (5, 2.5, 1, 3),
        (8, 1.0, 8, 4),
        (12, 1.0, 5, 2**32 - 1),
    ],
)
def test_legacy_grammar_is_the_authors_bit_for_bit(q, sigma, q_eff, seed):
    g = grammar_lib.random_grammar(q=q, depth=3, sigma=sigma, q_eff=q_eff, seed=seed, rng="legacy")
    np.testing.assert_array_equal(g.transitions, _authors_transitions(q, sigma, q_eff, seed))


def test_grammar_paper_draws_the_authors_seed_0_grammar():
    data = grammar_paper.get_config().data
    assert data.grammar_rng == "legacy"
    g = grammar_lib.random_grammar(
        q=data.q,
        depth=data.depth,
        sigma=data.sigma,
        q_eff=data.q_eff,
        seed=data.grammar_seed,
        rng=data.grammar_rng,
    )
    expected = _authors_transitions(data.q, data.sigma, data.q_eff, data.grammar_seed)
    np.testing.assert_array_equal(g.transitions, expected)
    # And it is not the "default" grammar of the same seed (the 0.65).
    default = grammar_lib.random_grammar(q=6, depth=4, sigma=1.0, q_eff=4, seed=0)
    assert np.abs(g.transitions - default.transitions).max() > 0.5


def test_legacy_grammar_neither_reads_nor_moves_the_global_numpy_state():
    np.random.seed(99)
    before = np.random.get_state()
    a = grammar_lib.random_grammar(seed=5, rng="legacy")
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1])
    assert before[2:] == after[2:]
    np.random.seed(1)
    np.testing.assert_array_equal(
        grammar_lib.random_grammar(seed=5, rng="legacy").transitions, a.transitions
    )


def test_default_grammar_is_unchanged():
    # Computed by the code before `rng` existed (q=3, depth 2, q_eff 2, seed 0).
    expected = np.zeros((3, 9))
    expected[0, [4, 5]] = [0.5882944266302278, 0.4117055733697722]
    expected[1, [3, 6]] = [0.3631573872659075, 0.6368426127340924]
    expected[2, [0, 7]] = [0.6602930554829728, 0.3397069445170272]
    for kwargs in ({}, {"rng": "default"}):
        g = grammar_lib.random_grammar(q=3, depth=2, sigma=1.0, q_eff=2, seed=0, **kwargs)
        np.testing.assert_array_equal(g.transitions.reshape(3, 9), expected)
    # The allowed pairs of the q=6 grammar of seed 0, likewise.
    g = grammar_lib.random_grammar(q=6, depth=4, sigma=1.0, q_eff=4, seed=0)
    allowed = np.nonzero(g.transitions.reshape(6, 36))[1].reshape(6, 4)
    assert allowed.tolist() == [
        [2, 4, 30, 34],
        [1, 11, 20, 26],
        [6, 9, 10, 28],
        [8, 12, 16, 23],
        [5, 7, 17, 25],
        [22, 27, 29, 33],
    ]


def test_bad_grammar_rng_and_legacy_seed_raise_value_error_naming_them():
    with pytest.raises(ValueError, match="^rng "):
        grammar_lib.random_grammar(rng="numpy")
    with pytest.raises(ValueError, match="^seed "):
        grammar_lib.random_grammar(seed=2**32, rng="legacy")
    grammar_lib.random_grammar(seed=2**32)  # the default generator takes it


def test_grammar_pool_of_the_legacy_grammar_has_its_own_cache(tmp_path):
    params = dict(q=4, depth=2, sigma=1.0, q_eff=2, grammar_seed=0, pool_size=50, pool_seed=1)
    default = grammar_pool.grammar_pool(**params, cache_dir=tmp_path)
    legacy = grammar_pool.grammar_pool(**params, cache_dir=tmp_path, grammar_rng="legacy")
    assert default.info["cache_path"] != legacy.info["cache_path"]
    assert default.info["grammar_rng"] == "default" and legacy.info["grammar_rng"] == "legacy"
    np.testing.assert_array_equal(legacy.grammar.transitions, _authors_transitions(4, 1.0, 2, 0))
    # Read back from its own file, not the default one.
    again = grammar_pool.grammar_pool(**params, cache_dir=tmp_path, grammar_rng="legacy")
    np.testing.assert_array_equal(again.items, legacy.items)
    # The default pool keeps the cache name it had before the field existed.
    old_key = {**params, "sigma": 1.0, "version": grammar_pool._CACHE_VERSION}
    assert default.info["cache_path"] == grammar_pool.grammar_cache_path(tmp_path, old_key)

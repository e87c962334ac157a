"""Tests of the U-turn overlap against exact BP and a memorising denoiser."""

import jax
import numpy as np
import pytest

from diffusion_bias.diffusion import denoisers
from diffusion_bias.diffusion import schedules
from diffusion_bias.statistics import controlled
from diffusion_bias.statistics import uturn
from tests import small_grammar


def test_uturn_with_the_exact_denoiser_matches_bp_exactly():
    x0 = small_grammar.samples(small_grammar.N, seed=1)
    exact = controlled.exact_token_denoiser(
        small_grammar.GRAMMAR.transitions, small_grammar.SCHEDULE
    )
    out = uturn.uturn_overlap(
        exact,
        small_grammar.GRAMMAR.transitions,
        small_grammar.SCHEDULE,
        x0,
        [0.05, 0.2],
        jax.random.key(0),
    )
    np.testing.assert_array_equal(out["t"], [5, 20])
    assert out["model"].shape == out["bp"].shape == (2, small_grammar.N)
    # Same x_t, same chain noise, same denoiser: identical trajectories.
    np.testing.assert_array_equal(out["model"], out["bp"])
    np.testing.assert_array_equal(out["ratio"], [1.0, 1.0])
    # At r = 0.2 the noise destroys tokens: the comparison is not vacuous.
    assert out["bp"][1].mean() < 0.95

    # New arrays (new "params") for the same function reuse the compiled chains.
    before = uturn._uturn_overlap._cache_size()
    other = controlled.exact_token_denoiser(small_grammar.TRANSITIONS + 0.0, small_grammar.SCHEDULE)
    uturn.uturn_overlap(
        other, small_grammar.TRANSITIONS, small_grammar.SCHEDULE, x0, [0.05], jax.random.key(1)
    )
    assert uturn._uturn_overlap._cache_size() == before


def test_uturn_steps_truncate_like_the_papers_code():
    schedule = schedules.token_schedule(500)
    ratios = [0.01, 0.03, 0.05, 0.085, 0.12, 0.999, 0.0001]
    expected = [max(1, int(r * 500)) for r in ratios]  # the paper's int(r * T_final)
    assert expected == [5, 15, 25, 42, 60, 499, 1]
    assert uturn.uturn_steps(schedule, ratios) == expected
    # A float product just under an integer stays on it.
    assert uturn.uturn_steps(small_grammar.SCHEDULE, [0.29]) == [29]


def test_uturn_ratio_averages_overlaps_over_repetitions_before_dividing():
    """Paper: per sequence, (mean over repeats of model overlap) / (mean of BP's), then mean."""
    x0, key, r = small_grammar.samples(small_grammar.N, seed=8), jax.random.key(8), [0.3]

    def run(repeats):
        return uturn.uturn_overlap(
            small_grammar.prior(),
            small_grammar.GRAMMAR.transitions,
            small_grammar.SCHEDULE,
            x0,
            r,
            key,
            repeats=repeats,
            chunk_size=40,
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
    pool = np.unique(small_grammar.samples(1000, seed=2), axis=0)
    assert len(pool) >= 2 * small_grammar.N
    pool = np.random.default_rng(0).permutation(pool)
    train, held_out = pool[: small_grammar.N], pool[small_grammar.N : 2 * small_grammar.N]
    memorizer = jax.tree_util.Partial(
        denoisers.memorizing_denoiser,
        jax.nn.one_hot(train, small_grammar.GRAMMAR.q),
        small_grammar.SCHEDULE,
    )

    def run(x0):
        return uturn.uturn_overlap(
            memorizer,
            small_grammar.GRAMMAR.transitions,
            small_grammar.SCHEDULE,
            x0,
            [0.2],
            jax.random.key(2),
            repeats=2,
        )

    on_train, on_test = run(train), run(held_out)
    assert on_train["model"].mean() >= on_train["bp"].mean()
    assert on_train["ratio"][0] > 1.0
    assert on_test["model"].mean() < on_train["model"].mean()


def test_twin_uturn_ratios_are_each_twins_ratio_on_its_own_and_on_held_out_sequences():
    pool = np.random.default_rng(0).permutation(
        np.unique(small_grammar.samples(1000, seed=2), axis=0)
    )
    train, held_out = pool[: small_grammar.N], pool[small_grammar.N : 2 * small_grammar.N]
    memorizer = jax.tree_util.Partial(
        denoisers.memorizing_denoiser,
        jax.nn.one_hot(train, small_grammar.GRAMMAR.q),
        small_grammar.SCHEDULE,
    )
    args = (small_grammar.GRAMMAR.transitions, small_grammar.SCHEDULE)
    key = jax.random.key(2)
    out = uturn.twin_uturn_ratios(
        [memorizer, small_grammar.exact()],
        *args,
        np.stack([train, held_out]),
        held_out,
        [0.2],
        key,
        repeats=2,
    )
    assert out["train"].shape == out["heldout"].shape == (2, 1)
    for name, x0 in (("train", train), ("heldout", held_out)):
        ratio = uturn.uturn_overlap(memorizer, *args, x0, [0.2], key, repeats=2)["ratio"]
        np.testing.assert_array_equal(out[name][0], ratio)
    # The memoriser favours its own set; the exact denoiser is BP itself.
    assert out["train"][0, 0] > out["heldout"][0, 0]
    np.testing.assert_array_equal(out["train"][1], [1.0])


def test_bp_overlaps_computed_once_give_the_same_uturn_for_any_model():
    x0 = small_grammar.samples(small_grammar.N, seed=5)
    args = (small_grammar.GRAMMAR.transitions, small_grammar.SCHEDULE)
    key, ratios = jax.random.key(5), [0.1, 0.3]
    bp = uturn.bp_overlaps(*args, x0, ratios, key, repeats=2)
    for model in (small_grammar.prior(), small_grammar.exact()):
        joint = uturn.uturn_overlap(model, *args, x0, ratios, key, repeats=2)
        given = uturn.uturn_overlap(model, *args, x0, ratios, key, repeats=2, bp=bp)
        np.testing.assert_array_equal(joint["bp"], bp)
        for name in ("model", "ratio", "ratio_sem"):
            np.testing.assert_array_equal(given[name], joint[name])
    with pytest.raises(ValueError, match="repeats"):
        uturn.bp_overlaps(*args, x0, ratios, key, repeats=0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: uturn.uturn_steps(small_grammar.SCHEDULE, [0.0]),
        lambda: uturn.uturn_steps(small_grammar.SCHEDULE, [1.5]),
    ],
)
def test_malformed_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


def test_random_sequences_are_uniform_tokens_determined_by_the_key():
    x0 = uturn.random_sequences(jax.random.key(0), 4000, 8, 4)
    assert x0.shape == (4000, 8) and x0.dtype == np.int32
    np.testing.assert_array_equal(x0, uturn.random_sequences(jax.random.key(0), 4000, 8, 4))
    counts = np.bincount(x0.ravel(), minlength=4)
    # Each symbol 1/4 of 32000 tokens, within 5 standard deviations.
    assert np.all(np.abs(counts - 8000) < 5 * np.sqrt(32000 * 0.25 * 0.75))
    # Most are not grammatical: the grammar allows few of the 4^8 sequences.
    allowed = {tuple(s) for s in small_grammar.SUPPORT}
    assert np.mean([tuple(s) in allowed for s in x0]) < 0.05


def test_overlaps_on_any_sequences_share_the_x_t_and_chain_noise_of_the_bp_uturn():
    x0 = small_grammar.samples(small_grammar.N, seed=6)
    ratios, key = [0.05, 0.2], jax.random.key(3)
    bp0 = controlled.bp_k_token_denoiser(small_grammar.TRANSITIONS, small_grammar.SCHEDULE, 0)
    out = uturn.overlaps_on(
        [bp0, small_grammar.exact()], small_grammar.TRANSITIONS, small_grammar.SCHEDULE, x0,
        ratios, key, repeats=2,
    )  # fmt: skip
    assert out.shape == (2, 2, small_grammar.N)
    want = uturn.bp_overlaps(
        small_grammar.TRANSITIONS, small_grammar.SCHEDULE, x0, ratios, key, repeats=2
    )
    np.testing.assert_allclose(out[0], want)
    np.testing.assert_allclose(out[1], want)


def test_on_random_sequences_only_a_memoriser_of_them_recovers_them():
    x0 = uturn.random_sequences(jax.random.key(1), small_grammar.N, 8, small_grammar.GRAMMAR.q)
    others = uturn.random_sequences(jax.random.key(2), small_grammar.N, 8, small_grammar.GRAMMAR.q)
    fns = [
        controlled.memorizing_token_denoiser(x0, small_grammar.GRAMMAR.q, small_grammar.SCHEDULE),
        controlled.memorizing_token_denoiser(
            others, small_grammar.GRAMMAR.q, small_grammar.SCHEDULE
        ),
        controlled.bp_k_token_denoiser(small_grammar.TRANSITIONS, small_grammar.SCHEDULE, 0),
    ]
    own, other, bp0 = uturn.overlaps_on(
        fns, small_grammar.TRANSITIONS, small_grammar.SCHEDULE, x0, [0.05], jax.random.key(4)
    )[:, 0]
    assert own.mean() > 0.99  # its training set: returned exactly
    assert other.mean() < 0.8 and bp0.mean() < 0.8  # pulled to other sequences

"""Tests of the loss decomposition CE = l* + l~ against enumeration."""

import jax
import numpy as np
import pytest

from diffusion_bias.statistics import controlled
from diffusion_bias.statistics import loss_decomposition
from tests import small_grammar


def test_loss_decomposition_of_the_exact_and_prior_denoisers():
    x0, t_values, key = small_grammar.samples(256, seed=3), [10, 30, 60], jax.random.key(3)
    exact = loss_decomposition.loss_decomposition(
        small_grammar.exact(),
        small_grammar.GRAMMAR.transitions,
        small_grammar.SCHEDULE,
        x0,
        t_values,
        key,
    )
    np.testing.assert_array_equal(exact["t"], t_values)
    np.testing.assert_allclose(exact["ce"], exact["l_star"] + exact["l_tilde"], atol=1e-6)
    # On fresh grammar samples the excess term vanishes in expectation.
    assert np.all(np.abs(exact["l_tilde"]) < 3 * exact["l_tilde_sem"])

    # With p = x0_BP, l* is the mean per-token entropy of the posterior
    # marginals on the same noisy inputs.
    for i, t in enumerate(t_values):
        x_t = controlled.noisy_inputs(
            small_grammar.GRAMMAR.transitions, small_grammar.SCHEDULE, x0, t, key
        )
        marginals = small_grammar.enumerated_marginals(x_t, t)
        entropy = -np.sum(marginals * np.log(np.maximum(marginals, 1e-12)), -1).mean()
        np.testing.assert_allclose(exact["l_star"][i], entropy, rtol=1e-4, atol=1e-6)

    prior = loss_decomposition.loss_decomposition(
        small_grammar.prior(),
        small_grammar.GRAMMAR.transitions,
        small_grammar.SCHEDULE,
        x0,
        t_values,
        key,
    )
    np.testing.assert_allclose(prior["ce"], prior["l_star"] + prior["l_tilde"], atol=1e-6)
    # Same x_t: l*(prior) - l*(BP) = E KL(x0_BP || prior) > 0.
    assert np.all(prior["l_star"] > exact["l_star"])


def test_twin_loss_decomposition_is_each_twins_at_t_and_mean_over_the_grid():
    x0, key = small_grammar.samples(256, seed=3), jax.random.key(3)
    own = np.stack([x0, small_grammar.samples(256, seed=6)])
    at_t, mean_t = loss_decomposition.twin_loss_decomposition(
        [small_grammar.exact(), small_grammar.prior()],
        small_grammar.GRAMMAR.transitions,
        small_grammar.SCHEDULE,
        own,
        x0,
        10,
        [30, 60],
        key,
    )
    assert at_t.shape == mean_t.shape == (2, 4)
    for k, fn in enumerate((small_grammar.exact(), small_grammar.prior())):
        parts = [
            loss_decomposition.loss_decomposition(
                fn, small_grammar.GRAMMAR.transitions, small_grammar.SCHEDULE, x, [10, 30, 60], key
            )
            for x in (own[k], x0)
        ]
        values = np.array([d[n] for d in parts for n in ("l_star", "l_tilde")])  # [4, 3]
        np.testing.assert_array_equal(at_t[k], values[:, 0])
        np.testing.assert_array_equal(mean_t[k], values[:, 1:].mean(-1))
    # Twin 0 is scored on the same sequences as its own and as held-out ones.
    np.testing.assert_array_equal(at_t[0, :2], at_t[0, 2:])


def test_decomposition_steps_are_the_midpoints_of_equal_slices_of_1_to_T():
    steps = loss_decomposition.decomposition_steps(500, 20)
    assert len(steps) == 20 and steps[0] == 13 and steps[-1] == 488
    # The grid mean of a linear function of t is its mean over t uniform in 1..T.
    assert np.mean(steps) == pytest.approx(np.mean(np.arange(1, 501)), abs=0.5)
    assert loss_decomposition.decomposition_steps(10, 20) == list(range(1, 11))
    with pytest.raises(ValueError):
        loss_decomposition.decomposition_steps(500, 0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: loss_decomposition.loss_decomposition(
            small_grammar.prior(),
            small_grammar.TRANSITIONS,
            small_grammar.SCHEDULE,
            np.zeros((2, 8), int),
            [0],
            jax.random.key(0),
        ),
    ],
)
def test_malformed_arguments_raise(call):
    with pytest.raises(ValueError):
        call()

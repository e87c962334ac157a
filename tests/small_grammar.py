"""A small tree grammar (q = 4, depth 3), its schedule, and the reference denoisers.

Shared by the tests of the controlled-setting statistics. Compiling belief
propagation dominates their run time (seconds per kernel on CPU), so the exact
and prior-only denoisers are one function of a traced weight, sharing each
compiled kernel, and references come from enumeration, not BP.
"""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_bias.diffusion import denoisers
from diffusion_bias.diffusion import schedules
from diffusion_bias.exact import grammar
from tests import enumeration

GRAMMAR = grammar.random_grammar(q=4, depth=3, q_eff=2, seed=0)
TRANSITIONS = jnp.asarray(GRAMMAR.transitions, jnp.float32)
SCHEDULE = schedules.token_schedule(100)
N = 64


# The support of the grammar: every sequence with positive probability.
SEQS, PROBS = enumeration.sequence_distribution(GRAMMAR.transitions, GRAMMAR.depth)
SUPPORT, SUPPORT_PROBS = SEQS[PROBS > 0], PROBS[PROBS > 0]


def _blend(weight, transitions, schedule, x_t, t):
    # weight 1 gives the exact denoiser bit for bit (1*e + 0*p == e), weight 0
    # the prior-only one.
    exact = denoisers.exact_denoiser(transitions, schedule, x_t, t)
    return weight * exact + (1.0 - weight) * denoisers.prior_denoiser(schedule, x_t, t)


def exact(transitions=TRANSITIONS):
    return jax.tree_util.Partial(_blend, 1.0, transitions, SCHEDULE)


def prior():
    return jax.tree_util.Partial(_blend, 0.0, TRANSITIONS, SCHEDULE)


def enumerated_marginals(x_t, t):
    """E[x_0 | x_t] by summing over the grammar's support, float64.  # [N, L, q]"""
    ab = np.cumprod(1.0 - np.asarray(SCHEDULE.betas, np.float64))[t]
    fields = np.sqrt(ab) / (1.0 - ab) * np.asarray(x_t, np.float64)  # [N, L, q]
    positions = np.arange(GRAMMAR.length)
    log_w = np.log(SUPPORT_PROBS) + fields[:, positions, SUPPORT].sum(-1)  # [N, S]
    weights = np.exp(log_w - log_w.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("ns,slq->nlq", weights, np.eye(GRAMMAR.q)[SUPPORT])


def samples(n, seed):
    return grammar.sample(GRAMMAR, n, seed=seed)

"""Tests of the reference denoisers against enumeration and float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from diffusion_bias.diffusion import denoisers
from diffusion_bias.diffusion import schedules


def _float64_alpha_bars(schedule):
    return np.cumprod(1.0 - np.asarray(schedule.betas, np.float64))


def _noisy_tokens(rng, schedule, tokens, t, q):
    """x_t for integer tokens [B, L] at steps t [B], in float64."""
    ab = _float64_alpha_bars(schedule)[t][:, None, None]
    x0 = np.eye(q)[tokens]
    return np.sqrt(ab) * x0 + np.sqrt(1 - ab) * rng.standard_normal(x0.shape)


def test_prior_denoiser_equals_enumerated_posterior_of_uniform_tokens():
    q, schedule = 6, schedules.token_schedule(500)
    rng = np.random.default_rng(0)
    t = np.array([1, 20, 75, 150, 300, 500])
    x_t = _noisy_tokens(rng, schedule, rng.integers(q, size=(len(t), 16)), t, q)
    ab = _float64_alpha_bars(schedule)[t][:, None, None, None]
    # Enumerate each token's q candidates with the Gaussian likelihood N(x_t; sqrt(ab) e_a, 1-ab).
    candidates = np.sqrt(ab) * np.eye(q)  # [B, 1, q(candidate), q]
    log_lik = -np.sum((x_t[:, :, None, :] - candidates) ** 2, axis=-1) / (2 * (1 - ab[..., 0]))
    expected = np.exp(log_lik - special.logsumexp(log_lik, axis=-1, keepdims=True))
    out = denoisers.prior_denoiser(schedule, jnp.asarray(x_t, jnp.float32), jnp.asarray(t))
    assert out.shape == (len(t), 16, q)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_token_fields_are_scaled_inputs():
    schedule = schedules.token_schedule(500)
    x_t = jnp.ones((2, 3, 4))
    ab = _float64_alpha_bars(schedule)[[10, 400]]
    h = denoisers.token_fields(schedule, x_t, jnp.array([10, 400]))
    np.testing.assert_allclose(h[:, 0, 0], np.sqrt(ab) / (1 - ab), rtol=1e-5)


def _memorizing_reference(train, schedule, x_t, t):
    """Posterior mean over the training set, unchunked, in float64."""
    ab = _float64_alpha_bars(schedule)[t]
    flat_train = train.reshape(len(train), -1)
    flat_x = x_t.reshape(len(x_t), -1)
    sq_dist = np.sum((flat_x[:, None, :] - np.sqrt(ab)[:, None, None] * flat_train) ** 2, -1)
    log_w = -sq_dist / (2 * (1 - ab))[:, None]
    weights = np.exp(log_w - special.logsumexp(log_w, axis=1, keepdims=True))  # [B, N]
    return (weights @ flat_train).reshape(x_t.shape)


def test_memorizing_denoiser_equals_unchunked_float64_computation():
    q, schedule = 4, schedules.token_schedule(500)
    rng = np.random.default_rng(1)
    train = np.eye(q)[rng.integers(q, size=(37, 5))]  # N = 37, not a multiple of 8
    t = np.array([3, 30, 60, 100, 200, 500])
    x_t = _noisy_tokens(rng, schedule, rng.integers(q, size=(len(t), 5)), t, q)
    expected = _memorizing_reference(train, schedule, x_t, t)
    for chunk_size in (8, 37, 4096):
        out = denoisers.memorizing_denoiser(
            jnp.asarray(train, jnp.float32),
            schedule,
            jnp.asarray(x_t, jnp.float32),
            jnp.asarray(t),
            chunk_size=chunk_size,
        )
        assert out.shape == x_t.shape
        np.testing.assert_allclose(out, expected, atol=2e-4, err_msg=f"chunk={chunk_size}")


def test_memorizing_denoiser_handles_real_valued_features():
    schedule = schedules.image_schedule()
    rng = np.random.default_rng(2)
    train = rng.standard_normal((23, 2, 3))
    t = np.array([100, 400, 900])
    x_t = rng.standard_normal((3, 2, 3))
    out = denoisers.memorizing_denoiser(
        jnp.asarray(train, jnp.float32),
        schedule,
        jnp.asarray(x_t, jnp.float32),
        jnp.asarray(t),
        chunk_size=5,
    )
    np.testing.assert_allclose(out, _memorizing_reference(train, schedule, x_t, t), atol=2e-4)


def test_memorizing_denoiser_returns_nearest_item_at_small_t():
    q, schedule = 6, schedules.token_schedule(500)
    rng = np.random.default_rng(3)
    train = np.eye(q)[rng.integers(q, size=(50, 16))]
    picked = np.array([4, 17, 49])
    t = np.array([1, 1, 2])
    ab = _float64_alpha_bars(schedule)[t][:, None, None]
    x_t = np.sqrt(ab) * train[picked] + np.sqrt(1 - ab) * rng.standard_normal((3, 16, q))
    out = denoisers.memorizing_denoiser(
        jnp.asarray(train, jnp.float32),
        schedule,
        jnp.asarray(x_t, jnp.float32),
        jnp.asarray(t),
        chunk_size=16,
    )
    np.testing.assert_allclose(out, train[picked], atol=1e-6)


def test_memorizing_denoiser_is_finite_at_extreme_t():
    q, schedule = 6, schedules.token_schedule(500)
    rng = np.random.default_rng(4)
    train = jnp.asarray(np.eye(q)[rng.integers(q, size=(30, 16))], jnp.float32)
    # Far from every item at t=1 (huge negative logits), and pure noise at t=T.
    x_far = jnp.asarray(50.0 * rng.standard_normal((2, 16, q)), jnp.float32)
    out = denoisers.memorizing_denoiser(train, schedule, x_far, jnp.array([1, 500]), chunk_size=7)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    x_T = jnp.asarray(rng.standard_normal((1, 16, q)), jnp.float32)
    near_uniform = denoisers.memorizing_denoiser(train, schedule, x_T, 500, chunk_size=7)
    np.testing.assert_allclose(near_uniform[0], np.asarray(train).mean(0), atol=0.05)


def _all_avals(jaxpr):
    """Every variable's abstract value in a jaxpr, sub-jaxprs (scan bodies) included."""
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield var.aval
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _all_avals(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _all_avals(sub)


def test_memorizing_denoiser_never_builds_a_batch_by_train_array():
    schedule = schedules.token_schedule(500)
    batch, num_train, chunk = 3, 1000, 64  # 1000 pads to 1024
    train = jnp.zeros((num_train, 16, 6))
    x_t = jnp.zeros((batch, 16, 6))
    closed = jax.make_jaxpr(
        lambda a, b: denoisers.memorizing_denoiser(a, schedule, b, 7, chunk_size=chunk)
    )(train, x_t)
    shapes = [tuple(getattr(aval, "shape", ())) for aval in _all_avals(closed.jaxpr)]
    assert (batch, chunk) in shapes  # the per-chunk logits
    for shape in shapes:
        assert not (batch in shape and (num_train in shape or 1024 in shape)), shape


def test_exact_denoiser_equals_posterior_mean_by_enumeration():
    from tests import enumeration

    q, depth = 3, 3
    transitions = enumeration.random_transitions(np.random.default_rng(4), q, zero_fraction=0.5)
    seqs, probs = enumeration.sequence_distribution(transitions, depth)
    support = probs > 0
    seqs, probs = seqs[support], probs[support]
    schedule = schedules.token_schedule(500)
    ab = _float64_alpha_bars(schedule)
    rng = np.random.default_rng(0)
    one_hot = np.eye(q)[seqs]  # [S, L, q]
    for t in (1, 20, 75, 250, 500):
        x0 = seqs[rng.choice(len(seqs), 4, p=probs)]
        x_t = _noisy_tokens(rng, schedule, x0, np.full(4, t), q)  # [4, L, q]
        # log N(x_t; sqrt(ab) x0, (1-ab) I) for every sequence, up to a constant.
        sq = ((x_t[:, None] - np.sqrt(ab[t]) * one_hot[None]) ** 2).sum((-1, -2))
        log_w = np.log(probs) - sq / (2 * (1 - ab[t]))
        want = np.einsum("bs,slq->blq", special.softmax(log_w, axis=-1), one_hot)
        got = denoisers.exact_denoiser(
            transitions, schedule, jnp.asarray(x_t, jnp.float32), jnp.full((4,), t)
        )
        # Fields reach ~5e3 at t = 1, where float32 inputs carry ~1e-3 of error.
        np.testing.assert_allclose(got, want, atol=2e-3 if t == 1 else 2e-5, err_msg=f"t={t}")

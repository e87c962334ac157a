"""The controlled (tree grammar) setting's shared ground: denoisers, noise, checks, KLs.

the paper (arXiv 2603.03469), Setting 2. The statistics against exact inference each have a module
of their own, named after them, with their per-twin form beside them:
`statistics/uturn.py` (Fig. 5), `statistics/loss_decomposition.py` (CE = l* + l~,
Fig. 4b) and `statistics/kl_bp.py` (KL(BP_k || model), Fig. 3b, 1b, 6). Here:
what they share (the denoiser contract, the exact BP denoiser, the noisy inputs
of a chunk, the argument checks, the chunking), the sample-split KL between
twins, and the fraction of sequences the grammar allows. KL divergences are
between sequence distributions: summed over the L positions, as in the paper.

The denoiser contract. A token denoiser is a callable
`denoise_fn(x_t [B, L, q] float, t_model [B] int) -> probs [B, L, q]`, the
model's softmax over x_0 (its estimate of E[x_0 | x_t]), called with the model
time `schedule.timesteps[t]` as in `samplers.sample`. The per-chunk kernels are
jitted once at module level and take the denoiser as an argument:
- a `jax.tree_util.Partial(apply_fn, params, ...)` is a pytree whose leaves
  (the params) are traced, so with the same `apply_fn` object the kernels
  compile once and are reused at every checkpoint and by every twin;
- any other callable is static (hashed by identity): the kernels compile once
  per callable object, so build it once, not once per checkpoint. Arrays it
  closes over become compile-time constants.
Twins are evaluated by calling a function once per twin with that twin's
params bound; the compiled kernels are shared.

Sequences are processed in chunks of `min(chunk_size, N)` rows, the last one
padded, so memory stays bounded and a given N always compiles the same shapes.
The noise of a chunk is drawn from a key folded from the base key, the step t
and the chunk index (and, for the U-turn, the repeat): results are deterministic
given `key` and `chunk_size`, and the same t sees the same noise whatever the
other entries of `t_values`. The results of all chunks are fetched with a single
`device_get` and returned as numpy arrays.

Shapes: N sequences of L = 2**depth tokens over q symbols; C the chunk size.
"""

import functools
from collections.abc import Sequence
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from diffusion_bias import checks
from diffusion_bias import chunking
from diffusion_bias.diffusion import denoisers
from diffusion_bias.diffusion import process
from diffusion_bias.diffusion import samplers
from diffusion_bias.diffusion.schedules import Schedule
from diffusion_bias.exact import bp
from diffusion_bias.statistics import sample_split

# denoise_fn(x_t [B, L, q], t_model [B] int32) -> probs [B, L, q].
TokenDenoiser = Callable[[jax.Array, jax.Array], jax.Array]

DEFAULT_CHUNK_SIZE = 1024

# Probabilities are clipped here before the log, so that a model (or a BP_k
# marginal) with zero mass on a symbol gives a large finite loss, not inf/NaN.
_PROB_FLOOR = 1e-12

# The KLs clip both distributions at this floor, as the paper's code does.
_KL_FLOOR = 1e-8


def as_pytree(denoise_fn: TokenDenoiser) -> jax.tree_util.Partial:
    # A Partial is a valid jit argument; wrapping a plain callable puts it in the
    # treedef, i.e. makes it static.
    if isinstance(denoise_fn, jax.tree_util.Partial):
        return denoise_fn
    if not callable(denoise_fn):
        raise ValueError(f"denoise_fn must be callable, got {denoise_fn!r}.")
    return jax.tree_util.Partial(denoise_fn)


def log_probs(probs: jax.Array) -> jax.Array:
    """log(max(p, 1e-12)) in float32 (a bfloat16 model output is upcast)."""
    return jnp.log(jnp.maximum(probs.astype(jnp.float32), _PROB_FLOOR))


def token_kl(probs_a: jax.Array, probs_b: jax.Array) -> jax.Array:
    """Per-token KL(a || b) = sum_q a (log a - log b), both clipped at 1e-8 first.

    The paper's code clips both distributions at 1e-8 (no renormalisation), so
    a zero in `a` adds 1e-8 log(1e-8 / b) and a zero in `b` a large finite term.

    Args:
        probs_a: probabilities.  # [..., q]
        probs_b: probabilities.  # [..., q]

    Returns:
        The KL of each token, clamped at 0; exactly 0 where a == b.  # [...]
    """
    probs_a = jnp.maximum(probs_a.astype(jnp.float32), _KL_FLOOR)
    probs_b = jnp.maximum(probs_b.astype(jnp.float32), _KL_FLOOR)
    kl = jnp.sum(probs_a * (jnp.log(probs_a) - jnp.log(probs_b)), axis=-1)
    # Float32 rounding leaves ~-1e-9 where a and b nearly agree; the KL is >= 0.
    return jnp.maximum(kl, 0.0)


def _step_of(schedule: Schedule, t_model: jax.Array) -> jax.Array:
    """Step index of `schedule` whose model time is `t_model`.

    The sampler calls denoisers with the model time; the BP reference needs the
    step of `schedule` to read its alpha_bar. The identity unless respaced.
    """
    return jnp.searchsorted(schedule.timesteps, t_model).astype(jnp.int32)


def noise_chunk(
    schedule: Schedule, x0: jax.Array, key: jax.Array, t: jax.Array, chunk: ArrayLike, q: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One-hot x_0 and x_t ~ q(x_t | x_0) at step t, the noise keyed by (key, t, chunk).

    Returns:
        x0_onehot: [C, L, q] float32.
        x_t: [C, L, q] float32.
        t_batch: [C] int32 steps of `schedule`.
    """
    key = jax.random.fold_in(jax.random.fold_in(key, t), chunk)
    x0_onehot = jax.nn.one_hot(x0, q, dtype=jnp.float32)
    noise = samplers.standard_normal(key, x0_onehot.shape)
    t_batch = jnp.full((x0.shape[0],), t, jnp.int32)
    return x0_onehot, process.q_sample(schedule, x0_onehot, t_batch, noise), t_batch


def _exact_at_model_time(transitions, schedule, x_t, t_model):
    # The sampler passes the model time; BP needs the step of `schedule`.
    return denoisers.exact_denoiser(transitions, schedule, x_t, _step_of(schedule, t_model))


@functools.lru_cache(maxsize=None)
def _bp_k_at_model_time(factorized_layers):
    """BP_k at the model time: one function object per k, so each k compiles once."""
    return functools.partial(_exact_k_at_model_time, factorized_layers)


def _exact_k_at_model_time(factorized_layers, transitions, schedule, x_t, t_model):
    step = _step_of(schedule, t_model)
    return denoisers.exact_denoiser(transitions, schedule, x_t, step, factorized_layers)


def bp_k_token_denoiser(
    transitions: ArrayLike, schedule: Schedule, factorized_layers: int
) -> jax.tree_util.Partial:
    """BP_k (the top k layers of the tree factorised) as a token denoiser; k = 0 is exact BP.

    Returns:
        denoise_fn(x_t [B, L, q], t_model [B]) -> BP_k leaf marginals [B, L, q].
    """
    return jax.tree_util.Partial(
        _bp_k_at_model_time(int(factorized_layers)),
        jnp.asarray(transitions, jnp.float32),
        schedule,
    )


def _memorizing_at_model_time(train_onehot, schedule, x_t, t_model):
    step = _step_of(schedule, t_model)
    return denoisers.memorizing_denoiser(train_onehot, schedule, x_t, step)


def memorizing_token_denoiser(
    train_tokens: ArrayLike, num_symbols: int, schedule: Schedule
) -> jax.tree_util.Partial:
    """The empirical-score denoiser of a training set: E[x_0 | x_t] when the data are the set.

    The paper's memorising baseline (its Fig. 11): the posterior mean over the
    training sequences, `denoisers.memorizing_denoiser` on their one-hot form.

    Args:
        train_tokens: int tokens of the set.  # [P, L]
        num_symbols: q.
        schedule: the noise schedule the statistics use.

    Returns:
        denoise_fn(x_t [B, L, q], t_model [B]) -> posterior mean [B, L, q].
    """
    onehot = jax.nn.one_hot(jnp.asarray(train_tokens), num_symbols, dtype=jnp.float32)
    return jax.tree_util.Partial(_memorizing_at_model_time, onehot, schedule)


def exact_token_denoiser(transitions: ArrayLike, schedule: Schedule) -> jax.tree_util.Partial:
    """The exact BP denoiser E[x_0 | x_t] as a token denoiser of this module.

    Unlike `functools.partial(denoisers.exact_denoiser, transitions, schedule)`,
    it is a pytree (its arrays are traced, so every grammar and schedule of the
    same shapes shares one compile) and it reads the model time the sampler
    passes, so it is also exact on a respaced schedule. The U-turn's BP
    reference is this denoiser.

    Args:
        transitions: the grammar's M[a, b, c].  # [q, q, q]
        schedule: the noise schedule the statistics use.

    Returns:
        denoise_fn(x_t [B, L, q], t_model [B]) -> BP leaf marginals [B, L, q].
    """
    return jax.tree_util.Partial(
        _exact_at_model_time, jnp.asarray(transitions, jnp.float32), schedule
    )


@functools.partial(jax.jit, static_argnames=("num_symbols",))
def _noisy_kernel(schedule, x0, key, t, chunk, num_symbols):
    """x_t of one chunk exactly as the loss and KL(BP_k || model) kernels draw it: [C, L, q]."""
    return noise_chunk(schedule, x0, key, t, chunk, num_symbols)[1]


@jax.jit
def _finite_free_energy(transitions, tokens):
    return jnp.isfinite(bp.free_energy(transitions, tokens))


def check_tokens(transitions: jax.Array, x0: ArrayLike, name: str = "x0") -> np.ndarray:
    """x0 as int32 [N, 2**depth] tokens in [0, q); ValueError otherwise."""
    x0 = np.asarray(x0)
    q = transitions.shape[0]
    length = x0.shape[-1] if x0.ndim == 2 else 0
    if x0.ndim != 2 or x0.shape[0] < 1 or length < 2 or length & (length - 1):
        raise ValueError(f"{name} must have shape [N >= 1, 2**depth], got {x0.shape}.")
    if not np.issubdtype(x0.dtype, np.integer):
        raise ValueError(f"{name} must hold integer tokens, got dtype {x0.dtype}.")
    if x0.min() < 0 or x0.max() >= q:
        raise ValueError(f"{name} tokens must lie in [0, {q}), got [{x0.min()}, {x0.max()}].")
    return x0.astype(np.int32)


def check_steps(schedule: Schedule, t_values: Sequence[int] | ArrayLike) -> list[int]:
    """t_values as a list of steps of `schedule` in 1..T; ValueError otherwise."""
    values = np.atleast_1d(np.asarray(t_values))
    steps = [int(t) for t in values]
    if not steps or np.any(values != steps) or any(not 1 <= t <= schedule.num_steps for t in steps):
        raise ValueError(
            f"t_values must be steps in 1..{schedule.num_steps}, got {np.asarray(t_values)}."
        )
    return steps


def token_chunks(x0: np.ndarray, chunk_size: int) -> np.ndarray:
    """[N, L] -> [num_chunks, C, L], the last chunk padded with token 0."""
    if not checks.is_int(chunk_size) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    return chunking.padded_chunks(x0, min(chunk_size, x0.shape[0]), np.int32)


def mean_sem(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over the last axis (s.e.m. NaN for one sample)."""
    num = values.shape[-1]
    if num < 2:
        return values.mean(-1), np.full(values.shape[:-1], np.nan)
    return values.mean(-1), values.std(-1, ddof=1) / np.sqrt(num)


def noisy_inputs(
    transitions: ArrayLike,
    schedule: Schedule,
    x0: ArrayLike,
    t: int,
    key: jax.Array,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """The noisy inputs x_t that `loss_decomposition` and `kl_bp.kl_bp_model` use.

    With the same x0, t, key and chunk_size, this is the x_t on which those
    functions evaluated the model. Public so that a reference computed
    elsewhere (exact enumeration, another model, `twin_sequence_kl` of the
    twins) is scored on exactly the inputs of a reported number; the tests
    check both functions against enumeration this way.

    Args:
        transitions: the grammar's M[a, b, c] (only q is read).  # [q, q, q]
        schedule: the noise schedule.
        x0: clean integer tokens.  # [N, L]
        t: a step of `schedule` in 1..T.
        key: the base PRNG key given to those functions.
        chunk_size: as given to those functions.

    Returns:
        x_t ~ q(x_t | one_hot(x_0)), float32.  # [N, L, q]

    Raises:
        ValueError: on malformed tokens or step.
    """
    transitions = jnp.asarray(transitions, jnp.float32)
    x0 = check_tokens(transitions, x0)
    (t,) = check_steps(schedule, [t])
    x_t = [
        _noisy_kernel(schedule, chunk, key, t, c, num_symbols=transitions.shape[0])
        for c, chunk in enumerate(token_chunks(x0, chunk_size))
    ]
    return chunking.gather(x_t, x0.shape[0])


@jax.jit
def sequence_kl(probs_a: jax.Array, probs_b: jax.Array) -> jax.Array:
    """KL(a || b) of each sequence's factorised distributions: per-token KLs summed over L.

    Both are clipped at 1e-8 (the paper's code), so zeros give a large finite
    value, and a == b gives exactly 0.

    Args:
        probs_a: the first model's probabilities.  # [..., L, q]
        probs_b: the second model's, on the same inputs.  # [..., L, q]

    Returns:
        sum over L and q of a (log a - log b).  # [...]
    """
    return jnp.sum(token_kl(probs_a, probs_b), axis=-1)


def grammatical_fraction(
    transitions: ArrayLike, tokens: ArrayLike, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> float:
    """Fraction of sequences the grammar can produce (finite exact free energy).

    Args:
        transitions: the grammar's M[a, b, c].  # [q, q, q]
        tokens: integer sequences, e.g. generated samples.  # [N, L]
        chunk_size: sequences per kernel call.

    Returns:
        The fraction in [0, 1].

    Raises:
        ValueError: on malformed tokens.
    """
    transitions = jnp.asarray(transitions, jnp.float32)
    tokens = check_tokens(transitions, tokens, "tokens")
    finite = chunking.gather(
        [_finite_free_energy(transitions, chunk) for chunk in token_chunks(tokens, chunk_size)],
        tokens.shape[0],
        axis=-1,
    )
    return float(finite.mean())


def twin_sequence_kl(probs: Sequence[ArrayLike]) -> np.ndarray:
    """Per twin pair and sequence: KL(model_a || model_b) of x0, summed over L.

    Args:
        probs: K arrays, twin k's probabilities on the same inputs.  # [N, L, q] each

    Returns:
        float64, pairs (a, b), a < b, in `sample_split.twin_pairs` order.  # [P, N]
    """
    return np.stack(
        [
            np.asarray(sequence_kl(probs[a], probs[b]), np.float64)
            for a, b in sample_split.twin_pairs(len(probs))
        ]
    )

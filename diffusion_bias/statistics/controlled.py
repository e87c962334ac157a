"""Statistics of the controlled (tree grammar) setting against exact inference.

PAPER.md, Setting 2: the U-turn (Fig. 5), the loss decomposition CE = l* + l~
(Fig. 4b), the score divergence KL(BP_k || model) along t and over training
(Fig. 3b, 1b, 6), the sample-split KL between twins, and the fraction of
sequences the grammar allows; at the end, the same per twin (or twin pair) of
a snapshot, as the analysis reports them. KL divergences are between sequence
distributions: summed over the L positions, as in the paper.

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
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_bias import bp
from diffusion_bias import chunking
from diffusion_bias.diffusion import denoisers
from diffusion_bias.diffusion import process
from diffusion_bias.diffusion import samplers
from diffusion_bias.diffusion.schedules import Schedule
from diffusion_bias.statistics import sample_split

# denoise_fn(x_t [B, L, q], t_model [B] int32) -> probs [B, L, q].
TokenDenoiser = Callable[[jax.Array, jax.Array], jax.Array]

DEFAULT_CHUNK_SIZE = 1024

# Probabilities are clipped here before the log, so that a model (or a BP_k
# marginal) with zero mass on a symbol gives a large finite loss, not inf/NaN.
_PROB_FLOOR = 1e-12

# The KLs clip both distributions at this floor, as the paper's code does.
_KL_FLOOR = 1e-8


def _as_pytree(denoise_fn: TokenDenoiser) -> jax.tree_util.Partial:
    # A Partial is a valid jit argument; wrapping a plain callable puts it in the
    # treedef, i.e. makes it static.
    if isinstance(denoise_fn, jax.tree_util.Partial):
        return denoise_fn
    if not callable(denoise_fn):
        raise ValueError(f"denoise_fn must be callable, got {denoise_fn!r}.")
    return jax.tree_util.Partial(denoise_fn)


def _log_probs(probs: jax.Array) -> jax.Array:
    """log(max(p, 1e-12)) in float32 (a bfloat16 model output is upcast)."""
    return jnp.log(jnp.maximum(probs.astype(jnp.float32), _PROB_FLOOR))


def _token_kl(probs_a: jax.Array, probs_b: jax.Array) -> jax.Array:
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


def _noisy(schedule: Schedule, x0: jax.Array, key: jax.Array, t: jax.Array, chunk, q: int):
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


def exact_token_denoiser(transitions, schedule: Schedule) -> jax.tree_util.Partial:
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
def _uturn_start(schedule, x0, key, repeat, t, chunk, num_symbols):
    """x_t of one chunk and the key of its reverse chain."""
    forward_key, chain_key = jax.random.split(jax.random.fold_in(key, repeat))
    _, x_t, _ = _noisy(schedule, x0, forward_key, t, chunk, num_symbols)
    return x_t, jax.random.fold_in(jax.random.fold_in(chain_key, t), chunk)


@functools.partial(jax.jit, static_argnames=("start_step",))
def _uturn_overlap(denoise_fn, schedule, x0, x_t, chain_key, start_step):
    """Fraction of each sequence's tokens recovered by the reverse chain: [C].

    The model and the BP reference run through this same kernel, so the BP
    chain compiles once per start step whatever the model.
    """
    x0_hat = samplers.sample(denoise_fn, schedule, x_t, chain_key, "x0", start_step=start_step)
    return jnp.mean(jnp.argmax(x0_hat, axis=-1) == x0, axis=-1)


@jax.jit
def _loss_kernel(denoise_fn, transitions, schedule, x0, key, t, chunk):
    """Per-sequence CE, l*, l~ of one chunk at step t: [3, C]."""
    x0_onehot, x_t, t_batch = _noisy(schedule, x0, key, t, chunk, transitions.shape[0])
    log_p = _log_probs(denoise_fn(x_t, schedule.timesteps[t_batch]))
    x0_bp = denoisers.exact_denoiser(transitions, schedule, x_t, t_batch)

    def loss(target):
        return -jnp.mean(jnp.sum(target * log_p, axis=-1), axis=-1)

    return jnp.stack([loss(x0_onehot), loss(x0_bp), loss(x0_onehot - x0_bp)])


@functools.partial(jax.jit, static_argnames=("factorized_layers",))
def _kl_kernel(denoise_fn, transitions, schedule, x0, key, t, chunk, factorized_layers):
    """Per-sequence KL(BP_k || model), summed over tokens, of one chunk at step t: [K, C]."""
    _, x_t, t_batch = _noisy(schedule, x0, key, t, chunk, transitions.shape[0])
    probs = denoise_fn(x_t, schedule.timesteps[t_batch])
    fields = denoisers.token_fields(schedule, x_t, t_batch)
    kls = [
        _token_kl(bp.leaf_marginals(transitions, fields, factorized_layers=k), probs).sum(-1)
        for k in factorized_layers
    ]
    return jnp.stack(kls)


@functools.partial(jax.jit, static_argnames=("num_symbols",))
def _noisy_kernel(schedule, x0, key, t, chunk, num_symbols):
    """x_t of one chunk exactly as `_loss_kernel` and `_kl_kernel` draw it: [C, L, q]."""
    return _noisy(schedule, x0, key, t, chunk, num_symbols)[1]


@jax.jit
def _finite_free_energy(transitions, tokens):
    return jnp.isfinite(bp.free_energy(transitions, tokens))


def _check_tokens(transitions: jax.Array, x0, name: str = "x0") -> np.ndarray:
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


def _check_steps(schedule: Schedule, t_values) -> list[int]:
    values = np.atleast_1d(np.asarray(t_values))
    steps = [int(t) for t in values]
    if not steps or np.any(values != steps) or any(not 1 <= t <= schedule.num_steps for t in steps):
        raise ValueError(
            f"t_values must be steps in 1..{schedule.num_steps}, got {np.asarray(t_values)}."
        )
    return steps


def _chunks(x0: np.ndarray, chunk_size: int) -> np.ndarray:
    """[N, L] -> [num_chunks, C, L], the last chunk padded with token 0."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    return chunking.padded_chunks(x0, min(chunk_size, x0.shape[0]), np.int32)


def _mean_sem(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over the last axis (s.e.m. NaN for one sample)."""
    num = values.shape[-1]
    if num < 2:
        return values.mean(-1), np.full(values.shape[:-1], np.nan)
    return values.mean(-1), values.std(-1, ddof=1) / np.sqrt(num)


def noisy_inputs(
    transitions,
    schedule: Schedule,
    x0,
    t: int,
    key: jax.Array,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """The noisy inputs x_t that `loss_decomposition` and `kl_bp_model` use.

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
    x0 = _check_tokens(transitions, x0)
    (t,) = _check_steps(schedule, [t])
    x_t = [
        _noisy_kernel(schedule, chunk, key, t, c, num_symbols=transitions.shape[0])
        for c, chunk in enumerate(_chunks(x0, chunk_size))
    ]
    return chunking.gather(x_t, x0.shape[0])


def uturn_steps(schedule: Schedule, ratios) -> list[int]:
    """The U-turn steps t = max(1, floor(r T)), truncated as the paper's code (int(r T)).

    E.g. r = 0.085 of T = 500 is step 42. A 1e-9 guard keeps a float product
    that should be an integer (0.29 * 100 = 28.999...) on that integer.

    Args:
        schedule: the noise schedule (T = `schedule.num_steps`).
        ratios: fractions of T in (0, 1].  # [R]

    Returns:
        R steps in 1..T.

    Raises:
        ValueError: if a ratio lies outside (0, 1].
    """
    ratios = np.atleast_1d(np.asarray(ratios, np.float64))
    if ratios.size == 0 or np.any(~(ratios > 0)) or np.any(ratios > 1):
        raise ValueError(f"ratios must lie in (0, 1], got {ratios}.")
    return [max(1, int(np.floor(r * schedule.num_steps + 1e-9))) for r in ratios]


def uturn_overlap(
    denoise_fn: TokenDenoiser,
    transitions,
    schedule: Schedule,
    x0,
    ratios,
    key: jax.Array,
    repeats: int = 1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, np.ndarray]:
    """U-turn (PAPER.md Fig. 5): noise to t = r T, denoise back, count recovered tokens.

    For each ratio and repeat, x_0 is noised once to x_t; the model and exact BP
    then run the reverse chain from x_t with the same per-step noise, and the
    final tokens (argmax) are compared with x_0. The reverse chain's start step
    is static: the chain compiles once per distinct t for BP (whatever the
    model) and once per t for each model function (module docstring), and is
    reused after. The BP chains are rerun at every call (with a fixed key they
    give the same overlaps at every checkpoint); they cost far less than a
    transformer's.

    Args:
        denoise_fn: the token denoiser (module docstring).
        transitions: the grammar's M[a, b, c].  # [q, q, q]
        schedule: the noise schedule; with a respaced schedule, t counts its steps.
        x0: clean integer tokens.  # [N, L]
        ratios: fractions r of T in (0, 1].  # [R]
        key: base PRNG key; repeats and ratios get independent noise.
        repeats: number of independent noisings averaged over, >= 1.
        chunk_size: sequences per kernel call.

    Returns:
        Dict of numpy arrays:
            model: fraction of tokens the model recovers, mean over repeats.  # [R, N]
            bp: the same for exact BP.  # [R, N]
            ratio: mean over sequences of model / bp, both averaged over
                repeats first, over the sequences with bp > 0 (NaN if
                none).  # [R]
            ratio_sem: standard error of that mean.  # [R]
            t: the steps.  # [R]

    Raises:
        ValueError: on malformed tokens, ratios or repeats.
    """
    transitions = jnp.asarray(transitions, jnp.float32)
    x0 = _check_tokens(transitions, x0)
    steps = uturn_steps(schedule, ratios)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}.")
    denoise_fn = _as_pytree(denoise_fn)
    chunks = _chunks(x0, chunk_size)
    q = transitions.shape[0]
    reference = exact_token_denoiser(transitions, schedule)
    overlaps = []  # per (repeat, t): [2, N padded], model then BP
    for repeat in range(repeats):
        for t in steps:
            per_chunk = []
            for c, chunk in enumerate(chunks):
                x_t, chain_key = _uturn_start(schedule, chunk, key, repeat, t, c, q)
                # The model and BP start from the same x_t and see the same chain noise.
                per_chunk.append(
                    jnp.stack(
                        [
                            _uturn_overlap(fn, schedule, chunk, x_t, chain_key, start_step=t)
                            for fn in (denoise_fn, reference)
                        ]
                    )
                )
            overlaps.append(jnp.concatenate(per_chunk, axis=-1))
    overlaps = chunking.gather([jnp.stack(overlaps)], x0.shape[0], axis=-1)
    overlaps = overlaps.reshape(repeats, len(steps), 2, -1).mean(0)  # [R, 2, N]
    model, ref = overlaps[:, 0], overlaps[:, 1]

    ratio, ratio_sem = np.full(len(steps), np.nan), np.full(len(steps), np.nan)
    for i in range(len(steps)):
        keep = ref[i] > 0
        if keep.any():
            ratio[i], ratio_sem[i] = _mean_sem(model[i, keep] / ref[i, keep])
    return {"model": model, "bp": ref, "ratio": ratio, "ratio_sem": ratio_sem, "t": np.array(steps)}


def loss_decomposition(
    denoise_fn: TokenDenoiser,
    transitions,
    schedule: Schedule,
    x0,
    t_values,
    key: jax.Array,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, np.ndarray]:
    """CE = l* + l~ (PAPER.md Fig. 4b) at each step t.

    With p the model's probabilities on x_t ~ q(x_t | x_0) and x0_BP the exact
    posterior marginals E[x_0 | x_t]: CE = -x_0 . log p, l* = -x0_BP . log p
    (distillation of the exact denoiser), l~ = -(x_0 - x0_BP) . log p (zero in
    expectation over x_0 drawn from the grammar, i.e. on held-out data). Each
    is summed over q and averaged over tokens and sequences; log p is clipped
    at log(1e-12). t is traced: one compile serves every t.

    Args:
        denoise_fn: the token denoiser (module docstring).
        transitions: the grammar's M[a, b, c].  # [q, q, q]
        schedule: the noise schedule.
        x0: clean integer tokens.  # [N, L]
        t_values: steps of `schedule` in 1..T.  # [S]
        key: base PRNG key of the forward noise.
        chunk_size: sequences per kernel call.

    Returns:
        Dict of numpy arrays, each [S]: ce, l_star, l_tilde (means over
        sequences), ce_sem, l_star_sem, l_tilde_sem (their standard errors over
        sequences), and t.

    Raises:
        ValueError: on malformed tokens or steps.
    """
    transitions = jnp.asarray(transitions, jnp.float32)
    x0 = _check_tokens(transitions, x0)
    steps = _check_steps(schedule, t_values)
    denoise_fn = _as_pytree(denoise_fn)
    chunks = _chunks(x0, chunk_size)

    per_step = [
        jnp.concatenate(
            [
                _loss_kernel(denoise_fn, transitions, schedule, chunk, key, t, c)
                for c, chunk in enumerate(chunks)
            ],
            axis=-1,
        )
        for t in steps
    ]
    values = chunking.gather([jnp.stack(per_step)], x0.shape[0], axis=-1)  # [S, 3, N]
    out = {"t": np.array(steps)}
    for i, name in enumerate(("ce", "l_star", "l_tilde")):
        out[name], out[name + "_sem"] = _mean_sem(values[:, i])
    return out


def kl_bp_model(
    denoise_fn: TokenDenoiser,
    transitions,
    schedule: Schedule,
    x0,
    t_values,
    key: jax.Array,
    factorized_layers=None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, np.ndarray]:
    """Score divergence KL(BP_k || model) (PAPER.md Fig. 3b, 1b, 6).

    At each step t, x_t ~ q(x_t | x_0) is drawn once and shared by every k; the
    per-token categorical KL is summed over q and over the L tokens (the KL
    between the factorised sequence distributions, the paper's unit: "per
    sequence") and averaged over sequences. t is traced: one compile per tuple
    of k.

    Args:
        denoise_fn: the token denoiser (module docstring).
        transitions: the grammar's M[a, b, c].  # [q, q, q]
        schedule: the noise schedule.
        x0: clean integer tokens (e.g. held-out grammar samples).  # [N, L]
        t_values: steps of `schedule` in 1..T.  # [S]
        key: base PRNG key of the forward noise; the same key gives the same
            x_t as `loss_decomposition` at the same t and chunk size.
        factorized_layers: the k of BP_k, ints in 0..depth (default all).  # [K]
        chunk_size: sequences per kernel call.

    Returns:
        Dict of numpy arrays: kl [K, S], k [K], t [S].

    Raises:
        ValueError: on malformed tokens, steps or layers.
    """
    transitions = jnp.asarray(transitions, jnp.float32)
    x0 = _check_tokens(transitions, x0)
    steps = _check_steps(schedule, t_values)
    depth = x0.shape[1].bit_length() - 1
    if factorized_layers is None:
        factorized_layers = range(depth + 1)
    layers = tuple(int(k) for k in factorized_layers)
    if not layers or any(not 0 <= k <= depth for k in layers):
        raise ValueError(f"factorized_layers must be in 0..{depth}, got {factorized_layers}.")
    denoise_fn = _as_pytree(denoise_fn)
    chunks = _chunks(x0, chunk_size)

    per_step = [
        jnp.concatenate(
            [
                _kl_kernel(denoise_fn, transitions, schedule, chunk, key, t, c, layers)
                for c, chunk in enumerate(chunks)
            ],
            axis=-1,
        )
        for t in steps
    ]
    kl = chunking.gather([jnp.stack(per_step, axis=1)], x0.shape[0], axis=-1).mean(-1)  # [K, S]
    return {"kl": kl, "k": np.array(layers), "t": np.array(steps)}


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
    return jnp.sum(_token_kl(probs_a, probs_b), axis=-1)


def grammatical_fraction(transitions, tokens, chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
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
    tokens = _check_tokens(transitions, tokens, "tokens")
    finite = chunking.gather(
        [_finite_free_energy(transitions, chunk) for chunk in _chunks(tokens, chunk_size)],
        tokens.shape[0],
        axis=-1,
    )
    return float(finite.mean())


# ---------------------------------------------------------------------------
# Per-twin statistics of a snapshot: one value per twin (or twin pair), as
# statistics.json reports them. `denoise_fns` are the K twins' denoisers, each
# a `jax.tree_util.Partial` with that twin's params bound (see the contract above).


def twin_sequence_kl(probs) -> np.ndarray:
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


def twin_kl_bp(denoise_fns, transitions, schedule: Schedule, x0, t_values, key) -> np.ndarray:
    """KL(BP_k || model) per twin on the same sequences, for k = 0..depth.

    Args:
        denoise_fns: the K twins' denoisers.
        transitions: the grammar's M[a, b, c].  # [q, q, q]
        schedule: the noise schedule.
        x0: clean integer tokens, e.g. held-out sequences.  # [N, L]
        t_values: S steps of `schedule`.
        key: the base PRNG key (the same noise for every twin).

    Returns:
        Mean over sequences of the per-sequence KL.  # [K, depth + 1, S]
    """
    depth = int(np.log2(np.shape(x0)[-1]))
    return np.asarray(
        [
            kl_bp_model(
                fn, transitions, schedule, x0, t_values, key,
                factorized_layers=tuple(range(depth + 1)),
            )["kl"]
            for fn in denoise_fns
        ]
    )  # fmt: skip


def decomposition_steps(num_steps, num_points):
    """[G] steps whose mean of f(t) is the midpoint estimate of the mean of f over t in 1..T.

    t_g = ceil((g + 1/2) T / G), g = 0..G-1: the midpoints of G equal slices of
    1..T, so uniform t in 1..T is approximated by a fixed, deterministic grid.
    """
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
        raise ValueError(f"num_points must be a positive integer, got {num_points!r}")
    g = np.arange(min(num_points, num_steps))
    return [int(t) for t in np.ceil((g + 0.5) * num_steps / len(g))]


def twin_loss_decomposition(denoise_fns, transitions, schedule, own, heldout, t, grid, key):
    """Per twin: l* and l~ on its own and on held-out sequences, at t and over a grid.

    Args:
        denoise_fns: the K twins' denoisers.
        transitions: the grammar's M[a, b, c].  # [q, q, q]
        schedule: the noise schedule.
        own: each twin's training sequences.  # [K, n, L]
        heldout: held-out sequences.  # [m, L]
        t: one step (the paper's panel: t/T = 0.3).
        grid: G steps whose mean estimates the average over t (`decomposition_steps`).
        key: the base PRNG key.

    Returns:
        (at_t [K, 4], mean_over_grid [K, 4]); the 4 columns l*_own, l~_own,
        l*_heldout, l~_heldout, per token.
    """
    at_t, mean_t = [], []
    for fn, items in zip(denoise_fns, own):
        parts = [
            loss_decomposition(fn, transitions, schedule, x, [t] + list(grid), key)
            for x in (items, heldout)
        ]
        values = np.array([d[n] for d in parts for n in ("l_star", "l_tilde")])  # [4, 1 + G]
        at_t.append(values[:, 0])
        mean_t.append(values[:, 1:].mean(-1))
    return np.asarray(at_t), np.asarray(mean_t)


def twin_uturn_ratios(denoise_fns, transitions, schedule, own, heldout, ratios, key, repeats=1):
    """U-turn overlap ratio model / exact BP per twin, on its own and on held-out sequences.

    Args:
        denoise_fns: the K twins' denoisers.
        transitions: the grammar's M[a, b, c].  # [q, q, q]
        schedule: the noise schedule.
        own: each twin's training sequences.  # [K, n, L]
        heldout: held-out sequences.  # [m, L]
        ratios: R values of t/T where the chains start (`uturn_steps`).
        key: the base PRNG key.
        repeats: noise repetitions per sequence.

    Returns:
        dict train [K, R], heldout [K, R].
    """
    out = dict(train=[], heldout=[])
    for fn, items in zip(denoise_fns, own):
        for x, name in ((items, "train"), (heldout, "heldout")):
            out[name].append(
                uturn_overlap(fn, transitions, schedule, x, ratios, key, repeats=repeats)["ratio"]
            )
    return {name: np.asarray(values) for name, values in out.items()}


def kl_along_t_ratios(num_points):
    """[R] t/T = 1/R, 2/R, ..., 1: where Fig. 3b reads KL(BP_k || model) along time."""
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 2:
        raise ValueError(f"num_points must be an integer >= 2, got {num_points!r}")
    return np.arange(1, num_points + 1) / num_points

"""The U-turn (the paper (arXiv 2603.03469) Fig. 5): noise a sequence to t = r T, denoise back, count what returns.

The model's overlap with x_0 is compared with exact BP's from the same x_t and
with the same chain noise; `twin_uturn_ratios` is the per-twin form the
analysis reports. Denoiser contract, chunking and noise: `statistics/controlled.py`.
"""

import functools
from collections.abc import Mapping
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from diffusion_bias import checks
from diffusion_bias import chunking
from diffusion_bias.diffusion import samplers
from diffusion_bias.diffusion.schedules import Schedule
from diffusion_bias.statistics import controlled


@functools.partial(jax.jit, static_argnames=("num_symbols",))
def _uturn_start(schedule, x0, key, repeat, t, chunk, num_symbols):
    """x_t of one chunk and the key of its reverse chain."""
    forward_key, chain_key = jax.random.split(jax.random.fold_in(key, repeat))
    _, x_t, _ = controlled.noise_chunk(schedule, x0, forward_key, t, chunk, num_symbols)
    return x_t, jax.random.fold_in(jax.random.fold_in(chain_key, t), chunk)


@functools.partial(jax.jit, static_argnames=("start_step",))
def _uturn_overlap(denoise_fn, schedule, x0, x_t, chain_key, start_step):
    """Fraction of each sequence's tokens recovered by the reverse chain: [C].

    The start step is static: the chain compiles once per distinct t for BP
    (whatever the model: both run through this same kernel) and once per t for
    each model function (`controlled` module docstring), and is reused after.
    """
    x0_hat = samplers.sample(denoise_fn, schedule, x_t, chain_key, "x0", start_step=start_step)
    return jnp.mean(jnp.argmax(x0_hat, axis=-1) == x0, axis=-1)


def _chain_overlaps(denoise_fns, schedule, chunks, key, repeat, t, num_symbols):
    """[F, N padded] overlaps of each denoiser's chain from the same x_t of every chunk.

    The denoisers start from the same x_t and see the same chain noise.
    """
    per_chunk = []
    for c, chunk in enumerate(chunks):
        x_t, chain_key = _uturn_start(schedule, chunk, key, repeat, t, c, num_symbols)
        per_chunk.append(
            jnp.stack(
                [
                    _uturn_overlap(fn, schedule, chunk, x_t, chain_key, start_step=t)
                    for fn in denoise_fns
                ]
            )
        )
    return jnp.concatenate(per_chunk, axis=-1)


def _ratio(model, ref):
    """Mean and s.e.m. over sequences of model / ref where ref > 0 (NaN if none): [R], [R]."""
    ratio, ratio_sem = np.full(len(ref), np.nan), np.full(len(ref), np.nan)
    for i in range(len(ref)):
        keep = ref[i] > 0
        if keep.any():
            ratio[i], ratio_sem[i] = controlled.mean_sem(model[i, keep] / ref[i, keep])
    return ratio, ratio_sem


def _overlaps(fns, transitions, schedule, x0, steps, key, repeats, chunk_size):
    """[R, F, N] each denoiser's overlaps, mean over repeats, from the same x_t and noise."""
    chunks = controlled.token_chunks(x0, chunk_size)
    overlaps = [  # per (repeat, t): [F, N padded]
        _chain_overlaps(fns, schedule, chunks, key, repeat, t, transitions.shape[0])
        for repeat in range(repeats)
        for t in steps
    ]
    overlaps = chunking.gather([jnp.stack(overlaps)], x0.shape[0], axis=-1)
    return overlaps.reshape(repeats, len(steps), len(fns), -1).mean(0)


def _check_repeats(repeats):
    if not checks.is_int(repeats) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}.")


def bp_overlaps(
    transitions: ArrayLike,
    schedule: Schedule,
    x0: ArrayLike,
    ratios: Sequence[float] | ArrayLike,
    key: jax.Array,
    repeats: int = 1,
    chunk_size: int = controlled.DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """Exact BP's U-turn overlaps [R, N] (`uturn_overlap`'s "bp"), the same for every model.

    Computed once, they serve every twin and snapshot on these sequences (`bp=`).
    """
    reference = controlled.exact_token_denoiser(transitions, schedule)
    return overlaps_on([reference], transitions, schedule, x0, ratios, key, repeats, chunk_size)[0]


def uturn_steps(schedule: Schedule, ratios: Sequence[float] | ArrayLike) -> list[int]:
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
    denoise_fn: controlled.TokenDenoiser,
    transitions: ArrayLike,
    schedule: Schedule,
    x0: ArrayLike,
    ratios: Sequence[float] | ArrayLike,
    key: jax.Array,
    repeats: int = 1,
    chunk_size: int = controlled.DEFAULT_CHUNK_SIZE,
    bp: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """U-turn (the paper (arXiv 2603.03469) Fig. 5): noise to t = r T, denoise back, count recovered tokens.

    For each ratio and repeat, x_0 is noised once to x_t; the model and exact BP
    then run the reverse chain from x_t with the same per-step noise, and the
    final tokens (argmax) are compared with x_0. The BP chains are rerun at
    every call (with a fixed key they give the same overlaps at every
    checkpoint; for grammar_cpu's 64 x 2 transformer they cost about 0.8x the
    model's chains: 2026-12-05, 500 sequences, 6 ratios, 2.3 s against 2.8 s), unless
    given: `bp`, from `bp_overlaps` on the same sequences, key and ratios.

    Args:
        denoise_fn: the token denoiser (`controlled` module docstring).
        transitions: the grammar's M[a, b, c].  # [q, q, q]
        schedule: the noise schedule; with a respaced schedule, t counts its steps.
        x0: clean integer tokens.  # [N, L]
        ratios: fractions r of T in (0, 1].  # [R]
        key: base PRNG key; repeats and ratios get independent noise.
        repeats: number of independent noisings averaged over, >= 1.
        chunk_size: sequences per kernel call.
        bp: exact BP's overlaps [R, N] of these arguments (`bp_overlaps`), which
            no model changes; None: computed here.

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
    x0 = controlled.check_tokens(transitions, x0)
    steps = uturn_steps(schedule, ratios)
    _check_repeats(repeats)
    fns = [controlled.as_pytree(denoise_fn)]
    if bp is None:
        fns.append(controlled.exact_token_denoiser(transitions, schedule))
    overlaps = _overlaps(fns, transitions, schedule, x0, steps, key, repeats, chunk_size)
    model, ref = overlaps[:, 0], (overlaps[:, 1] if bp is None else np.asarray(bp))
    ratio, ratio_sem = _ratio(model, ref)
    return {"model": model, "bp": ref, "ratio": ratio, "ratio_sem": ratio_sem, "t": np.array(steps)}


def twin_uturn_ratios(
    denoise_fns: Sequence[controlled.TokenDenoiser],
    transitions: ArrayLike,
    schedule: Schedule,
    own: np.ndarray,
    heldout: ArrayLike,
    ratios: Sequence[float] | ArrayLike,
    key: jax.Array,
    repeats: int = 1,
    bp: Mapping[str, np.ndarray | list[np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
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
        bp: `twin_bp_overlaps` of the same arguments (no model changes them), or
            None: computed here.

    Returns:
        dict train [K, R], heldout [K, R].
    """
    bp = bp or twin_bp_overlaps(transitions, schedule, own, heldout, ratios, key, repeats)
    out = dict(train=[], heldout=[])
    for k, (fn, items) in enumerate(zip(denoise_fns, own)):
        for x, name, ref in ((items, "train", bp["train"][k]), (heldout, "heldout", bp["heldout"])):
            ratio = uturn_overlap(fn, transitions, schedule, x, ratios, key, repeats, bp=ref)
            out[name].append(ratio["ratio"])
    return {name: np.asarray(values) for name, values in out.items()}


def twin_bp_overlaps(
    transitions: ArrayLike,
    schedule: Schedule,
    own: np.ndarray,
    heldout: ArrayLike,
    ratios: Sequence[float] | ArrayLike,
    key: jax.Array,
    repeats: int = 1,
) -> dict[str, np.ndarray | list[np.ndarray]]:
    """Exact BP's overlaps for `twin_uturn_ratios`: train [K] of [R, n], heldout [R, m]."""
    return dict(
        train=[bp_overlaps(transitions, schedule, x, ratios, key, repeats) for x in own],
        heldout=bp_overlaps(transitions, schedule, heldout, ratios, key, repeats),
    )


def random_sequences(key: jax.Array, num: int, length: int, num_symbols: int) -> np.ndarray:
    """Uniform random token sequences (no grammar), the inputs of Fig. 11's U-turn: int32 [N, L]."""
    return np.asarray(jax.random.randint(key, (num, length), 0, num_symbols, jnp.int32))


def overlaps_on(
    denoise_fns: Sequence[controlled.TokenDenoiser],
    transitions: ArrayLike,
    schedule: Schedule,
    x0: ArrayLike,
    ratios: Sequence[float] | ArrayLike,
    key: jax.Array,
    repeats: int = 1,
    chunk_size: int = controlled.DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """Each denoiser's U-turn overlap with x_0 itself (no ratio), as the paper's Fig. 11.

    Every denoiser starts from the same x_t and sees the same chain noise; the
    overlap of a sequence is its fraction of tokens recovered (argmax = x_0),
    averaged over `repeats` noisings.

    Args:
        denoise_fns: F token denoisers (`controlled` module docstring).
        transitions: the grammar's M[a, b, c].  # [q, q, q]
        schedule: the noise schedule.
        x0: integer tokens, grammatical or not.  # [N, L]
        ratios: fractions r of T in (0, 1].  # [R]
        key: base PRNG key.
        repeats: noisings averaged over, >= 1.
        chunk_size: sequences per kernel call.

    Returns:
        [F, R, N] each denoiser's overlap per ratio and sequence.
    """
    transitions = jnp.asarray(transitions, jnp.float32)
    x0 = controlled.check_tokens(transitions, x0)
    steps = uturn_steps(schedule, ratios)
    _check_repeats(repeats)
    fns = [controlled.as_pytree(fn) for fn in denoise_fns]
    overlaps = _overlaps(fns, transitions, schedule, x0, steps, key, repeats, chunk_size)
    return np.asarray(overlaps).transpose(1, 0, 2)

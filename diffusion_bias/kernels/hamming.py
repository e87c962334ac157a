"""Exact nearest and second-nearest token sequence by Hamming distance, bit-packed.

Tokens [N, L] are packed `bits = bit_length(max token)` bits each into uint32
words (10 tokens of q = 6 per word): XOR two words, OR each slot's bits into
its lowest bit, and a popcount gives the number of differing tokens. A one-hot
matmul would cost L * q multiply-adds per pair, and XLA:CPU runs reductions
fused with integer arithmetic far slower than float ones, so keys and minima
are float32 (benchmarks/kernels.py has the numbers).

The nearest reference minimises the key `d * R + r` (distance, then index:
ties go to the lowest index), exact in float32 while `(L + 1) * R <= 2**24`.
The references are cut into `nb` blocks of `block` lanes; one elementwise pass
keeps, per query and lane, the smallest key over the blocks (an unrolled
minimum XLA fuses into one loop, with no [Q, R] matrix in memory). The second
nearest is either the best key of another lane or the runner-up of the winning
lane, whose `nb` references are then compared directly. Duplicate queries are
searched once.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from diffusion_bias import chunking

# Float32 represents every integer up to 2**24 exactly; the Hamming search key
# d * R + r must stay below it.
_EXACT_F32 = 2**24
# Reference-block layout of the Hamming kernel: aim for ~512 lanes, at most 32
# blocks. Fewer lanes make the per-lane reductions cheaper; more blocks grow
# the unrolled minimum (measured best near 512 x 24 for 12k references).
_TARGET_LANES = 512
_MAX_BLOCKS = 32
# Missing neighbours (a reference chunk with a single reference) report this
# distance and index -1; they never survive a merge with a real one.
_NO_INT_DISTANCE = np.iinfo(np.int32).max


def _low_slot_mask(bits):
    """uint32 with the lowest bit of every `bits`-wide slot set."""
    return np.uint32(sum(1 << (bits * k) for k in range(32 // bits)))


def _mismatches(qw, rw, bits):
    """Number of differing tokens between packed sequences.

    Args:
        qw: [W, ...] uint32 packed queries (see `_pack_tokens`).
        rw: [W, ...] uint32 packed references, broadcastable against `qw[0]`.
        bits: slot width.

    Returns:
        float32 [...] (broadcast shape) counts, exact small integers.
    """
    low = _low_slot_mask(bits)
    count = 0.0
    combined = None
    n_words = qw.shape[0]
    for w in range(n_words):
        x = qw[w] ^ rw[w]
        y = x
        for s in range(1, bits):
            y = y | (x >> s)
        y = y & low
        # A word's flags sit on bit 0 of each slot, so up to `bits` words can
        # share one popcount, the j-th shifted onto bit j of every slot.
        j = w % bits
        combined = y if j == 0 else combined | (y << j)
        if j == bits - 1 or w == n_words - 1:
            count = count + jax.lax.population_count(combined).astype(jnp.float32)
    return count


@functools.partial(jax.jit, static_argnames=("bits", "block"))
def _hamming_top2(qw, rw, roff, *, bits, block):
    """Nearest and second-nearest reference of a chunk of queries, by Hamming distance.

    Args:
        qw: [W, C] uint32 packed queries.
        rw: [W, R] uint32 packed references, R = nb * block, nb * block * (L + 1)
            below 2**24.
        roff: [R] float32: r for a real reference, inf for padding.
        bits: slot width of the packing.
        block: lanes per reference block.

    Returns:
        (d1, i1, d2, i2), each int32 [C]; indices into the R references. A
        missing second neighbour (a single real reference) has d2 =
        `_NO_INT_DISTANCE`, i2 = -1.
    """
    n_refs = rw.shape[1]
    nb = n_refs // block
    scale = float(n_refs)
    q = qw[:, :, None]  # [W, C, 1]
    best = None  # [C, block]: smallest key over the blocks, per lane
    for k in range(nb):
        lanes = slice(k * block, (k + 1) * block)
        key = _mismatches(q, rw[:, None, lanes], bits) * scale + roff[lanes]
        best = key if best is None else jnp.minimum(best, key)
    key1 = best.min(axis=-1)  # [C]
    i1 = key1.astype(jnp.int32) % n_refs
    lane1, block1 = i1 % block, i1 // block

    # Second nearest: the best of the other lanes, or the runner-up among the
    # nb references of the winning lane.
    other_lanes = jnp.where(jnp.arange(block) == lane1[:, None], jnp.inf, best).min(axis=-1)
    idx = jnp.arange(nb)[None, :] * block + lane1[:, None]  # [C, nb]
    same_lane = _mismatches(q, rw[:, idx], bits) * scale + roff[idx]
    same_lane = jnp.where(jnp.arange(nb) == block1[:, None], jnp.inf, same_lane)
    key2 = jnp.minimum(other_lanes, same_lane.min(axis=-1))
    found2 = jnp.isfinite(key2)
    key2 = jnp.where(found2, key2, 0.0).astype(jnp.int32)
    return (
        key1.astype(jnp.int32) // n_refs,
        i1,
        jnp.where(found2, key2 // n_refs, _NO_INT_DISTANCE),
        jnp.where(found2, key2 % n_refs, -1),
    )


def _pack_tokens(tokens, bits):
    """Bit-pack token rows, `32 // bits` tokens per uint32 word.

    Args:
        tokens: [N, L] non-negative ints below 2**bits.
        bits: slot width.

    Returns:
        uint32 [N, W], W = ceil(L / (32 // bits)); token l of a row sits in
        word l // (32 // bits), slot l % (32 // bits). Padding slots are 0 in
        every row, so they never differ.
    """
    per_word = 32 // bits
    n, length = tokens.shape
    n_words = -(-length // per_word)
    slots = np.zeros((n, n_words * per_word), np.uint32)
    slots[:, :length] = tokens
    slots = slots.reshape(n, n_words, per_word)
    shifts = np.arange(per_word, dtype=np.uint32) * np.uint32(bits)
    return np.bitwise_or.reduce(slots << shifts, axis=-1)


def _unique_rows(words):
    """Distinct rows of uint32 [N, W] (in some order) and the inverse [N] index."""
    # One opaque scalar per row sorts far faster than np.unique(axis=0).
    n, width = words.shape
    even = np.zeros((n, width + width % 2), np.uint32)
    even[:, :width] = words
    keys = (
        even.view(np.uint64)
        if even.shape[1] == 2
        else even.view(np.dtype((np.void, 4 * even.shape[1])))
    )
    unique, inverse = np.unique(keys.reshape(-1), return_inverse=True)
    return unique.view(np.uint32).reshape(-1, even.shape[1])[:, :width], inverse.reshape(-1)


def _hamming_layout(n_refs, length, ref_chunk_size):
    """Reference chunking of the Hamming kernel.

    Returns:
        (per_chunk, nb, block): real references per chunk, and the chunk's
        padded layout of nb blocks of `block` lanes, with nb * block * (L + 1)
        <= 2**24 so that every search key is an exact float32.
    """
    # Rounding the lanes up to a multiple of 8 adds at most 8 per block.
    cap = _EXACT_F32 // (length + 1) - 8 * _MAX_BLOCKS
    if cap < 8:
        raise ValueError(
            f"hamming search supports sequences of at most "
            f"{_EXACT_F32 // (8 * _MAX_BLOCKS + 8) - 1} tokens, got {length}"
        )
    if ref_chunk_size is not None:
        cap = min(cap, ref_chunk_size)
    n_chunks = -(-n_refs // cap)
    per_chunk = -(-n_refs // n_chunks)
    nb = min(_MAX_BLOCKS, -(-per_chunk // _TARGET_LANES))
    block = -(-per_chunk // nb)
    block = -(-block // 8) * 8
    return per_chunk, nb, block


class HammingSearch:
    """Packed tokens and the Hamming kernel, prepared once per search."""

    int_distances = True

    def __init__(
        self, queries: np.ndarray, refs_list: Sequence[np.ndarray], ref_chunk_size: int | None
    ) -> None:
        tokens = [queries] + list(refs_list)
        for t in tokens:
            if not (np.issubdtype(t.dtype, np.integer) or t.dtype == bool):
                raise ValueError(f"hamming needs integer tokens, got dtype {t.dtype}")
        tokens = [t.reshape(t.shape[0], int(np.prod(t.shape[1:]))).astype(np.int64) for t in tokens]
        lows = [t.min() for t in tokens if t.size]
        if lows and min(lows) < 0:
            raise ValueError("hamming needs non-negative tokens")
        high = max([int(t.max()) for t in tokens if t.size], default=0)
        if high >= 2**16:
            # Only equality matters: relabel symbols by rank to narrow the slots.
            _, ranks = np.unique(np.concatenate([t.ravel() for t in tokens]), return_inverse=True)
            ranks = np.split(ranks.reshape(-1), np.cumsum([t.size for t in tokens])[:-1])
            tokens = [r.reshape(t.shape) for r, t in zip(ranks, tokens)]
            high = int(max(r.max(initial=0) for r in ranks))
        self.bits = max(1, high.bit_length())
        self.length = tokens[0].shape[1]
        packed = _pack_tokens(tokens[0], self.bits)
        # Duplicate queries (frequent among memorised samples) are searched once.
        self.unique, self.inverse = _unique_rows(packed)
        self.packed_refs = [_pack_tokens(t, self.bits) for t in tokens[1:]]
        self.ref_chunk_size = ref_chunk_size

    def query_chunks(self, chunk_size: int) -> np.ndarray:
        # [n_chunks, W, chunk]: word-major, as the kernel reads it.
        return chunking.padded_chunks(self.unique, chunk_size).transpose(0, 2, 1).copy()

    def ref_chunks(
        self, k: int, chunk_size: int
    ) -> list[tuple[int, tuple[jax.Array, jax.Array], int]]:
        del chunk_size  # the Hamming kernel holds no [chunk, refs] matrix
        refs = self.packed_refs[k]
        n_refs = refs.shape[0]
        per_chunk, nb, block = _hamming_layout(n_refs, self.length, self.ref_chunk_size)
        width = nb * block
        out = []
        for start in range(0, n_refs, per_chunk):
            part = refs[start : start + per_chunk]
            words = np.zeros((refs.shape[1], width), np.uint32)
            words[:, : part.shape[0]] = part.T
            roff = np.full(width, np.inf, np.float32)
            roff[: part.shape[0]] = np.arange(part.shape[0])
            out.append((start, (jnp.asarray(words), jnp.asarray(roff)), block))
        return out

    def top2(
        self, query_chunk: ArrayLike, ref_chunk: tuple[jax.Array, jax.Array], block: int
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        words, roff = ref_chunk
        return _hamming_top2(query_chunk, words, roff, bits=self.bits, block=block)

    def finish(self, rows: np.ndarray) -> np.ndarray:
        """[K', padded unique queries] -> [K', Q]."""
        return rows[:, self.inverse]

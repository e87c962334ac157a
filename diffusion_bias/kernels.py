"""Pairwise similarities and nearest neighbours for the statistics of PAPER.md.

Two families of statistics compare samples: paired ones (twin A's i-th sample
against twin B's i-th, "sample-split similarity") and nearest-neighbour
retrieval of every sample in a training set ("NN divergence", the NN shown
beside each pair). Both are here, for the two kinds of data:

- images [N, H, W, C], compared by the paper's cosine similarity: each image
  is standardised per channel (minus its mean, over its std), flattened and
  L2-normalised, so that the dot product of two rows is their similarity;
- token sequences [N, L] (ints), compared by the number of differing tokens
  (Hamming distance) or the fraction of equal tokens.

The search is exact. Queries are processed in chunks of a fixed size (the last
one padded) by kernels jitted once at module level, so a search compiles once
per (chunk shape, reference-chunk shape), whatever the number of queries, and
memory stays bounded. Reference sets too large for one kernel call are cut
into equal chunks too, and a running top-2 is merged across them.

Hamming search. The obvious one-hot matmul costs L * q multiply-adds per pair
(96 for L = 16, q = 6) and ran at ~0.1 G pairs/s on the 2-core CPU we measured;
and XLA:CPU (jax 0.10) runs reductions fused with integer arithmetic ~10x
slower than float ones. So the tokens are bit-packed, `bits = bit_length(max
token)` bits each (10 tokens of q = 6 per uint32 word): XOR two words, OR
each slot's bits into its lowest bit, and a popcount gives the number of
differing tokens; keys and minima are float32. The nearest reference is the
minimum of the key `d * R + r` (distance, then index: ties go to the lowest
index), exact in float32 while `(L + 1) * R <= 2**24`. The references are cut
into `nb` blocks of `block` lanes; one elementwise pass keeps, per query and
lane, the smallest key over the blocks (an unrolled minimum that XLA fuses
into one vectorised, multi-threaded loop, with no [Q, R] matrix in memory):
~2 G pairs/s, ~10x the float reduction of a materialised distance matrix. The
smallest of those is the nearest reference; the second nearest is either the
best key of another lane or the runner-up of the winning lane, whose `nb`
references are then compared directly. Duplicate queries are searched once.

The chunk kernels are pure functions of arrays (vmappable); the public
functions around them are host-side loops that return numpy arrays.

Image search (cosine, l2) goes through a matmul per chunk and two argmins.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

METRICS = ("hamming", "cosine", "l2")

# A channel whose std is below this is treated as constant: it contributes
# zeros to the standardised image, so a constant image has similarity 0 with
# every image (and distance 1), never NaN.
STD_EPS = 1e-6
_NORM_EPS = 1e-12
# Float32 represents every integer up to 2**24 exactly; the Hamming search key
# d * R + r must stay below it.
_EXACT_F32 = 2**24
# Reference-block layout of the Hamming kernel: aim for ~512 lanes, at most 32
# blocks. Fewer lanes make the per-lane reductions cheaper; more blocks grow
# the unrolled minimum (measured best near 512 x 24 for 12k references).
_TARGET_LANES = 512
_MAX_BLOCKS = 32
# Float kernels hold a [chunk, references] distance matrix: at most this many
# entries (64 MiB in float32).
_MAX_FLOAT_PAIRS = 2**24
# Missing neighbours (a reference chunk with a single reference) report this
# distance and index -1; they never survive a merge with a real one.
_NO_INT_DISTANCE = np.iinfo(np.int32).max


class Neighbours(NamedTuple):
    """Nearest and second-nearest references of each query.

    Ties are broken by the lowest reference index, so `(d1, i1) <= (d2, i2)`
    lexicographically and the search is deterministic.

    Attributes:
        d1: [..., Q] distance to the nearest reference: int32 number of
            differing tokens for "hamming", float32 1 - cosine similarity for
            "cosine", float32 Euclidean distance for "l2".
        i1: [..., Q] int32 index of the nearest reference.
        d2: [..., Q] distance to the second-nearest reference.
        i2: [..., Q] int32 index of the second-nearest reference.
    """

    d1: np.ndarray
    i1: np.ndarray
    d2: np.ndarray
    i2: np.ndarray

    @property
    def similarity1(self):
        """[..., Q] cosine similarity to the nearest reference (metric "cosine")."""
        return 1.0 - self.d1

    @property
    def similarity2(self):
        """[..., Q] cosine similarity to the second-nearest reference (metric "cosine")."""
        return 1.0 - self.d2


# ---------------------------------------------------------------------------
# Paired statistics.


@jax.jit
def standardize_images(x):
    """The paper's image standardisation, so that a dot product is a cosine.

    Args:
        x: [N, H, W, C] images.

    Returns:
        float32 [N, H*W*C]: per image and channel minus the mean and over the
        std (population std over the H*W pixels), flattened, each row then
        L2-normalised. Channels with std below `STD_EPS` become zeros, so a
        constant image is an all-zero row.
    """
    if x.ndim != 4:
        raise ValueError(f"images must have shape [N, H, W, C], got {x.shape}")
    x = x.astype(jnp.float32)
    mean = x.mean(axis=(1, 2), keepdims=True)  # [N, 1, 1, C]
    std = x.std(axis=(1, 2), keepdims=True)
    z = jnp.where(std > STD_EPS, (x - mean) / jnp.maximum(std, STD_EPS), 0.0)
    z = z.reshape(x.shape[0], -1)
    norm = jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True))
    return z / jnp.maximum(norm, _NORM_EPS)


@jax.jit
def paired_cosine(a, b):
    """Cosine similarity of each standardised pair of images.

    Args:
        a: [N, H, W, C] images.
        b: [N, H, W, C] images.

    Returns:
        float32 [N] (a jax array, so the function composes with jit and vmap):
        `standardize_images(a)[i] . standardize_images(b)[i]`, in [-1, 1];
        0 where either image is constant.
    """
    if a.shape != b.shape:
        raise ValueError(f"paired images must have equal shapes, got {a.shape} and {b.shape}")
    return jnp.sum(standardize_images(a) * standardize_images(b), axis=-1)


@jax.jit
def paired_token_similarity(a, b):
    """Fraction of equal tokens of each pair of sequences.

    Args:
        a: [N, L] int tokens (any trailing shape is flattened).
        b: [N, L] int tokens.

    Returns:
        float32 [N] (a jax array): mean over positions of `a[i] == b[i]`.
    """
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(
            f"paired sequences must have equal shapes [N, L], got {a.shape} and {b.shape}"
        )
    equal = (a == b).reshape(a.shape[0], -1)
    return jnp.mean(equal.astype(jnp.float32), axis=-1)


# ---------------------------------------------------------------------------
# Hamming kernel on bit-packed tokens.


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


class _HammingSearch:
    """Packed tokens and the Hamming kernel, prepared once per search."""

    int_distances = True

    def __init__(self, queries, refs_list, ref_chunk_size):
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

    def query_chunks(self, chunk_size):
        n = self.unique.shape[0]
        n_chunks = -(-n // chunk_size)
        padded = np.zeros((n_chunks * chunk_size, self.unique.shape[1]), np.uint32)
        padded[:n] = self.unique
        # [n_chunks, W, chunk]: word-major, as the kernel reads it.
        return padded.reshape(n_chunks, chunk_size, -1).transpose(0, 2, 1).copy()

    def ref_chunks(self, k, chunk_size):
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

    def top2(self, query_chunk, ref_chunk, block):
        words, roff = ref_chunk
        return _hamming_top2(query_chunk, words, roff, bits=self.bits, block=block)

    def finish(self, rows):
        """[K', padded unique queries] -> [K', Q]."""
        return rows[:, self.inverse]


# ---------------------------------------------------------------------------
# Float kernels (cosine on standardised images, Euclidean).


@functools.partial(jax.jit, static_argnames=("metric",))
def _float_top2(queries, refs, ref_sq, pad, *, metric):
    """Nearest and second-nearest reference of a chunk of queries.

    Args:
        queries: [C, ...] raw queries (images [C, H, W, Ch] for "cosine").
        refs: [R, D] float32 prepared references (standardised for "cosine").
        ref_sq: [R] float32 squared norms of `refs` (used by "l2").
        pad: [R] float32: 0 for a real reference, inf for padding.
        metric: "cosine" or "l2".

    Returns:
        (d1, i1, d2, i2), each [C] (float32 distances, int32 indices into the R
        references); a missing second neighbour has d2 = inf, i2 = -1.
    """
    highest = jax.lax.Precision.HIGHEST  # no TF32 on accelerators
    if metric == "cosine":
        q = standardize_images(queries)
        dist = 1.0 - jnp.matmul(q, refs.T, precision=highest)
    else:
        q = queries.reshape(queries.shape[0], -1).astype(jnp.float32)
        sq = (
            jnp.sum(q * q, axis=-1, keepdims=True)
            + ref_sq
            - 2.0 * jnp.matmul(q, refs.T, precision=highest)
        )
        dist = jnp.sqrt(jnp.maximum(sq, 0.0))
    dist = dist + pad  # [C, R]
    i1 = jnp.argmin(dist, axis=-1)  # argmin returns the first minimum
    d1 = jnp.take_along_axis(dist, i1[:, None], axis=-1)[:, 0]
    dist = jnp.where(jnp.arange(dist.shape[1]) == i1[:, None], jnp.inf, dist)
    i2 = jnp.argmin(dist, axis=-1)
    d2 = jnp.take_along_axis(dist, i2[:, None], axis=-1)[:, 0]
    found2 = jnp.isfinite(d2)
    if metric == "l2":
        # The expansion cancels near zero (a copy lands at ~1e-3 |q|, not 0):
        # recompute the two winners directly, and reorder them if that flips.
        e1 = jnp.sqrt(jnp.sum((q - refs[i1]) ** 2, axis=-1))
        e2 = jnp.sqrt(jnp.sum((q - refs[i2]) ** 2, axis=-1))
        e2 = jnp.where(found2, e2, jnp.inf)
        swap = (e2 < e1) | ((e2 == e1) & (i2 < i1))
        d1, d2 = jnp.where(swap, e2, e1), jnp.where(swap, e1, e2)
        i1, i2 = jnp.where(swap, i2, i1), jnp.where(swap, i1, i2)
    i2 = jnp.where(found2, i2, -1)
    return d1, i1.astype(jnp.int32), d2, i2.astype(jnp.int32)


@jax.jit
def _prepare_l2(refs):
    refs = refs.reshape(refs.shape[0], -1).astype(jnp.float32)
    return refs, jnp.sum(refs * refs, axis=-1)


@jax.jit
def _prepare_cosine(refs):
    refs = standardize_images(refs)
    return refs, jnp.zeros(refs.shape[0], jnp.float32)


class _FloatSearch:
    """Image queries and prepared references for the float kernels."""

    int_distances = False

    def __init__(self, metric, queries, refs_list, ref_chunk_size):
        if metric == "cosine" and queries.ndim != 4:
            raise ValueError(f"cosine needs images [N, H, W, C], got shape {queries.shape}")
        self.metric = metric
        self.queries = queries
        self.refs_list = refs_list
        self.ref_chunk_size = ref_chunk_size

    def query_chunks(self, chunk_size):
        n = self.queries.shape[0]
        n_chunks = -(-n // chunk_size)
        padded = np.zeros((n_chunks * chunk_size,) + self.queries.shape[1:], np.float32)
        padded[:n] = self.queries
        return padded.reshape((n_chunks, chunk_size) + self.queries.shape[1:])

    def ref_chunks(self, k, chunk_size):
        refs = self.refs_list[k]
        n_refs = refs.shape[0]
        cap = max(1, _MAX_FLOAT_PAIRS // chunk_size)
        if self.ref_chunk_size is not None:
            cap = min(cap, self.ref_chunk_size)
        n_chunks = -(-n_refs // cap)
        per_chunk = -(-n_refs // n_chunks)
        width = -(-per_chunk // 8) * 8
        prepare = _prepare_cosine if self.metric == "cosine" else _prepare_l2
        out = []
        for start in range(0, n_refs, per_chunk):
            part = np.zeros((width,) + refs.shape[1:], np.float32)
            n_part = min(per_chunk, n_refs - start)
            part[:n_part] = refs[start : start + n_part]
            pad = np.full(width, np.inf, np.float32)
            pad[:n_part] = 0.0
            out.append((start, (*prepare(part), jnp.asarray(pad)), None))
        return out

    def top2(self, query_chunk, ref_chunk, block):
        del block
        prepared, ref_sq, pad = ref_chunk
        return _float_top2(query_chunk, prepared, ref_sq, pad, metric=self.metric)

    def finish(self, rows):
        """[K', padded queries] -> [K', Q]."""
        return rows[:, : self.queries.shape[0]]


# ---------------------------------------------------------------------------
# Search driver.


@jax.jit
def _merge(a, b, offset):
    """Running top-2 `a` of earlier references with top-2 `b` of the next chunk.

    Args:
        a: (d1, i1, d2, i2), each [C], indices global.
        b: the same for the next chunk, indices local to it (-1 if missing).
        offset: int32 index of the chunk's first reference.

    Returns:
        The merged (d1, i1, d2, i2). `a` holds the lower indices, so ties keep it.
    """
    ad1, ai1, ad2, ai2 = a
    bd1, bi1, bd2, bi2 = b
    bi1 = jnp.where(bi1 >= 0, bi1 + offset, -1)
    bi2 = jnp.where(bi2 >= 0, bi2 + offset, -1)
    b_first = bd1 < ad1
    # Runner-up: a1 against b2 if b won, else a2 against b1.
    rd, ri = jnp.where(b_first, ad1, ad2), jnp.where(b_first, ai1, ai2)
    sd, si = jnp.where(b_first, bd2, bd1), jnp.where(b_first, bi2, bi1)
    s_second = sd < rd
    return (
        jnp.where(b_first, bd1, ad1),
        jnp.where(b_first, bi1, ai1),
        jnp.where(s_second, sd, rd),
        jnp.where(s_second, si, ri),
    )


def _is_positive_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 1


def _check(queries, refs, metric, chunk_size, ref_chunk_size):
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if not _is_positive_int(chunk_size):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if ref_chunk_size is not None and not _is_positive_int(ref_chunk_size):
        raise ValueError(
            f"ref_chunk_size must be None or a positive integer, got {ref_chunk_size!r}"
        )
    if queries.ndim < 2:
        raise ValueError(
            f"queries must have shape [Q, ...] with at least one feature axis, got {queries.shape}"
        )
    if np.prod(queries.shape[1:]) == 0:
        raise ValueError(f"items must have at least one feature, got shape {queries.shape[1:]}")
    if refs.shape[1:] != queries.shape[1:]:
        raise ValueError(
            f"queries and references must share their item shape, got {queries.shape[1:]} "
            f"and {refs.shape[1:]}"
        )
    if refs.shape[0] < 2:
        raise ValueError(f"nearest_neighbours needs at least 2 references, got {refs.shape[0]}")


def _as_array(x, name):
    x = np.asarray(x)
    if x.dtype == object:
        raise ValueError(f"{name} must be a numeric array")
    return x


def nearest_neighbours(queries, refs, metric, chunk_size=256, ref_chunk_size=None):
    """Nearest and second-nearest reference of every query (exact).

    Args:
        queries: [Q, ...] items: int tokens [Q, L] for "hamming", images
            [Q, H, W, C] for "cosine", any [Q, ...] for "l2" (flattened).
        refs: [R, ...] items of the same shape, R >= 2.
        metric: "hamming" (number of differing tokens), "cosine" (1 - cosine
            similarity of standardised images, see `standardize_images`) or
            "l2" (Euclidean distance of the flattened items; candidates
            are ranked through the expansion |q|^2 + |r|^2 - 2 q.r, the two
            winners' distances then recomputed directly, so a copy is at 0;
            references within ~1e-3 |q| of each other may rank out of order).
        chunk_size: queries per kernel call; the kernels compile once per
            chunk size and reference-chunk shape.
        ref_chunk_size: at most this many references per kernel call (None:
            as many as exactness and memory allow).

    Returns:
        Neighbours of numpy arrays, each [Q]; ties go to the lowest index.

    Raises:
        ValueError: for an unknown metric, mismatched shapes, fewer than 2
            references, non-integer or negative tokens for "hamming", or
            non-image inputs for "cosine".
    """
    queries, refs = _as_array(queries, "queries"), _as_array(refs, "refs")
    _check(queries, refs, metric, chunk_size, ref_chunk_size)
    out = _nearest(queries, [refs], metric, chunk_size, ref_chunk_size)
    return Neighbours(*(f[0] for f in out))


def nearest_in_each(queries, refs, metric, chunk_size=256, ref_chunk_size=None):
    """Nearest neighbours of every query set in every reference set.

    Args:
        queries: [K, Q, ...] K query sets (e.g. the samples of K twins).
        refs: [K', R, ...] K' reference sets (e.g. their training sets).
        metric, chunk_size, ref_chunk_size: as in `nearest_neighbours`.

    Returns:
        Neighbours of numpy arrays [K, K', Q]: entry [k, j, n] is about query n
        of set k searched in reference set j.
    """
    queries, refs = _as_array(queries, "queries"), _as_array(refs, "refs")
    if queries.ndim < 3 or refs.ndim < 3 or refs.shape[0] == 0:
        raise ValueError(
            f"nearest_in_each needs stacked sets [K, Q, ...] and [K', R, ...], got "
            f"{queries.shape} and {refs.shape}"
        )
    k, q = queries.shape[:2]
    # Every query set searched at once: one kernel call covers several sets.
    flat = queries.reshape((k * q,) + queries.shape[2:])
    _check(flat, refs[0], metric, chunk_size, ref_chunk_size)
    out = _nearest(flat, list(refs), metric, chunk_size, ref_chunk_size)
    # out[f] is [K', K*Q] -> [K, K', Q]
    return Neighbours(*(f.reshape(refs.shape[0], k, q).transpose(1, 0, 2) for f in out))


def _nearest(queries, refs_list, metric, chunk_size, ref_chunk_size):
    """Top-2 of `queries` in each reference set: numpy (d1, i1, d2, i2), each [K', Q]."""
    if metric == "hamming":
        search = _HammingSearch(queries, refs_list, ref_chunk_size)
    else:
        search = _FloatSearch(metric, queries, refs_list, ref_chunk_size)
    dist_dtype = np.int32 if search.int_distances else np.float32
    dtypes = (dist_dtype, np.int32, dist_dtype, np.int32)
    if queries.shape[0] == 0:
        return [np.zeros((len(refs_list), 0), t) for t in dtypes]
    # On the device once, however many reference sets they meet.
    chunks = jax.device_put(list(search.query_chunks(chunk_size)))
    results = []  # [K'][query chunk] -> (d1, i1, d2, i2) on device
    for k in range(len(refs_list)):
        ref_chunks = search.ref_chunks(k, chunk_size)
        per_set = []
        for chunk in chunks:
            running = None
            for start, ref_chunk, block in ref_chunks:
                top = search.top2(chunk, ref_chunk, block)
                running = top if running is None else _merge(running, top, np.int32(start))
            per_set.append(running)
        results.append(per_set)
    # The only transfer: every chunk's result at once.
    results = jax.device_get(results)
    fields = []
    for j, dtype in enumerate(dtypes):
        stacked = np.stack([np.concatenate([c[j] for c in per_set]) for per_set in results])
        fields.append(search.finish(stacked).astype(dtype))
    return fields

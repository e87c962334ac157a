"""Exact nearest and second-nearest reference of every query (the paper (arXiv 2603.03469), NN retrieval).

Two metrics, for the two kinds of data: the number of differing tokens of
token sequences [N, L] ("hamming", `kernels.hamming`) and the Euclidean
distance of flattened items such as images [N, H, W, C] ("l2",
`kernels.euclidean`).

Queries are processed in chunks of a fixed size (the last one padded) by
kernels jitted once at module level, so a search compiles once per (chunk
shape, reference-chunk shape), whatever the number of queries, and memory
stays bounded. Reference sets too large for one kernel call are cut into
chunks too, and a running top-2 is merged across them. The chunk kernels are
pure functions of arrays; the public functions around them are host-side loops
that return numpy arrays.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from diffusion_bias import checks
from diffusion_bias.kernels import euclidean
from diffusion_bias.kernels import hamming

METRICS = ("hamming", "l2")


class Neighbours(NamedTuple):
    """Nearest and second-nearest references of each query.

    Ties are broken by the lowest reference index, so `(d1, i1) <= (d2, i2)`
    lexicographically and the search is deterministic.

    Attributes:
        d1: [..., Q] distance to the nearest reference: int32 number of
            differing tokens for "hamming", float32 Euclidean distance for "l2".
        i1: [..., Q] int32 index of the nearest reference.
        d2: [..., Q] distance to the second-nearest reference.
        i2: [..., Q] int32 index of the second-nearest reference.
    """

    d1: np.ndarray
    i1: np.ndarray
    d2: np.ndarray
    i2: np.ndarray


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
    return checks.is_int(x) and x >= 1


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


def nearest_neighbours(
    queries: ArrayLike,
    refs: ArrayLike,
    metric: str,
    chunk_size: int = 256,
    ref_chunk_size: int | None = None,
) -> Neighbours:
    """Nearest and second-nearest reference of every query (exact).

    Args:
        queries: [Q, ...] items: int tokens [Q, L] for "hamming", any
            [Q, ...] for "l2" (flattened).
        refs: [R, ...] items of the same shape, R >= 2.
        metric: "hamming" (number of differing tokens) or "l2" (Euclidean
            distance of the flattened items; candidates are ranked through the
            expansion |q|^2 + |r|^2 - 2 q.r, the two winners' distances then
            recomputed directly, so a copy is at 0; references within ~1e-3 |q|
            of each other may rank out of order).
        chunk_size: queries per kernel call; the kernels compile once per
            chunk size and reference-chunk shape.
        ref_chunk_size: at most this many references per kernel call (None:
            as many as exactness and memory allow).

    Returns:
        Neighbours of numpy arrays, each [Q]; ties go to the lowest index.

    Raises:
        ValueError: for an unknown metric, mismatched shapes, fewer than 2
            references, or non-integer or negative tokens for "hamming".
    """
    queries, refs = _as_array(queries, "queries"), _as_array(refs, "refs")
    _check(queries, refs, metric, chunk_size, ref_chunk_size)
    out = _nearest(queries, [refs], metric, chunk_size, ref_chunk_size)
    return Neighbours(*(f[0] for f in out))


def nearest_in_each(
    queries: ArrayLike,
    refs: ArrayLike,
    metric: str,
    chunk_size: int = 256,
    ref_chunk_size: int | None = None,
) -> Neighbours:
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
        search = hamming.HammingSearch(queries, refs_list, ref_chunk_size)
    else:
        search = euclidean.EuclideanSearch(queries, refs_list, ref_chunk_size)
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

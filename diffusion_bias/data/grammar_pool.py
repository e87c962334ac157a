"""The pool of the random tree grammar (the paper (arXiv 2603.03469), "Setting 2"), cached on disk.

The pool is fully determined by its parameters; drawing 10^6 sequences takes
a while, so with a cache directory it is stored once, under a hash of the
parameters, and read back by the next run with the same parameters.
"""

import hashlib
import json
import os
import time
from typing import Any

from absl import logging
import numpy as np

from diffusion_bias import files
from diffusion_bias.data import pool as pool_lib
from diffusion_bias.exact import grammar as grammar_lib

# Bump when the sampling code changes the pool drawn for given parameters: the
# version is hashed into the cache file name, so stale caches are never read.
_CACHE_VERSION = 1


def _grammar_params(q, depth, sigma, q_eff, grammar_seed, pool_size, pool_seed, grammar_rng):
    # Normalised types, so that 1 and 1.0 (sigma) or numpy ints hash alike.
    params = {
        "q": int(q),
        "depth": int(depth),
        "sigma": float(sigma),
        "q_eff": int(q_eff),
        "grammar_seed": int(grammar_seed),
        "pool_size": int(pool_size),
        "pool_seed": int(pool_seed),
        "version": _CACHE_VERSION,
    }
    # The generator is hashed only when it is not the default, so the caches
    # written before `grammar_rng` existed (all "default") keep their names, and
    # a "legacy" pool never reads a "default" one.
    if grammar_rng != "default":
        params["grammar_rng"] = str(grammar_rng)
    return params


def grammar_cache_path(cache_dir: str | os.PathLike[str], params: dict[str, Any]) -> str:
    """The cache file of a grammar pool: cache_dir/grammar_pool_<hash>.npz."""
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(os.fspath(cache_dir), f"grammar_pool_{key}.npz")


def _read_cache(path, params, grammar):
    """The cached items [N, L], or None when the file is absent or unusable."""
    if not os.path.exists(path):
        return None
    try:
        items = _load_grammar_cache(path, params, grammar)
    except Exception as e:  # pylint: disable=broad-except
        # Any unreadable or mismatched file is only a cache: redraw the pool.
        logging.warning(
            "grammar pool: cache %s is unusable (%s: %s); regenerating", path, type(e).__name__, e
        )
        return None
    logging.info("grammar pool: read %s", path)
    return items


def _load_grammar_cache(path, params, grammar) -> np.ndarray:
    """Reads a cached pool, checking it against the parameters that asked for it.

    Raises:
        ValueError: the file does not hold the pool of these parameters.
        OSError, EOFError, zipfile.BadZipFile, KeyError: the file is unreadable.
    """
    with np.load(path, allow_pickle=False) as data:
        stored = json.loads(str(data["params"]))
        items = np.asarray(data["items"])
        transitions = np.asarray(data["transitions"])
    if stored != params:
        raise ValueError(f"parameters {stored} differ from the requested {params}")
    # The grammar is redrawn from its seed: a change in `random_grammar` would
    # otherwise pair a stale pool with a new grammar.
    if not np.array_equal(transitions, grammar.transitions):
        raise ValueError("stored grammar differs from random_grammar(...) of its seed and rng")
    shape = (params["pool_size"], grammar.length)
    if items.dtype != np.int32 or items.shape != shape:
        raise ValueError(f"items are {items.dtype} {items.shape}, expected int32 {shape}")
    if items.min() < 0 or items.max() >= grammar.q:
        raise ValueError(f"tokens outside [0, {grammar.q})")
    return items


def _save_grammar_cache(path, params, grammar, items):
    """Writes the cache atomically: a reader sees the old file or the whole new one."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with files.atomic_write(path, "wb") as f:
        np.savez(
            f,
            items=items,
            transitions=grammar.transitions,
            params=np.array(json.dumps(params, sort_keys=True)),
        )


def grammar_pool(
    q: int,
    depth: int,
    sigma: float,
    q_eff: int,
    grammar_seed: int,
    pool_size: int,
    pool_seed: int,
    cache_dir: str | os.PathLike[str] | None = None,
    grammar_rng: str = "default",
) -> pool_lib.Pool:
    """A pool of sequences of the random tree grammar (the paper (arXiv 2603.03469), "Setting 2").

    The grammar is `grammar.random_grammar(q, depth, sigma, q_eff, grammar_seed,
    grammar_rng)` and the items are `grammar.sample(grammar, pool_size,
    pool_seed)`, so the pool is fully determined by the parameters. With `cache_dir` the pool is stored as
    `cache_dir/grammar_pool_<hash of the parameters>.npz` and read back by the next
    call with the same parameters; a cache file that is unreadable or does not match
    the parameters is regenerated with a warning.

    Args:
        q: vocabulary size.
        depth: tree depth; sequences have L = 2**depth tokens.
        sigma: scale of the transition logits.
        q_eff: allowed child pairs per parent symbol.
        grammar_seed: seed of the grammar.
        pool_size: number of sequences N.
        pool_seed: seed of the sampling.
        cache_dir: directory of the cache, created if missing; None or "" for no
            cache.
        grammar_rng: generator of the grammar, one of `grammar.GRAMMAR_RNGS`
            ("legacy": the authors' grammar for the seed). The items are drawn by
            `grammar.sample` either way.

    Returns:
        Pool of kind "tokens": items int32 [N, L], `grammar` set, `info` holding the
        parameters and the cache path (or None).

    Raises:
        ValueError: a parameter is out of range (from `random_grammar`/`sample`).
    """
    # The grammar first: it validates q, depth, sigma and q_eff with clear messages.
    grammar = grammar_lib.random_grammar(
        q=q, depth=depth, sigma=sigma, q_eff=q_eff, seed=grammar_seed, rng=grammar_rng
    )
    params = _grammar_params(
        q, depth, sigma, q_eff, grammar_seed, pool_size, pool_seed, grammar_rng
    )
    path = grammar_cache_path(cache_dir, params) if cache_dir else None
    items = _read_cache(path, params, grammar) if path is not None else None
    if items is None:
        start = time.perf_counter()
        items = grammar_lib.sample(grammar, pool_size, pool_seed)
        logging.info(
            "grammar pool: sampled %d sequences in %.1f s", pool_size, time.perf_counter() - start
        )
        if path is not None:
            _save_grammar_cache(path, params, grammar, items)
            logging.info("grammar pool: wrote %s", path)
    info = {
        "name": "grammar",
        **params,
        "grammar_rng": grammar_rng,
        "num_items": int(pool_size),
        "length": grammar.length,
        "cache_path": path,
    }
    del info["version"]
    return pool_lib.Pool(items=items, kind="tokens", info=info, grammar=grammar)

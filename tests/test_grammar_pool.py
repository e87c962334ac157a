"""The grammar pool: direct sampling, determinism, and its on-disk cache."""

import os

import numpy as np
import pytest

from diffusion_bias.data import grammar_pool
from diffusion_bias.exact import grammar as grammar_lib

# A small grammar pool: fast.
_GRAMMAR = dict(q=6, depth=3, sigma=1.0, q_eff=4, grammar_seed=2, pool_size=500, pool_seed=5)


def test_grammar_pool_equals_direct_sampling_and_is_deterministic():
    pool = grammar_pool.grammar_pool(**_GRAMMAR)
    grammar = grammar_lib.random_grammar(q=6, depth=3, sigma=1.0, q_eff=4, seed=2)
    np.testing.assert_array_equal(pool.items, grammar_lib.sample(grammar, 500, seed=5))
    np.testing.assert_array_equal(pool.grammar.transitions, grammar.transitions)
    assert pool.kind == "tokens" and pool.items.dtype == np.int32
    assert pool.items.shape == (500, 8) and len(pool) == 500
    assert pool.info["pool_seed"] == 5 and pool.info["cache_path"] is None
    np.testing.assert_array_equal(grammar_pool.grammar_pool(**_GRAMMAR).items, pool.items)
    other = grammar_pool.grammar_pool(**{**_GRAMMAR, "pool_seed": 6})
    assert not np.array_equal(other.items, pool.items)


def test_grammar_cache_round_trip_does_not_resample(tmp_path, monkeypatch):
    first = grammar_pool.grammar_pool(**_GRAMMAR, cache_dir=tmp_path)
    path = first.info["cache_path"]
    assert os.path.dirname(path) == str(tmp_path)
    assert os.path.basename(path).startswith("grammar_pool_") and path.endswith(".npz")
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temp file left

    def no_sampling(*args, **kwargs):
        raise AssertionError("grammar.sample called although the pool is cached")

    monkeypatch.setattr(grammar_lib, "sample", no_sampling)
    mtime = os.stat(path).st_mtime_ns
    second = grammar_pool.grammar_pool(**_GRAMMAR, cache_dir=tmp_path)
    np.testing.assert_array_equal(second.items, first.items)
    assert second.items.dtype == np.int32
    assert os.stat(path).st_mtime_ns == mtime
    # Other parameters hash to another file, so they must sample.
    with pytest.raises(AssertionError, match="grammar.sample called"):
        grammar_pool.grammar_pool(**{**_GRAMMAR, "pool_seed": 6}, cache_dir=tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "wrong_items"])
def test_unusable_grammar_cache_is_regenerated(tmp_path, damage, caplog):
    expected = grammar_pool.grammar_pool(**_GRAMMAR).items
    path = grammar_pool.grammar_pool(**_GRAMMAR, cache_dir=tmp_path).info["cache_path"]
    if damage == "garbage":
        with open(path, "wb") as f:
            f.write(b"not an npz file")
    else:  # a readable file whose content does not match its parameters
        with np.load(path) as data:
            stored = dict(data)
        stored["items"] = stored["items"][:10]
        with open(path, "wb") as f:
            np.savez(f, **stored)
    with caplog.at_level("WARNING"):
        pool = grammar_pool.grammar_pool(**_GRAMMAR, cache_dir=tmp_path)
    np.testing.assert_array_equal(pool.items, expected)
    assert "regenerating" in caplog.text
    # The regenerated file is valid again: the next call reads it silently.
    caplog.clear()
    with caplog.at_level("WARNING"):
        np.testing.assert_array_equal(
            grammar_pool.grammar_pool(**_GRAMMAR, cache_dir=tmp_path).items, expected
        )
    assert "regenerating" not in caplog.text

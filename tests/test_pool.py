"""The pool container: read-only items, checked kinds and shapes."""

import numpy as np
import pytest

from diffusion_bias.data import pool as pool_lib


def test_pool_items_are_read_only_views():
    items = np.zeros((3, 4), np.int32)
    pool = pool_lib.Pool(items=items, kind="tokens", info={})
    with pytest.raises(ValueError):
        pool.items[0, 0] = 1
    items[0, 0] = 1  # the caller's array keeps its flags, and the pool is not a copy
    assert pool.items[0, 0] == 1 and len(pool) == 3


def test_pool_rejects_items_of_the_wrong_kind():
    with pytest.raises(ValueError, match="kind"):
        pool_lib.Pool(items=np.zeros((3, 4), np.int32), kind="audio", info={})
    with pytest.raises(ValueError, match="int32"):
        pool_lib.Pool(items=np.zeros((3, 4), np.float32), kind="tokens", info={})
    with pytest.raises(ValueError, match="labels"):
        pool_lib.Pool(items=np.zeros((3, 4), np.int32), kind="tokens", info={}, labels=np.zeros(2))

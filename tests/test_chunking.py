"""Fixed-shape chunks: zero padding in, the padding cut off on the way out."""

import jax.numpy as jnp
import numpy as np

from diffusion_bias import chunking


def test_padded_chunks_have_one_shape_and_zero_padding():
    items = np.arange(1, 15, dtype=np.int64).reshape(7, 2)
    chunks = chunking.padded_chunks(items, 3, np.int32)
    assert chunks.shape == (3, 3, 2) and chunks.dtype == np.int32
    np.testing.assert_array_equal(chunks.reshape(9, 2)[:7], items)
    np.testing.assert_array_equal(chunks.reshape(9, 2)[7:], 0)
    assert chunking.padded_chunks(items, 7).shape == (1, 7, 2)


def test_gather_joins_along_the_chunk_axis_and_cuts_the_padding():
    items = np.arange(7, dtype=np.float32)
    results = [jnp.stack([c, -c]) for c in chunking.padded_chunks(items, 3)]  # [2, 3] each
    out = chunking.gather(results, 7, axis=-1)
    assert isinstance(out, np.ndarray) and out.shape == (2, 7)
    np.testing.assert_array_equal(out, np.stack([items, -items]))
    np.testing.assert_array_equal(chunking.gather([jnp.arange(4)] * 2, 5), [0, 1, 2, 3, 0])

"""Fixed-shape chunks, so that a jitted kernel compiles once whatever the number of items.

A host loop calls its kernel on each [C, ...] chunk of `padded_chunks` (the
last one padded with zeros) and `gather`s the results, fetched from the device
at once, with the padding cut off. The kernels work item by item, so the
padding rows change no real row's result.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt


def padded_chunks(items: npt.ArrayLike, size: int, dtype: npt.DTypeLike = None) -> np.ndarray:
    """Items cut into equal chunks, the last one padded with zeros.

    Args:
        items: [N, ...] array, read on the host.
        size: rows per chunk C, >= 1.
        dtype: dtype of the chunks; None keeps that of `items`.

    Returns:
        numpy [ceil(N / C), C, ...].
    """
    items = np.asarray(items, dtype)
    num_chunks = -(-items.shape[0] // size)
    padded = np.zeros((num_chunks * size,) + items.shape[1:], items.dtype)
    padded[: items.shape[0]] = items
    return padded.reshape((num_chunks, size) + items.shape[1:])


def gather(per_chunk: Sequence[jax.typing.ArrayLike], num: int, axis: int = 0) -> np.ndarray:
    """Chunk results joined along `axis`, fetched in one transfer, cut to the first `num`.

    Args:
        per_chunk: list of arrays [..., C, ...], the chunk axis at `axis`.
        num: N, the number of real items.
        axis: the chunk axis.

    Returns:
        numpy [..., N, ...].
    """
    out = np.asarray(jax.device_get(jnp.concatenate(per_chunk, axis=axis)))
    index = [slice(None)] * out.ndim
    index[axis] = slice(num)
    return out[tuple(index)]

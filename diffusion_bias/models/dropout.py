"""Dropout whose mask costs a quarter of the random bits flax's does.

On a CPU the random bits are the dearest part of dropout, and flax's dropout
was the largest non-matmul cost of the small transformer's training step
(27-29% of it, `benchmarks/train_step.py` step_breakdown). `flax.linen.Dropout`
draws a float32 uniform per element; under `jax_threefry_partitionable` (JAX's
default) that is one threefry2x32 evaluation per element, its two 32-bit words
XORed into one. Here one evaluation gives two 32-bit words and each word two
16-bit uniforms, so four elements per evaluation (`random_halves`). The
primitive is called directly because `jax.random.bits` has no cheaper way: at
32 bits or fewer it spends one evaluation per element, and 64-bit words need
jax_enable_x64. The counters are built elementwise from the shape, as JAX's
partitionable ones, so a batch-sharded activation draws its mask where it lives.

The rate is resolved to 1/65536: an element is dropped when its 16-bit uniform
is below round(rate * 65536), and kept ones are scaled by the exact keep
probability that implies, so the mean is preserved as in flax (rate 0.1 drops
with probability 0.10000610).
"""

from collections.abc import Sequence
import math

import flax.linen as nn
import jax
from jax import lax
import jax.extend.random as jex_random
import jax.numpy as jnp

# 16-bit uniforms: the rate's resolution.
_LEVELS = 1 << 16


def drop_threshold(rate: float) -> int:
    """The 16-bit level below which an element is dropped: round(rate * 65536)."""
    return round(rate * _LEVELS)


def _group_index(shape: tuple[int, ...]) -> jax.Array:
    """Row-major linear index of every element of `shape`, uint32.  # shape

    Built from one iota per axis (elementwise, so a sharded shape needs no
    gather, as in jax_threefry_partitionable).
    """
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride *= shape[axis]
    return index


def random_halves(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform 16-bit integers of `shape`, four from each threefry2x32 evaluation.  # shape, uint16

    Groups of four consecutive elements along the last axis share one evaluation:
    group g (row-major over shape[:-1] + (ceil(shape[-1] / 4),)) hashes the counter
    (0, g) with the key and yields two 32-bit words; element 4g + j reads the
    16-bit half j % 2 (low first) of word j // 2. Keys of another implementation
    draw two `jax.random.bits` words per group.

    Raises:
        ValueError: if there are 2^32 groups or more (the counter is 32-bit).
    """
    *lead, last = shape if shape else (1,)
    group_shape = (*lead, -(-last // 4))
    if math.prod(group_shape) >= 1 << 32:
        raise ValueError(f"dropout of {math.prod(shape)} elements: at most 2^34 are supported")
    if str(jax.random.key_impl(key)) == "threefry2x32":
        count = _group_index(group_shape)
        k1, k2 = jax.random.key_data(key)
        words = jnp.stack(jex_random.threefry2x32_p.bind(k1, k2, jnp.zeros_like(count), count), -1)
    else:
        words = jax.random.bits(key, (*group_shape, 2), jnp.uint32)
    halves = jnp.stack([words & 0xFFFF, words >> 16], -1).astype(jnp.uint16)  # [..., groups, 2, 2]
    return halves.reshape(*lead, -1)[..., :last].reshape(shape)


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """True where an element is kept: its 16-bit uniform is at least drop_threshold(rate).  # shape, bool"""
    return random_halves(key, shape) >= drop_threshold(rate)


def dropout(
    key: jax.Array, rate: float, inputs: jax.Array, broadcast_dims: Sequence[int] = ()
) -> jax.Array:
    """Drops elements of inputs with probability drop_threshold(rate) / 65536 and
    scales the rest by 1 / (1 - that), so that the mean is preserved.  # inputs' shape

    One mask element serves every index of the `broadcast_dims` axes (as in flax):
    (1, 2) on [B, H, W, C] drops whole channels, torch's Dropout2d.
    """
    threshold = drop_threshold(rate)
    if threshold == 0:
        return inputs
    if threshold >= _LEVELS:
        return jnp.zeros_like(inputs)
    keep_prob = jnp.asarray(1.0 - threshold / _LEVELS, inputs.dtype)
    shape = tuple(1 if i in broadcast_dims else n for i, n in enumerate(inputs.shape))
    mask = jnp.broadcast_to(keep_mask(key, rate, shape), inputs.shape)
    return lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))


class Dropout(nn.Module):
    """`flax.linen.Dropout` (rate, deterministic, the "dropout" RNG stream), 16 bits a mask element.

    Attributes:
        rate: probability of dropping an element, resolved to 1/65536.
        deterministic: if true, the layer is the identity (may be given at call time).
        rng_collection: the RNG stream the mask is drawn from.
        broadcast_dims: axes sharing one mask element (`dropout`).
    """

    rate: float
    deterministic: bool | None = None
    rng_collection: str = "dropout"
    broadcast_dims: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, inputs: jax.Array, deterministic: bool | None = None) -> jax.Array:
        """`dropout` with a key from the RNG stream, or the identity.  # inputs' shape"""
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if deterministic or drop_threshold(self.rate) == 0:
            return inputs
        return dropout(self.make_rng(self.rng_collection), self.rate, inputs, self.broadcast_dims)

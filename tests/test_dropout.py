"""models.dropout: the mask is 16-bit halves of JAX's threefry words, at the stated rate."""

import os
import subprocess
import sys

import jax
from jax.extend import random as jex_random
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_bias.models import dropout as dropout_lib


def _reference_halves(key_data, shape):
    """Element (i, 4g + 2w + h): half h of word w of threefry_2x32(key, counter (0, row-major g))."""
    rows, last = shape
    groups = -(-last // 4)
    out = np.zeros((rows, 4 * groups), np.int64)
    for r in range(rows):
        for g in range(groups):
            index = r * groups + g
            words = np.asarray(
                jex_random.threefry_2x32(key_data, jnp.array([0, index], jnp.uint32))
            )
            out[r, 4 * g : 4 * g + 4] = [
                words[0] & 0xFFFF,
                words[0] >> 16,
                words[1] & 0xFFFF,
                words[1] >> 16,
            ]
    return out[:, :last]


@pytest.mark.parametrize("shape", [(3, 8), (4, 7)])
def test_each_threefry_evaluation_gives_four_16_bit_halves_along_the_last_axis(shape):
    key = jax.random.key(3)
    expected = _reference_halves(jax.random.key_data(key), shape)
    np.testing.assert_array_equal(dropout_lib.random_halves(key, shape), expected)
    np.testing.assert_array_equal(dropout_lib.keep_mask(key, 0.1, shape), expected >= 6554)
    assert dropout_lib.drop_threshold(0.1) == 6554


_SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from diffusion_bias.models import dropout
sharding = NamedSharding(jax.make_mesh((2,), ("batch",)), PartitionSpec("batch"))
x = jax.device_put(jnp.ones((8, 16, 32)), sharding)
drop = jax.jit(lambda k, x: dropout.dropout(k, 0.1, x), out_shardings=sharding)
key = jax.random.key(0)
program = drop.lower(key, x).compile().as_text()
assert not any(op in program for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute"))
np.testing.assert_array_equal(drop(key, x), dropout.dropout(key, 0.1, jnp.ones((8, 16, 32))))
"""


def test_a_batch_sharded_activation_draws_its_mask_where_it_lives():
    # Two CPU devices: the sharded mask equals the unsharded one, with no collective.
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2"}
    subprocess.run([sys.executable, "-c", _SHARDED], env=env, check=True, timeout=300)


@pytest.mark.parametrize("shape", [(), (5,), (3, 5, 7)])
def test_a_mask_of_any_shape_has_that_shape(shape):
    assert dropout_lib.keep_mask(jax.random.key(5), 0.1, shape).shape == shape


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_elements_are_dropped_at_the_resolved_rate_and_the_rest_scaled_to_keep_the_mean(rate):
    n = 1 << 20
    x = jnp.ones((n,), jnp.float32)
    out = np.asarray(dropout_lib.dropout(jax.random.key(0), rate, x))
    p = dropout_lib.drop_threshold(rate) / 65536
    assert abs(p - rate) <= 2**-17
    dropped = np.mean(out == 0)
    assert abs(dropped - p) < 5 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(out[out != 0], 1 / (1 - p), rtol=1e-6)
    assert abs(out.mean() - 1.0) < 5 * np.sqrt(p / (1 - p) / n)


def test_neighbouring_elements_and_the_two_halves_of_a_word_are_independent():
    n = 1 << 20
    keep = np.asarray(dropout_lib.keep_mask(jax.random.key(1), 0.5, (n,)))
    drop = ~keep
    p = drop.mean()
    # The two halves of one word (i even, i + 1) and elements of two words (i odd, i + 1).
    for start in (0, 1):
        a, b = drop[start:-1:2], drop[start + 1 :: 2]
        joint = np.mean(a & b)
        assert abs(joint - p * p) < 5 * np.sqrt(p * p * (1 - p * p) / a.size)


def test_the_same_key_gives_the_same_mask_and_twins_keys_different_ones():
    keys = jax.random.split(jax.random.key(2), 2)
    masks = jax.vmap(lambda k: dropout_lib.keep_mask(k, 0.1, (4, 16, 64)))(keys)
    again = dropout_lib.keep_mask(keys[0], 0.1, (4, 16, 64))
    np.testing.assert_array_equal(masks[0], again)
    assert np.mean(masks[0] != masks[1]) > 0.1


def test_keys_of_another_implementation_draw_two_random_bits_words_per_group():
    key = jax.random.key(0, impl="rbg")
    words = np.asarray(jax.random.bits(key, (4, 2), jnp.uint32))
    halves = np.stack([words & 0xFFFF, words >> 16], axis=-1).reshape(-1)
    np.testing.assert_array_equal(dropout_lib.keep_mask(key, 0.1, (16,)), halves >= 6554)


def test_rate_zero_a_rate_below_the_resolution_and_deterministic_leave_inputs_alone():
    x = jax.random.normal(jax.random.key(0), (5, 6))
    key = jax.random.key(1)
    np.testing.assert_array_equal(dropout_lib.dropout(key, 0.0, x), x)
    np.testing.assert_array_equal(dropout_lib.dropout(key, 1e-6, x), x)
    layer = dropout_lib.Dropout(0.1)
    np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)
    out = np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": key}))
    kept = out != 0
    assert 0 < kept.sum() < x.size
    np.testing.assert_allclose(out[kept], np.asarray(x)[kept] / (1 - 6554 / 65536), rtol=1e-6)


def test_a_rate_that_rounds_to_one_drops_everything():
    x = jnp.ones((3, 4))
    np.testing.assert_array_equal(dropout_lib.dropout(jax.random.key(0), 1 - 1e-6, x), 0.0)


def test_the_gradient_is_the_mask_over_the_keep_probability():
    key, x = jax.random.key(4), jnp.linspace(-1.0, 1.0, 1000)
    grad = jax.grad(lambda v: jnp.sum(dropout_lib.dropout(key, 0.1, v)))(x)
    keep = np.asarray(dropout_lib.keep_mask(key, 0.1, x.shape))
    np.testing.assert_allclose(grad, keep / (1 - 6554 / 65536), rtol=1e-6)

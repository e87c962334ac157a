"""Tests of the integer and number tests every argument check uses."""

import numpy as np
import pytest

from diffusion_bias import checks


@pytest.mark.parametrize("value", [0, 3, -2, np.int64(5), np.uint8(1), np.int32(0)])
def test_python_and_numpy_integers_are_integers(value):
    assert checks.is_int(value)
    assert checks.is_number(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True)])
def test_a_bool_is_neither_an_integer_nor_a_number(value):
    assert not checks.is_int(value)
    assert not checks.is_number(value)


@pytest.mark.parametrize("value", [1.0, np.float32(2.0), "1", None, 1 + 0j])
def test_floats_strings_and_complex_are_not_integers(value):
    assert not checks.is_int(value)


@pytest.mark.parametrize("value", [0.5, np.float64(-1.5), float("inf")])
def test_floats_are_numbers(value):
    assert checks.is_number(value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_finite_names_the_argument_and_counts_the_bad_values_in_numpy_and_jax(bad):
    import jax.numpy as jnp

    values = np.zeros((3, 4), np.float32)
    values[1, 2] = bad
    for array in (values, jnp.asarray(values)):
        with pytest.raises(ValueError, match="heldout holds 1 NaN or infinite values of 12"):
            checks.finite("heldout", array)
    ok = jnp.ones(3)
    assert checks.finite("x", ok) is ok  # a JAX array is checked where it lives
    np.testing.assert_array_equal(checks.finite("t", [1, 2]), [1, 2])  # integers pass

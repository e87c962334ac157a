"""Argument checks shared by the package's entry points: integers, finite arrays, kinds.

`bool` is an `int` subclass, so `isinstance(True, int)` holds; yet `True` given
as a size, a seed or a step count is a bug, not 1. Every check of an integer
argument or config field asks `is_int`, which takes Python and numpy integers
and refuses booleans.
"""

import numbers

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt


def is_int(value: object) -> bool:
    """Whether `value` is an integer (Python or numpy) and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """Whether `value` is a real number (Python or numpy) and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def finite(name: str, array: npt.ArrayLike) -> jax.Array | np.ndarray:
    """Raises ValueError naming `name` if a float `array` holds NaN or inf; returns it.

    A JAX array is checked where it lives (one scalar comes back), anything else
    as numpy.
    """
    xp = jnp if isinstance(array, jax.Array) else np
    array = xp.asarray(array)
    if array.dtype.kind in "fc":
        bad = int(array.size - xp.count_nonzero(xp.isfinite(array)))
        if bad:
            raise ValueError(f"{name} holds {bad} NaN or infinite values of {array.size}")
    return array

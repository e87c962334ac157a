"""What counts as an integer argument, in one place.

`bool` is an `int` subclass, so `isinstance(True, int)` holds; yet `True` given
as a size, a seed or a step count is a bug, not 1. Every check of an integer
argument or config field asks `is_int`, which takes Python and numpy integers
and refuses booleans.
"""

import numbers


def is_int(value) -> bool:
    """Whether `value` is an integer (Python or numpy) and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """Whether `value` is a real number (Python or numpy) and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)

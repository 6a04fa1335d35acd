"""User-facing errors.

Every problem caused by the user's input (a missing file, a bad configuration value, a dataset
without a time axis, ...) raises :class:`LatentdaError`. The command line turns it into a one-line
message on stderr and exit code 2; nothing else is written.
"""

import math
from numbers import Integral, Real
from typing import Any

__all__ = ["LatentdaError", "check_integer", "check_positive"]


class LatentdaError(Exception):
    """An error in the user's input, reported as one line and exit code 2."""


def check_integer(name: str, value: Any, minimum: int | None = None, maximum: int | None = None, hint: str = "") -> int:
    """``value`` as an int if it is a Python or numpy integer (not a bool) in [minimum, maximum] (None: unbounded),
    else a :class:`LatentdaError` naming ``name`` (``hint`` appended to the message)."""
    within = (minimum is None or value >= minimum) and (maximum is None or value <= maximum) \
        if isinstance(value, Integral) and not isinstance(value, bool) else False
    if not within:
        bounds = (f" in [{minimum}, {maximum}]" if minimum is not None and maximum is not None
                  else f" ≥ {minimum}" if minimum is not None else f" ≤ {maximum}" if maximum is not None else "")
        raise LatentdaError(f"{name} must be an integer{bounds}{hint}, got {value!r}")
    return int(value)


def check_positive(name: str, value: Any) -> float:
    """``value`` as a float if it is a positive finite Python or numpy number (not a bool), else a
    :class:`LatentdaError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise LatentdaError(f"{name} must be positive and finite, got {value!r}")
    return float(value)

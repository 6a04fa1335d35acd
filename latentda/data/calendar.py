"""Calendar features of datetime time axes, for conditioning the prior on the time of day and year.

For a state at time t: (sin, cos)(2π · hour-of-day / 24) and (sin, cos)(2π · day-of-year / 365.25),
four features that are continuous across midnight and new year. Time axes that are plain numbers
(model time, as in the built-in Kolmogorov data) have no calendar: :func:`calendar_features`
returns None for them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["calendar_features", "CALENDAR_FEATURES"]

CALENDAR_FEATURES = 4


def calendar_features(times) -> np.ndarray | None:
    """(T, 4) float32 features of datetime64 ``times``; None when they are not datetimes."""
    times = np.asarray(times)
    if not np.issubdtype(times.dtype, np.datetime64):
        return None
    seconds = (times - times.astype("datetime64[D]")) / np.timedelta64(1, "s")
    day_of_year = (times.astype("datetime64[D]") - times.astype("datetime64[Y]")) / np.timedelta64(1, "D")
    hour = 2 * np.pi * seconds / 86400.0
    year = 2 * np.pi * (day_of_year + seconds / 86400.0) / 365.25
    return np.stack([np.sin(hour), np.cos(hour), np.sin(year), np.cos(year)], axis=-1).astype(np.float32)

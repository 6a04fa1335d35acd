"""Calendar features of dated time axes, for conditioning the prior on the time of day and year.

For a state at time t: (sin, cos)(2π · hour-of-day / 24) and (sin, cos)(2π · day-of-year / Y), four
features that are continuous across midnight and new year. Y is the length of the calendar's year:
365.25 days for numpy datetimes (the standard calendar) and ``julian``, 365 for ``noleap``, 366 for
``all_leap`` and 360 for ``360_day`` — so each climate calendar's seasonal cycle repeats exactly each
year. Dates of a climate calendar are seconds since 0001-01-01 00:00:00 in it (:mod:`latentda.data.times`),
so its calendar must be given. Time axes that are plain numbers (model time, as in the built-in
Kolmogorov data) have no calendar: :func:`calendar_features` returns None for them.
"""

from __future__ import annotations

import numpy as np

from latentda.errors import LatentdaError

__all__ = ["calendar_features", "CALENDAR_FEATURES", "YEAR_DAYS"]

CALENDAR_FEATURES = 4
YEAR_DAYS = {"standard": 365.25, "julian": 365.25, "noleap": 365.0, "all_leap": 366.0, "360_day": 360.0}


def calendar_features(times, calendar: str | None = None) -> np.ndarray | None:
    """(T, 4) float32 features of datetime64 ``times``, or of climate-calendar dates (float seconds since
    0001-01-01 00:00:00 in ``calendar``: noleap, all_leap, 360_day, julian or a CF alias); None for plain numbers."""
    times = np.asarray(times)
    if np.issubdtype(times.dtype, np.datetime64):
        seconds = (times - times.astype("datetime64[D]")) / np.timedelta64(1, "s")
        day_of_year = (times.astype("datetime64[D]") - times.astype("datetime64[Y]")) / np.timedelta64(1, "D")
        year = YEAR_DAYS["standard"]
    elif calendar is not None and np.issubdtype(times.dtype, np.number):
        import cftime

        from latentda.data.times import _CLIMATE_CALENDARS, CALENDAR_REFERENCE

        calendar = _CLIMATE_CALENDARS.get(str(calendar).lower(), str(calendar))  # CF's aliases: 365_day is noleap
        if calendar not in YEAR_DAYS:
            raise LatentdaError(f"calendar {calendar!r} is not supported (supported: {', '.join(sorted(_CLIMATE_CALENDARS))})")

        seconds = np.mod(times.astype(np.float64), 86400.0)  # the reference is a midnight
        dates = np.atleast_1d(cftime.num2date(times.astype(np.float64), CALENDAR_REFERENCE, calendar))
        day_of_year = np.array([date.dayofyr - 1 for date in dates], np.float64).reshape(times.shape)
        year = YEAR_DAYS[calendar]
    else:
        return None
    hour = 2 * np.pi * seconds / 86400.0
    season = 2 * np.pi * (day_of_year + seconds / 86400.0) / year
    return np.stack([np.sin(hour), np.cos(hour), np.sin(season), np.cos(season)], axis=-1).astype(np.float32)

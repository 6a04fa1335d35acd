"""The time axis of a dataset: found, decoded, and checked to be regular.

latentda works on states a fixed time step Δ apart: a window of K consecutive states spans
(K − 1) Δ, the prior learns the dynamics over one Δ, and observations and forecasts are placed on
the grid t₀ + k Δ. So the time axis is normalised on reading and checked before any work:

- **Name.** The time dimension is called ``time`` inside latentda. A dataset whose time axis has
  another name (``valid_time``, ``time_index``, ...) has it renamed on reading: the name given
  (``time_dim``, ``--time-dim`` on the command line), or else the one 1-D coordinate that CF
  marks as time (datetime values, ``axis: T``, ``standard_name: time``, or ``units`` of the form
  "<unit> since <date>"). A 1-D coordinate along the time dimension (``time_index(time)``)
  becomes the time coordinate the same way.
- **Values.** A numeric time coordinate with CF units "<unit> since <date>" that was not decoded
  (integer "hours since 1940-01-01", or a dataset opened with ``decode_times=False``) is decoded
  to datetimes by xarray's CF decoding.
- **Climate calendars.** Dates of a calendar numpy datetimes cannot hold — CF's ``noleap``
  (``365_day``), ``all_leap`` (``366_day``), ``360_day`` and ``julian``, as climate and ocean models
  write them — become numbers: seconds since 0001-01-01 00:00:00 *in that calendar* (cftime's
  ``date2num``), with the coordinate attributes ``units`` and ``calendar`` that say so. Whether
  xarray decoded them to cftime objects or left them as numbers in other units, every file of one
  calendar then shares one axis, steps are plain differences in seconds (as for datetimes), and an
  output written with these attributes opens as the same cftime dates. Whole seconds are exact in
  float64 (up to 2⁵³ s), so dates, steps and t₀ + kΔ carry no rounding; a fraction of a second
  carries float64's resolution at that magnitude (about 8 µs near year 2000), so time steps below
  about 0.1 s are not supported on these axes. The model's time
  units record the calendar (:func:`calendar_time_units`): a file of another calendar, or of plain
  datetimes, is refused.
- **Spacing.** Consecutive times must be one step apart: t_i − t_{i−1} = t_1 − t_0 for every i
  (relative tolerance 1e-4), in seconds for datetimes, else in the axis' units. The time
  coordinate is shared by every trajectory of a dataset (xarray allows only a 1-D index), so
  checking it once checks each trajectory and each split segment. An irregular axis is refused,
  naming the first index where the step changes.
"""

from __future__ import annotations

import re

import numpy as np
import xarray as xr

from latentda.errors import LatentdaError

__all__ = ["TIME", "TRAJECTORY", "standard_time_axis", "time_step", "describe_step", "describe_time", "axis_units",
           "calendar_time_units", "climate_calendar", "calendar_attrs", "calendar_time", "CALENDAR_REFERENCE", "time_kind"]

TIME = "time"
TRAJECTORY = "trajectory"
_SINCE = re.compile(r"^\s*[A-Za-z]+\s+since\s+\S")  # CF time units: "<unit> since <date>"
_RTOL = 1e-4
_DURATIONS = (("day", 86400), ("hour", 3600), ("minute", 60))
_STANDARD_CALENDARS = ("standard", "gregorian", "proleptic_gregorian")
_CLIMATE_CALENDARS = {"noleap": "noleap", "365_day": "noleap", "all_leap": "all_leap", "366_day": "all_leap",
                      "360_day": "360_day", "julian": "julian"}  # CF's names, and their aliases
CALENDAR_REFERENCE = "seconds since 0001-01-01 00:00:00"  # the axis of climate-calendar dates inside latentda
_CALENDAR_UNITS = re.compile(r"^seconds since 0001-01-01 00:00:00 \((\w+) calendar\)$")


def _is_time(coordinate: xr.DataArray) -> bool:
    """Whether CF marks ``coordinate`` as a time coordinate (cftime dates too: xarray keeps their units in
    the encoding; only an object coordinate is read to tell)."""
    attrs = coordinate.attrs
    return (np.issubdtype(coordinate.dtype, np.datetime64) or attrs.get("axis") == "T"
            or attrs.get("standard_name") == "time" or bool(_SINCE.match(str(attrs.get("units", ""))))
            or (coordinate.dtype.kind == "O" and _cftime_calendar(np.asarray(coordinate.values)) is not None))


def _promote(dataset: xr.Dataset, name: str) -> xr.Dataset:
    """``dataset`` with ``name`` (a dimension, or a 1-D coordinate along one) as the ``time``
    dimension and its coordinate."""
    if name not in dataset.dims:
        if name not in dataset.coords or dataset[name].ndim != 1:
            raise LatentdaError(f"time dimension '{name}' not found (dims: {', '.join(map(str, dataset.dims)) or 'none'})")
        dataset = dataset.swap_dims({dataset[name].dims[0]: name})
    if name == TIME:
        return dataset
    if TIME in dataset.variables or TIME in dataset.dims:
        raise LatentdaError(f"cannot use '{name}' as the time dimension: the dataset already has a '{TIME}' variable")
    return dataset.rename({name: TIME})


def calendar_time_units(calendar: str) -> str:
    """A model's time units for dates of a climate ``calendar``: "seconds since 0001-01-01 00:00:00 (noleap calendar)"."""
    return f"{CALENDAR_REFERENCE} ({calendar} calendar)"


def climate_calendar(units: str | None) -> str | None:
    """The climate calendar of a model's time ``units`` (:func:`calendar_time_units`), else None."""
    match = _CALENDAR_UNITS.match(str(units or ""))
    return match.group(1) if match else None


def calendar_attrs(units: str | None) -> dict:
    """A time coordinate's CF attributes for a model's time ``units``: units and calendar for a climate
    calendar (so that the output opens as its cftime dates), none otherwise."""
    calendar = climate_calendar(units)
    return {} if calendar is None else {"units": CALENDAR_REFERENCE, "calendar": calendar}


def _calendar_seconds(dates, calendar: str, what: str) -> np.ndarray:
    """cftime ``dates`` of a climate calendar as float64 seconds since 0001-01-01 in it (whole seconds exact;
    fractions to float64's resolution, about 8 µs near year 2000)."""
    import cftime

    try:
        return np.asarray(cftime.date2num(np.asarray(dates), CALENDAR_REFERENCE, calendar), dtype=np.float64)
    except (ValueError, TypeError) as error:
        raise LatentdaError(f"{what}: dates of the {calendar} calendar cannot be read ({str(error).splitlines()[0]})") from None


def _climate_axis(time: xr.DataArray, calendar: str) -> xr.Variable:
    """A climate-calendar time coordinate (cftime dates, or numbers in CF units) as seconds since
    0001-01-01 in its calendar, its other attributes kept."""
    values = np.asarray(time.values)
    attrs = {key: value for key, value in time.attrs.items() if key not in ("units", "calendar")}
    if values.dtype.kind != "O":  # numbers "<unit> since <date>" xarray did not decode
        units = str(time.attrs["units"])
        if units == CALENDAR_REFERENCE:
            seconds = values.astype(np.float64)
        else:
            import cftime

            try:
                dates = cftime.num2date(values, units, calendar)
            except (ValueError, TypeError, OverflowError) as error:
                raise LatentdaError(f"time units '{units}' cannot be decoded ({str(error).splitlines()[0]})") from None
            seconds = _calendar_seconds(dates, calendar, "time axis")
    else:
        seconds = _calendar_seconds(values, calendar, "time axis")
    return xr.Variable(time.dims, seconds, {**attrs, "units": CALENDAR_REFERENCE, "calendar": calendar})


_ISO_DATE = re.compile(r"^\s*(-?\d{1,4})-(\d{1,2})-(\d{1,2})(?:[T ](\d{1,2})(?::(\d{1,2})(?::(\d{1,2})(?:\.(\d{1,6})\d*)?)?)?)?\s*$")


def calendar_time(value, calendar: str, what: str = "time") -> float:
    """A date of a climate ``calendar`` as its number on the model's axis (seconds since 0001-01-01 in
    it): an ISO date such as "2001-02-30T06:00" (a 360_day date), or a date object of that calendar
    (cftime). A date the calendar lacks (29 February in ``noleap``) is refused, and so is a plain number
    (it would be taken for a date near year 1)."""
    import cftime

    if isinstance(value, cftime.datetime):
        given = _CLIMATE_CALENDARS.get(str(value.calendar).lower(), value.calendar)
        if given != calendar:
            raise LatentdaError(f"{what}: a date of the {value.calendar} calendar, the model's dates are of the {calendar} calendar")
        return float(_calendar_seconds(value, calendar, what))
    match = _ISO_DATE.match(str(value))
    if match is None:
        raise LatentdaError(f"{what}: {value!r} is not a date (YYYY-MM-DD, or YYYY-MM-DDTHH:MM:SS, without a time "
                            f"zone) of the {calendar} calendar")
    year, month, day, hour, minute, second = (int(part or 0) for part in match.groups()[:6])
    microsecond = int((match.group(7) or "0").ljust(6, "0"))
    try:
        date = cftime.datetime(year, month, day, hour, minute, second, microsecond, calendar=calendar)
    except ValueError:
        raise LatentdaError(f"{what}: {value!r} is not a date of the {calendar} calendar") from None
    return float(_calendar_seconds(date, calendar, what))


def _cftime_calendar(values: np.ndarray) -> str | None:
    """The calendar of an array of cftime dates (None when it holds something else)."""
    first = values.flat[0] if values.dtype.kind == "O" and values.size else None
    calendar = getattr(first, "calendar", None)
    return None if calendar is None or not type(first).__module__.startswith("cftime") else str(calendar).lower()


def _refuse_calendar(calendar: str, units: str | None = None) -> LatentdaError:
    given = f"time units '{units}'" if units else "the time axis"
    return LatentdaError(f"{given} cannot be decoded: calendar '{calendar}' is not supported (latentda reads the standard "
                         f"calendar as numpy datetimes, and {', '.join(sorted(_CLIMATE_CALENDARS))} as seconds since "
                         "0001-01-01 in their calendar)")


def _decoded(dataset: xr.Dataset) -> xr.Dataset:
    """``dataset`` with a numeric ``time`` coordinate in CF units "<unit> since <date>" decoded, and
    dates of a climate calendar as seconds since 0001-01-01 in it (module docstring)."""
    if TIME not in dataset.coords:
        return dataset
    time = dataset[TIME]
    calendar = _cftime_calendar(np.asarray(time.values))
    if calendar is not None:  # xarray decoded them with cftime
        if calendar in _STANDARD_CALENDARS:  # asked for cftime (use_cftime=True), or dates out of numpy's range
            index = xr.CFTimeIndex(time.values)
            try:
                try:
                    converted = index.to_datetimeindex(time_unit="ns")
                except TypeError:  # xarray before 2025.01 has no time_unit (and converts to nanoseconds)
                    converted = index.to_datetimeindex()
                return dataset.assign_coords({TIME: time.copy(data=converted)})
            except (ValueError, OverflowError):
                raise LatentdaError(f"time axis: dates {index[0]} … {index[-1]} of the {calendar} calendar lie outside the years "
                                    "numpy datetimes hold (1678–2262), as which latentda reads this calendar: shift the years "
                                    "by a constant, or give the times as plain numbers (model time)") from None
        if calendar not in _CLIMATE_CALENDARS:
            raise _refuse_calendar(calendar)
        return dataset.assign_coords({TIME: _climate_axis(time, _CLIMATE_CALENDARS[calendar])})
    units = str(time.attrs.get("units", ""))
    if not (np.issubdtype(time.dtype, np.number) and _SINCE.match(units)):
        return dataset
    calendar = str(time.attrs.get("calendar", "standard")).lower()
    if calendar in _CLIMATE_CALENDARS:
        return dataset.assign_coords({TIME: _climate_axis(time, _CLIMATE_CALENDARS[calendar])})
    if calendar not in _STANDARD_CALENDARS:
        raise _refuse_calendar(calendar, units)
    try:
        decoded = xr.decode_cf(xr.Dataset(coords={TIME: time.variable}))
    except (ValueError, TypeError, OverflowError) as error:
        raise LatentdaError(f"time units '{units}' cannot be decoded ({str(error).splitlines()[0]})") from None
    return dataset.assign_coords({TIME: decoded[TIME]})


def standard_time_axis(dataset: xr.Dataset, time_dim: str | None = None) -> xr.Dataset:
    """``dataset`` with its time axis named ``time`` and CF-decoded (module docstring).

    ``time_dim`` names the time dimension (or a 1-D coordinate along it); without it, a dataset
    that has no ``time`` coordinate gets the one 1-D coordinate CF marks as time, if there is
    exactly one (along the ``time`` dimension when that exists). Otherwise it is returned as is
    (and :meth:`FieldLayout.from_dataset` says it has no time dimension).
    """
    if time_dim is None and TIME not in dataset.coords:
        found = [str(name) for name, coordinate in dataset.coords.items() if coordinate.ndim == 1 and _is_time(coordinate)
                 and (TIME not in dataset.dims or coordinate.dims == (TIME,))]
        time_dim = found[0] if len(found) == 1 else None
    return _decoded(_promote(dataset, time_dim) if time_dim is not None else dataset)


def describe_step(step: float, units: str) -> str:
    """A time step for messages: "6 hours" for 21600 seconds (of datetimes or of a climate calendar's
    dates), "0.2" for a step in units "1"."""
    if units == "seconds" or climate_calendar(units) is not None:
        for name, size in _DURATIONS:
            if abs(step) >= size and float(step / size).is_integer():
                return f"{step / size:g} {name}{'' if abs(step) == size else 's'}"
        return f"{step:g} seconds"
    return f"{step:g}" if units in ("1", "") else f"{step:g} {units}"


def describe_time(value, units: str | None = None) -> str:
    """A time for messages: a datetime to the second, a climate calendar's number as its date
    (``units``: the axis' :func:`calendar_time_units`), else the number."""
    if isinstance(value, np.datetime64):
        return str(value.astype("datetime64[s]"))
    calendar = climate_calendar(units)
    if calendar is not None:
        import cftime

        return cftime.num2date(float(value), CALENDAR_REFERENCE, calendar).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{float(value):g}"


def time_kind(time: xr.DataArray) -> str:
    """What a (standardised) time axis holds, for comparing two axes and for messages: "date-times",
    "dates of the noleap calendar" (one per climate calendar) or "numbers (model time)" — whatever
    their units attribute says (numbers in "seconds" are numbers)."""
    if np.issubdtype(time.dtype, np.datetime64):
        return "date-times"
    calendar = climate_calendar(axis_units(time))
    return "numbers (model time)" if calendar is None else f"dates of the {calendar} calendar"


def _kind(units: str) -> str:
    """What a model's time axis of these units holds ("seconds": date-times, by latentda's convention)."""
    calendar = climate_calendar(units)
    if calendar is not None:
        return f"dates of the {calendar} calendar"
    return "date-times" if units == "seconds" else f"numbers (model time, units {units!r})"


def axis_units(time: xr.DataArray) -> str:
    """The units of a time axis as :func:`time_step` gives them: "seconds" for datetimes, the
    :func:`calendar_time_units` of climate-calendar dates, else the ``units`` attribute ("1" without)."""
    if np.issubdtype(time.dtype, np.datetime64):
        return "seconds"
    calendar = str(time.attrs.get("calendar", "")).lower()
    if calendar in _CLIMATE_CALENDARS and str(time.attrs.get("units", "")) == CALENDAR_REFERENCE:
        return calendar_time_units(_CLIMATE_CALENDARS[calendar])
    return str(time.attrs.get("units", "1"))


def time_step(time: xr.DataArray, expected: float | None = None, what: str = "time axis",
              first_index: int = 0, expected_units: str | None = None) -> tuple[float, str]:
    """(Δ, units) of a regular time axis: seconds for datetimes, else the axis' ``units`` ("1" when
    it has none). Raises a one-line error naming the first index where the step changes (or where
    the times stop increasing; indices counted from ``first_index``: ``time`` may be the end of a
    file's axis), and, with ``expected``, when Δ is not ``expected`` (the model's step). An axis of
    one state has the step ``expected`` (1 without it). With ``expected_units`` (the model's:
    "seconds" for a datetime axis), an axis of the other kind (datetimes for a model of numbers, or
    the reverse) is refused first."""
    values = np.asarray(time.values)
    if np.issubdtype(values.dtype, np.datetime64):
        steps, units = np.diff(values) / np.timedelta64(1, "s"), "seconds"
    elif np.issubdtype(values.dtype, np.number):
        steps, units = np.diff(values.astype(np.float64)), axis_units(time)
    elif values.dtype.kind in "US" or (values.dtype.kind == "O" and values.size and isinstance(values.flat[0], str)):
        raise LatentdaError(f"{what}: the time coordinate holds text ({values.dtype}), neither numbers nor datetimes: "
                            "convert it first (pandas.to_datetime for dates, astype(float) for model times)")
    else:
        raise LatentdaError(f"{what}: time coordinate of type {values.dtype} is neither numbers nor datetimes "
                            "(read it with latentda.data.open_dataset or standard_time_axis)")
    calendars = climate_calendar(units), climate_calendar(expected_units)
    if expected_units is not None and ((units == "seconds") != (expected_units == "seconds") or
                                       (calendars != (None, None) and units != expected_units)):
        raise LatentdaError(f"{what}: {_kind(units).split(' (')[0]}, but the model's time axis is {_kind(expected_units)}")
    if steps.size == 0:
        return (1.0 if expected is None else float(expected)), units
    if expected is not None and first_index:  # a file's last states: name the file's index of the first wrong step
        wrong = np.flatnonzero(~np.isclose(steps, expected, rtol=_RTOL, atol=0))
        if wrong.size:
            i = int(wrong[0]) + 1
            raise LatentdaError(f"{what}: {describe_time(values[i - 1], units)} → {describe_time(values[i], units)} at index "
                                f"{first_index + i} is {describe_step(float(steps[i - 1]), units)}, the model's step is "
                                f"{describe_step(float(expected), units)}")
    step = float(steps[0])
    if not step > 0:
        raise LatentdaError(f"{what} not increasing at index {first_index + 1} "
                            f"({describe_time(values[0], units)} → {describe_time(values[1], units)})")
    changed = np.flatnonzero(~np.isclose(steps, step, rtol=_RTOL, atol=0))
    if changed.size:
        i = int(changed[0]) + 1
        raise LatentdaError(f"irregular {what} at index {first_index + i}: {describe_time(values[i - 1], units)} → "
                            f"{describe_time(values[i], units)} "
                            f"is {describe_step(float(steps[i - 1]), units)}, expected {describe_step(step, units)} "
                            "(the first step); latentda needs one time step")
    if expected is not None and not np.isclose(step, expected, rtol=_RTOL, atol=0):
        raise LatentdaError(f"{what}: consecutive times are {describe_step(step, units)} apart, "
                            f"the model's step is {describe_step(expected, units)}")
    return step, units

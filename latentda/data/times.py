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

__all__ = ["TIME", "TRAJECTORY", "standard_time_axis", "time_step", "describe_step"]

TIME = "time"
TRAJECTORY = "trajectory"
_SINCE = re.compile(r"^\s*[A-Za-z]+\s+since\s+\S")  # CF time units: "<unit> since <date>"
_RTOL = 1e-4
_DURATIONS = (("day", 86400), ("hour", 3600), ("minute", 60))


def _is_time(coordinate: xr.DataArray) -> bool:
    """Whether CF marks ``coordinate`` as a time coordinate."""
    attrs = coordinate.attrs
    return (np.issubdtype(coordinate.dtype, np.datetime64) or attrs.get("axis") == "T"
            or attrs.get("standard_name") == "time" or bool(_SINCE.match(str(attrs.get("units", "")))))


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


def _decoded(dataset: xr.Dataset) -> xr.Dataset:
    """``dataset`` with a numeric ``time`` coordinate in CF units "<unit> since <date>" decoded."""
    if TIME not in dataset.coords:
        return dataset
    time = dataset[TIME]
    units = str(time.attrs.get("units", ""))
    if not (np.issubdtype(time.dtype, np.number) and _SINCE.match(units)):
        return dataset
    calendar = str(time.attrs.get("calendar", "standard")).lower()
    if calendar not in ("standard", "gregorian", "proleptic_gregorian"):  # numpy datetimes cannot hold them
        raise LatentdaError(f"time units '{units}' cannot be decoded: calendar '{calendar}' is not supported (latentda "
                            "decodes CF times to numpy datetimes); open the file with decode_times=False, drop the time "
                            "units and use the numbers as a model-time axis (docs/own-data.md)")
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
    """A time step for messages: "6 hours" for 21600 seconds, "0.2" for a step in units "1"."""
    if units == "seconds":
        for name, size in _DURATIONS:
            if abs(step) >= size and float(step / size).is_integer():
                return f"{step / size:g} {name}{'' if abs(step) == size else 's'}"
        return f"{step:g} seconds"
    return f"{step:g}" if units in ("1", "") else f"{step:g} {units}"


def _describe_time(value) -> str:
    return str(value.astype("datetime64[s]")) if isinstance(value, np.datetime64) else f"{value:g}"


def _kind(units: str) -> str:
    return "date-times" if units == "seconds" else f"numbers (model time, units {units!r})"


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
        steps, units = np.diff(values.astype(np.float64)), str(time.attrs.get("units", "1"))
    elif values.dtype.kind in "US" or (values.dtype.kind == "O" and values.size and isinstance(values.flat[0], str)):
        raise LatentdaError(f"{what}: the time coordinate holds text ({values.dtype}), neither numbers nor datetimes: "
                            "convert it first (pandas.to_datetime for dates, astype(float) for model times)")
    else:
        raise LatentdaError(f"{what}: time coordinate of type {values.dtype} is neither numbers nor datetimes "
                            "(a calendar without leap days?)")
    if expected_units is not None and (units == "seconds") != (expected_units == "seconds"):
        raise LatentdaError(f"{what}: {_kind(units).split(' (')[0]}, but the model's time axis is {_kind(expected_units)}")
    if steps.size == 0:
        return (1.0 if expected is None else float(expected)), units
    if expected is not None and first_index:  # a file's last states: name the file's index of the first wrong step
        wrong = np.flatnonzero(~np.isclose(steps, expected, rtol=_RTOL, atol=0))
        if wrong.size:
            i = int(wrong[0]) + 1
            raise LatentdaError(f"{what}: {_describe_time(values[i - 1])} → {_describe_time(values[i])} at index "
                                f"{first_index + i} is {describe_step(float(steps[i - 1]), units)}, the model's step is "
                                f"{describe_step(float(expected), units)}")
    step = float(steps[0])
    if not step > 0:
        raise LatentdaError(f"{what} not increasing at index {first_index + 1} "
                            f"({_describe_time(values[0])} → {_describe_time(values[1])})")
    changed = np.flatnonzero(~np.isclose(steps, step, rtol=_RTOL, atol=0))
    if changed.size:
        i = int(changed[0]) + 1
        raise LatentdaError(f"irregular {what} at index {first_index + i}: {_describe_time(values[i - 1])} → "
                            f"{_describe_time(values[i])} "
                            f"is {describe_step(float(steps[i - 1]), units)}, expected {describe_step(step, units)} "
                            "(the first step); latentda needs one time step")
    if expected is not None and not np.isclose(step, expected, rtol=_RTOL, atol=0):
        raise LatentdaError(f"{what}: consecutive times are {describe_step(step, units)} apart, "
                            f"the model's step is {describe_step(expected, units)}")
    return step, units

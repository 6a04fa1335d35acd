"""Tabular observations: a table with one row per observation → an :class:`ObservationOperator`.

Real observations (stations, buoys, aircraft, soundings) come as rows, not as fields. A table — a
CSV or parquet file, or a pandas DataFrame — has the columns (names matched case-insensitively)::

    time        when: a datetime (ISO 8601 text in a CSV, e.g. 2020-01-01T06:00; naive = UTC) or a
                number on the model's (numeric) time axis
    <grid y>    where, in the model's grid coordinates: latitude (or lat) and longitude (or lon) on
    <grid x>    a lat-lon grid, y and x on a Cartesian one (pixel indices without coordinates)
    level       optional: the level of a variable with levels (or name the channel 'var@level')
    variable    a model variable (with levels: its channel 'temperature@500' or the level column)
    value       the observed value, in the model variable's units
    noise_std   the observation noise σ > 0 of this row, same units

**Time assignment.** The window to assimilate is L states t_k = t_0 + kΔ (Δ the model's time
step). A row observed at τ is assigned to the nearest state, k* = argmin_k |τ − t_k| (a tie goes
to the earlier state), when |τ − t_k*| ≤ tolerance (default Δ/2, which accepts every row between
the first and the last state); rows farther from every state are refused, naming how many and
the first. The observation is then taken as one of the state x_{k*}: the time offset is not
modelled, so keep the tolerance small against the time scales that matter.

**The window.** Given as the state times (``times``), or built from the model's time step:
t_0 = ``window_start`` (default the earliest row's time) and L = ``window_length`` (default the
fewest states covering the latest row, L = ⌈(τ_max − t_0)/Δ − 1/2⌉ + 1, ties as above). A reanalysis needs
L ≥ K (the model's window); a forecast's window ends "now" at its last state.

**Positions.** Every row is a point observation: bilinear interpolation of the channel at its
position (the ``points`` sampling of :mod:`latentda.observe.operators`; a periodic axis wraps, a
position outside a non-periodic axis is an error). The rows of one channel make one ``points``
group, named after the channel ('@' → '_'). Its points are the distinct (position, repeat) pairs in
order of first appearance, where the repeat r of a row counts the earlier rows of the same channel,
position and state: several rows at one position and state are independent observations y_i =
H_i(x) + ε_i, each its own point (rows that copy another exactly — same channel, position, time, value
and σ — are kept but warned about: a concatenated file counted twice would halve the noise). Values are (L, P) with NaN where a point has no row at a state,
and σ_y is per entry (a scalar when the whole group shares one).

The result is the operator, or the observation dataset of :mod:`latentda.observe.files`
(:func:`table_to_dataset`), so everything downstream reads it as a file of point observations.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from latentda.data.io import input_format, open_dataset
from latentda.data.layout import TIME, FieldLayout
from latentda.data.times import (calendar_attrs, calendar_time, climate_calendar, describe_step, describe_time,
                                 standard_time_axis)
from latentda.data.times import time_step as regular_step
from latentda.errors import LatentdaError
from latentda.observe.files import grid_indices, observations_to_dataset
from latentda.observe.operators import ObservationGroup, ObservationOperator
from latentda.observe.window import TableWindow

__all__ = ["TableWindow", "observations_from_table", "table_to_dataset", "table_to_cycles", "observation_dataset", "open_observations",
           "read_table", "table_format"]

_ALIASES = {"latitude": ("latitude", "lat"), "lat": ("lat", "latitude"),
            "longitude": ("longitude", "lon"), "lon": ("lon", "longitude")}


# ---------------------------------------------------------------------------------- files
def table_format(path: str | os.PathLike) -> str | None:
    """``"parquet"`` (magic bytes PAR1) or ``"csv"`` (suffix .csv, or a first line of text with a
    comma) when ``path`` is a table file; None for anything else (a netCDF file, a zarr folder)."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    if _is_netcdf(path):
        return None
    try:
        first_line = head.split(b"\n")[0].decode()
    except UnicodeDecodeError:
        return None
    return "csv" if path.suffix.lower() == ".csv" or "," in first_line else None


def _is_netcdf(path: Path) -> bool:
    try:
        return input_format(path) == "netcdf"
    except LatentdaError:
        return False


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV or parquet file (:func:`table_format`) as a DataFrame, with a one-line error."""
    fmt = table_format(path)
    if fmt is None:
        raise LatentdaError(f"{path}: not a table (CSV or parquet)")
    try:
        return pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path, skipinitialspace=True)
    except ImportError:
        raise LatentdaError(f"{path}: reading parquet needs pyarrow (pip install 'latentda[parquet]')") from None
    except Exception as error:  # the readers raise many types; the user needs one line
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LatentdaError(f"{path}: not a readable {fmt} table ({message})") from None


def open_observations(path: str | os.PathLike, time_dim: str | None = None) -> xr.Dataset | pd.DataFrame:
    """Observations told by their content: a table (CSV, parquet) as a DataFrame, else an
    observation file (netCDF, zarr, a glob pattern) as a dataset (:func:`latentda.data.open_dataset`, its time
    dimension ``time_dim`` renamed ``time``)."""
    if table_format(path) is not None:
        return read_table(path)
    if Path(path).is_file() and not _is_netcdf(Path(path)):
        raise LatentdaError(f"{path}: neither an observation file (netCDF, zarr) nor a table (CSV, parquet)")
    return open_dataset(path, time_dim)


# ---------------------------------------------------------------------------------- columns
def _column(table: pd.DataFrame, names: tuple[str, ...], required: bool = True) -> pd.Series | None:
    """The column called one of ``names`` (case-insensitive, spaces stripped)."""
    found = [column for column in table.columns if str(column).strip().lower() in names]
    if len(found) > 1:
        raise LatentdaError(f"observation table has several columns for '{names[0]}': {', '.join(map(str, found))}")
    if not found:
        if not required:
            return None
        aliases = " or ".join(f"'{n}'" for n in names)
        raise LatentdaError(f"observation table lacks the column {aliases} (columns: {', '.join(map(str, table.columns))})")
    return table[found[0]]


def _first_bad(bad: np.ndarray, column: pd.Series, problem: str) -> None:
    """Refuse the rows flagged by ``bad``, naming how many and the first (0-based data row)."""
    count = int(np.sum(bad))
    if count:
        first = int(np.argmax(bad))
        raise LatentdaError(f"observation table: {count} row(s) with {problem} in column '{column.name}' "
                            f"(first: row {first}, {column.iloc[first]!r})")


def _numbers(column: pd.Series, positive: bool = False) -> np.ndarray:
    """A column as finite float64 (and > 0 with ``positive``); a row without one is refused."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values <= 0 if positive else False)
    _first_bad(bad, column, "no positive number" if positive else "no finite number (NaN or missing)")
    return values


def _times(column: pd.Series) -> np.ndarray:
    """A time column as float64 numbers or datetime64[ns] (tz-aware times converted to UTC)."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return _numbers(column)
    if isinstance(column.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(column):
        times = pd.to_datetime(column, utc=True)
    else:
        times = pd.to_datetime(column.astype("string").str.strip(), utc=True, errors="coerce", format="ISO8601")
    _first_bad(times.isna().to_numpy(), column, "no date-time (ISO 8601, e.g. 2020-01-01T06:00)")
    return times.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")


def _calendar_times(column: pd.Series, calendar: str) -> np.ndarray:
    """A time column of dates of a climate ``calendar`` (ISO text, e.g. a 360_day "2001-02-30") as the model's
    numbers (:func:`latentda.data.times.calendar_time`), each distinct date converted once; numbers are refused
    (a table gives dates, as the model's axis is dates)."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        raise LatentdaError(f"the table's times are numbers, the model's are dates of the {calendar} calendar: give "
                            "them as dates (ISO text, e.g. 2001-02-28T06:00)")
    import cftime

    given = column.to_numpy()
    if not (given.size and all(isinstance(value, cftime.datetime) for value in given)):  # cftime dates: their calendar checked
        text = column.astype("string").str.strip()
        _first_bad(text.isna().to_numpy(), column, "no date")
        given = text.to_numpy()
    codes, uniques = pd.factorize(given)
    seconds = np.empty(len(uniques), dtype=np.float64)
    for index, value in enumerate(uniques):
        try:
            seconds[index] = calendar_time(value, calendar, "observation table")
        except LatentdaError as error:
            row = int(np.flatnonzero(codes == index)[0])
            raise LatentdaError(f"{error} (column '{column.name}', row {row})") from None
    return seconds[codes]


def _channel_of(key: str, layout: FieldLayout, rows: int) -> int:
    """The channel index of ``variable`` or ``variable@level`` (levels compared as numbers)."""
    if key in layout.channels:
        return layout.channels.index(key)
    name, level = key.rsplit("@", 1) if "@" in key else (key, None)
    spec = next((s for s in layout.variables if s.name == name), None)
    if spec is None:
        raise LatentdaError(f"observation table: unknown variable '{name}' in {rows} row(s) "
                            f"(model has: {', '.join(s.name for s in layout.variables)})")
    if not spec.has_level:
        raise LatentdaError(f"observation table: variable '{name}' has no levels, {rows} row(s) give level {level}")
    levels = [str(v) for v in layout.level.values]
    if level is None:
        raise LatentdaError(f"observation table: variable '{name}' has levels ({', '.join(levels)}): {rows} row(s) "
                            f"give none (a 'level' column, or '{name}@LEVEL')")
    index = layout.channel_index(f"{name}@{level}")  # 850 matches a level 850.0
    if index is None:
        raise LatentdaError(f"observation table: variable '{name}' has no level {level} (levels: {', '.join(levels)})")
    return index


def _channels(table: pd.DataFrame, layout: FieldLayout) -> np.ndarray:
    """Each row's channel index, from the variable column (and the level column when present)."""
    keys = _column(table, ("variable",)).astype("string").str.strip()
    _first_bad(keys.isna().to_numpy() | (keys == "").to_numpy(dtype=bool, na_value=True), keys, "no variable")
    level = _column(table, ("level",), required=False)
    if level is not None:
        text = level.astype("string").str.strip()
        given = text.notna() & (text != "")
        numbers = pd.to_numeric(text, errors="coerce")
        text = text.where(numbers.isna(), numbers.map(lambda v: f"{v:.15g}", na_action="ignore"))  # 500.0 → 500
        keys = keys.where(~given, keys + "@" + text)
    codes, uniques = pd.factorize(keys)
    counts = np.bincount(codes, minlength=len(uniques))
    return np.array([_channel_of(key, layout, int(n)) for key, n in zip(uniques, counts)], dtype=np.int64)[codes]


# ---------------------------------------------------------------------------------- window
def _duration(value, datetimes: bool) -> float | None:
    """A time amount in the model's units (seconds for datetimes): a number, or a duration
    (``"3h"``, ``"90min"``, a timedelta) on a datetime axis."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        if not datetimes:
            raise ValueError
        return pd.Timedelta(value).total_seconds()
    except (TypeError, ValueError):
        raise LatentdaError(f"time tolerance {value!r}: expected a number{' or a duration like 3h' if datetimes else ''}") from None


def _instant(value, datetimes: bool):
    """A window start as datetime64[ns] or float, matching the rows' kind of times."""
    try:
        if not datetimes:
            return float(value)
        instant = pd.Timestamp(value)
        return (instant.tz_convert("UTC").tz_localize(None) if instant.tzinfo else instant).to_datetime64().astype("datetime64[ns]")
    except (TypeError, ValueError):
        kind = "an ISO date-time" if datetimes else "a number (the table's times are numbers)"
        raise LatentdaError(f"window start {value!r}: expected {kind}") from None


def _window(row_times: np.ndarray, times, step: float | None, window: TableWindow) -> np.ndarray:
    """The states' times: ``times`` as given, or t_0 + kΔ, k < L (module docstring)."""
    datetimes = np.issubdtype(row_times.dtype, np.datetime64)
    if times is not None:
        if window.window_start is not None or window.window_length is not None:
            raise LatentdaError("give the window's times, or its start and length, not both")
        times = np.asarray(times)
        if np.issubdtype(times.dtype, np.datetime64) != datetimes:
            kinds = ("datetimes", "numbers")
            raise LatentdaError(f"the table's times are {kinds[not datetimes]} but the window's are {kinds[datetimes]}")
        return times.astype("datetime64[ns]") if datetimes else times.astype(np.float64)
    if step is None:
        raise LatentdaError("give the window's times, or the model's time step")
    start = row_times.min() if window.window_start is None else _instant(window.window_start, datetimes)
    span = float((row_times.max() - start) / np.timedelta64(1, "s")) if datetimes else float(row_times.max() - start)
    length = window.window_length if window.window_length is not None else max(int(np.ceil(span / step - 0.5)) + 1, 1)
    if length < 1:
        raise LatentdaError(f"window length {length}: must be positive")
    steps = np.arange(length)
    return start + steps * np.timedelta64(round(step * 1e9), "ns") if datetimes else start + steps * step


def _assign_states(row_times: np.ndarray, states: np.ndarray, step: float | None, tolerance,
                   time_units: str | None = None) -> np.ndarray:
    """Each row's nearest state (ties: the earlier), refusing rows farther than the tolerance."""
    datetimes = np.issubdtype(states.dtype, np.datetime64)
    offset = (lambda t: (t - states[0]) / np.timedelta64(1, "s")) if datetimes else (lambda t: t - states[0])
    state_offsets, row_offsets = offset(states).astype(np.float64), offset(row_times).astype(np.float64)
    if np.any(np.diff(state_offsets) <= 0):
        raise LatentdaError("the window's times must increase")
    tolerance = _duration(tolerance, datetimes)
    if tolerance is None:
        if step is None and states.size == 1:
            raise LatentdaError("a window of one state needs a time tolerance or the model's time step")
        tolerance = (step if step is not None else regular_step(xr.DataArray(states, dims=TIME), what="window times")[0]) / 2
    if not tolerance >= 0:
        raise LatentdaError(f"time tolerance {tolerance:g}: must be zero or positive")
    right = np.clip(np.searchsorted(state_offsets, row_offsets), 0, states.size - 1)
    left = np.clip(right - 1, 0, states.size - 1)
    nearest = np.where(np.abs(row_offsets - state_offsets[left]) <= np.abs(state_offsets[right] - row_offsets), left, right)
    slack = 1e-9 * (np.abs(state_offsets).max() + tolerance)  # rounding of float times
    outside = np.abs(row_offsets - state_offsets[nearest]) > tolerance + slack
    if outside.any():
        units = "seconds" if datetimes or climate_calendar(time_units) else "1"
        raise LatentdaError(f"{int(outside.sum())} observation row(s) are more than {describe_step(tolerance, units)} from "
                            f"every state of the window ({describe_time(states[0], time_units)} to "
                            f"{describe_time(states[-1], time_units)}, {states.size} states); first: "
                            f"{describe_time(row_times[np.argmax(outside)], time_units)}")
    return nearest


# ---------------------------------------------------------------------------------- conversion
def _warn_copies(rows: pd.DataFrame) -> None:
    """Warn when rows repeat an earlier row exactly (channel, position, time, value, σ): the likely copies of
    a file appended twice, which would count as independent observations (σ effectively divided by √2)."""
    copies = rows.duplicated(["channel", "y", "x", "time", "value", "noise"])
    if copies.any():
        first = int(np.flatnonzero(copies.to_numpy())[0])
        warnings.warn(f"{int(copies.sum())} observation row(s) repeat an earlier row exactly (the first at position "
                      f"{first}); each counts as an independent observation — drop copies first (pandas drop_duplicates "
                      "on the time, position, variable, value and noise_std columns)", stacklevel=3)


def _placed_rows(table: pd.DataFrame, layout: FieldLayout, times, time_step: float | None, window_start,
                 window_length: int | None, time_tolerance, time_units: str | None) -> tuple[pd.DataFrame, np.ndarray]:
    """(rows, states): the window's state times and the table's rows checked and placed on them (module
    docstring), one row each: its ``channel``, position ``y``, ``x``, ``state``, ``value``, σ (``noise``) and
    ``point``, an index that orders the points of one channel by first appearance."""
    if not isinstance(table, pd.DataFrame):
        raise LatentdaError(f"observations as a table must be a pandas DataFrame, got {type(table).__name__}")
    if table.empty:
        raise LatentdaError("observation table has no row")
    table = table.reset_index(drop=True)
    grid_y, grid_x = layout.grid
    y = _numbers(_column(table, _ALIASES.get(grid_y.name, (grid_y.name,))))
    x = _numbers(_column(table, _ALIASES.get(grid_x.name, (grid_x.name,))))
    channels = _channels(table, layout)
    values = _numbers(_column(table, ("value",)))
    noise = _numbers(_column(table, ("noise_std",)), positive=True)
    calendar = climate_calendar(time_units)
    if calendar is None:
        row_times = _times(_column(table, ("time",)))
    else:  # dates of a climate calendar: seconds since 0001-01-01 in it, as the model's axis (latentda.data.times)
        row_times = _calendar_times(_column(table, ("time",)), calendar)
        window_start = None if window_start is None else calendar_time(window_start, calendar, "window start")
        time_tolerance = _duration(time_tolerance, datetimes=True)  # seconds, as for datetimes: "3h" or 10800
    datetimes = np.issubdtype(row_times.dtype, np.datetime64)
    if time_units is not None and datetimes != (time_units == "seconds"):  # a day at step 0.2: 432 000 states
        model = "date-times" if time_units == "seconds" else f"numbers (model time, units {time_units!r})"
        raise LatentdaError(f"the table's times are {'date-times' if datetimes else 'numbers'}, the model's are {model}")
    window = TableWindow(window_start, window_length, time_tolerance)
    states = _window(row_times, times, time_step, window)
    state = _assign_states(row_times, states, time_step, time_tolerance, time_units)
    rows = pd.DataFrame({"channel": channels, "y": y, "x": x, "state": state, "value": values, "noise": noise})
    _warn_copies(rows.assign(time=row_times))
    repeat = rows.groupby(["channel", "y", "x", "state"], sort=False).cumcount()
    rows["point"] = rows.assign(repeat=repeat).groupby(["channel", "y", "x", "repeat"], sort=False).ngroup()
    return rows, states


def _groups(rows: pd.DataFrame, length: int, layout: FieldLayout, shared: pd.Series) -> list[ObservationGroup]:
    """One ``points`` group per channel of ``rows`` over ``length`` states: values and σ (length, P), NaN
    where a point has no row, its P points the distinct ``point`` indices in order; σ one number when the
    channel's rows of the whole table share one (``shared``, by channel)."""
    groups = []
    for channel, mine in rows.groupby("channel", sort=True):
        order, point = np.unique(mine["point"].to_numpy(), return_inverse=True)  # 0 … P − 1, first appearance
        positions = np.zeros((order.size, 2))
        positions[point] = mine[["y", "x"]].to_numpy()
        at, noise = mine["state"].to_numpy(), mine["noise"].to_numpy()
        observed, sigma = np.full((length, order.size), np.nan), np.full((length, order.size), np.nan)
        observed[at, point], sigma[at, point] = mine["value"].to_numpy(), noise
        groups.append(ObservationGroup(layout.channels[channel].replace("@", "_"), [int(channel)], "identity", "points",
                                       observed, noise[0] if shared[channel] else sigma,
                                       points=grid_indices(positions, layout), periodic=layout.periodic))
    return groups


def _shared_noise(rows: pd.DataFrame) -> pd.Series:
    """By channel: whether its rows share one σ (then the group's noise_std is that number)."""
    return rows.groupby("channel")["noise"].nunique() == 1


def observations_from_table(table: pd.DataFrame, layout: FieldLayout, times=None, time_step: float | None = None,
                            window_start=None, window_length: int | None = None,
                            time_tolerance=None, time_units: str | None = None) -> ObservationOperator:
    """The operator (one ``points`` group per observed channel) of a table with one row per
    observation, on the window's states (module docstring; ``operator.times`` are the states').

    ``times``: the states' times (datetime64 or numbers); or else ``time_step`` (the model's Δ,
    seconds for datetimes) with ``window_start`` (default the earliest row) and ``window_length``
    (default up to the latest row). ``time_tolerance``: the largest |τ − t_k| accepted (a number in
    the time axis' units, or a duration like "3h" for datetimes; default Δ/2). ``time_units``: the
    model's ("seconds": a datetime time axis); the rows' times must then be of its kind.

    Memory: values and σ of (states × points); a table of moving positions (drifting buoys, satellite
    tracks) is better read cycle by cycle (:func:`table_to_cycles`)."""
    rows, states = _placed_rows(table, layout, times, time_step, window_start, window_length, time_tolerance, time_units)
    return ObservationOperator(_groups(rows, states.size, layout, _shared_noise(rows)), times=states)


def table_to_cycles(table: pd.DataFrame, layout: FieldLayout, times=None, time_step: float | None = None,
                    window_start=None, window_length: int | None = None, time_tolerance=None,
                    attrs: dict | None = None, time_units: str | None = None) -> tuple[xr.DataArray, list[xr.Dataset | None]]:
    """A table's observations state by state, as a cycling filter reads them: (the window's times, one
    observation dataset of one state per state, None where no row falls on it); arguments as for
    :func:`observations_from_table`. Each state's points are those its rows observe, in the order of
    :func:`table_to_dataset`'s, so the datasets are that dataset's states
    (:func:`latentda.posterior.filtering.split_cycles`) without its (states × points) arrays: memory
    grows with the rows, not with states × positions when the positions move."""
    rows, states = _placed_rows(table, layout, times, time_step, window_start, window_length, time_tolerance, time_units)
    shared = _shared_noise(rows)
    time = xr.DataArray(states, dims=TIME, attrs=calendar_attrs(time_units))
    attrs = {"title": "observations converted from a table by latentda", **(attrs or {})}
    cycles: list[xr.Dataset | None] = [None] * states.size
    for state, mine in rows.groupby("state", sort=True):
        operator = ObservationOperator(_groups(mine.assign(state=0), 1, layout, shared), times=states[state : state + 1])
        cycles[state] = observations_to_dataset(operator, layout, time.isel({TIME: slice(state, state + 1)}), attrs)
    return time, cycles


def table_to_dataset(table: pd.DataFrame, layout: FieldLayout, times=None, time_step: float | None = None,
                     window_start=None, window_length: int | None = None, time_tolerance=None,
                     attrs: dict | None = None, time_units: str | None = None) -> xr.Dataset:
    """The observation dataset (the file format of :mod:`latentda.observe.files`) of a table;
    arguments as for :func:`observations_from_table`."""
    operator = observations_from_table(table, layout, times, time_step, window_start, window_length, time_tolerance,
                                       time_units)
    time = xr.DataArray(operator.times, dims=TIME, attrs=calendar_attrs(time_units))
    attrs = {"title": "observations converted from a table by latentda", **(attrs or {})}
    return observations_to_dataset(operator, layout, time, attrs)


def observation_dataset(observations: xr.Dataset | pd.DataFrame | None, layout: FieldLayout, time_step: float,
                        window: TableWindow | None = None, time_units: str | None = None) -> xr.Dataset | None:
    """Observations as a dataset: a dataset (or None) with its time axis found and named ``time`` as
    :func:`latentda.data.open_dataset` does for a file (e.g. ``valid_time``), a table converted on the window built
    from the model's ``time_step`` and ``window`` (options that only a table may be given). With the
    model's ``time_units`` ("seconds": a datetime time axis), a table must have times of its kind."""
    window = window or TableWindow()
    if isinstance(observations, pd.DataFrame):
        return table_to_dataset(observations, layout, time_step=time_step, time_units=time_units,
                                **dataclasses.asdict(window))
    given = window.given
    if given:
        raise LatentdaError(f"{', '.join(given)}: for tabular observations (CSV, parquet) only")
    if observations is not None and not isinstance(observations, xr.Dataset):
        raise LatentdaError(f"observations must be an xarray Dataset or a pandas DataFrame, got {type(observations).__name__}")
    return None if observations is None else standard_time_axis(observations)  # as open_dataset reads a file

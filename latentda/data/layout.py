"""The field layout: how a CF-style xarray dataset maps to tensors (time, channels, H, W) and back.

A dataset holds data variables on a 2-D grid — ``(latitude, longitude)`` or ``(y, x)`` — along a
``time`` axis, optionally along ``level`` and ``trajectory``. The layout stacks every variable (and
each of its levels) into one channel axis, in a recorded order, so that a trajectory becomes an
array ``x[t, c, i, j]``. It records everything needed to invert that mapping exactly (variable and
coordinate attributes, level values, grid coordinates) and which grid axes are periodic (a
longitude circle, or a periodic box; used for circular padding). It is saved as JSON next to the
model so inference never re-derives it from the data.

On a latitude-longitude grid, the area of a cell is proportional to cos(latitude); the layout gives
the area weights w_i = cos(φ_i) / mean_i cos(φ_i), so that Σ_ij w_i e_ij² / (H W) is the
area-weighted mean squared error.

A layout may carry a fixed *mask* (C, H, W), True where a channel has values (NaN at every
training step elsewhere: land in an ocean field; :mod:`latentda.data.statistics`): outputs hold NaN
there (:meth:`FieldLayout.to_dataset`), inputs may, and ``allow_missing`` says whether other NaN
(missing values) are accepted.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import xarray as xr

from latentda.config import read_json
from latentda.data.io import read_values, write_text_atomic
from latentda.data.times import TIME, TRAJECTORY
from latentda.errors import LatentdaError

__all__ = ["VariableSpec", "AxisSpec", "FieldLayout", "TIME", "TRAJECTORY", "CONVENTIONS", "to_json_value", "unwrap_longitude"]

CONVENTIONS = "CF-1.10"  # the global ``Conventions`` attribute of every dataset latentda writes

_GRID_NAMES = (("latitude", "longitude"), ("lat", "lon"), ("y", "x"))
_LEVEL_NAMES = ("level", "pressure_level", "plev", "lev", "depth", "z")
_TRUE = {"1", "true", "yes", "True"}
_LATLON_ATTRS = ({"standard_name": "latitude", "units": "degrees_north", "axis": "Y"},
                 {"standard_name": "longitude", "units": "degrees_east", "axis": "X"})


def to_json_value(value: Any) -> Any:
    """Turn numpy scalars/arrays (as found in netCDF attributes) into plain JSON values."""
    if isinstance(value, np.ndarray):
        return [to_json_value(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if isinstance(value, bytes):
        return value.decode()
    return value


def _attrs(attrs: dict) -> dict:
    return {str(k): to_json_value(v) for k, v in attrs.items()}


@dataclass
class AxisSpec:
    """A coordinate axis: its name, values, attributes and whether it wraps around."""

    name: str
    values: list
    attrs: dict = field(default_factory=dict)
    periodic: bool = False

    @classmethod
    def from_coordinate(cls, coordinate: xr.DataArray, periodic: bool = False) -> "AxisSpec":
        return cls(str(coordinate.name), to_json_value(coordinate.values), _attrs(coordinate.attrs), periodic)

    @property
    def size(self) -> int:
        return len(self.values)


@dataclass
class VariableSpec:
    """A data variable and whether it has a level axis (then one channel per level)."""

    name: str
    has_level: bool
    attrs: dict = field(default_factory=dict)


# CF attributes naming other variables of the input file (a curvilinear grid's 2-D coordinates, its projection):
# outputs do not hold those variables, and a reference to a missing one is not CF.
REFERENCE_ATTRS = ("grid_mapping", "coordinates", "ancillary_variables", "cell_measures")


def unwrap_longitude(values: np.ndarray) -> np.ndarray:
    """Longitudes (degrees) made continuous: each step taken modulo 360 into (−180, 180], so that a regional grid
    across the 0/360 (or ±180) line, 350, 355, 0, 5, reads 350, 355, 360, 365."""
    values = np.asarray(values, dtype=np.float64)
    steps = 180.0 - np.mod(180.0 - np.diff(values), 360.0)
    return np.concatenate([values[:1], values[0] + np.cumsum(steps)])


def _same_number(a, b) -> bool:
    """Two spellings of one number (``850`` and ``850.0``); False for text that is not a number."""
    try:
        return bool(np.isclose(float(a), float(b), rtol=1e-9, atol=0))
    except (TypeError, ValueError):
        return False


def _is_periodic(coordinate: xr.DataArray, is_longitude: bool) -> bool:
    """An axis is periodic if it says so (attribute ``periodic``) or is a longitude circle."""
    flag = coordinate.attrs.get("periodic")
    if flag is not None:
        return str(to_json_value(flag)) in _TRUE
    if is_longitude and coordinate.size > 1:
        values = unwrap_longitude(coordinate.values)  # a circle rolled to start anywhere: 180 … 357.5, 0 … 177.5
        step = np.diff(values)
        return bool(np.allclose(step, step[0], rtol=1e-4) and np.isclose(abs(step[0]) * values.size, 360.0, rtol=1e-4))
    return False


def grid_mismatch(name: str, given, model) -> str:
    """The error for a grid coordinate ``name`` whose values ``given`` are not the model's ``model``:
    both ranges, and how to reorder a flipped or shifted axis (xarray)."""
    given, model = np.asarray(given, dtype=np.float64), np.asarray(model, dtype=np.float64)

    def span(values) -> str:
        return f"{values[0]:g} … {values[-1]:g}" if values.size else "empty"

    hint = ""
    if given.size == model.size and np.allclose(given[::-1], model):
        hint = f": reverse it first, e.g. ds.isel({name}=slice(None, None, -1))"
    elif given.size == model.size and np.allclose(np.sort(np.mod(given, 360)), np.sort(np.mod(model, 360))):
        hint = (": the same points in another order or longitude convention: put them in the model's (xarray's "
                "assign_coords, sortby or roll)")
    return f"coordinate '{name}' differs from the model's grid ({span(given)}, the model's {span(model)}){hint}"


def _pack_mask(mask: np.ndarray) -> dict:
    """A boolean mask as JSON: its shape and its bits packed, base64-encoded."""
    return {"shape": list(mask.shape), "bits": base64.b64encode(np.packbits(mask.astype(bool).ravel())).decode()}


def _unpack_mask(record: dict) -> np.ndarray:
    shape = tuple(int(n) for n in record["shape"])
    bits = np.unpackbits(np.frombuffer(base64.b64decode(record["bits"], validate=True), dtype=np.uint8))
    if bits.size < int(np.prod(shape)):
        raise ValueError("mask bits shorter than its shape")
    return bits[: int(np.prod(shape))].reshape(shape).astype(bool)


AREA_WEIGHT_FLOOR = 0.25
"""The least area weight of a grid row, as a fraction of the mean (see ``FieldLayout.area_weights``)."""


@dataclass
class FieldLayout:
    """How variables (and levels) stack into channels on a 2-D grid.

    The channel order is: for each variable in ``variables``, one channel if it has no level, else
    one channel per value of ``level`` in order.
    """

    variables: list[VariableSpec]
    grid: tuple[AxisSpec, AxisSpec]
    level: AxisSpec | None = None
    attrs: dict = field(default_factory=dict)
    mask: np.ndarray | None = None  # (C, H, W) bool, True where valid; None: nothing masked
    allow_missing: bool = False  # NaN outside the mask accepted (training: masked loss; encode: a missing state)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dataset(cls, dataset: xr.Dataset, variables: Sequence[str] | None = None) -> "FieldLayout":
        """Infer the layout of ``dataset``, checking it has a time axis and a 2-D grid.

        ``variables`` selects and orders data variables (default: all on the time axis and the grid, in
        alphabetical order, since netCDF and zarr do not keep the same order; so CF's ``time_bnds`` is not
        one). The grid's coordinates must be monotonic, longitudes as angles: a circle rolled to start anywhere
        (0 … 157.5, −180 … −22.5) or a region across Greenwich (350, 355, 0, 5) is in order.
        """
        if TIME not in dataset.dims:
            raise LatentdaError(f"dataset has no '{TIME}' dimension (found dims: {', '.join(map(str, dataset.dims)) or 'none'}; "
                                "give the time dimension's name with --time-dim, time_dim in the API)")
        grid_names = next((names for names in _GRID_NAMES if all(n in dataset.dims for n in names)), None)
        if grid_names is None:
            raise LatentdaError(
                "dataset has no 2-D grid: expected dims (latitude, longitude), (lat, lon) or (y, x), "
                f"found {', '.join(map(str, dataset.dims))}"
            )
        if variables is None:
            variables = sorted(str(n) for n, v in dataset.data_vars.items() if {TIME, *grid_names} <= set(v.dims))
        else:
            unknown = [v for v in variables if v not in dataset.data_vars]
            if unknown:
                raise LatentdaError(
                    f"unknown variable(s) {', '.join(unknown)}; the dataset has: {', '.join(map(str, dataset.data_vars))}"
                )
        if not variables:
            raise LatentdaError(f"dataset has no data variable on ({TIME}, {', '.join(grid_names)})")
        level_name = next((n for n in _LEVEL_NAMES if n in dataset.dims), None)
        allowed = {TIME, TRAJECTORY, "realization", *grid_names} | ({level_name} if level_name else set())
        specs = []
        for name in variables:
            variable = dataset[name]
            missing = [d for d in (TIME, *grid_names) if d not in variable.dims]
            extra = [d for d in variable.dims if d not in allowed]
            if missing or extra:
                problem = f"lacks dims {missing}" if missing else f"has unsupported dims {extra}"
                raise LatentdaError(f"variable '{name}' {problem} (dims: {variable.dims})")
            specs.append(VariableSpec(name, level_name in variable.dims, _attrs(variable.attrs)))
        is_latlon = grid_names[0] in ("latitude", "lat")
        for axis, name in enumerate(grid_names):
            values = np.asarray(dataset[name].values, dtype=np.float64)
            longitude = is_latlon and axis == 1
            unwrapped = unwrap_longitude(values) if longitude else values  # 350, 355, 0, 5: across Greenwich
            step = np.diff(unwrapped)
            if longitude and step.size and abs(unwrapped[-1] - unwrapped[0]) >= 360 - 1e-6 * np.abs(step).min():
                raise LatentdaError(f"coordinate '{name}' goes round the circle more than once ({values[0]:g} … "
                                    f"{values[-1]:g}, {abs(unwrapped[-1] - unwrapped[0]):g}° in all): a longitude repeats")
            if step.size and not ((step > 0).all() or (step < 0).all()):
                where = int(np.argmax(step <= 0) if step[0] > 0 else np.argmax(step >= 0)) + 1
                advice = (f"dataset.sortby('{name}') in the convention (0…360 or −180…180) where the region is contiguous"
                          if longitude else f"dataset.sortby('{name}')")
                raise LatentdaError(f"coordinate '{name}' is not monotonic (at index {where}: {values[where - 1]:g} → "
                                    f"{values[where]:g}): sort it first, e.g. {advice}")
        # xarray gives an integer index for a dimension without a coordinate, which is what we want.
        grid = tuple(
            AxisSpec.from_coordinate(dataset[name], _is_periodic(dataset[name], is_latlon and axis == 1))
            for axis, name in enumerate(grid_names)
        )
        level = None
        if level_name and any(s.has_level for s in specs):
            level = AxisSpec.from_coordinate(dataset[level_name])
        return cls(specs, grid, level, _attrs(dataset.attrs))

    # ------------------------------------------------------------------ properties
    @property
    def is_latlon(self) -> bool:
        return self.grid[0].name in ("latitude", "lat")

    @property
    def periodic(self) -> tuple[bool, bool]:
        return (self.grid[0].periodic, self.grid[1].periodic)

    @property
    def shape(self) -> tuple[int, int]:
        """Grid shape (H, W)."""
        return (self.grid[0].size, self.grid[1].size)

    @property
    def channels(self) -> list[str]:
        """Channel names: ``variable`` or ``variable@level``."""
        names = []
        for spec in self.variables:
            if spec.has_level:
                names.extend(f"{spec.name}@{value}" for value in self.level.values)
            else:
                names.append(spec.name)
        return names

    def channel_index(self, name: str) -> int | None:
        """The index of channel ``name`` (``variable`` or ``variable@level``), None if it has none. A level matches by
        value: ``t@850`` names the channel ``t@850.0`` of a float level coordinate (recent ERA5 files have one)."""
        channels = self.channels
        if name in channels:
            return channels.index(name)
        variable, _, level = name.partition("@")
        for index, channel in enumerate(channels):
            other, _, value = channel.partition("@")
            if other == variable and level and value and _same_number(value, level):
                return index
        return None

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    def area_weights(self, floor: float = AREA_WEIGHT_FLOOR) -> np.ndarray:
        """Area weights of shape (H, 1), mean 1: ones off lat-lon grids; on a lat-lon grid each row's
        cell-band area on the sphere, floored at ``floor`` so that the pole rows are trained (scores use
        ``floor=0``, the plain areas).

        Row i spans the band between the midpoints of its latitude and its neighbours' (the outer
        edges half a step beyond the first and last rows), clipped to [−90°, 90°]:
        A_i = |sin e_{i+1} − sin e_i|. On a regular grid of step Δφ this is 2 sin(Δφ/2) cos φ_i,
        exactly ∝ cos φ, except a row centred on a pole, whose band is the polar cap
        1 − cos(Δφ/2) ≈ Δφ²/8: tiny but positive (cos ±90° = 0 would leave that row untrained). The
        decreasing (90 → −90) and irregularly spaced latitudes work the same way. Even the cap's weight is
        too small for the autoencoder to learn the pole rows (its 1° value is 0.3 % of the mean), so
        the weights are w_i = max(c·A_i, floor) with c chosen so that mean(w) = 1: rows with
        at least ``floor`` × the mean keep their exact area ratio, the rows nearest the poles (on a
        1° grid, poleward of about 81°) get ``floor``. ``floor=0`` gives the plain cell areas.
        """
        height = self.shape[0]
        if not self.is_latlon or height < 2:
            return np.ones((height, 1), dtype=np.float32)
        latitude = np.asarray(self.grid[0].values, dtype=np.float64)
        edges = np.concatenate([[1.5 * latitude[0] - 0.5 * latitude[1]], (latitude[:-1] + latitude[1:]) / 2,
                                [1.5 * latitude[-1] - 0.5 * latitude[-2]]])
        area = np.abs(np.diff(np.sin(np.deg2rad(np.clip(edges, -90.0, 90.0)))))
        if floor >= 1:  # a floor at the mean floors every row
            return np.ones((height, 1), dtype=np.float32)
        floored = np.zeros(height, dtype=bool)
        while True:  # each pass lowers the scale c, so the floored set only grows: at most H passes
            scale = (height - floor * floored.sum()) / area[~floored].sum()
            now = scale * area < floor
            if (now == floored).all():
                break
            floored = now
        return np.where(floored, floor, scale * area).astype(np.float32)[:, None]

    def pole_rows(self) -> list[int]:
        """The grid rows at the poles (for scores there): the first and the last latitude row when
        within one grid step of ±90°; none off lat-lon grids."""
        if not self.is_latlon or self.shape[0] < 2:
            return []
        latitude = np.asarray(self.grid[0].values, dtype=np.float64)
        rows = []
        for row, step in ((0, latitude[1] - latitude[0]), (len(latitude) - 1, latitude[-1] - latitude[-2])):
            if abs(latitude[row]) >= 90.0 - abs(step) * (1 + 1e-6):
                rows.append(row)
        return rows

    def coordinate_attrs(self) -> dict[str, dict]:
        """CF attributes of the grid (and level) coordinates, for outputs: the input's, completed
        with ``long_name`` and ``axis`` (Y, X, Z), and on a lat-lon grid the CF ``standard_name``,
        ``units`` (degrees_north, degrees_east) and ``axis`` of latitude and longitude."""
        attrs = {}
        for index, axis in enumerate(self.grid):
            attrs[axis.name] = {"long_name": axis.name, "axis": "YX"[index], **axis.attrs,
                                **(_LATLON_ATTRS[index] if self.is_latlon else {})}
        if self.level is not None:
            attrs[self.level.name] = {"long_name": "vertical level", "axis": "Z", **self.level.attrs}
        return attrs

    def off_mask(self, array: np.ndarray) -> np.ndarray:
        """``array`` (..., C, H, W) with NaN on the fixed mask, where the model has no values: an output's
        masked pixels, or values a file holds there (e.g. after the training period, where the mask came from
        NaN at every training step), which the autoencoder never saw."""
        return array if self.mask is None else np.where(self.mask, array, np.nan)

    # ------------------------------------------------------------------ checks
    def check(self, dataset: xr.Dataset) -> None:
        """Raise a one-line error if ``dataset`` does not match this layout (variables and their units where both
        give them, grid, levels)."""
        for spec in self.variables:
            if spec.name not in dataset.data_vars:
                raise LatentdaError(f"dataset lacks variable '{spec.name}' (has: {', '.join(map(str, dataset.data_vars))})")
            given, expected = (str(a.get("units", "")).strip() for a in (dataset[spec.name].attrs, spec.attrs))
            if given and expected and given != expected:
                raise LatentdaError(f"variable '{spec.name}' is in '{given}', the model's in '{expected}': convert it first")
        for axis in self.grid + ((self.level,) if self.level else ()):
            if axis.name not in dataset.dims:
                raise LatentdaError(f"dataset lacks dimension '{axis.name}'")
            if dataset.sizes[axis.name] != axis.size:
                raise LatentdaError(f"dimension '{axis.name}' has size {dataset.sizes[axis.name]}, expected {axis.size}")
            if axis.name in dataset.coords and not np.allclose(
                np.asarray(dataset[axis.name].values, dtype=np.float64), np.asarray(axis.values, dtype=np.float64), rtol=1e-6, atol=1e-9
            ):
                raise LatentdaError(grid_mismatch(axis.name, dataset[axis.name].values, axis.values))

    # ------------------------------------------------------------------ xarray -> array
    def to_array(self, dataset: xr.Dataset, trajectory: int | None = None, time: slice | None = None) -> np.ndarray:
        """Stack the variables of ``dataset`` into an array (time, C, H, W).

        ``trajectory`` selects one trajectory when the dataset has a ``trajectory`` dim; ``time``
        selects a slice of time steps. Only the selected part is read from disk.
        """
        parts = []
        for spec in self.variables:
            variable = dataset[spec.name]
            index = {}
            if TRAJECTORY in variable.dims:
                if trajectory is None:
                    raise LatentdaError(f"variable '{spec.name}' has a '{TRAJECTORY}' dimension: select one trajectory")
                index[TRAJECTORY] = trajectory
            if "realization" in variable.dims:
                raise LatentdaError(f"variable '{spec.name}' has a 'realization' dimension: select one member")
            if time is not None:
                index[TIME] = time
            variable = variable.isel(index)
            dims = (TIME,) + ((self.level.name,) if spec.has_level else ()) + (self.grid[0].name, self.grid[1].name)
            if set(variable.dims) != set(dims):
                extra, lacking = [d for d in variable.dims if d not in dims], [d for d in dims if d not in variable.dims]
                raise LatentdaError(f"variable '{spec.name}' has dimensions {tuple(map(str, variable.dims))}, the model's "
                                    f"are {dims}: " + (f"select one index of {', '.join(map(repr, extra))}" if extra
                                                       else f"it lacks {', '.join(map(repr, lacking))}"))
            values = read_values(variable.transpose(*dims))
            parts.append(values.reshape(values.shape[0], -1, *values.shape[-2:]))
        return np.concatenate(parts, axis=1)

    # ------------------------------------------------------------------ array -> xarray
    def to_dataset(
        self,
        array: np.ndarray,
        time: xr.DataArray | np.ndarray | Sequence,
        leading: Sequence[tuple[str, Any]] = (),
        attrs: dict | None = None,
    ) -> xr.Dataset:
        """Inverse of :meth:`to_array`: an array (*leading, time, C, H, W) back to a Dataset.

        ``leading`` names the leading dims and their coordinate values, e.g.
        ``[("realization", range(8))]``; ``time`` is the time coordinate (a DataArray keeps its
        attributes and encoding).
        """
        array = np.asarray(array)
        lead_dims = [name for name, _ in leading]
        expected = (len(lead_dims) + 4, self.num_channels, *self.shape)
        if array.ndim != expected[0] or array.shape[-3] != expected[1] or tuple(array.shape[-2:]) != expected[2:]:
            raise LatentdaError(
                f"array of shape {array.shape} does not match the layout (*{lead_dims}, time, {self.num_channels}, {self.shape[0]}, {self.shape[1]})"
            )
        if self.mask is not None:  # outputs are NaN where the channel has no values (its fixed mask)
            array = self.off_mask(array).astype(array.dtype if array.dtype.kind == "f" else np.float32)
        coords: dict[str, Any] = {name: list(values) for name, values in leading}
        time_coord = time if isinstance(time, xr.DataArray) else xr.DataArray(np.asarray(time), dims=TIME, name=TIME)
        coords[TIME] = time_coord.rename(TIME) if time_coord.dims == (TIME,) else xr.DataArray(time_coord.values, dims=TIME)
        for axis in self.grid + ((self.level,) if self.level else ()):
            coords[axis.name] = xr.DataArray(np.asarray(axis.values), dims=axis.name, attrs=dict(axis.attrs))
        data_vars = {}
        channel = 0
        grid_dims = [self.grid[0].name, self.grid[1].name]
        for spec in self.variables:
            if spec.has_level:
                width = self.level.size
                values = array[..., channel : channel + width, :, :]
                dims = lead_dims + [TIME, self.level.name] + grid_dims
            else:
                width = 1
                values = array[..., channel, :, :]
                dims = lead_dims + [TIME] + grid_dims
            attrs_ = {k: v for k, v in spec.attrs.items() if k not in REFERENCE_ATTRS}  # variables outputs do not hold
            data_vars[spec.name] = xr.Variable(dims, values, attrs=attrs_)
            channel += width
        return xr.Dataset(data_vars, coords=coords, attrs=dict(self.attrs if attrs is None else attrs))

    def mask_variables(self) -> dict[str, xr.Variable]:
        """``<variable>_mask`` (1 valid, 0 masked; dims (level?, y, x)) for each variable with masked
        pixels: the fixed mask written beside the fields of every output."""
        if self.mask is None:
            return {}
        variables, channel = {}, 0
        grid_dims = [self.grid[0].name, self.grid[1].name]
        for spec in self.variables:
            width = self.level.size if spec.has_level else 1
            valid = self.mask[channel : channel + width]
            channel += width
            if valid.all():
                continue
            dims = ([self.level.name] if spec.has_level else []) + grid_dims
            variables[f"{spec.name}_mask"] = xr.Variable(
                dims, (valid if spec.has_level else valid[0]).astype(np.float32),
                attrs={"long_name": f"where {spec.name} has values (fixed mask)", "flag_values": [0.0, 1.0],
                       "flag_meanings": "masked valid", "units": "1"})
        return variables

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {
            "variables": [asdict(v) for v in self.variables],
            "grid": [asdict(a) for a in self.grid],
            "level": asdict(self.level) if self.level else None,
            "attrs": self.attrs,
            "mask": None if self.mask is None else _pack_mask(self.mask),
            "allow_missing": self.allow_missing,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "FieldLayout":
        """The inverse of :meth:`to_dict`, checking every type (a saved layout may have been edited)."""
        try:
            layout = cls(
                [VariableSpec(**v) for v in data["variables"]],
                tuple(AxisSpec(**a) for a in data["grid"]),
                AxisSpec(**data["level"]) if data.get("level") else None,
                data.get("attrs", {}),
                None if data.get("mask") is None else _unpack_mask(data["mask"]),
                data.get("allow_missing", False),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise LatentdaError(f"malformed layout ({type(error).__name__}: {error})") from None
        layout._check_types()
        return layout

    def _check_types(self) -> None:
        """Names are strings, flags booleans, axes non-empty lists of finite numbers (two on a periodic
        axis, which needs its spacing), and a level axis exists when a variable has levels."""
        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)

        problems = [f"variable {v.name!r}" for v in self.variables
                    if not (isinstance(v.name, str) and isinstance(v.has_level, bool) and isinstance(v.attrs, dict))]
        for axis in (*self.grid, *((self.level,) if self.level else ())):
            ok = (isinstance(axis.name, str) and isinstance(axis.values, list) and axis.values
                  and all(number(x) for x in axis.values) and isinstance(axis.periodic, bool)
                  and isinstance(axis.attrs, dict) and (len(axis.values) > 1 or not axis.periodic))
            problems += [] if ok else [f"axis {axis.name!r}"]
        if len(self.grid) != 2 or not self.variables or (self.level is None and any(v.has_level for v in self.variables)):
            problems.append("grid, variables or level")
        if not isinstance(self.allow_missing, bool):
            problems.append("allow_missing")
        if self.mask is not None and self.mask.shape != (self.num_channels, *self.shape):
            problems.append("mask")
        if problems or not isinstance(self.attrs, dict):
            raise LatentdaError(f"malformed layout ({', '.join(problems) or 'attrs'} of the wrong type or empty)")

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FieldLayout":
        data = read_json(path, "layout file")
        try:
            return cls.from_dict(data)
        except LatentdaError as error:
            raise LatentdaError(f"{path}: {error}") from None

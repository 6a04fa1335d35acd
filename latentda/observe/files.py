"""Observation files (netCDF/zarr) ↔ :class:`ObservationOperator`, and synthetic observations.

An observation file holds one data variable per observation group, NaN where nothing is observed,
on the ``time`` axis of the window to assimilate (every state of the window is a time step of the
file; a time step with no observation is all NaN). Each variable says how it was observed::

    attrs: latentda_sampling  grid | coarsen | points | linear
           latentda_source    source variable(s) (channel names, e.g. "u" or "u v" or "t@500")
           latentda_transform identity | speed | saturate
           noise_std          observation noise standard deviation, in the variable's units
                              (or a variable <name>_noise_std on the group's dims: σ per entry)
           units              must match the source variable's units (checked)
           coarsen_factor / saturation   when they apply

    grid      dims (time, <grid y>, <grid x>) on the model grid
    coarsen   dims (time, <name>_y, <name>_x)
    points    dims (time, <name>_point), coordinates <name>_<grid y name>, <name>_<grid x name>
              giving each point's position in grid coordinates (off-grid allowed)
    linear    dims (time, <name>_row), plus <name>_matrix (<name>_row, <name>_column) acting on the
              source field flattened per time (H·W columns)

``latentda observe`` builds such a file from a truth and an operator config (YAML), adding
Gaussian noise with a seed. Where the truth is NaN (a land mask, missing steps) nothing is
observed: an entry whose clean value H(x) is NaN — a NaN pixel, any NaN corner of a bilinear
point, any NaN pixel of a coarsened block — is left unobserved and counted
(:data:`MASKED_BY_TRUTH` in the group's attrs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import xarray as xr

from latentda.config import require
from latentda.data.io import read_values
from latentda.data.layout import CONVENTIONS, TIME, FieldLayout, grid_mismatch, unwrap_longitude
from latentda.data.statistics import MAX_STANDARD_DEVIATIONS, Statistics, check_magnitude
from latentda.errors import LatentdaError
from latentda.observe.operators import ObservationGroup, ObservationOperator

__all__ = ["ObservationSpec", "ObservationConfig", "read_observations", "read_observation_groups", "check_group_magnitude",
           "load_observations", "observations_to_dataset", "synthesize", "fractional_index", "grid_indices", "MASKED_BY_TRUTH"]

MASKED_BY_TRUTH = "masked_by_truth"
"""Key of :attr:`ObservationGroup.attrs` giving how many entries :func:`synthesize` left unobserved
because the truth is NaN there."""


# ---------------------------------------------------------------------------------- positions
def fractional_index(values: np.ndarray, axis, longitude: bool = False) -> np.ndarray:
    """Grid coordinates → fractional pixel indices along ``axis`` (periodic axes wrap; outside a
    non-periodic axis is an error). A ``longitude`` is an angle: the grid's coordinates are unwrapped (a region
    across Greenwich, a circle rolled to start anywhere) and values compared modulo 360 (−50 is 310 on a grid of
    280…340; 310 is −50 on one of −80…−20)."""
    coords = np.asarray(axis.values, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if longitude:  # a region across the 0/360 line (350, 355, 0, 5 → 350 … 365), a circle rolled to start anywhere
        coords = unwrap_longitude(coords)
    if axis.periodic:
        step = coords[1] - coords[0]
        period = step * coords.size
        return np.mod(values - coords[0], period) / step
    increasing = coords[-1] >= coords[0]
    c = coords if increasing else coords[::-1]
    if longitude:
        values = c[0] + np.mod(values - c[0], 360.0)
    if (values < c[0]).any() or (values > c[-1]).any():
        convention = " (longitudes compared modulo 360)" if longitude else ""
        raise LatentdaError(f"point observations outside the grid along '{axis.name}' ([{c[0]}, {c[-1]}]{convention})")
    index = np.interp(values, c, np.arange(c.size, dtype=np.float64))
    return index if increasing else (coords.size - 1) - index


def grid_indices(positions: np.ndarray, layout: FieldLayout) -> np.ndarray:
    """Grid coordinates (P, 2) → fractional (row, column) pixel indices (:func:`fractional_index` along each axis;
    on a lat-lon grid the second is a longitude)."""
    positions = np.asarray(positions, dtype=np.float64)
    return np.stack([fractional_index(positions[:, i], layout.grid[i], longitude=layout.is_latlon and i == 1)
                     for i in range(2)], axis=1)


def _grid_coordinate(index: np.ndarray, axis, longitude: bool = False) -> np.ndarray:
    """Fractional pixel indices → grid coordinates along ``axis`` (the inverse of :func:`fractional_index`)."""
    coords = unwrap_longitude(axis.values) if longitude else np.asarray(axis.values, dtype=np.float64)
    values = np.interp(index, np.arange(coords.size), coords) if not axis.periodic else coords[0] + index * (coords[1] - coords[0])
    if longitude:  # back into the grid's own convention (5, not 365, on a grid of 350 … 10)
        lowest = float(np.min(axis.values))
        values = lowest + np.mod(values - lowest, 360.0)
    return values


# ---------------------------------------------------------------------------------- reading
def _channel(layout: FieldLayout, name: str, variable: str) -> int:
    index = layout.channel_index(name)
    if index is None:
        raise LatentdaError(f"observation '{variable}' refers to unknown variable '{name}' (model has: "
                            f"{', '.join(layout.channels)})")
    return index


def _units_of(layout: FieldLayout, channel_name: str) -> str | None:
    variable = channel_name.split("@")[0]
    for spec in layout.variables:
        if spec.name == variable:
            return spec.attrs.get("units")
    return None


def read_observations(observations: xr.Dataset, layout: FieldLayout, statistics: Statistics | None = None) -> ObservationOperator:
    """Build the operator (and y, σ) described by an observation dataset (see module docstring).

    Every number that reaches the sampler is checked: attributes are finite numbers, point
    coordinates and matrices are finite, and with the model's ``statistics`` the observed values are
    within :data:`MAX_STANDARD_DEVIATIONS` of the mean (:func:`check_group_magnitude`).
    """
    operator = ObservationOperator(read_observation_groups(observations, layout), observations[TIME].values)
    if statistics is not None:
        for group in operator.groups:
            check_group_magnitude(group, statistics)
    return operator


def read_observation_groups(observations: xr.Dataset, layout: FieldLayout) -> list[ObservationGroup]:
    """The groups of an observation dataset, checked as :func:`read_observations` checks them, however few values they
    hold: a selection of times with no observation (all NaN, or none) gives groups without entries, not an error."""
    try:
        return _read_groups(observations, layout)
    except (ValueError, TypeError) as error:  # malformed attributes or dims the checks did not foresee
        raise LatentdaError(f"malformed observation file ({str(error).splitlines()[0]})") from None


def check_group_magnitude(group: ObservationGroup, statistics: Statistics) -> None:
    """A group's observed values must be plausible for its source channels: within
    :data:`MAX_STANDARD_DEVIATIONS` standard deviations of the mean, mapped through the observation
    (a speed of two channels: norms of means and stds; a linear row: its weights' sum and absolute sum),
    the moments of the physical values (``Statistics.physical_mean``/``physical_std``: those of a
    bounded variable's transform are in other units)."""
    channels = group.channels
    means, stds = statistics.physical_mean, statistics.physical_std
    mean = means[channels[0]] if len(channels) == 1 else np.hypot.reduce(means[channels])
    std = np.hypot.reduce(stds[channels])
    if group.sampling == "linear":
        mean, std = group.matrix.sum(axis=1) * mean, np.abs(group.matrix).sum(axis=1) * std + 1e-300
    check_magnitude(group.values, mean, std, f"observation '{group.name}'")


def _number(attrs: dict, key: str, name: str, default: float | None = None) -> float:
    """Attribute ``key`` of observation ``name`` as a finite number (``default`` when absent)."""
    value = attrs.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = np.nan
    if not np.isfinite(number):
        shown = repr(value) if isinstance(value, str) else value
        raise LatentdaError(f"observation '{name}': attribute {key} must be a finite number, got {shown}")
    return number


def _finite(values, key: str, name: str) -> np.ndarray:
    """``values`` as float64, refusing NaN or inf (a position or a weight cannot be 'not observed')."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise LatentdaError(f"observation '{name}': {key} holds NaN or inf values")
    return values


def _read_groups(observations: xr.Dataset, layout: FieldLayout) -> list[ObservationGroup]:
    if TIME not in observations.dims:
        raise LatentdaError("observations have no 'time' dimension")
    groups = []
    grid_y, grid_x = layout.grid
    groups_named = [str(n) for n, v in observations.data_vars.items() if "latentda_sampling" in v.attrs]
    auxiliary = ({f"{g}_matrix" for g in groups_named} | {f"{g}_noise_std" for g in groups_named}
                 | {f"{g}_{axis.name}" for g in groups_named for axis in layout.grid})
    for name, variable in observations.data_vars.items():
        name = str(name)
        if name in auxiliary:  # a linear group's matrix, or point coordinates stored as variables
            continue
        attrs = variable.attrs
        sampling = attrs.get("latentda_sampling")
        if sampling is None:
            raise LatentdaError(f"observation '{name}' lacks the attribute latentda_sampling")
        sources = str(attrs.get("latentda_source", name)).split()
        channels = [_channel(layout, s, name) for s in sources]
        transform = attrs.get("latentda_transform", "identity")
        if transform in ("identity", "saturate"):
            expected = _units_of(layout, sources[0])
            units = attrs.get("units")
            if expected is not None and units is not None and units != expected:
                raise LatentdaError(f"observation '{name}' is in '{units}' but '{sources[0]}' is in '{expected}'")
        order = (TIME, ...)  # grid and coarse axes by name: a file may store them in any order
        if sampling == "grid":
            for axis in layout.grid:
                if axis.name not in variable.dims:
                    raise LatentdaError(f"observation '{name}' lacks the model's grid dimension '{axis.name}'")
            order = (TIME, grid_y.name, grid_x.name)
        elif sampling == "coarsen":
            order = (TIME, f"{name}_y", f"{name}_x")
            if set(variable.dims) != set(order):
                raise LatentdaError(f"observation '{name}' (coarsen) has dims {variable.dims}: expected (time, "
                                    f"{', '.join(order[1:])}), the coarse rows and columns")
        variable = variable.transpose(*order)
        values = read_values(variable).astype(np.float64)  # read once, in that order
        kwargs = {}
        if sampling == "grid":
            if values.shape[1:] != layout.shape:
                raise LatentdaError(f"observation '{name}' is on a {values.shape[1:]} grid, the model's is {layout.shape}")
            for axis in layout.grid:
                if axis.name in observations.coords and not np.allclose(observations[axis.name].values, axis.values):
                    raise LatentdaError(f"observation '{name}': "
                                        + grid_mismatch(axis.name, observations[axis.name].values, axis.values))
        elif sampling == "coarsen":
            kwargs["factor"] = int(_number(attrs, "coarsen_factor", name, 0))
            if kwargs["factor"] < 1:
                raise LatentdaError(f"observation '{name}': coarsen_factor missing or invalid")
            expected = (layout.shape[0] // kwargs["factor"], layout.shape[1] // kwargs["factor"])
            if values.shape[1:] != expected:
                raise LatentdaError(f"observation '{name}': coarse grid {values.shape[1:]} should be {expected} for factor {kwargs['factor']}")
        elif sampling == "points":
            coordinates = []
            for axis in layout.grid:
                key = f"{name}_{axis.name}"
                if key not in observations.coords and key not in observations:
                    raise LatentdaError(f"observation '{name}': point coordinate '{key}' missing")
                coordinates.append(_finite(observations[key].values, key, name))
            kwargs["points"] = grid_indices(np.stack(coordinates, axis=1), layout)
        elif sampling == "linear":
            key = f"{name}_matrix"
            if key not in observations:
                raise LatentdaError(f"observation '{name}': matrix '{key}' missing")
            kwargs["matrix"] = _finite(observations[key].values, key, name)
            if kwargs["matrix"].shape != (values.shape[1], layout.shape[0] * layout.shape[1]):
                raise LatentdaError(f"observation '{name}': matrix shape {kwargs['matrix'].shape} does not match")
        groups.append(ObservationGroup(
            name, channels, transform, sampling, values, _noise_std(observations, variable, name),
            saturation=_number(attrs, "saturation", name, 1.0), periodic=layout.periodic, attrs=dict(attrs), **kwargs,
        ))
    if not groups:
        raise LatentdaError("observation file has no observation variable")
    return groups


def _noise_std(observations: xr.Dataset, variable: xr.DataArray, name: str) -> float | np.ndarray:
    """σ_y of group ``name``: the attribute ``noise_std`` (a positive number), or the variable
    ``<name>_noise_std`` (σ per entry, on dims of the group, broadcast to its dims in their order)."""
    key = f"{name}_noise_std"
    if key not in observations:
        noise_std = _number(variable.attrs, "noise_std", name)
        if not noise_std > 0:
            raise LatentdaError(f"observation '{name}': noise_std must be positive (got {variable.attrs.get('noise_std')})")
        return noise_std
    if "noise_std" in variable.attrs:
        raise LatentdaError(f"observation '{name}': give the attribute noise_std or the variable {key}, not both")
    noise = observations[key]
    if not set(noise.dims) <= set(variable.dims):
        raise LatentdaError(f"observation '{name}': {key} has dims {noise.dims}, not among the group's {variable.dims}")
    return read_values(noise.broadcast_like(variable).transpose(*variable.dims)).astype(np.float64)


# ---------------------------------------------------------------------------------- writing
def observations_to_dataset(operator: ObservationOperator, layout: FieldLayout, time: xr.DataArray, attrs: dict | None = None) -> xr.Dataset:
    """The inverse of :func:`read_observations`."""
    grid_y, grid_x = layout.grid
    data_vars, coords = {}, {TIME: time}
    for group in operator.groups:
        name = group.name
        channel_names = [layout.channels[c] for c in group.channels]
        group_attrs = {
            "latentda_sampling": group.sampling, "latentda_source": " ".join(channel_names),
            "latentda_transform": group.transform,
        }
        units = _units_of(layout, channel_names[0])
        if units is not None:
            group_attrs["units"] = units
        if group.transform == "saturate":
            group_attrs["saturation"] = group.saturation
        if group.sampling == "grid":
            dims = (TIME, grid_y.name, grid_x.name)
            for axis in layout.grid:
                coords[axis.name] = xr.DataArray(np.asarray(axis.values), dims=axis.name, attrs=dict(axis.attrs))
        elif group.sampling == "coarsen":
            dims = (TIME, f"{name}_y", f"{name}_x")
            group_attrs["coarsen_factor"] = group.factor
        elif group.sampling == "points":
            dims = (TIME, f"{name}_point")
            for axis_index, axis in enumerate(layout.grid):
                coords[f"{name}_{axis.name}"] = xr.DataArray(
                    _grid_coordinate(group.points[:, axis_index], axis, layout.is_latlon and axis_index == 1),
                    dims=f"{name}_point", attrs=dict(axis.attrs))
        else:
            dims = (TIME, f"{name}_row")
            data_vars[f"{name}_matrix"] = xr.Variable((f"{name}_row", f"{name}_column"), group.matrix)
        if np.ndim(group.noise_std) == 0:
            group_attrs["noise_std"] = float(group.noise_std)
        else:  # σ per entry, NaN where nothing is observed
            data_vars[f"{name}_noise_std"] = xr.Variable(dims, np.where(group.mask, group.noise(), np.nan).astype(np.float32))
        data_vars[name] = xr.Variable(dims, group.values.astype(np.float32), attrs=group_attrs)
    return xr.Dataset(data_vars, coords=coords, attrs={"Conventions": CONVENTIONS, **(attrs or {})})


# ---------------------------------------------------------------------------------- synthetic
@dataclass
class ObservationSpec:
    """One kind of observation to synthesise from a truth (an entry of an operator config)."""

    name: str
    variables: list[str]
    sampling: Literal["grid", "coarsen", "points"] = "grid"
    transform: Literal["identity", "speed", "saturate"] = "identity"
    noise_std: float = 0.1
    fraction: float = 1.0
    factor: int = 1
    points: int = 0
    coordinates: list[tuple[float, float]] | None = None
    every: int = 1
    first: int = 0
    last: int | None = None
    pattern: Literal["fixed", "varying"] = "fixed"
    saturation: float = 1.0

    def validate(self, prefix: str) -> None:
        require(self.noise_std > 0, f"{prefix}.noise_std", "must be positive")
        require(0 < self.fraction <= 1, f"{prefix}.fraction", "must be in (0, 1]")
        require(self.factor >= 1, f"{prefix}.factor", "must be at least 1")
        require(self.every >= 1, f"{prefix}.every", "must be at least 1")
        require(self.first >= 0, f"{prefix}.first", "must be at least 0 (the first time step of the window)")
        require(self.last is None or self.last > self.first, f"{prefix}.last", "must be after first (exclusive end)")
        require(self.sampling != "points" or self.points > 0 or self.coordinates, f"{prefix}.points",
                "give a number of random points or coordinates")
        require(len(self.variables) == (2 if self.transform == "speed" else len(self.variables)) and self.variables,
                f"{prefix}.variables", "speed needs exactly two variables; others at least one")
        # a key of another sampling or transform would be ignored without a word
        require(self.factor == 1 or self.sampling == "coarsen", f"{prefix}.factor", "is for sampling: coarsen only")
        require((self.points == 0 and self.coordinates is None) or self.sampling == "points", f"{prefix}.points",
                "points and coordinates are for sampling: points only")
        require(self.saturation == 1.0 or self.transform == "saturate", f"{prefix}.saturation",
                "is for transform: saturate only")


@dataclass
class ObservationConfig:
    """An operator config: ``observations: [ObservationSpec, ...]``."""

    observations: list[ObservationSpec] = field(default_factory=list)

    def validate(self, prefix: str) -> None:
        require(len(self.observations) > 0, "observations", "at least one entry is needed")


def synthesize(truth: np.ndarray, layout: FieldLayout, config: ObservationConfig, seed: int = 0) -> ObservationOperator:
    """Observations of a truth (T, C, H, W) (physical units) with noise, as an operator with values.

    NaN in the truth is a mask: an entry selected by the config whose clean value H(x) is NaN (any
    NaN pixel in its footprint) is unobserved, and counted in ``group.attrs[MASKED_BY_TRUTH]``. When
    the mask leaves nothing observed at all, a one-line error says so."""
    rng = np.random.default_rng(seed)
    T = truth.shape[0]
    H, W = layout.shape
    groups = []
    x = torch.from_numpy(np.asarray(truth, dtype=np.float64))[None]
    for spec in config.observations:
        channels_list = [[_channel(layout, v, spec.name)] for v in spec.variables] if spec.transform != "speed" else [
            [_channel(layout, v, spec.name) for v in spec.variables]]
        for channels in channels_list:
            name = spec.name if spec.transform == "speed" or len(spec.variables) == 1 else f"{spec.name}_{layout.channels[channels[0]]}".replace("@", "_")
            kwargs = {}
            if spec.sampling == "grid":
                shape = (H, W)
            elif spec.sampling == "coarsen":
                if spec.factor > min(H, W):
                    raise LatentdaError(f"observation '{spec.name}': coarsen factor {spec.factor} exceeds the grid {H}×{W}")
                shape = (H // spec.factor, W // spec.factor)
                kwargs["factor"] = spec.factor
            else:
                if spec.coordinates:
                    coordinates = np.asarray(spec.coordinates, dtype=np.float64)
                    kwargs["points"] = grid_indices(coordinates, layout)
                else:
                    upper = [H if layout.periodic[0] else H - 1, W if layout.periodic[1] else W - 1]
                    kwargs["points"] = rng.uniform(0, 1, (spec.points, 2)) * np.array(upper, dtype=np.float64)
                shape = (len(kwargs["points"]),)
            observed_times = np.zeros(T, dtype=bool)
            observed_times[spec.first : spec.last : spec.every] = True
            if spec.pattern == "fixed":
                pattern = np.broadcast_to(rng.uniform(size=shape) < spec.fraction, (T, *shape))
            else:
                pattern = rng.uniform(size=(T, *shape)) < spec.fraction
            selected = pattern & observed_times.reshape(-1, *([1] * len(shape)))
            if not selected.any():  # a group written empty would pass for observations
                raise LatentdaError(f"observation '{name}' selects nothing on this window of {T} step(s) (first {spec.first}, "
                                    f"last {spec.last}, every {spec.every}, fraction {spec.fraction})")
            values = np.full((T, *shape), np.nan)
            group = ObservationGroup(name, channels, spec.transform, spec.sampling, values, spec.noise_std,
                                     saturation=spec.saturation, periodic=layout.periodic, **kwargs)
            clean = group.sampled(group.transformed(x))[0].numpy()
            mask = selected & ~np.isnan(clean)
            values[mask] = clean[mask] + spec.noise_std * rng.standard_normal(int(mask.sum()))
            group.values = values
            group.attrs[MASKED_BY_TRUTH] = int(np.sum(selected & np.isnan(clean)))
            groups.append(group)
    masked = sum(group.attrs[MASKED_BY_TRUTH] for group in groups)
    if masked and not any(group.mask.any() for group in groups):
        raise LatentdaError(f"nothing observed: the truth is NaN (masked) at all {masked} selected entries")
    return ObservationOperator(groups)


def load_observations(path: str | os.PathLike, layout: FieldLayout) -> tuple[ObservationOperator, xr.Dataset]:
    """Open an observation file and build its operator."""
    from latentda.data.io import open_dataset

    dataset = open_dataset(path)
    return read_observations(dataset, layout), dataset

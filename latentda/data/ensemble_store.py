"""Ensemble outputs written member by member, resumable.

While a run is in progress its output lives at ``<out>.partial`` (a zarr store with every variable
of the final output plus ``completed(realization)``). Each member's fields are written into their
region and then marked completed, so an interrupted run keeps every finished member, and a resumed
run skips them. A chunk holds one member and up to :data:`CHUNK_BYTES` of its times (a filter, written
cycle by cycle: one time and up to that many members), so no two writes share a chunk. When all members are done the store is renamed to ``out`` (or converted to netCDF
when ``out`` ends in .nc): a final output is never partial. :class:`EnsembleInMemory` has the same
interface and builds the same dataset without a store (a run without ``out``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from latentda.data.io import (OutputLock, already_exists, atomic_path, consolidate, create_store, open_dataset, output_format, quiet_zarr,
                              remove_path, write_region)
from latentda.data.layout import CONVENTIONS, TIME, FieldLayout
from latentda.errors import LatentdaError

__all__ = ["EnsembleWriter", "EnsembleInMemory", "ensemble_dataset", "open_ensemble"]

COMPLETED = "completed"
LEAD = "prediction_timedelta"
REALIZATION = "realization"
REALIZATION_ATTRS = {"long_name": "ensemble member", "standard_name": "realization"}
RUN_STATE = "latentda_run_state.safetensors"  # a filter's member states, inside its .partial store (io.quiet_zarr)
# fingerprints of a run's inputs (latentda.runs.input_fingerprint), compared on resume with the files it read
INPUT_FINGERPRINTS = ("latentda_observations_sha256", "latentda_initial_sha256")
INPUT_FILES = ("observations", "initial")
# An output chunk holds one write's index (a member, or a filter's cycle) and as many of the other axis (its times, or
# the members) as this many bytes allow. One state per chunk made 16 KB chunks at 64², a file each in a zarr folder: 60x
# the files, written ~10x and read whole ~6x slower (tools/bench_output_chunks.py). A larger state is a chunk alone.
CHUNK_BYTES = 1 << 20


def time_axis(time: xr.DataArray | np.ndarray) -> xr.DataArray:
    """The time axis of each member as a ``time`` DataArray (its attributes kept, other coordinates dropped)."""
    time = time.reset_coords(drop=True) if isinstance(time, xr.DataArray) else xr.DataArray(np.asarray(time), dims=TIME)
    return time.rename({time.dims[0]: TIME}) if time.dims[0] != TIME else time


def _time_attrs(coordinate: xr.DataArray, long_name: str, standard_name: str, axis: str | None = "T") -> dict:
    """A time coordinate's attributes completed with ``long_name`` and ``axis``, and the CF
    ``standard_name`` when its values are datetimes or timedeltas (whose time units xarray's
    encoding writes; a plain-number model time has none)."""
    datetimes = (np.issubdtype(coordinate.dtype, np.datetime64) or np.issubdtype(coordinate.dtype, np.timedelta64)
                 or "calendar" in coordinate.attrs)  # dates of a climate calendar (latentda.data.times)
    return {"long_name": long_name, **coordinate.attrs, **({"axis": axis} if axis else {}),
            **({"standard_name": standard_name} if datetimes else {})}


def chunk_shape(dims: tuple[str, ...], shape: tuple[int, ...], unit: str, along: str, itemsize: int = 4) -> tuple[int, ...]:
    """The chunk of an ensemble variable written one index of ``unit`` at a time: one index of
    ``unit`` (so that no two writes — two processes' members — share a chunk), as many of ``along``
    as :data:`CHUNK_BYTES` holds (at least one), every other dimension whole."""
    sizes = dict(zip(dims, shape))
    rest = itemsize * int(np.prod([n for d, n in sizes.items() if d not in (unit, along)]))
    span = int(min(sizes[along], max(1, CHUNK_BYTES // max(rest, 1))))
    return tuple(1 if d == unit else span if d == along else n for d, n in sizes.items())


def ensemble_dataset(layout: FieldLayout, fields: np.ndarray, time: xr.DataArray | np.ndarray,
                     realizations=None, attrs: dict | None = None, init_time: xr.DataArray | None = None) -> xr.Dataset:
    """Fields (realization, T, C, H, W) → CF dataset with dims (realization, time, ...), or with
    ``init_time`` the WeatherBench2 forecast layout (realization, time, prediction_timedelta, ...)
    where ``time`` holds the lead times.

    CF-compliant: the global ``Conventions`` and ``attrs`` only (no global attribute of the
    training data is carried over), CF attributes on every coordinate
    (:meth:`FieldLayout.coordinate_attrs`, time axis T, ``realization``), variables in the model's
    channel order."""
    realizations = np.arange(len(fields)) if realizations is None else realizations
    dataset = layout.to_dataset(fields, time, leading=[(REALIZATION, realizations)],
                                attrs={**(attrs or {}), "Conventions": CONVENTIONS})
    for name, coordinate_attrs in layout.coordinate_attrs().items():
        dataset[name].attrs = coordinate_attrs
    dataset[REALIZATION].attrs.update(REALIZATION_ATTRS)
    if init_time is None:
        dataset[TIME].attrs = _time_attrs(dataset[TIME], "time", "time")
        return dataset.assign(layout.mask_variables())
    dataset = dataset.rename({TIME: LEAD})
    dataset[LEAD].attrs = _time_attrs(dataset[LEAD], "forecast lead time", "forecast_period", axis=None)
    dataset = dataset.expand_dims({TIME: np.atleast_1d(np.asarray(init_time))}, axis=1)
    if isinstance(init_time, xr.DataArray):
        dataset[TIME].attrs.update(init_time.attrs)
    dataset[TIME].attrs = _time_attrs(dataset[TIME], "forecast initialization time", "forecast_reference_time")
    return dataset.assign(layout.mask_variables())


def open_ensemble(path: str | os.PathLike, layout: FieldLayout) -> xr.Dataset:
    """An ensemble store or file, its variables in ``layout``'s channel order (a zarr store lists
    its arrays by name)."""
    dataset = open_dataset(path)
    names = [spec.name for spec in layout.variables]
    return dataset[names + [name for name in dataset.data_vars if name not in names]]


class EnsembleInMemory:
    """An ensemble gathered in memory member by member: :class:`EnsembleWriter`'s interface, and
    the dataset its final output would hold."""

    def __init__(self, layout: FieldLayout, time: xr.DataArray, members: int, attrs: dict | None = None,
                 init_time: xr.DataArray | None = None) -> None:
        self.layout, self.time, self.members, self.attrs, self.init_time = layout, time_axis(time), members, attrs, init_time
        self.fields: dict[int, np.ndarray] = {}

    def pending(self) -> list[int]:
        return [m for m in range(self.members) if m not in self.fields]

    def write(self, member: int, fields: np.ndarray) -> None:
        self.fields[member] = fields.astype(np.float32)

    def finalize(self) -> xr.Dataset:
        if self.pending():
            raise LatentdaError(f"members {self.pending()} are not finished")
        fields = np.stack([self.fields[m] for m in range(self.members)])
        return ensemble_dataset(self.layout, fields, self.time, attrs=self.attrs, init_time=self.init_time)


class EnsembleWriter:
    """Writes an ensemble (realization, time, ...) of fields on ``layout`` member by member, or with
    ``by_time`` time step by time step (a cycling filter: every member's analysis of one cycle)."""

    def __init__(self, out: str | os.PathLike, layout: FieldLayout, time: xr.DataArray, members: int,
                 attrs: dict | None = None, resume: bool = False, overwrite: bool = False,
                 init_time: xr.DataArray | None = None, attach: bool = False, by_time: bool = False) -> None:
        """``time`` is the time axis of each member; for a forecast pass the lead times as ``time``
        and the initialisation time as ``init_time``: dims become (realization, time, prediction_timedelta, ...).
        ``attach`` opens the partial store another process created (several processes, one output).
        ``by_time``: :meth:`write` takes all members of one time step, and completion is per time step."""
        self.out = Path(out)
        self.by_time = by_time
        self.init_time = init_time
        time = time_axis(time)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.layout = layout
        self.members = members
        self.lock = None if attach else OutputLock(self.out)  # one writer per output at a time: released by finalize
        try:
            self._open(time, attrs, resume, overwrite, attach)
        except BaseException:
            self.release()
            raise

    def _open(self, time: xr.DataArray, attrs: dict | None, resume: bool, overwrite: bool, attach: bool) -> None:
        """Check an interrupted run's partial store against this one (resume), or create it."""
        layout, members, init_time, by_time, out = self.layout, self.members, self.init_time, self.by_time, self.out
        if not attach:
            self.check(out, resume, overwrite, locked=True)
        template = ensemble_dataset(layout, np.zeros((1, time.size, layout.num_channels, *layout.shape), np.float32),
                                    time, attrs=attrs, init_time=init_time)  # one member: the variables' layout
        self.variables = {name: v.dims for name, v in template.data_vars.items() if REALIZATION in v.dims}
        if self.partial.exists():
            existing = open_dataset(self.partial)
            lacking = [name for name in (*self.variables, COMPLETED) if name not in existing.data_vars]
            if lacking:
                raise LatentdaError(f"{self.partial}: not the store of an interrupted run (it lacks its bookkeeping: "
                                    f"{', '.join(lacking)}); remove it to start again")
            if existing.sizes.get(REALIZATION) != members or existing.sizes.get(self.time_dim) != time.size:
                raise LatentdaError(f"{self.partial}: the interrupted run had other members or times; remove it to start again")
            given = attrs or {}
            # every setting either run recorded: one left at its default now but given then is a change too
            keys = [*given, *(k for k in existing.attrs if (k.startswith("latentda_") or k in INPUT_FILES) and k not in given)]
            changed = [k for k in keys if str(existing.attrs.get(k)) != str(given.get(k))]
            if changed:  # a resumed run must be the same run: members from two settings must not mix
                read = set(changed) & {*INPUT_FINGERPRINTS, *INPUT_FILES}
                advice = "resume with the observations and initial states it read, or " if read else ""
                if "latentda_sampler_revision" in changed:  # latentda.runs.SAMPLER_REVISION
                    advice = "it was sampled by another version of latentda's sampler: " + advice
                raise LatentdaError(f"{self.partial}: the interrupted run had other settings ({', '.join(changed)}); "
                                    f"{advice}remove it to start again")
            return
        coords = {name: template[name] for name in template.coords if name != REALIZATION}
        coords[REALIZATION] = xr.DataArray(np.arange(members), dims=REALIZATION, attrs=REALIZATION_ATTRS)
        variables = {name: (v.dims, "float32", v.attrs) for name, v in template.data_vars.items()}
        done = (self.time_dim, "time step") if by_time else (REALIZATION, "member")
        variables[COMPLETED] = ((done[0],), "float32", {"long_name": f"1 when the {done[1]} is complete"})
        unit, along = (self.time_dim, REALIZATION) if by_time else (REALIZATION, self.time_dim)
        sizes = {**template.sizes, REALIZATION: members}
        chunks = {name: chunk_shape(dims, tuple(sizes[d] for d in dims), unit, along) for name, dims in self.variables.items()}
        with atomic_path(self.partial) as temporary:  # the partial store itself appears whole
            create_store(temporary, coords, variables, template.attrs, chunks=chunks)
            write_region(temporary, {COMPLETED: np.zeros(time.size if by_time else members, np.float32)}, (slice(None),))
            masks = {name: v.values for name, v in template.data_vars.items() if REALIZATION not in v.dims}
            write_region(temporary, masks, (Ellipsis,))  # the fixed masks, written once

    def release(self) -> None:
        """Release the output's lock (the run is over: finished, failed or interrupted)."""
        if self.lock is not None:
            self.lock.release()

    @staticmethod
    def check(out: str | os.PathLike, resume: bool, overwrite: bool, locked: bool = False) -> None:
        """The output may be written: no other process writes it now (``locked``: this one holds its lock),
        it does not exist (or ``overwrite``), and an interrupted run is continued only with ``resume``."""
        out = Path(out)
        output_format(out)  # an unknown suffix fails now, not after every member is sampled
        if not locked and OutputLock.held(out):  # a live run's partial store is not an interrupted one's
            raise OutputLock.busy(out)
        if out.exists() and not overwrite:
            raise already_exists(out)
        partial = out.with_name(out.name + ".partial")
        if partial.exists() and not resume:
            raise LatentdaError(f"{partial}: an interrupted run exists (complete it with resume=True, --resume on the "
                                "command line, or remove it)")

    @property
    def time_dim(self) -> str:
        return LEAD if self.init_time is not None else TIME

    def completed(self) -> list[int]:
        with quiet_zarr():
            flags = zarr.open_group(self.partial, mode="r")[COMPLETED][:]
        return [int(i) for i in np.flatnonzero(flags == 1)]

    def pending(self) -> list[int]:
        """The members (time steps, ``by_time``) not yet written."""
        done = set(self.completed())
        with quiet_zarr():
            count = zarr.open_group(self.partial, mode="r")[COMPLETED].shape[0]
        return [m for m in range(count) if m not in done]

    def write(self, index: int, fields: np.ndarray) -> None:
        """Store member ``index``'s fields (time, C, H, W) — with ``by_time``, time step ``index``'s
        fields of every member (realization, C, H, W) — then mark it complete."""
        fields = fields[:, None] if self.by_time else fields[None]
        part = ensemble_dataset(self.layout, fields.astype(np.float32), np.arange(fields.shape[1]),
                                realizations=list(range(fields.shape[0])) if self.by_time else [index],
                                init_time=self.init_time)
        arrays = {name: part[name].values for name in self.variables}
        region = (slice(None), slice(index, index + 1)) if self.by_time else (slice(index, index + 1),)
        write_region(self.partial, arrays, region)
        write_region(self.partial, {COMPLETED: np.ones(1, np.float32)}, (slice(index, index + 1),))

    @property
    def state_file(self) -> Path:
        """Where a run keeps what resuming it needs beyond its fields (a filter's member states)."""
        return self.partial / RUN_STATE

    def save_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the run state by ``arrays`` (safetensors, written whole then renamed into place)."""
        from safetensors.numpy import save_file

        temporary = self.state_file.with_name(self.state_file.name + ".tmp")
        save_file({name: np.ascontiguousarray(value) for name, value in arrays.items()}, str(temporary))
        os.replace(temporary, self.state_file)

    def load_state(self) -> dict[str, np.ndarray] | None:
        """The run state saved last (None when there is none)."""
        from safetensors.numpy import load_file

        return load_file(str(self.state_file)) if self.state_file.is_file() else None

    def finalize(self, overwrite: bool = False) -> Path:
        """Move the complete ensemble to ``out`` (dropping the bookkeeping variable)."""
        if self.pending():
            raise LatentdaError(f"{self.partial}: members {self.pending()} are not finished")
        if output_format(self.out) == "netcdf":
            dataset = open_ensemble(self.partial, self.layout).drop_vars(COMPLETED).load()
            with atomic_path(self.out, overwrite=overwrite) as temporary:
                dataset.to_netcdf(temporary, engine="h5netcdf")
            remove_path(self.partial)
        else:
            with quiet_zarr():
                del zarr.open_group(self.partial, mode="a")[COMPLETED]
            if self.state_file.is_file():
                self.state_file.unlink()
            consolidate(self.partial)  # a finished store opens without xarray's warning
            if self.out.exists():
                remove_path(self.out)
            os.replace(self.partial, self.out)
        self.release()
        return self.out

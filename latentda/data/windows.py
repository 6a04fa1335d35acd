"""Torch datasets of windows of K consecutive states, read lazily from disk.

A *source* reads time steps [start, stop) of one trajectory as a float32 array (time, C, H, W):
:class:`FieldSource` stacks and standardises physical variables through a :class:`FieldLayout`
and :class:`Statistics` (NaN where masked or missing: the loss skips them); :class:`LatentSource` reads the ``latent`` variable written by
``latentda encode``. :class:`WindowDataset` enumerates every window of ``window`` consecutive steps
inside a list of segments (a split). Sources open their file on first use in each process (and
after pickling into DataLoader workers), so every process reads only the windows it is given.
Sources no larger than :data:`IN_MEMORY_BYTES` (as float32) are read whole on the first window each
process asks for and sliced in memory after (a window read through xarray and zarr costs about 2 ms,
from memory microseconds); larger ones are read window by window. Fields are held as read (float32), and
checked and standardised window by window as from disk: the same windows, the same errors.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset

from latentda.data.io import open_dataset, read_values
from latentda.data.calendar import calendar_features
from latentda.data.layout import FieldLayout
from latentda.data.splits import Segment
from latentda.data.statistics import Statistics, check_finite
from latentda.data.times import TRAJECTORY, axis_units, climate_calendar
from latentda.errors import LatentdaError

__all__ = ["FieldSource", "LatentSource", "WindowDataset", "LATENT", "MISSING_ATTR", "IN_MEMORY_BYTES"]

LATENT = "latent"
IN_MEMORY_BYTES = 2**30  # sources up to this size (float32) are held in memory by each process (module docstring)
MISSING_ATTR = "latentda_missing_states"  # JSON [[trajectory or null, step], ...] of a latent store


class _LazySource(ABC):
    """Opens ``path`` on first access in the current process; drops the handle (and the values held) when
    pickled. Holds the whole source in memory when it fits (:meth:`_held`)."""

    def __init__(self, path: str | os.PathLike, time_dim: str | None = None) -> None:
        self.path = Path(path)
        self.time_dim = time_dim  # the time dimension's name, when not found by its CF attributes
        self._dataset: xr.Dataset | None = None
        self._values = None  # the whole source, when held in memory
        self._hold = True  # False once it is known not to fit, or not to read whole

    def _held(self):
        """The whole source (:meth:`_read_whole`), read on first use when its :meth:`_size` float32 values fit
        :data:`IN_MEMORY_BYTES`; else None. A whole that cannot be read (a corrupt chunk where no window
        reads: the test split) is left on disk: windows are then read one by one, a bad one naming itself."""
        if self._values is None and self._hold:
            self._hold = self._size() * 4 <= IN_MEMORY_BYTES
            if self._hold:
                try:
                    self._values = self._read_whole()
                except LatentdaError:
                    self._hold = False
        return self._values

    @abstractmethod
    def _size(self) -> int:
        """The number of values of the whole source."""

    @abstractmethod
    def _read_whole(self):
        """The whole source as float32 arrays."""

    @property
    def dataset(self) -> xr.Dataset:
        if self._dataset is None:
            self._dataset = open_dataset(self.path, self.time_dim)
        return self._dataset

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_dataset": None, "_values": None}


class FieldSource(_LazySource):
    """Standardised physical fields x̃ = (x − μ) / s from a netCDF/zarr dataset."""

    def __init__(self, path: str | os.PathLike, layout: FieldLayout, statistics: Statistics,
                 time_dim: str | None = None) -> None:
        super().__init__(path, time_dim)
        self.layout = layout
        self.statistics = statistics
        self.layout.check(self.dataset)

    def _size(self) -> int:
        return sum(self.dataset[spec.name].size for spec in self.layout.variables)

    def _read_whole(self) -> list[np.ndarray]:
        """Every trajectory's fields as float32 (time, C, H, W), as read (neither checked nor standardised)."""
        dataset = self.dataset
        trajectories = range(dataset.sizes[TRAJECTORY]) if TRAJECTORY in dataset.dims else [None]
        return [self.layout.to_array(dataset, t).astype(np.float32, copy=False) for t in trajectories]

    def read(self, trajectory: int | None, start: int, stop: int) -> np.ndarray:
        """Steps [start, stop) standardised; NaN where masked or missing (allowed by the layout)."""
        held = self._held()
        if held is not None:
            array = held[0 if trajectory is None else trajectory][start:stop]
        else:
            array = self.layout.to_array(self.dataset, trajectory, slice(start, stop))
        where = "" if trajectory is None else f" of trajectory {trajectory}"
        check_finite(array, self.layout.channels, where, mask=self.layout.mask, allow_missing=self.layout.allow_missing,
                     first_step=start)
        return self.statistics.standardise(array.astype(np.float32))


class LatentSource(_LazySource):
    """Latent trajectories (variable ``latent``, dims trajectory?, time, channel, y, x), with the
    calendar features of their times when the time axis holds dates (datetimes, or a climate calendar's)."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        if LATENT not in self.dataset.data_vars:
            raise LatentdaError(f"{self.path}: no '{LATENT}' variable (is it the output of 'latentda encode'?)")
        time = self.dataset["time"]
        self.calendar = calendar_features(time.values, climate_calendar(axis_units(time)))
        # states that were missing in the fields (NaN latents, ``latentda encode``): no window uses them
        self.missing = {(None if t is None else int(t), int(step))
                        for t, step in json.loads(self.dataset.attrs.get(MISSING_ATTR, "[]"))}

    def read_context(self, trajectory: int | None, start: int, stop: int) -> np.ndarray | None:
        return None if self.calendar is None else self.calendar[start:stop]

    def _size(self) -> int:
        return self.dataset[LATENT].size

    def _read_whole(self) -> np.ndarray:
        return read_values(self.dataset[LATENT]).astype(np.float32, copy=False)

    def read(self, trajectory: int | None, start: int, stop: int) -> np.ndarray:
        latent = self.dataset[LATENT]
        held = self._held()
        if held is not None:
            index = tuple(trajectory if dim == "trajectory" else slice(start, stop) if dim == "time" else slice(None)
                          for dim in latent.dims)
            return held[index]
        index = {"time": slice(start, stop)}
        if trajectory is not None:
            index["trajectory"] = trajectory
        return read_values(latent.isel(index)).astype(np.float32, copy=False)


class WindowDataset(Dataset):
    """All windows of ``window`` consecutive steps inside ``segments``, every ``stride`` steps, but
    none holding a missing state of the source (its ``missing`` set of (trajectory, step)).

    Item i is a float32 tensor (window, C, H, W), or the pair (window, context (window, F)) with
    ``with_context`` (the source's per-time features, e.g. calendar features).
    """

    def __init__(self, source: FieldSource | LatentSource, segments: list[Segment], window: int, stride: int = 1,
                 with_context: bool = False, split: str = "selected") -> None:
        self.with_context = with_context
        if window < 1 or stride < 1:
            raise LatentdaError(f"window ({window}) and stride ({stride}) must be positive")
        self.source = source
        self.window = window
        missing = getattr(source, "missing", set())
        self.index = [
            (segment.trajectory, start)
            for segment in segments
            for start in range(segment.start, segment.stop - window + 1, stride)
            if not any((segment.trajectory, step) in missing for step in range(start, start + window))
        ]
        if not self.index:
            states = sum(segment.length for segment in segments)
            gaps = f", {len(missing)} missing state(s) excluded" if missing else ""
            raise LatentdaError(f"no window of {window} steps fits in the {split} split ({states} states in "
                                f"{len(segments)} segment(s){gaps}): give it more data or a shorter window")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        trajectory, start = self.index[i]
        window = torch.from_numpy(self.source.read(trajectory, start, start + self.window))
        if self.with_context:
            return window, torch.from_numpy(self.source.read_context(trajectory, start, start + self.window))
        return window

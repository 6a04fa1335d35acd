"""Train / valid / test splits of a dataset into trajectory segments.

A segment is a contiguous run of time steps [start, stop) of one trajectory. With a ``trajectory``
dimension of at least three trajectories, whole trajectories are split (the last ones are held out,
so a split never shares a trajectory and there is no leakage through temporal correlation). A single
long trajectory (e.g. a reanalysis) is split in time into three contiguous blocks instead.
Every segment must be regularly spaced in time (a window of K states spans K − 1 time steps): an
irregular time axis is refused here, before any training (:func:`latentda.data.times.time_step`).
"""

from __future__ import annotations

from dataclasses import dataclass

import xarray as xr

from latentda.data.times import TIME, TRAJECTORY, time_step
from latentda.errors import LatentdaError

__all__ = ["Segment", "segment_blocks", "split_segments", "SPLITS"]

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Segment:
    """Time steps [start, stop) of trajectory ``trajectory`` (None when there is no trajectory dim)."""

    trajectory: int | None
    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


def segment_blocks(segments: list[Segment], size: int, overlap: int = 0) -> list[tuple[int | None, int, int]]:
    """(trajectory, start, stop) of consecutive blocks of ``size`` states covering the ``segments``
    (a streaming pass reads one at a time), each reaching ``overlap`` states into the next (one, for
    increments: each pair of neighbours in exactly one block)."""
    return [(s.trajectory, start, min(start + size + overlap, s.stop))
            for s in segments for start in range(s.start, s.stop, size) if min(start + size + overlap, s.stop) - start > overlap]


def _sizes(total: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    valid = max(1, round(fractions[1] * total)) if fractions[1] > 0 else 0
    test = max(1, round(fractions[2] * total)) if fractions[2] > 0 else 0
    return total - valid - test, valid, test


def split_segments(dataset: xr.Dataset, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, list[Segment]]:
    """Split ``dataset`` into ``{"train": [...], "valid": [...], "test": [...]}`` segments, after
    checking that its time axis is regular."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise LatentdaError(f"split fractions {tuple(fractions)} must be three non-negative numbers summing to 1")
    time_step(dataset[TIME])
    steps = dataset.sizes[TIME]
    trajectories = dataset.sizes.get(TRAJECTORY)
    if trajectories is not None and trajectories >= 3:
        train, valid, _ = _sizes(trajectories, fractions)
        if train < 1:
            raise LatentdaError(f"{trajectories} trajectories are too few for splits {tuple(fractions)}")
        bounds = {"train": (0, train), "valid": (train, train + valid), "test": (train + valid, trajectories)}
        return {name: [Segment(i, 0, steps) for i in range(a, b)] for name, (a, b) in bounds.items()}
    train, valid, test = _sizes(steps, fractions)
    if train < 1:
        raise LatentdaError(f"{steps} time steps are too few for splits {tuple(fractions)}")
    ids = range(trajectories) if trajectories is not None else [None]
    cuts = {"train": (0, train), "valid": (train, train + valid), "test": (train + valid, steps)}
    return {name: [Segment(i, a, b) for i in ids if b > a] for name, (a, b) in cuts.items()}

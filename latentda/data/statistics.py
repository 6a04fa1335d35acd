"""Per-channel normalisation statistics, computed once in a streaming pass and saved with the model.

Each channel c (a variable, or a variable at one level) is standardised as
x̃ = (f_c(x) − μ_c) / s_c, with f_c the identity or the transform of a bounded variable
(:mod:`latentda.data.bounds`). The mean and variance are accumulated chunk by chunk with Chan et
al.'s parallel update, so memory stays bounded by one chunk whatever the dataset size: merging a
running (n_a, μ_a, M_a) with a chunk (n_b, μ_b, M_b), where M is the sum of squared deviations,

    n = n_a + n_b,  δ = μ_b − μ_a,  μ = μ_a + δ n_b / n,  M = M_a + M_b + δ² n_a n_b / n,

and s_c = sqrt(M / n). Only finite values count (n is per channel): NaN marks a masked or missing
value (:class:`MissingScan` tells which), inf is refused. The physical moments of x itself are kept
beside (``physical_mean``, ``physical_std``: the scale of plausibility checks and of the
representation error). The statistics are saved as JSON next to the model and never recomputed
silently at inference.

Masks and missing values. A pixel of a channel that is NaN at every step of the training split is
*masked* (land in an ocean field, outside a radar's range): the channel's fixed mask, recorded in
the layout (:attr:`FieldLayout.mask`), ignored in training and scores, NaN in every output. Any
other NaN is a *missing value* (a gap, an all-missing step): refused, naming the variable and the
step, unless the data config says ``allow_missing: true``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from latentda.config import read_json
from latentda.data.bounds import Bounds
from latentda.data.io import write_text_atomic
from latentda.data.layout import TIME, TRAJECTORY, FieldLayout
from latentda.data.splits import Segment, segment_blocks
from latentda.errors import LatentdaError

__all__ = ["Statistics", "MissingScan", "compute_statistics", "streaming_statistics", "check_finite", "check_magnitude",
           "check_fill_magnitude", "MAX_STANDARD_DEVIATIONS", "FILL_MAGNITUDE", "ALLOW_MISSING_HINT"]


# Values further than this many standard deviations from the model's mean are not data but a wrong
# unit or a fill value (1e30, 9.97e36): the sampler would turn them into NaN members, so they are refused.
MAX_STANDARD_DEVIATIONS = 1e3
# Training data have no model statistics to be far from yet, and a fill value among them sets the
# statistics themselves (1 % of points at 1e20 give a std of 1e19): magnitudes this large are taken for
# fill values (CMIP's 1e20, netCDF's 9.97e36, 1e30) written without a _FillValue attribute, not for data.
FILL_MAGNITUDE = 1e15
ALLOW_MISSING_HINT = "fill them, or set allow_missing: true in the data config to train with missing values"


def check_magnitude(values: np.ndarray, mean, std, what: str) -> None:
    """Raise a one-line error if a (non-NaN) value of ``values`` lies more than
    :data:`MAX_STANDARD_DEVIATIONS` ``std`` from ``mean`` (both broadcast against ``values``)."""
    with np.errstate(invalid="ignore", over="ignore"):
        deviation = np.abs(np.asarray(values, np.float64) - mean) / std
    worst = float(np.nanmax(deviation, initial=0.0))
    if worst > MAX_STANDARD_DEVIATIONS:
        raise LatentdaError(f"{what} has values {worst:.3g} standard deviations from the model's mean (more than "
                            f"{MAX_STANDARD_DEVIATIONS:g}: wrong units or a fill value?)")


def check_fill_magnitude(chunk: np.ndarray, channels: list[str], labels: list[str]) -> None:
    """Raise a one-line error naming the first channel and step of ``chunk`` (T, C, H, W) holding a
    value of magnitude ≥ :data:`FILL_MAGNITUDE` (NaN is not checked here)."""
    with np.errstate(invalid="ignore"):
        large = np.abs(chunk) >= FILL_MAGNITUDE
    if large.any():
        step, c = (int(i) for i in np.argwhere(large)[0][:2])
        channel = channels[c]
        value = float(chunk[step, c][large[step, c]][0])
        raise LatentdaError(f"variable '{channel.split('@')[0]}' holds {value:.6g} at {labels[step]} (channel {channel}): "
                            f"a fill value? Magnitudes ≥ {FILL_MAGNITUDE:g} are not taken for data: declare it as the "
                            "variable's _FillValue or missing_value attribute (xarray then reads NaN), replace it by NaN, "
                            "or rescale the units")


def check_finite(array: np.ndarray, channels: list[str], where: str = "", statistics: "Statistics | None" = None,
                 mask: np.ndarray | None = None, allow_missing: bool = False, first_step: int = 0,
                 hint: str | None = ALLOW_MISSING_HINT) -> None:
    """Raise a one-line error naming the first channel (and step) holding inf, or NaN where neither
    the fixed ``mask`` (C, H, W), True where valid, nor ``allow_missing`` allows it (a missing zarr
    chunk reads as NaN); with ``statistics`` also the first whose values are absurdly far from the
    model's mean (:func:`check_magnitude`). ``array`` is (..., T, C, H, W) with steps numbered from
    ``first_step``. ``hint`` ends the NaN message (default: how to train with missing values; None
    where that does not apply, e.g. a forecast's initial state or a prediction)."""
    if array.ndim < 3:
        return
    infinite = np.isinf(array).reshape(-1, *array.shape[-3:]).any(axis=(0, 2, 3))
    if infinite.any():
        channel = channels[int(np.argmax(infinite))]
        raise LatentdaError(f"variable '{channel.split('@')[0]}' holds inf values{where} (channel {channel})")
    if not allow_missing:
        nan = np.isnan(array)
        if mask is not None:
            nan &= np.asarray(mask, dtype=bool)
        if nan.any():
            index = np.argwhere(nan)[0]
            channel = channels[int(index[-3])]
            step = f" at step {first_step + int(index[-4])}" if array.ndim >= 4 else ""
            kind = "outside its fixed mask" if mask is not None and not np.asarray(mask).all() else ""
            advice = f": {hint}" if hint else ""
            raise LatentdaError(f"variable '{channel.split('@')[0]}' holds NaN values{step}{where} {kind} (channel "
                                f"{channel}){advice}".replace("  ", " "))
    if statistics is not None:
        for c, channel in enumerate(channels):
            check_magnitude(array[..., c, :, :], statistics.physical_mean[c], statistics.physical_std[c],
                            f"variable '{channel}'{where}")


@dataclass
class Statistics:
    """Mean and standard deviation of each channel (of f_c(x) for a bounded channel), with the
    standardise / destandardise maps and their tangent."""

    channels: list[str]
    mean: np.ndarray
    std: np.ndarray
    count: int = 0
    transforms: list[Bounds | None] | None = None  # per channel (None: unbounded)
    physical_mean: np.ndarray | None = None  # moments of x itself (default: mean, std)
    physical_std: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self.std = np.asarray(self.std, dtype=np.float64)
        if not (isinstance(self.channels, list) and all(isinstance(c, str) for c in self.channels)):
            raise LatentdaError(f"statistics: channels must be a list of names, got {self.channels!r}")
        if not (self.mean.shape == self.std.shape == (len(self.channels),)):
            raise LatentdaError("statistics: channels, mean and std have different lengths")
        self.transforms = list(self.transforms) if self.transforms is not None else [None] * len(self.channels)
        self.physical_mean = self.mean if self.physical_mean is None else np.asarray(self.physical_mean, dtype=np.float64)
        self.physical_std = self.std if self.physical_std is None else np.asarray(self.physical_std, dtype=np.float64)
        if len(self.transforms) != len(self.channels) or self.physical_mean.shape != self.mean.shape \
                or self.physical_std.shape != self.std.shape:
            raise LatentdaError("statistics: transforms or physical moments have the wrong length")
        for moments in ((self.mean, self.std), (self.physical_mean, self.physical_std)):
            if not (np.all(np.isfinite(moments[0])) and np.all(np.isfinite(moments[1])) and np.all(moments[1] > 0)):
                raise LatentdaError("statistics: mean must be finite and std positive")

    @property
    def bounded(self) -> bool:
        return any(t is not None for t in self.transforms)

    def _shaped(self, like: np.ndarray | torch.Tensor) -> tuple:
        shape = (-1, 1, 1)
        if isinstance(like, torch.Tensor):
            mean = torch.as_tensor(self.mean, dtype=like.dtype, device=like.device).reshape(shape)
            std = torch.as_tensor(self.std, dtype=like.dtype, device=like.device).reshape(shape)
            return mean, std
        return self.mean.reshape(shape).astype(like.dtype, copy=False), self.std.reshape(shape).astype(like.dtype, copy=False)

    def _per_channel(self, x, method: str, fallback=None):
        """``getattr(bounds, method)`` applied to each bounded channel of x (channel axis −3); the
        others unchanged (or ``fallback(part)``)."""
        if not self.bounded:
            return x if fallback is None else fallback(x)
        parts = []
        for c, bounds in enumerate(self.transforms):
            part = x[..., c : c + 1, :, :]
            parts.append(getattr(bounds, method)(part) if bounds is not None else (part if fallback is None else fallback(part)))
        return torch.cat(parts, dim=-3) if isinstance(x, torch.Tensor) else np.concatenate(parts, axis=-3)

    def standardise(self, x):
        """x̃ = (f(x) − μ) / s along the channel axis (third from last)."""
        mean, std = self._shaped(x)
        return (self._per_channel(x, "forward") - mean) / std

    def destandardise(self, x):
        """x = f⁻¹(μ + s x̃) along the channel axis (third from last): within every variable's bounds."""
        mean, std = self._shaped(x)
        return self._per_channel(x * std + mean, "inverse")

    def scale(self, x):
        """s x̃: the linear part of :meth:`destandardise` (its tangent map when no channel is bounded)."""
        return x * self._shaped(x)[1]

    def tangent(self, standardised, v):
        """The tangent map of :meth:`destandardise` at ``standardised``: v ↦ f⁻¹′(μ + s x̃) ⊙ s v."""
        if not self.bounded:
            return self.scale(v)
        mean, std = self._shaped(standardised)
        slope = self._per_channel(standardised * std + mean, "inverse_derivative",
                                  fallback=lambda part: torch.ones_like(part) if isinstance(part, torch.Tensor) else np.ones_like(part))
        return slope.to(v.dtype) * self.scale(v) if isinstance(v, torch.Tensor) else slope * self.scale(v)

    def to_dict(self) -> dict:
        record = {"channels": list(self.channels), "mean": self.mean.tolist(), "std": self.std.tolist(), "count": int(self.count)}
        if self.bounded:
            record["transforms"] = [None if t is None else t.to_dict() for t in self.transforms]
            record["physical_mean"] = self.physical_mean.tolist()
            record["physical_std"] = self.physical_std.tolist()
        return record

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "Statistics":
        try:
            transforms = data.get("transforms")
            if transforms is not None:
                transforms = [None if t is None else Bounds.from_dict(t, f"{where}: transforms") for t in transforms]
            return cls(data["channels"], data["mean"], data["std"], data.get("count", 0), transforms,
                       data.get("physical_mean"), data.get("physical_std"))
        except KeyError as error:
            raise LatentdaError(f"{where}: corrupt statistics file (no {error} entry)") from None
        except (TypeError, ValueError, AttributeError, LatentdaError) as error:  # e.g. a string where a number belongs
            raise LatentdaError(f"{where}: corrupt statistics file ({error})") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Statistics":
        return cls.from_dict(read_json(path, "statistics file"), str(path))


class MissingScan:
    """Where fields hold NaN, seen chunk by chunk: per pixel the number of steps with a finite value
    (masked pixels: none), per step and channel the number of NaN pixels."""

    def __init__(self, channels: list[str]) -> None:
        self.channels = channels
        self.finite: np.ndarray | None = None  # (C, H, W) counts
        self.nan_steps: list[tuple[str, np.ndarray]] = []  # (where, NaN count per channel) of steps with NaN
        self.steps = 0

    def add(self, chunk: np.ndarray, labels: list[str]) -> None:
        """A chunk (T, C, H, W) whose steps are named ``labels`` (e.g. "trajectory 0, step 17")."""
        finite = np.isfinite(chunk)
        counts = finite.sum(axis=0)
        self.finite = counts if self.finite is None else self.finite + counts
        nan = (~finite).sum(axis=(2, 3))
        for label, row in zip(labels, nan):
            if row.any():
                self.nan_steps.append((label, row))
        self.steps += chunk.shape[0]

    @property
    def mask(self) -> np.ndarray | None:
        """(C, H, W), True where valid (finite at least once), or None when nothing is masked."""
        if self.finite is None or (self.finite > 0).all():
            return None
        return self.finite > 0

    def missing(self) -> list[tuple[str, str, int]]:
        """(step label, channel, NaN pixels outside the fixed mask) of every step with missing values."""
        masked = np.zeros(len(self.channels), dtype=np.int64) if self.mask is None else (~self.mask).sum(axis=(1, 2))
        return [(label, self.channels[c], int(row[c] - masked[c]))
                for label, row in self.nan_steps for c in np.flatnonzero(row > masked)]

    def check(self, allow_missing: bool) -> None:
        """Refuse a channel with no finite value at all, and missing values unless ``allow_missing``."""
        if self.finite is None:
            return
        empty = [c for c, counts in zip(self.channels, self.finite) if not counts.any()]
        if empty:
            raise LatentdaError(f"variable(s) {', '.join(empty)} hold no finite value at all")
        missing = self.missing()
        if missing and not allow_missing:
            label, channel, count = missing[0]
            steps = len({where for where, _, _ in missing})
            raise LatentdaError(f"variable '{channel.split('@')[0]}' holds NaN at {label} ({count} pixel(s) outside "
                                f"its fixed mask; {steps} step(s) with missing values in all): {ALLOW_MISSING_HINT}")

    def summary(self) -> str:
        """One line: masked pixels per channel and steps with missing values."""
        mask = self.mask
        masked = "no fixed mask" if mask is None else "fixed mask: " + ", ".join(
            f"{c} {int((~m).sum())} px" for c, m in zip(self.channels, mask) if not m.all())
        missing = self.missing()
        steps = len({label for label, _, _ in missing})
        return f"{masked}; {steps} of {self.steps} step(s) with missing values"


def _chunks(dataset: xr.Dataset, layout: FieldLayout, segments: list[Segment],
            chunk_size: int) -> Iterable[tuple[np.ndarray, list[str]]]:
    for trajectory, start, stop in segment_blocks(segments, chunk_size):
        where = "" if trajectory is None else f"trajectory {trajectory}, "
        labels = [f"{where}step {i}" for i in range(start, stop)]
        yield layout.to_array(dataset, trajectory, slice(start, stop)), labels


class _Moments:
    """Running per-channel count, mean and M (sum of squared deviations) of finite values (Chan et al.)."""

    def __init__(self, channels: int) -> None:
        self.count, self.mean, self.m2 = np.zeros(channels), np.zeros(channels), np.zeros(channels)

    def add(self, chunk: np.ndarray) -> None:
        valid = np.isfinite(chunk)
        n_b = valid.sum(axis=(0, 2, 3)).astype(np.float64)
        values = np.where(valid, chunk, 0.0)
        mean_b = values.sum(axis=(0, 2, 3)) / np.maximum(n_b, 1)
        m2_b = (np.where(valid, values - mean_b[None, :, None, None], 0.0) ** 2).sum(axis=(0, 2, 3))
        total = self.count + n_b
        delta = mean_b - self.mean
        share = np.divide(n_b, total, out=np.zeros_like(n_b), where=total > 0)
        self.m2 = self.m2 + m2_b + delta**2 * self.count * share
        self.mean = self.mean + delta * share
        self.count = total

    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / np.maximum(self.count, 1))


def streaming_statistics(chunks: Iterable, channels: list[str], total: int | None = None, progress: bool = True,
                         transforms: list[Bounds | None] | None = None, scan: MissingScan | None = None) -> Statistics:
    """Per-channel mean and std of arrays (T, C, H, W) seen once each (or (array, step labels)
    pairs), merged as in the module docstring, of f_c(x) for the ``transforms`` (and of x). With a
    ``scan`` NaN values are skipped and recorded there (its :meth:`MissingScan.check` decides), without
    one they are refused, as inf always is."""
    transformed, physical = _Moments(len(channels)), _Moments(len(channels))
    base = Statistics(channels, np.zeros(len(channels)), np.ones(len(channels)), transforms=transforms)
    steps = 0
    for item in tqdm(chunks, total=total, desc="statistics", disable=not progress, leave=False):
        chunk, labels = item if isinstance(item, tuple) else (item, [f"step {steps + i}" for i in range(len(item))])
        check_finite(chunk, channels, allow_missing=scan is not None)  # inf is never data; NaN only when scanned
        check_fill_magnitude(chunk, channels, labels)
        chunk = chunk.astype(np.float64)
        physical.add(chunk)
        transformed.add(base._per_channel(chunk, "forward") if base.bounded else chunk)
        if scan is not None:
            scan.add(chunk, labels)
        steps += chunk.shape[0]
    if steps == 0:
        raise LatentdaError("dataset is empty: no time steps to compute statistics from")
    empty = [c for c, n in zip(channels, transformed.count) if n == 0]
    if empty:
        raise LatentdaError(f"variable(s) {', '.join(empty)} hold no finite value at all")
    std = transformed.std()
    constant = [c for c, s in zip(channels, std) if not s > 0]
    if constant:
        raise LatentdaError(f"channel(s) {', '.join(constant)} are constant: cannot standardise them")
    return Statistics(channels, transformed.mean, std, int(transformed.count.max() // 1), transforms,
                      physical.mean, np.where(physical.std() > 0, physical.std(), std))


def compute_statistics(
    dataset: xr.Dataset,
    layout: FieldLayout,
    segments: list[Segment] | None = None,
    chunk_size: int = 64,
    progress: bool = True,
    transforms: list[Bounds | None] | None = None,
    scan: MissingScan | None = None,
) -> Statistics:
    """Stream ``segments`` of ``dataset`` (default: all of it) once, chunk by chunk, and return
    per-channel mean and std (of the ``transforms``' values); ``scan`` records where NaN are."""
    if segments is None:
        ids = range(dataset.sizes[TRAJECTORY]) if TRAJECTORY in dataset.dims else [None]
        segments = [Segment(i, 0, dataset.sizes[TIME]) for i in ids]
    total = len(segment_blocks(segments, chunk_size))
    return streaming_statistics(_chunks(dataset, layout, segments, chunk_size), layout.channels, total, progress,
                                transforms, scan)

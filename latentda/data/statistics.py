"""Per-channel normalisation statistics, computed once in a streaming pass and saved with the model.

Each channel c (a variable, or a variable at one level) is standardised as
x̃ = (x − μ_c) / s_c. The mean and variance are accumulated chunk by chunk with Chan et al.'s
parallel update, so memory stays bounded by one chunk whatever the dataset size: merging a running
(n_a, μ_a, M_a) with a chunk (n_b, μ_b, M_b), where M is the sum of squared deviations,

    n = n_a + n_b,  δ = μ_b − μ_a,  μ = μ_a + δ n_b / n,  M = M_a + M_b + δ² n_a n_b / n,

and s_c = sqrt(M / n). The same pass rejects NaN/inf values, naming the variable.
The statistics are saved as JSON next to the model and never recomputed silently at inference.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from latentda.config import read_json
from latentda.data.layout import TIME, TRAJECTORY, FieldLayout
from latentda.data.splits import Segment
from latentda.errors import LatentdaError

__all__ = ["Statistics", "compute_statistics", "streaming_statistics", "check_finite", "check_magnitude",
           "MAX_STANDARD_DEVIATIONS"]


# Values further than this many standard deviations from the model's mean are not data but a wrong
# unit or a fill value (1e30, 9.97e36): the sampler would turn them into NaN members, so they are refused.
MAX_STANDARD_DEVIATIONS = 1e3


def check_magnitude(values: np.ndarray, mean, std, what: str) -> None:
    """Raise a one-line error if a (non-NaN) value of ``values`` lies more than
    :data:`MAX_STANDARD_DEVIATIONS` ``std`` from ``mean`` (both broadcast against ``values``)."""
    with np.errstate(invalid="ignore", over="ignore"):
        deviation = np.abs(np.asarray(values, np.float64) - mean) / std
    worst = float(np.nanmax(deviation, initial=0.0))
    if worst > MAX_STANDARD_DEVIATIONS:
        raise LatentdaError(f"{what} has values {worst:.3g} standard deviations from the model's mean (more than "
                            f"{MAX_STANDARD_DEVIATIONS:g}: wrong units or a fill value?)")


def check_finite(array: np.ndarray, channels: list[str], where: str = "", statistics: "Statistics | None" = None) -> None:
    """Raise a one-line error naming the first channel holding NaN or inf values (a missing zarr
    chunk reads as NaN), and with ``statistics`` the first whose values are absurdly far from the
    model's mean (:func:`check_magnitude`)."""
    finite = np.isfinite(array).reshape(-1, *array.shape[-3:]).all(axis=(0, 2, 3)) if array.ndim >= 3 else None
    if finite is not None and not finite.all():
        channel = channels[int(np.argmin(finite))]
        variable = channel.split("@")[0]
        raise LatentdaError(
            f"variable '{variable}' holds NaN or inf values{where} (channel {channel}); latentda needs complete fields"
        )
    if statistics is not None and array.ndim >= 3:
        for c, channel in enumerate(channels):
            check_magnitude(array[..., c, :, :], statistics.mean[c], statistics.std[c], f"variable '{channel}'{where}")


@dataclass
class Statistics:
    """Mean and standard deviation of each channel, with standardise / destandardise maps."""

    channels: list[str]
    mean: np.ndarray
    std: np.ndarray
    count: int = 0

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self.std = np.asarray(self.std, dtype=np.float64)
        if not (isinstance(self.channels, list) and all(isinstance(c, str) for c in self.channels)):
            raise LatentdaError(f"statistics: channels must be a list of names, got {self.channels!r}")
        if not (self.mean.shape == self.std.shape == (len(self.channels),)):
            raise LatentdaError("statistics: channels, mean and std have different lengths")
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.std)) and np.all(self.std > 0)):
            raise LatentdaError("statistics: mean must be finite and std positive")

    def _shaped(self, like: np.ndarray | torch.Tensor) -> tuple:
        shape = (-1, 1, 1)
        if isinstance(like, torch.Tensor):
            mean = torch.as_tensor(self.mean, dtype=like.dtype, device=like.device).reshape(shape)
            std = torch.as_tensor(self.std, dtype=like.dtype, device=like.device).reshape(shape)
            return mean, std
        return self.mean.reshape(shape).astype(like.dtype, copy=False), self.std.reshape(shape).astype(like.dtype, copy=False)

    def standardise(self, x):
        """x̃ = (x − μ) / s along the channel axis (third from last)."""
        mean, std = self._shaped(x)
        return (x - mean) / std

    def destandardise(self, x):
        """x = μ + s x̃ along the channel axis (third from last)."""
        mean, std = self._shaped(x)
        return x * std + mean

    def scale(self, x):
        """s x̃: the linear part of :meth:`destandardise` (what a tangent vector goes through)."""
        return x * self._shaped(x)[1]

    def to_dict(self) -> dict:
        return {"channels": list(self.channels), "mean": self.mean.tolist(), "std": self.std.tolist(), "count": int(self.count)}

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Statistics":
        data = read_json(path, "statistics file")
        try:
            return cls(data["channels"], data["mean"], data["std"], data.get("count", 0))
        except KeyError as error:
            raise LatentdaError(f"{path}: corrupt statistics file (no {error} entry)") from None
        except (TypeError, ValueError, LatentdaError) as error:  # e.g. a string where a number belongs
            raise LatentdaError(f"{path}: corrupt statistics file ({error})") from None


def _chunks(dataset: xr.Dataset, layout: FieldLayout, segments: list[Segment], chunk_size: int) -> Iterable[np.ndarray]:
    for segment in segments:
        for start in range(segment.start, segment.stop, chunk_size):
            yield layout.to_array(dataset, segment.trajectory, slice(start, min(start + chunk_size, segment.stop)))


def streaming_statistics(chunks: Iterable[np.ndarray], channels: list[str], total: int | None = None,
                         progress: bool = True) -> Statistics:
    """Per-channel mean and std of arrays (T, C, H, W) seen once each, merged as in the docstring."""
    count = 0
    mean = np.zeros(len(channels))
    m2 = np.zeros(len(channels))
    for chunk in tqdm(chunks, total=total, desc="statistics", disable=not progress, leave=False):
        check_finite(chunk, channels)
        chunk = chunk.astype(np.float64)
        n_b = chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
        mean_b = chunk.mean(axis=(0, 2, 3))
        m2_b = ((chunk - mean_b[None, :, None, None]) ** 2).sum(axis=(0, 2, 3))
        total_count = count + n_b
        delta = mean_b - mean
        mean = mean + delta * n_b / total_count
        m2 = m2 + m2_b + delta**2 * count * n_b / total_count
        count = total_count
    if count == 0:
        raise LatentdaError("dataset is empty: no time steps to compute statistics from")
    std = np.sqrt(m2 / count)
    constant = [c for c, s in zip(channels, std) if not s > 0]
    if constant:
        raise LatentdaError(f"channel(s) {', '.join(constant)} are constant: cannot standardise them")
    return Statistics(channels, mean, std, count)


def compute_statistics(
    dataset: xr.Dataset,
    layout: FieldLayout,
    segments: list[Segment] | None = None,
    chunk_size: int = 64,
    progress: bool = True,
) -> Statistics:
    """Stream ``segments`` of ``dataset`` (default: all of it) once, chunk by chunk, and return
    per-channel mean and std."""
    if segments is None:
        ids = range(dataset.sizes[TRAJECTORY]) if TRAJECTORY in dataset.dims else [None]
        segments = [Segment(i, 0, dataset.sizes[TIME]) for i in ids]
    total = sum(-(-s.length // chunk_size) for s in segments)
    return streaming_statistics(_chunks(dataset, layout, segments, chunk_size), layout.channels, total, progress)

"""Simulated trajectories streamed to a zarr store, batch by batch, never half-written.

Every built-in simulator writes the same way: batches of trajectories (B, T, ...) are turned into
datasets (dims trajectory, time, y, x; the first batch with the fixed coordinates) and appended
along ``trajectory`` into a temporary sibling of ``out`` (:func:`latentda.data.io.atomic_path`),
renamed to ``out`` once complete; on any failure or interruption the temporary is removed and
``out`` is left as it was (an interrupt arriving while a batch is written takes effect once it is
written, :func:`latentda.data.io.uninterrupted`: zarr would otherwise go on writing it). One time step per chunk, zarr format 2 (readable by zarr-python 2 and 3)
with consolidated metadata.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from latentda.data.io import already_exists, atomic_path, uninterrupted
from latentda.errors import LatentdaError

__all__ = ["check_store_path", "write_trajectory_batches", "zarr_format_kwargs"]


def zarr_format_kwargs() -> dict:
    """Format 2 where zarr-python 3 would default to 3: the package supports zarr>=2.16, which reads
    only format 2, and consolidated metadata is part of the format 2 spec."""
    import zarr

    major = int(str(zarr.__version__).split(".")[0])
    return {"zarr_format": 2} if major >= 3 else {}


def check_store_path(out: str | os.PathLike, overwrite: bool) -> Path:
    """``out`` as a Path, refused (one line) when it has no file name or exists without ``overwrite``."""
    out = Path(out)
    if not out.name:
        raise LatentdaError(f"output path {str(out)!r} has no file name")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise already_exists(out)
    return out


def write_trajectory_batches(out: Path, batches: Iterable[np.ndarray], to_dataset: Callable[[np.ndarray, int], Any],
                             variables: list[str], grid: tuple[int, int], trajectories: int,
                             overwrite: bool = False) -> Path:
    """Write ``to_dataset(batch, start)`` of every batch (``start``: the index of its first trajectory)
    into the new store ``out`` (module docstring): ``variables`` float32 in chunks of one time step
    on the ``grid``; an error if the batches hold other than ``trajectories`` trajectories."""
    encoding = {name: {"chunks": (1, 1, *grid), "dtype": "float32"} for name in variables}
    encoding["trajectory"] = {"chunks": (min(trajectories, 1 << 20),)}
    format_kwargs = zarr_format_kwargs()
    with atomic_path(out, overwrite=overwrite) as temporary:
        start = 0
        for batch in batches:
            dataset = to_dataset(batch, start)
            with uninterrupted():  # an interrupt waits for the batch's chunks: none written after the removal
                if start == 0:
                    dataset.to_zarr(temporary, mode="w-", encoding=encoding, **format_kwargs)
                else:
                    dataset.to_zarr(temporary, append_dim="trajectory", **format_kwargs)
            start += batch.shape[0]
        if start != trajectories:
            raise RuntimeError(f"simulated {start} trajectories, expected {trajectories}")
    return out

"""Simulated trajectories streamed to a zarr store, batch by batch, never half-written, resumable.

Every built-in simulator writes the same way: batches of trajectories (B, T, ...) are turned into
datasets (dims trajectory, time, y, x; the first batch with the fixed coordinates) and appended
along ``trajectory`` into ``<out>.partial``, renamed to ``out`` once complete. One time step per
chunk, zarr format 2 (readable by zarr-python 2 and 3) with consolidated metadata.

Trajectory i depends only on (seed, i) in every simulator, so a run can stop anywhere and go on:

- **interrupted** (Ctrl-C, SIGTERM) or failing after some batches, the partial store keeps the
  finished trajectories (an interrupt arriving while a batch is written takes effect once it is
  written, :func:`latentda.data.io.uninterrupted`: zarr would otherwise go on writing it);
  ``resume=True`` (``--resume``) simulates the others and gives the store an uninterrupted run
  writes, bit for bit. The settings that decide the trajectories are recorded
  (``latentda_simulation``, JSON), with the versions of the libraries that compute them
  (``library_versions``: an upgraded jax-cfd may give other trajectories), and a resumed run must
  have the same (a store of a latentda that recorded no versions is not checked for them); the count of finished
  trajectories is recorded after each batch (``latentda_trajectories_complete``), so a batch cut
  short by a kill that nothing could hold back is dropped and simulated again.
- a run that fails before finishing any batch leaves nothing; a partial store is never overwritten
  by a new run without ``resume`` (refused, naming it).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from latentda.data.io import already_exists, atomic_path, consolidate, remove_path, uninterrupted
from latentda.errors import LatentdaError

__all__ = ["check_store_path", "write_trajectory_batches", "zarr_format_kwargs"]


def zarr_format_kwargs() -> dict:
    """Format 2 where zarr-python 3 would default to 3: stores readable by zarr-python 2 too, and
    consolidated metadata is part of the format 2 spec."""
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


SETTINGS_ATTR = "latentda_simulation"
COMPLETE_ATTR = "latentda_trajectories_complete"
VERSIONS = "library_versions"


def library_versions(names: Iterable[str]) -> dict[str, str]:
    """The installed versions of the distributions ``names`` (those a simulator's trajectories depend on)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {name: installed(name) for name in names}


def _finished(partial: Path, settings: dict) -> int:
    """Trajectories finished in an interrupted run's ``partial`` store, which must have ``settings``;
    arrays longer than that (a batch cut short) are cut back to it, and files a write cut short left
    (zarr's ``<name>.<uuid>.partial``) removed. A store cut short before its first batch was recorded
    (an empty folder, no attributes yet) has none finished."""
    import zarr

    for leftover in partial.rglob("*.partial"):  # zarr writes a file there, then renames it into place
        if re.fullmatch(r".+\.[0-9a-f]{32}\.partial", leftover.name) and leftover.is_file():
            leftover.unlink()
    try:  # the metadata as on disk: the consolidated copy is written last, so it may lag behind an append
        group = zarr.open_group(partial, mode="r+", use_consolidated=False)
    except Exception:  # noqa: BLE001 — nothing readable yet (killed while creating it)
        if any(partial.iterdir()):
            raise LatentdaError(f"{partial}: not a simulation's partial store: remove it, or choose another --out") from None
        return 0
    if not dict(group.attrs):
        return 0
    recorded = json.loads(group.attrs.get(SETTINGS_ATTR, "null") or "null")
    if isinstance(recorded, dict) and VERSIONS not in recorded:  # written before versions were recorded
        settings = {k: v for k, v in settings.items() if k != VERSIONS}
    if recorded != settings:
        changed = sorted(k for k in set(settings) | set(recorded or {}) if (recorded or {}).get(k) != settings.get(k))
        if changed == [VERSIONS]:
            then, now = recorded[VERSIONS], settings[VERSIONS]
            differ = ", ".join(f"{name} {then.get(name)} then, {now.get(name)} now" for name in sorted(set(then) | set(now))
                               if then.get(name) != now.get(name))
            raise LatentdaError(f"{partial}: the interrupted run was simulated with other library versions ({differ}): "
                                "its trajectories could differ from this run's; resume with those versions, or remove it")
        raise LatentdaError(f"{partial}: the interrupted run had other settings ({', '.join(changed) or 'none recorded'}): "
                            "run it again with them, or remove it")
    complete = int(group.attrs.get(COMPLETE_ATTR, 0))
    for _, array in group.arrays():
        if array.attrs.get("_ARRAY_DIMENSIONS", [None])[0] == "trajectory" and array.shape[0] > complete:
            array.resize((complete, *array.shape[1:]))
    consolidate(partial)
    return complete


def _record_complete(store: Path, count: int | None) -> None:
    """The count of finished trajectories in the store's attributes (None: the attribute removed), consolidated."""
    import zarr

    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    if count is None:
        if COMPLETE_ATTR in group.attrs:
            del group.attrs[COMPLETE_ATTR]
    else:
        group.attrs[COMPLETE_ATTR] = count
    consolidate(store)


def write_trajectory_batches(out: Path, batches: Callable[[int], Iterable[np.ndarray]],
                             to_dataset: Callable[[np.ndarray, int], Any], variables: list[str], grid: tuple[int, int],
                             trajectories: int, settings: dict, overwrite: bool = False, resume: bool = False,
                             libraries: Iterable[str] = ("numpy",)) -> Path:
    """Write ``to_dataset(batch, start)`` of every batch of ``batches(first)`` (the trajectories from
    index ``first`` on; ``start``: the index of the batch's first trajectory) into the store ``out``
    (module docstring): ``variables`` float32 in chunks of one time step on the ``grid``; an error
    if the batches hold other than ``trajectories`` trajectories. ``settings`` (JSON-able) decide the
    trajectories: recorded with the versions of the distributions ``libraries`` that compute them, and
    checked when resuming."""
    settings = json.loads(json.dumps({**settings, VERSIONS: library_versions(libraries)}))
    partial = out.with_name(out.name + ".partial")
    first = 0
    if partial.exists():
        if not resume:
            raise LatentdaError(f"{partial}: an interrupted simulation is there: pass --resume (resume=True) to finish "
                                "it, or remove it")
        first = _finished(partial, settings)
    encoding = {name: {"chunks": (1, 1, *grid), "dtype": "float32"} for name in variables}
    encoding["trajectory"] = {"chunks": (min(trajectories, 1 << 20),)}
    format_kwargs = zarr_format_kwargs()
    start = first
    try:
        for batch in batches(first):
            dataset = to_dataset(batch, start)
            # every batch: an append replaces the attributes (the count stays the one before it until it is written)
            dataset.attrs.update({SETTINGS_ATTR: json.dumps(settings), COMPLETE_ATTR: start})
            with uninterrupted():  # an interrupt waits for the batch's chunks and its count
                if start == 0:
                    remove_path(partial)  # a store cut short before its first batch was counted
                    dataset.to_zarr(partial, mode="w-", encoding=encoding, **format_kwargs)
                else:
                    dataset.to_zarr(partial, append_dim="trajectory", **format_kwargs)
                start += batch.shape[0]
                _record_complete(partial, start)
        if start != trajectories:
            raise RuntimeError(f"simulated {start} trajectories, expected {trajectories}")
    except BaseException as error:
        if start == 0 or (isinstance(error, LatentdaError) and first == 0):  # nothing kept, or this run's settings' fault
            remove_path(partial)
        elif isinstance(error, Exception) and not isinstance(error, LatentdaError):  # a blow-up of a resumed run: its own line
            raise RuntimeError(f"{start} finished trajectories kept in {partial}: run again with --resume "
                               f"after fixing the cause ({type(error).__name__}: {error})") from error
        raise
    with uninterrupted(), atomic_path(out, overwrite=overwrite) as temporary:  # an interrupt after the rename
        os.replace(partial, temporary)  # the partial store keeps its count until here: a stop before is resumable
        _record_complete(temporary, None)
    return out

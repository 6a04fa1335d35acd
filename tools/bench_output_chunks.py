"""Ensemble outputs chunked one state per chunk against chunks of many states (latentda.data.ensemble_store).

    python tools/bench_output_chunks.py [--members 32] [--states 128] [--size 64] [--chunk-mib 1]

Writes an ensemble of two variables (members × states × size²) with ``EnsembleWriter`` as reanalyze writes it
(member by member, then finalized) into a temporary folder, chunked one state per chunk (``CHUNK_BYTES`` 0, the
layout before) and with ``--chunk-mib`` (default: latentda's ``CHUNK_BYTES``), alternated twice in one process;
then reads it back whole as ``evaluate`` does (each variable's values) and one time step of every member. Prints
the median seconds of each, their ratios (chunked / one state) and the files in each store.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from latentda.cli import ScriptHelpFormatter
from latentda.data import ensemble_store
from latentda.data.ensemble_store import EnsembleWriter, open_ensemble
from latentda.data.layout import FieldLayout


def measure(folder: Path, layout: FieldLayout, fields: np.ndarray, time_axis: xr.DataArray) -> dict[str, float]:
    """Seconds to write, read whole and read one time step of the ensemble ``fields``; files in the store."""
    out = folder / "ensemble.zarr"
    start = time.perf_counter()
    writer = EnsembleWriter(out, layout, time_axis, len(fields))
    for member, member_fields in enumerate(fields):
        writer.write(member, member_fields)
    writer.finalize()
    figures = {"write": time.perf_counter() - start}
    start = time.perf_counter()
    dataset = open_ensemble(out, layout)
    total = sum(float(dataset[spec.name].values.sum()) for spec in layout.variables)
    figures["read whole"] = time.perf_counter() - start
    start = time.perf_counter()
    dataset = open_ensemble(out, layout)
    total += sum(float(dataset[spec.name].isel(time=len(time_axis) // 2).values.sum()) for spec in layout.variables)
    figures["read one time"] = time.perf_counter() - start
    assert np.isfinite(total)
    figures["files"] = sum(1 for path in out.rglob("*") if path.is_file())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--members", type=int, default=32, help="ensemble members")
    parser.add_argument("--states", type=int, default=128, help="states of each member")
    parser.add_argument("--size", type=int, default=64, help="grid points on each side")
    parser.add_argument("--chunk-mib", type=float, default=ensemble_store.CHUNK_BYTES / 2**20,
                        help="CHUNK_BYTES to compare with one state per chunk, in MiB (default: latentda's)")
    args = parser.parse_args()
    if min(args.members, args.states, args.size) < 1 or args.chunk_mib <= 0:
        parser.error("--members, --states, --size and --chunk-mib must be positive")
    shape = (args.states, args.size, args.size)
    grid = {"y": np.arange(args.size, dtype=float), "x": np.arange(args.size, dtype=float)}
    time_axis = xr.DataArray(np.arange(float(args.states)), dims="time")
    layout = FieldLayout.from_dataset(xr.Dataset({name: (("time", "y", "x"), np.zeros(shape, np.float32)) for name in "uv"},
                                                 coords={"time": time_axis, **grid}))
    fields = np.random.default_rng(0).standard_normal((args.members, args.states, 2, args.size, args.size)).astype(np.float32)
    chunk_bytes = int(args.chunk_mib * 2**20)
    runs: dict[str, list[dict]] = {"one state": [], "chunked": []}
    with tempfile.TemporaryDirectory() as folder:
        for label in ("one state", "chunked", "one state", "chunked"):
            ensemble_store.CHUNK_BYTES = 0 if label == "one state" else chunk_bytes
            with tempfile.TemporaryDirectory(dir=folder) as run_folder:
                runs[label].append(measure(Path(run_folder), layout, fields, time_axis))
    print(f"{args.members} members x {args.states} states x 2 variables of {args.size}^2; "
          f"CHUNK_BYTES {chunk_bytes / 2**20:g} MiB")
    for key in ("write", "read whole", "read one time", "files"):
        old, new = (float(np.median([run[key] for run in runs[label]])) for label in ("one state", "chunked"))
        unit = "" if key == "files" else " s"
        print(f"{key:>14}: one state per chunk {old:.3f}{unit}, chunked {new:.3f}{unit} (ratio {new / old:.3f})")


if __name__ == "__main__":
    main()

"""Peak memory of ``latentda evaluate`` against the length of the ensemble it scores.

    python tools/bench_evaluate_memory.py --members 20 --size 96 --times 48 192 --blocks-mb 32 4 1e9
    python tools/bench_evaluate_memory.py --members 20 --times 48 192 --code ../worktree-of-an-older-commit
    python tools/bench_evaluate_memory.py --members 20 --times 48 192 --leads 24 --blocks-mb 32   # forecasts

Writes, once, a random ensemble (realization, time, y, x; two variables, float32, a zarr store as
``reanalyze`` writes it), its truth and sparse observations of every time (configs/observe/sparse.yaml). Then,
in a fresh process per configuration, after a first scoring of two times (imports, first-call buffers), it scores
the ensemble against the truth and the observations (the CLI's ``evaluate`` without its report) with
``block_bytes`` of each ``--blocks-mb``, and prints two peaks, in MiB and as multiples of the ensemble's float32
size: the arrays' (numpy's and Python's allocations, traced by tracemalloc), and the growth of the resident
memory (Linux's VmHWM, reset through /proc/self/clear_refs, less the resident memory before; it also holds
allocator slack and the zarr reader's buffers). Scored block by block, the arrays' peak stays flat as the
ensemble grows longer; read whole, it grows with it.
"""

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

from latentda.cli import ScriptHelpFormatter
from latentda.evaluation import BLOCK_BYTES

CHILD = r"""
import json, sys, time
from latentda.data import open_dataset
from latentda.evaluation import evaluate
import xarray as xr
folder, times, block_mb = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
prediction = open_dataset(f"{folder}/ensemble-{times}.zarr")
truth = open_dataset(f"{folder}/truth.zarr").isel(time=slice(0, times))
observations = xr.open_dataset(f"{folder}/observations-{times}.nc")
evaluate(prediction.isel(time=slice(0, 2)), truth, observations.isel(time=slice(0, 2)))  # imports, first-call buffers


def status(key):  # kiB → MiB
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) / 1024


import tracemalloc
with open("/proc/self/clear_refs", "w") as handle:  # the peak (VmHWM) from now on
    handle.write("5")
before = status("VmRSS:")
tracemalloc.start()
started = time.perf_counter()
import inspect
blocks = {"block_bytes": int(block_mb * 2**20)} if "block_bytes" in inspect.signature(evaluate).parameters else {}
rows, summary = evaluate(prediction, truth, observations, **blocks)  # older code: read whole
seconds = time.perf_counter() - started
traced = tracemalloc.get_traced_memory()[1] / 2**20
print(json.dumps({"peak_growth_mb": status("VmHWM:") - before, "traced_peak_mb": traced, "seconds": seconds, "blocked": bool(blocks), "rmse_u": summary["u"]["rmse"],
                  "coverage_90_u": summary["u"]["coverage_90"]}))
"""


def write_inputs(folder: Path, members: int, size: int, times: list[int], leads: int | None = None) -> None:
    import xarray as xr

    from latentda.data.ensemble_store import ensemble_dataset
    from latentda.data.layout import FieldLayout

    rng = np.random.default_rng(0)
    longest = max(times)
    coord = np.arange(size) * 2 * np.pi / size
    periodic = {"units": "1", "periodic": 1}
    shape = (longest, size, size)
    truth = xr.Dataset({name: (("time", "y", "x"), rng.standard_normal(shape).astype(np.float32), {"units": "1"})
                        for name in ("u", "v")},
                       coords={"time": ("time", 0.2 * np.arange(longest), {"units": "1"}),
                               "y": ("y", coord, {**periodic, "axis": "Y"}), "x": ("x", coord, {**periodic, "axis": "X"})})
    truth.to_zarr(folder / "truth.zarr", mode="w")
    layout = FieldLayout.from_dataset(truth)
    for length in times:
        fields = (layout.to_array(truth.isel(time=slice(0, length)))[None]
                  + rng.standard_normal((members, length, 2, size, size)).astype(np.float32))
        ensemble = ensemble_dataset(layout, fields, truth["time"][:length])
        if leads:  # forecasts from states 0, L, 2L, … of L leads each (WeatherBench2's layout): valid times = the states
            starts = np.arange(0, length, leads)
            ensemble = xr.Dataset(
                {name: (("realization", "time", "prediction_timedelta", "y", "x"),
                        ensemble[name].values.reshape(members, len(starts), leads, size, size)) for name in ("u", "v")},
                coords={"time": truth["time"].values[starts], "prediction_timedelta": 0.2 * np.arange(leads),
                        "realization": np.arange(members), "y": truth["y"], "x": truth["x"]})
        ensemble.to_zarr(folder / f"ensemble-{length}.zarr", mode="w")
        write_observations(folder / f"observations-{length}.nc", truth.isel(time=slice(0, length)), rng)


def write_observations(path: Path, truth, rng) -> None:
    """configs/observe/sparse.yaml's observations of ``truth`` (5 % of the pixels of u and v, noise std 0.1)."""
    from latentda.config import load_config
    from latentda.data.layout import FieldLayout
    from latentda.observe import ObservationConfig, observations_to_dataset, synthesize

    layout = FieldLayout.from_dataset(truth)
    config = load_config(ObservationConfig, Path(__file__).parents[1] / "configs/observe/sparse.yaml")
    operator = synthesize(layout.to_array(truth), layout, config, seed=int(rng.integers(1 << 30)))
    observations_to_dataset(operator, layout, truth["time"]).to_netcdf(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--members", type=int, default=10, help="ensemble members")
    parser.add_argument("--size", type=int, default=96, help="grid points along each side (two variables, u and v)")
    parser.add_argument("--times", type=int, nargs="+", default=[48, 192],
                        help="lengths of the ensembles scored (times), one store each")
    parser.add_argument("--blocks-mb", type=float, nargs="+", default=[BLOCK_BYTES / 2**20, 1e9],
                        help="evaluate's block_bytes, in MiB, one run each (1e9: the whole ensemble at once)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/evaluate-memory"),
                        help="folder for the inputs written (rewritten at each run)")
    parser.add_argument("--leads", type=int, default=None,
                        help="write each ensemble as forecasts of this many leads from every L-th state (each length "
                             "a multiple of L), scored at their valid times; default: a reanalysis")
    parser.add_argument("--code", type=Path, default=None,
                        help="a checkout whose latentda the scoring processes import (e.g. a worktree of an older commit, "
                             "which reads the ensemble whole); default: this one")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", message="Consolidated metadata")
    if args.leads and any(length % args.leads for length in args.times):
        parser.error(f"--times must be multiples of --leads {args.leads}")
    write_inputs(args.out, args.members, args.size, args.times, args.leads)
    for block_mb in args.blocks_mb:
        for length in args.times:
            environment = {**os.environ, "PYTHONPATH": str(args.code.resolve())} if args.code else None
            result = json.loads(subprocess.run([sys.executable, "-c", CHILD, str(args.out.resolve()), str(length), str(block_mb)],
                                               check=True, capture_output=True, text=True, env=environment,
                                               cwd=args.code).stdout.strip().splitlines()[-1])  # -c: the cwd first on sys.path
            size_mb = 4 * args.members * length * 2 * args.size**2 / 2**20
            label = f"blocks of {block_mb:g} MiB" if result["blocked"] else "read whole (older code)"
            print(f"{label}, times {length:4d}: ensemble {size_mb:7.1f} MiB (float32); peak of "
                  f"the arrays {result['traced_peak_mb']:7.1f} MiB = {result['traced_peak_mb'] / size_mb:5.2f}x, resident "
                  f"growth {result['peak_growth_mb']:7.1f} MiB = {result['peak_growth_mb'] / size_mb:5.2f}x; "
                  f"{result['seconds']:.2f} s (tracemalloc on); rmse(u) {result['rmse_u']:.6f}, "
                  f"coverage_90(u) {result['coverage_90_u']:.6f}", flush=True)


if __name__ == "__main__":
    main()

"""Reading training windows of latents: through xarray and zarr window by window, against the store held in memory.

    python tools/bench_window_reads.py [--trajectories 32] [--states 64] [--windows 1000]

Writes a latent store shaped like the Kolmogorov latents (trajectories × states × 4 × 16 × 16, one state per chunk,
as ``latentda encode`` writes them) into a temporary folder, then times ``WindowDataset`` items (windows of 8 states, the
same random windows) with ``LATENTS_IN_MEMORY_BYTES`` 0 (read from disk each time) and its default (read whole once),
alternated twice in one process: milliseconds per window and their ratio.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from latentda.cli import ScriptHelpFormatter
from latentda.data import windows
from latentda.data.splits import Segment
from latentda.data.windows import LatentSource, WindowDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=32, help="trajectories of the store")
    parser.add_argument("--states", type=int, default=64, help="states per trajectory (at least 8)")
    parser.add_argument("--windows", type=int, default=1000, help="windows read per measurement")
    args = parser.parse_args()
    if args.trajectories < 1 or args.states < 8 or args.windows < 1:
        parser.error("--trajectories and --windows must be positive, --states at least 8")
    budget = windows.LATENTS_IN_MEMORY_BYTES
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "latents.zarr"
        z = np.random.default_rng(0).standard_normal((args.trajectories, args.states, 4, 16, 16)).astype(np.float32)
        xr.Dataset({"latent": (("trajectory", "time", "channel", "latent_y", "latent_x"), z)},
                   coords={"time": np.arange(float(args.states))}).to_zarr(
            path, encoding={"latent": {"chunks": (1, 1, 4, 16, 16)}})
        segments = [Segment(t, 0, args.states) for t in range(args.trajectories)]
        count = args.trajectories * (args.states - 7)
        order = np.random.default_rng(1).integers(0, count, args.windows)
        times = {"disk": [], "memory": []}
        for label in ("disk", "memory", "disk", "memory"):
            windows.LATENTS_IN_MEMORY_BYTES = 0 if label == "disk" else budget
            data = WindowDataset(LatentSource(path), segments, window=8)
            data[0]  # opens the store (and in memory reads it whole)
            start = time.perf_counter()
            for i in order:
                data[int(i)]
            times[label].append((time.perf_counter() - start) / args.windows * 1e3)
    disk, memory = np.median(times["disk"]), np.median(times["memory"])
    print(f"window of 8 states: from disk {disk:.3f} ms, held in memory {memory:.3f} ms (ratio {memory / disk:.4f}); "
          f"runs {', '.join(f'{t:.3f}' for t in times['disk'])} / {', '.join(f'{t:.3f}' for t in times['memory'])} ms")


if __name__ == "__main__":
    main()

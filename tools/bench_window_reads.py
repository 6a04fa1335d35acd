"""Reading training windows: through xarray and zarr window by window, against the source held in memory.

    python tools/bench_window_reads.py [--trajectories 32] [--states 64] [--windows 1000]

Writes two stores into a temporary folder, one state per chunk as ``latentda simulate`` and ``latentda encode`` write
them: latents shaped like the Kolmogorov latents (trajectories × states × 4 × 16 × 16), read as ``train-ldm`` reads
them (``LatentSource``, windows of 8 states), and fields shaped like the Kolmogorov data (trajectories × states ×
u, v of 64 × 64), read as ``train-ae`` reads them (``FieldSource``: stacked, checked and standardised; windows of
one state). Times the same random windows with ``IN_MEMORY_BYTES`` 0 (read from disk each time) and its default
(read whole once), alternated twice in one process: milliseconds per window and their ratio.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from latentda.cli import ScriptHelpFormatter
from latentda.data import FieldLayout, Statistics, open_dataset, windows, write_dataset
from latentda.data.splits import Segment
from latentda.data.windows import FieldSource, LatentSource, WindowDataset


def median_times(make_source, segments: list[Segment], window: int, order: np.ndarray) -> tuple[float, float, list]:
    """Milliseconds per window (median of two runs) from disk and from memory, and every run's."""
    budget = windows.IN_MEMORY_BYTES
    runs = {"disk": [], "memory": []}
    for label in ("disk", "memory", "disk", "memory"):
        windows.IN_MEMORY_BYTES = 0 if label == "disk" else budget
        data = WindowDataset(make_source(), segments, window=window)
        data[0]  # opens the store (and in memory reads it whole)
        start = time.perf_counter()
        for i in order:
            data[int(i)]
        runs[label].append((time.perf_counter() - start) / len(order) * 1e3)
    windows.IN_MEMORY_BYTES = budget
    return float(np.median(runs["disk"])), float(np.median(runs["memory"])), runs["disk"] + runs["memory"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=32, help="trajectories of each store")
    parser.add_argument("--states", type=int, default=64, help="states per trajectory (at least 8)")
    parser.add_argument("--windows", type=int, default=1000, help="windows read per measurement")
    args = parser.parse_args()
    if args.trajectories < 1 or args.states < 8 or args.windows < 1:
        parser.error("--trajectories and --windows must be positive, --states at least 8")
    rng = np.random.default_rng(0)
    segments = [Segment(t, 0, args.states) for t in range(args.trajectories)]
    with tempfile.TemporaryDirectory() as folder:
        latents = Path(folder) / "latents.zarr"
        z = rng.standard_normal((args.trajectories, args.states, 4, 16, 16)).astype(np.float32)
        xr.Dataset({"latent": (("trajectory", "time", "channel", "latent_y", "latent_x"), z)},
                   coords={"time": np.arange(float(args.states))}).to_zarr(
            latents, encoding={"latent": {"chunks": (1, 1, 4, 16, 16)}})
        fields = Path(folder) / "fields.zarr"
        shape = (args.trajectories, args.states, 64, 64)
        write_dataset(xr.Dataset({name: (("trajectory", "time", "y", "x"), rng.standard_normal(shape).astype(np.float32))
                                  for name in "uv"}, coords={"time": np.arange(float(args.states)),
                                                             "y": np.arange(64.0), "x": np.arange(64.0)}), fields)
        layout = FieldLayout.from_dataset(open_dataset(fields))
        statistics = Statistics(channels=layout.channels, mean=np.zeros(2), std=np.ones(2))
        for label, make_source, window in (("latents (train-ldm, 8 states)", lambda: LatentSource(latents), 8),
                                           ("fields (train-ae, 1 state)", lambda: FieldSource(fields, layout, statistics), 1)):
            count = args.trajectories * (args.states - window + 1)
            order = np.random.default_rng(1).integers(0, count, args.windows)
            disk, memory, runs = median_times(make_source, segments, window, order)
            print(f"{label}: from disk {disk:.3f} ms, held in memory {memory:.3f} ms (ratio {memory / disk:.4f}); "
                  f"runs {', '.join(f'{t:.3f}' for t in runs)} ms")


if __name__ == "__main__":
    main()

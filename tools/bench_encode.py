"""Encode throughput (frames/s) and peak memory for datasets larger than one batch.

    python tools/bench_encode.py --autoencoder runs/ae-kolmogorov/autoencoder --data data/kolmogorov.zarr

Encodes the first N and the first 4N trajectories of the dataset in fresh subprocesses and prints,
for each, frames per second and the peak resident memory; memory that does not grow with the
dataset shows that encoding streams batch by batch. Ratios are measured in the same run.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from latentda.cli import ScriptHelpFormatter

PREPARE = r"""
import sys
from latentda.data import open_dataset, write_dataset
data, count, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
write_dataset(open_dataset(data).isel(trajectory=slice(0, count)), f"{workdir}/subset-{count}.zarr")
"""

CHILD = r"""
import json, resource, sys, time
from latentda.data import open_dataset
from latentda.encoding import encode_dataset
autoencoder, data, count, batch, workdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
source = f"{workdir}/subset-{count}.zarr"
subset = open_dataset(source)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
encode_dataset(autoencoder, source, f"{workdir}/latents-{count}.zarr", batch_size=batch, progress=False)
elapsed = time.perf_counter() - start
frames = count * subset.sizes["time"]
print(json.dumps({"trajectories": count, "frames": frames, "seconds": elapsed, "frames_per_second": frames / elapsed,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_before_encode_mb": before / 1024}))
"""


def child(parser: argparse.ArgumentParser, script: str, *arguments) -> str:
    """Run ``script`` in a fresh Python; its stdout, or (when it fails) the last line of its error output
    (the exception of its traceback) and exit 2."""
    result = subprocess.run([sys.executable, "-c", script, *map(str, arguments)], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip() or "(no output)").splitlines()[-1]
        print(f"{parser.prog}: a child process failed (exit {result.returncode}): {last}", file=sys.stderr)
        sys.exit(2)
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--autoencoder", required=True, type=Path, help="autoencoder folder (e.g. PIPELINE/autoencoder)")
    parser.add_argument("--data", required=True, type=Path,
                        help="dataset (zarr or netCDF) with a trajectory dimension of at least 4N trajectories")
    parser.add_argument("--trajectories", type=int, default=4, help="N: the small run encodes N, the large 4N")
    parser.add_argument("--batch-size", type=int, default=64, help="frames encoded per batch")
    args = parser.parse_args()
    if args.trajectories < 1:
        parser.error(f"--trajectories must be at least 1, got {args.trajectories}")
    from latentda.data import open_dataset
    from latentda.errors import LatentdaError

    try:
        available = open_dataset(args.data).sizes.get("trajectory", 0)
    except LatentdaError as error:
        parser.error(f"--data: {error}")
    if 4 * args.trajectories > available:
        parser.error(f"--trajectories {args.trajectories}: the large run encodes {4 * args.trajectories} trajectories; "
                     f"{args.data} has {available}")
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for count in (args.trajectories, 4 * args.trajectories):
            child(parser, PREPARE, args.data, count, workdir)
            out = child(parser, CHILD, args.autoencoder, args.data, count, args.batch_size, workdir)
            results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        print(f"{r['frames']:>6} frames: {r['frames_per_second']:8.1f} frames/s, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(before encoding {r['rss_before_encode_mb']:.0f} MB)")
    small, large = results
    print(f"dataset ×{large['frames'] / small['frames']:.0f} → peak memory ×{large['peak_rss_mb'] / small['peak_rss_mb']:.2f}, "
          f"throughput ×{large['frames_per_second'] / small['frames_per_second']:.2f}")


if __name__ == "__main__":
    main()

"""Memory and time of reading a table of moving observation positions for the cycling filter: the whole
window at once against cycle by cycle.

    python tools/bench_table_cycles.py --pipeline pretrained/kolmogorov --cycles 20 80 160 --positions 2000

A table of C cycles with P new positions each (drifting buoys, satellite tracks) covers C·P positions.
Read as one window (``table_to_dataset``, then split: :meth:`LatentDAPipeline.filter_cycles` of the
dataset) it holds (C × C·P) values and σ before each cycle keeps its own P points; read cycle by cycle
(``filter_cycles`` of the table: :func:`latentda.observe.table_to_cycles`) it holds the rows. Each
reading runs in a fresh process, which reports the growth of its peak resident memory and the wall
time of the reading; the ratios whole / by cycle are measured in one run.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from latentda.cli import ScriptHelpFormatter

CHILD = r"""
import json, resource, sys, time
import numpy as np, pandas as pd, torch
from latentda.observe import table_to_dataset
from latentda.pipeline import LatentDAPipeline
pipeline_dir, cycles, positions, whole = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "whole"
torch.set_num_threads(1)
pipeline = LatentDAPipeline.from_pretrained(pipeline_dir)
grid_y, grid_x = pipeline.layout.grid
rng = np.random.default_rng(0)
count = cycles * positions
table = pd.DataFrame({"time": np.repeat(np.arange(cycles) * pipeline.time_step, positions),
                      grid_y.name: rng.uniform(0, grid_y.size - 1, count), grid_x.name: rng.uniform(0, grid_x.size - 1, count),
                      "variable": pipeline.layout.channels[0], "value": rng.normal(size=count), "noise_std": 0.1})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
source = table_to_dataset(table, pipeline.layout, time_step=pipeline.time_step) if whole else table
_, operators, _ = pipeline.filter_cycles(source)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert all(o.groups[0].points.shape[0] == positions for o in operators)
print(json.dumps({"cycles": cycles, "peak_mb": (after - before) / 1024, "seconds": seconds}))
"""


def _measure(pipeline: str, cycles: int, positions: int, how: str) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, pipeline, str(cycles), str(positions), how],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{how} reading of {cycles} cycles failed:\n{result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="pipeline folder")
    parser.add_argument("--cycles", type=int, nargs="+", default=[20, 80, 160], help="numbers of cycles C")
    parser.add_argument("--positions", type=int, default=2000, help="new positions P per cycle")
    parser.add_argument("--json", help="also write the measurements to this JSON file")
    args = parser.parse_args()
    if not (Path(args.pipeline) / "denoiser" / "config.json").is_file():
        parser.error(f"--pipeline {args.pipeline}: not a pipeline folder")
    if min(args.cycles) < 1 or args.positions < 1:
        parser.error("--cycles and --positions must be positive")
    rows = []
    print(f"{'cycles':>6} {'positions':>9} {'whole MB':>9} {'cycles MB':>9} {'whole s':>8} {'cycles s':>8} {'MB ratio':>8}")
    for cycles in args.cycles:
        whole, by_cycle = (_measure(args.pipeline, cycles, args.positions, how) for how in ("whole", "cycles"))
        rows.append({"cycles": cycles, "positions_per_cycle": args.positions, "whole": whole, "by_cycle": by_cycle})
        ratio = whole["peak_mb"] / max(by_cycle["peak_mb"], 1e-3)
        print(f"{cycles:>6} {cycles * args.positions:>9} {whole['peak_mb']:>9.1f} {by_cycle['peak_mb']:>9.1f} "
              f"{whole['seconds']:>8.2f} {by_cycle['seconds']:>8.2f} {ratio:>8.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Peak memory of one MMPS reanalysis step against the trajectory length, with and without chunking.

    python tools/bench_memory.py --pipeline runs/ldm-kolmogorov/pipeline --lengths 1 2 4 8 --chunk 8

Each configuration runs in a fresh process: load the pipeline, build a 5%-of-pixels operator over
L = m·K states, run one guided step (MMPS, 1 iteration, batch of one member) and report the growth
of the peak resident memory during the step. Without chunking the decoder's graph of all L frames
is alive during the step; with a decode chunk (``--chunk``) only that many frames' graph is.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from latentda.cli import ScriptHelpFormatter

CHILD = r"""
import json, resource, sys, torch
sys.path.insert(0, sys.argv[4])  # the tools folder
from bench_cost import sparse_operator
from latentda.pipeline import LatentDAPipeline
from latentda.posterior.guidance import MMPSDenoiser
from latentda.posterior.reanalysis import LatentOperator
pipeline_dir, L, chunk = sys.argv[1], int(sys.argv[2]), (None if sys.argv[3] == "none" else int(sys.argv[3]))
torch.set_num_threads(1)
pipeline = LatentDAPipeline.from_pretrained(pipeline_dir)
operator = sparse_operator(pipeline, L)
y, noise = operator.observed()
guided = MMPSDenoiser(pipeline.trajectory_denoiser(), LatentOperator(pipeline, operator, chunk), y, noise, iterations=1)
z = torch.randn(1, L, *pipeline.latent_shape)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
guided(z, torch.tensor(1.0))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"length": L, "chunk": chunk, "step_peak_mb": (after - before) / 1024, "total_peak_mb": after / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="pipeline folder")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="trajectory lengths L, in multiples of the window K")
    parser.add_argument("--chunk", type=int, default=8, help="frames decoded at once in the chunked runs (decode chunk)")
    parser.add_argument("--json", help="also write the measurements to this JSON file")
    args = parser.parse_args()
    config = Path(args.pipeline) / "denoiser" / "config.json"
    if not config.is_file():
        parser.error(f"--pipeline {args.pipeline}: not a pipeline folder (no {config})")
    window = json.loads(config.read_text())["window"]
    rows = []
    for multiple in args.lengths:
        for chunk in ("none", str(args.chunk)):
            out = subprocess.run([sys.executable, "-c", CHILD, args.pipeline, str(multiple * window), chunk,
                                  str(Path(__file__).resolve().parent)], capture_output=True, text=True)
            if out.returncode != 0:
                last = (out.stderr.strip() or "(no output)").splitlines()[-1]
                print(f"{parser.prog}: the step at L = {multiple * window}, decode chunk {chunk} failed "
                      f"(exit {out.returncode}): {last}", file=sys.stderr)
                sys.exit(2)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"L = {r['length']:4d}, decode chunk {str(r['chunk']):>4s}: step peak +{r['step_peak_mb']:7.1f} MB "
                  f"(process peak {r['total_peak_mb']:.0f} MB)", flush=True)
    for chunk in (None, args.chunk):
        series = [r for r in rows if r["chunk"] == chunk]
        if series[-1]["length"] == series[0]["length"]:
            continue  # one length: no growth to report
        growth = (series[-1]["step_peak_mb"] - series[0]["step_peak_mb"]) / (series[-1]["length"] - series[0]["length"])
        print(f"decode chunk {chunk}: {growth:.2f} MB per additional state")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

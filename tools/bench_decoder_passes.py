"""The decoder's passes in a guided step on a CPU: one guided MMPS step (n = 1, 5 % of the pixels observed)
with the decoder linearised over all frames at once, and in passes of at most
``latentda.posterior.reanalysis.CPU_PIXELS_PER_PASS`` output pixels (the default), in one run.

    python tools/bench_decoder_passes.py --pipeline pretrained/kolmogorov --lengths 16 32 64

Prints the machine's matmul GFLOP/s, then per trajectory length L the median wall time of a step both
ways and their ratio (budgeted / all at once). Where a pass over all frames outgrows the caches, the
budgeted passes keep the step's cost linear in L.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from latentda.cli import ScriptHelpFormatter
from latentda.pipeline import LatentDAPipeline
from latentda.posterior import reanalysis
from latentda.posterior.guidance import MMPSDenoiser
from latentda.posterior.reanalysis import LatentOperator

sys.path.insert(0, str(Path(__file__).parent))
from bench_cost import sparse_operator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="pipeline folder")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64], help="trajectory lengths L (states)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per setting (median)")
    args = parser.parse_args()
    torch.manual_seed(0)
    pipeline = LatentDAPipeline.from_pretrained(args.pipeline, device="cpu")
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    print(f"matmul {2 * 1024**3 * 10 / (time.perf_counter() - start) / 1e9:.0f} GFLOP/s, {torch.get_num_threads()} threads")
    budget = reanalysis.CPU_PIXELS_PER_PASS
    print(f"budget {budget} pixels per pass: {max(1, budget // int(np.prod(pipeline.layout.shape)))} frames of "
          f"{pipeline.layout.shape[0]} × {pipeline.layout.shape[1]}")
    for length in args.lengths:
        operator = sparse_operator(pipeline, length)
        y, noise = operator.observed()
        times = None
        if pipeline.calendar:  # a calendar-conditioned prior needs dates: any will do for timing
            times = np.datetime64("2020-01-01T00") + np.arange(length) * np.timedelta64(int(pipeline.time_step), "s")
        blanket = pipeline.trajectory_denoiser(times=times)
        z, sigma = torch.randn(1, length, *pipeline.latent_shape), torch.full((1,), 1.0)
        seconds = {}
        for name, pixels in (("all at once", 1 << 60), ("budgeted", budget)):
            reanalysis.CPU_PIXELS_PER_PASS = pixels
            step = MMPSDenoiser(blanket, LatentOperator(pipeline, operator), y, noise, iterations=1)
            step(z, sigma)  # warm-up
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                step(z, sigma)
                runs.append(time.perf_counter() - start)
            seconds[name] = statistics.median(runs)
        reanalysis.CPU_PIXELS_PER_PASS = budget
        print(f"L = {length:3d}: all at once {seconds['all at once']:.2f} s, budgeted {seconds['budgeted']:.2f} s "
              f"(ratio {seconds['budgeted'] / seconds['all at once']:.2f})", flush=True)


if __name__ == "__main__":
    main()

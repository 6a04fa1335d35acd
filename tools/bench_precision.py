"""Reduced precision: one guided MMPS step in each precision, its time and its error, in one run.

    python tools/bench_precision.py --pipeline pretrained/kolmogorov [--device cuda] [--length 16]

For float32, bfloat16 and float16 (autocast of the denoiser's and decoder's passes; the CG solve
stays float64), prints the median wall time of a guided step (5 % of the pixels observed, 3 CG
iterations) over float32's, and the relative error of the guided mean against float32 at σ = 10,
1 and 0.05. On CPUs the speed of bfloat16 depends on the CPU (docs/benchmarks.md: 22× float32's time
without bfloat16 matrix units, 0.70× on an AMD EPYC with avx512_bf16) and its error is a few per
cent, so ``auto`` keeps float32 there; on a GPU ``auto`` means bfloat16.
"""

import argparse
import statistics
import time

import torch

from latentda.pipeline import LatentDAPipeline
from latentda.posterior.reanalysis import PosteriorSettings, guided_denoiser
from latentda.cli import ScriptHelpFormatter

from bench_cost import sparse_operator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="pipeline folder (or Hub repo id)")
    parser.add_argument("--device", default="cpu", help="torch device of the pipeline and the step (cpu, cuda, ...)")
    parser.add_argument("--length", type=int, default=16, help="states of the observed trajectory (L)")
    parser.add_argument("--repeats", type=int, default=3, help="timed guided steps per precision; their median is reported")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16", "float16"],
                        help="precisions of the networks' passes: auto, float32, bfloat16 or float16; the first is the reference")
    args = parser.parse_args()
    pipeline = LatentDAPipeline.from_pretrained(args.pipeline, device=args.device)
    operator = sparse_operator(pipeline, args.length)
    z = torch.randn(1, args.length, *pipeline.latent_shape, generator=torch.Generator().manual_seed(0)).to(args.device)
    means, seconds = {}, {}
    for precision in args.precisions:
        guided = guided_denoiser(pipeline, operator, PosteriorSettings(precision=precision))
        means[precision] = {s: guided(z * s, torch.tensor(s, device=args.device)) for s in (10.0, 1.0, 0.05)}
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            guided(z, torch.tensor(1.0, device=args.device))
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        seconds[precision] = statistics.median(times)
    reference = args.precisions[0]
    for precision in args.precisions:
        errors = ", ".join(f"σ={s:g}: {((means[precision][s] - means[reference][s]).norm() / means[reference][s].norm()).item():.2e}"
                           for s in means[precision])
        print(f"{precision:9s}: {seconds[precision]:7.3f} s per guided step ({seconds[precision] / seconds[reference]:.2f}× "
              f"{reference}); relative error of the guided mean {errors}")


if __name__ == "__main__":
    main()

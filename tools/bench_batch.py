"""Members sampled in batches against one at a time: same members, throughput ratio, in one run.

    python tools/bench_batch.py --pipeline pretrained/kolmogorov --members 8 --batches 1 2 4 8 [--steps 4]

Reanalyses one sparse-5 % observation window (L = ``--length``) with MMPS, ``--members`` members,
for each batch size in ``--batches`` (the first is the reference), and prints seconds per member,
throughput relative to the first batch size, and the largest difference of the members' fields from
the reference's (members are independent draws: the batch must not change them beyond float
rounding of batched network calls). Also prints the machine's float32 matmul rate.
"""

import argparse
import time

import numpy as np
import torch

from latentda.pipeline import LatentDAPipeline
from latentda.posterior.reanalysis import PosteriorSettings, posterior_members
from latentda.cli import ScriptHelpFormatter

from bench_cost import sparse_operator


def matmul_gflops() -> float:
    a = torch.randn(2048, 2048)
    a @ a
    start = time.perf_counter()
    for _ in range(5):
        a @ a
    return 5 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="pipeline folder (or Hub repo id)")
    parser.add_argument("--members", type=int, default=8, help="ensemble members sampled for every batch size")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="members sampled together (batch_members); the first is the reference")
    parser.add_argument("--length", type=int, default=16, help="states in the observation window (L)")
    parser.add_argument("--steps", type=int, default=4, help="diffusion steps (noise levels) per member")
    parser.add_argument("--sampler", default="ddpm", help="sampler: ddpm, ddim, heun, pc or heun-pc")
    args = parser.parse_args()
    pipeline = LatentDAPipeline.from_pretrained(args.pipeline)
    pipeline.set_progress_bar_config(disable=True)
    operator = sparse_operator(pipeline, args.length)
    print(f"float32 matmul: {matmul_gflops():.0f} GFLOP/s; {torch.get_num_threads()} threads")
    reference = base = None
    for batch in args.batches:
        settings = PosteriorSettings(steps=args.steps, sampler=args.sampler, batch_members=batch)
        start = time.perf_counter()
        fields = np.stack([f for _, f, _ in posterior_members(pipeline, operator, list(range(args.members)), settings)])
        seconds = (time.perf_counter() - start) / args.members
        reference = fields if reference is None else reference
        base = seconds if base is None else base
        difference = np.abs(fields - reference).max()
        print(f"batch {batch:3d}: {seconds:7.2f} s/member, throughput ×{base / seconds:.2f}, "
              f"max |member − batch-{args.batches[0]} member| {difference:.2e} (fields std {reference.std():.2f})", flush=True)


if __name__ == "__main__":
    main()

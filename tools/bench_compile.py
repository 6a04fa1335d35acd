"""Eager vs ``torch.compile``d denoiser blocks (regional compilation, inductor), in one run.

    python tools/bench_compile.py --pipeline pretrained/kolmogorov --repeats 5

Times, for the eager and the compiled denoiser of the same pipeline: one unguided denoiser call on a
window batch, one training step (loss, backward) and one guided MMPS step on a trajectory of
``--length`` states (forward and VJPs through the denoiser; the decoder stays eager). Prints the
first call (which compiles) and the median of ``--repeats`` later calls, and the ratio eager/compiled.
"""

import argparse
import statistics
import time

import torch

from latentda.diffusion.denoiser import denoising_loss
from latentda.pipeline import LatentDAPipeline
from latentda.posterior.guidance import MMPSDenoiser
from latentda.training.loop import batch_random
from latentda.cli import ScriptHelpFormatter


def timed(function, repeats: int) -> tuple[float, float]:
    began = time.perf_counter()
    function()
    first = time.perf_counter() - began
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return first, statistics.median(times)


def tasks(pipeline: LatentDAPipeline, length: int, batch: int):
    generator = torch.Generator().manual_seed(0)
    K, shape = pipeline.window, pipeline.latent_shape
    windows = torch.randn(batch, K, *shape, generator=generator)
    trajectory = torch.randn(1, length, *shape, generator=generator)
    sigma = torch.tensor(1.0)
    prior = pipeline.trajectory_denoiser()
    flat = lambda z: z[:, :, 0, ::4, ::4].reshape(z.shape[0], -1)  # a sparse latent-space operator
    y = flat(trajectory)[0].double()
    guided = MMPSDenoiser(prior, flat, y, 0.1, iterations=3)

    def denoise():
        with torch.no_grad():
            pipeline.denoiser(windows, sigma)

    def train_step():
        loss = denoising_loss(pipeline.denoiser, windows, batch_random(0, 0, 0, batch))
        loss.backward()

    def guided_step():
        guided(trajectory, sigma)

    return {"denoiser call": denoise, "training step": train_step, f"MMPS step (L={length})": guided_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="pipeline folder (or Hub repo id)")
    parser.add_argument("--length", type=int, default=16, help="states of the trajectory of the guided MMPS step (L)")
    parser.add_argument("--batch", type=int, default=8,
                        help="windows (of K latent states) in the denoiser call and the training step")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after the first; their median is reported")
    args = parser.parse_args()
    results = {}
    for compiled in (False, True):
        pipeline = LatentDAPipeline.from_pretrained(args.pipeline)
        if compiled:
            pipeline.compile()
        for name, task in tasks(pipeline, args.length, args.batch).items():
            results[(name, compiled)] = timed(task, args.repeats)
    print(f"{'task':24s}{'eager first':>13s}{'eager':>9s}{'compiled first':>16s}{'compiled':>10s}{'speed-up':>10s}")
    for name in dict.fromkeys(name for name, _ in results):
        (e_first, eager), (c_first, compiled) = results[(name, False)], results[(name, True)]
        print(f"{name:24s}{e_first:12.3f}s{eager:8.3f}s{c_first:15.3f}s{compiled:9.3f}s{eager / compiled:9.2f}×")


if __name__ == "__main__":
    main()

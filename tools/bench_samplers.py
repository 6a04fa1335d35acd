"""How much of the prior and posterior variance a sampler keeps, on an exact Gaussian.

    python tools/bench_samplers.py [CONFIG ...]      # CONFIG = SAMPLER:STEPS:SIGMA_START[:TAU[:CHURN]]

A Gaussian prior (4-d, 32 independent copies per sample so that the pc step size, estimated per
sample, averages over 128 numbers as over a real state's thousands) with its closed-form denoiser,
and the MMPS posterior given 2 noisy linear observations of each copy (CG exact in 2 iterations).
Samplers that discretise the reverse process coarsely lose variance (ddpm, ddim, pc) or overshoot
(heun at few steps). Prints the ratio of sampled to true variance, averaged over dimensions
(6400 samples: ±0.04 Monte-Carlo error), and the denoiser calls per sample. This is the sampler's
own error, with no network: on the Kolmogorov prior the ensembles' spread-skill follows the same
ordering (docs/benchmarks.md, "Fewer steps for the same calibration").
"""

import sys

import torch

from latentda.diffusion.denoiser import make_schedule
from latentda.diffusion.gaussian import GaussianDenoiser
from latentda.diffusion.sampling import sample
from latentda.posterior import MMPSDenoiser

DEFAULT = ["ddpm:16:1000", "ddim:16:1000", "pc:16:1000", "pc:32:1000", "pc:8:20", "heun:8:1000", "heun:16:1000",
           "heun:8:5", "heun:6:5", "heun:5:3", "heun:4:2"]


def calls(method: str, steps: int) -> int:
    per_step = {"heun": 2, "pc": 2, "heun-pc": 3}.get(method, 1)
    return per_step * (steps - 1) + 1


def main() -> None:
    configs = sys.argv[1:] or DEFAULT
    generator = torch.Generator().manual_seed(0)
    dim, copies = 4, 32
    factor = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    covariance = factor @ factor.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)
    A = torch.randn(2, dim, generator=generator, dtype=torch.float64)
    noise = torch.tensor([0.1, 0.3], dtype=torch.float64)
    y = torch.randn(2, generator=generator, dtype=torch.float64)
    gain = covariance @ A.T @ torch.linalg.inv(A @ covariance @ A.T + torch.diag(noise**2))
    posterior = covariance - gain @ A @ covariance
    prior = GaussianDenoiser(torch.zeros(dim * copies, dtype=torch.float64), torch.block_diag(*[covariance] * copies))
    blocks = torch.block_diag(*[A] * copies)
    guided = MMPSDenoiser(prior, lambda x: x @ blocks.T, y.repeat(copies), noise.repeat(copies), iterations=2)
    print("| config (sampler:steps:σ_start[:τ[:churn]]) | calls | prior variance kept | posterior variance kept |")
    print("|---|---|---|---|")
    for config in configs:
        parts = config.split(":")
        method, steps, start = parts[0], int(parts[1]), float(parts[2])
        tau = float(parts[3]) if len(parts) > 3 else 0.1
        churn = float(parts[4]) if len(parts) > 4 else 0.0
        ratios = []
        for denoise, target in ((prior, covariance), (guided, posterior)):
            x = sample(denoise, (200, dim * copies), make_schedule(), steps=steps, method=method, sigma_start=start,
                       tau=tau, churn=churn, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
            x = x.reshape(-1, dim)
            ratios.append(float((torch.cov(x.T).diagonal() / target.diagonal()).mean()))
        print(f"| {config} | {calls(method, steps)} | {ratios[0]:.2f} | {ratios[1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()

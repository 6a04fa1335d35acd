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

import argparse
import math

import torch

from latentda.diffusion.denoiser import SIGMA_MAX, SIGMA_MIN, make_schedule
from latentda.diffusion.gaussian import GaussianDenoiser
from latentda.diffusion.sampling import sample
from latentda.diffusion.settings import SAMPLERS
from latentda.posterior import MMPSDenoiser

DEFAULT = ["ddpm:16:1000", "ddim:16:1000", "pc:16:1000", "pc:32:1000", "pc:8:20", "heun:8:1000", "heun:16:1000",
           "heun:8:5", "heun:6:5", "heun:5:3", "heun:4:2"]


def calls(method: str, steps: int) -> int:
    per_step = {"heun": 2, "pc": 2, "heun-pc": 3}.get(method, 1)
    return per_step * (steps - 1) + 1


def parse_config(text: str) -> tuple[str, int, float, float, float]:
    """(sampler, steps, σ_start, τ, churn) of ``SAMPLER:STEPS:SIGMA_START[:TAU[:CHURN]]``; τ = 0.1 and
    churn = 0 when left out. Raises ValueError with a one-line reason."""
    parts = text.split(":")
    if not 3 <= len(parts) <= 5:
        raise ValueError(f"has {len(parts)} fields, expected 3 to 5")
    method = parts[0]
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler '{method}' (choose from {', '.join(SAMPLERS)})")
    try:
        steps = int(parts[1])
        start, tau, churn = (float(part) for part in parts[2:] + ["0.1", "0"][len(parts) - 3 :])
    except ValueError:
        raise ValueError("STEPS must be an integer and SIGMA_START, TAU, CHURN numbers") from None
    if steps < 1:
        raise ValueError(f"STEPS must be at least 1, got {steps}")
    if not SIGMA_MIN < start <= SIGMA_MAX:
        raise ValueError(f"SIGMA_START {start:g} outside the prior's σ range ({SIGMA_MIN:g}, {SIGMA_MAX:g}]")
    if not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"TAU must be a positive number, got {tau:g}")
    if not math.isfinite(churn) or churn < 0:
        raise ValueError(f"CHURN must be a non-negative number, got {churn:g}")
    return method, steps, start, tau, churn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", metavar="CONFIG", default=DEFAULT,
                        help="SAMPLER:STEPS:SIGMA_START[:TAU[:CHURN]], i.e. sampler:steps:σ_start[:τ[:churn]]: SAMPLER "
                             f"one of {', '.join(SAMPLERS)}; STEPS noise levels; SIGMA_START the first noise level, in "
                             f"({SIGMA_MIN:g}, {SIGMA_MAX:g}]; TAU the Langevin step factor of pc and heun-pc, > 0 "
                             "(default 0.1); CHURN stochastic churn, ≥ 0 (default 0: none). Without CONFIG: " + " ".join(DEFAULT))
    args = parser.parse_args()
    configs = args.configs
    parsed = {}
    for config in configs:
        try:
            parsed[config] = parse_config(config)
        except ValueError as error:
            parser.error(f"config '{config}': {error}")
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
        method, steps, start, tau, churn = parsed[config]
        ratios = []
        for denoise, target in ((prior, covariance), (guided, posterior)):
            x = sample(denoise, (200, dim * copies), make_schedule(), steps=steps, method=method, sigma_start=start,
                       tau=tau, churn=churn, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
            x = x.reshape(-1, dim)
            ratios.append(float((torch.cov(x.T).diagonal() / target.diagonal()).mean()))
        print(f"| {config} | {calls(method, steps)} | {ratios[0]:.2f} | {ratios[1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""Samplers that consume a denoiser mean: any callable ``denoise(x_t, σ) -> E[x | x_t]``.

Because they only need the mean, the same samplers run the unconditional prior, a trajectory
stitched from blankets, or a guided (posterior) mean. The σ grid σ_0 = σ_max > … > σ_{N−1} = σ_min
is the Karras (ρ = 7) grid of diffusers' ``EDMEulerScheduler``. diffusers' ``step`` functions take
the raw network output of their own parameterisation, not an arbitrary (e.g. guided) mean, so the
updates are written here (variance-exploding, x_t = x + σ ε; with x̂ = denoise(x_i, σ_i)):

- ``ddim`` (deterministic): x_{i+1} = x̂ + (σ_{i+1}/σ_i)(x_i − x̂).
- ``ddpm`` (ancestral): x_{i+1} ~ q(x_{i+1} | x_i, x̂) = N(x̂ + r (x_i − x̂), σ_{i+1}² (1 − r) I),
  r = σ_{i+1}²/σ_i², the exact Gaussian bridge of the VE process given x_0 = x̂.
- ``heun`` (deterministic, second order; Karras et al. 2022, Alg. 1): with d(x, σ) = (x − x̂)/σ,
  x' = x_i + (σ_{i+1} − σ_i) d(x_i, σ_i), x_{i+1} = x_i + (σ_{i+1} − σ_i)(d(x_i, σ_i) + d(x', σ_{i+1}))/2.
- ``pc`` (predictor-corrector, Song et al. 2021 as used by SDA): a ``ddim`` predictor followed by
  ``corrections`` Langevin steps at σ_{i+1}: x ← x + δ s + √(2δ) z with the score
  s = (denoise(x, σ) − x)/σ² and δ = τ / mean(s²), one step size for the whole batch (a
  per-sample mean is too noisy for small states; members sampled together share δ, so sample
  members one at a time, as reanalysis and forecasts do, for results independent of batching).

The sample returned is the final denoised mean at σ_min.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from diffusers import EDMEulerScheduler
from torch import Tensor
from tqdm.auto import tqdm

from latentda.errors import LatentdaError

__all__ = ["noise_levels", "sample", "SAMPLERS"]

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
SAMPLERS = ("ddpm", "ddim", "heun", "pc")


def noise_levels(schedule: EDMEulerScheduler, steps: int) -> Tensor:
    """The decreasing σ grid of ``steps`` levels from σ_max to σ_min (float64)."""
    if steps < 1:
        raise LatentdaError(f"steps must be at least 1, got {steps}")
    schedule.set_timesteps(steps)
    return schedule.sigmas[:steps].to(torch.float64)


def _randn(shape, generator: torch.Generator | None, like: Tensor) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=like.device, dtype=like.dtype)


def sample(
    denoise: DenoiseFn,
    shape: tuple[int, ...],
    schedule: EDMEulerScheduler,
    steps: int = 64,
    method: Literal["ddpm", "ddim", "heun", "pc"] = "ddpm",
    corrections: int = 1,
    tau: float = 0.1,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    description: str = "sampling",
) -> Tensor:
    """Draw x ~ p(x) (the distribution whose mean ``denoise`` gives) of shape ``shape``."""
    if method not in SAMPLERS:
        raise LatentdaError(f"unknown sampler '{method}' (choose from {', '.join(SAMPLERS)})")
    sigmas = noise_levels(schedule, steps).tolist()
    like = torch.empty(0, device=device, dtype=dtype)
    x = sigmas[0] * _randn(shape, generator, like)
    for i in tqdm(range(len(sigmas) - 1), desc=description, disable=not progress, leave=False):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        mean = denoise(x, torch.tensor(sigma, dtype=dtype, device=device))
        if method == "heun":
            slope = (x - mean) / sigma
            guess = x + (sigma_next - sigma) * slope
            level = torch.tensor(sigma_next, dtype=dtype, device=device)
            slope_next = (guess - denoise(guess, level)) / sigma_next
            x = x + (sigma_next - sigma) * (slope + slope_next) / 2
        elif method == "ddpm":
            ratio = sigma_next**2 / sigma**2
            x = mean + ratio * (x - mean) + sigma_next * (1 - ratio) ** 0.5 * _randn(shape, generator, like)
        else:
            x = mean + (sigma_next / sigma) * (x - mean)
        if method == "pc":
            level = torch.tensor(sigma_next, dtype=dtype, device=device)
            for _ in range(corrections):
                score = (denoise(x, level) - x) / sigma_next**2
                delta = tau / score.square().mean()
                x = x + delta * score + (2 * delta) ** 0.5 * _randn(shape, generator, like)
    return denoise(x, torch.tensor(sigmas[-1], dtype=dtype, device=device))

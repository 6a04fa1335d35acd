"""Samplers that consume a denoiser mean: any callable ``denoise(x_t, σ) -> E[x | x_t]``.

Because they only need the mean, the same samplers run the unconditional prior, a trajectory
stitched from blankets, or a guided (posterior) mean. The σ grid σ_0 = σ_max > … > σ_{N−1} = σ_min
is the Karras (ρ = 7) grid of diffusers' ``EDMEulerScheduler``, from the prior's σ_max or from a
lower ``sigma_start`` (starting lower spends the same steps where the data are shaped). Standardised
data have unit variance per element, not along every direction: the first x is drawn with
(σ_0² + σ_data²) I (below), while a window of correlated states has directions of far larger variance λ
(the field's mean over a window of the exactness benchmark's latents: λ = 462), whose level-σ_0 law has
λ + σ_0²; started below √λ, samples of the prior come out narrow along them (docs/exactness.md, "What
the excess is not"). Posteriors, whose observations pin those directions, are not affected. diffusers' ``step`` functions take
the raw network output of their own parameterisation, not an arbitrary (e.g. guided) mean, so the
updates are written here (variance-exploding, x_t = x + σ ε; with x̂ = denoise(x_i, σ_i)):

- ``ddim`` (deterministic): x_{i+1} = x̂ + (σ_{i+1}/σ_i)(x_i − x̂).
- ``ddpm`` (ancestral): x_{i+1} ~ q(x_{i+1} | x_i, x̂) = N(x̂ + r (x_i − x̂), σ_{i+1}² (1 − r) I),
  r = σ_{i+1}²/σ_i², the exact Gaussian bridge of the VE process given x_0 = x̂.
- ``heun`` (deterministic, second order; Karras et al. 2022, Alg. 1): with d(x, σ) = (x − x̂)/σ,
  x' = x_i + (σ_{i+1} − σ_i) d(x_i, σ_i), x_{i+1} = x_i + (σ_{i+1} − σ_i)(d(x_i, σ_i) + d(x', σ_{i+1}))/2.
- ``pc`` (predictor-corrector, Song et al. 2021 as used by SDA): a ``ddim`` predictor followed by
  ``corrections`` Langevin steps at σ_{i+1}: x ← x + δ s + √(2δ) z with the score
  s = (denoise(x, σ) − x)/σ² and δ = min(τ / mean(s²), σ²), the mean taken over each batch row
  (member) on its own, so that a member's steps do not depend on the others sharing its batch.
  **The cap δ ≤ σ²** keeps every direction stable: at level σ the target of x has covariance
  Σ + σ² I ⪰ σ² I, and for a direction of variance v ≥ σ² the step maps the deviation e ↦ (1 − δ/v) e
  plus noise, stable only for δ < 2v, with stationary variance v / (1 − δ/2v). SDA's self-normalised
  δ = τ / mean(s²) ≥ τσ² is sized for the *typical* direction; directions pinned by accurate
  observations (v near σ² while most v are larger: a few observed pixels among many) then get δ/v
  far above 2 and are amplified at every correction — on the exactness benchmark's Gaussian
  (docs/exactness.md) with 5 % of the pixels observed at σ_y = 0.03, the observed pixels' variance came
  out 20× the exact posterior's at τ = 2, while the variance pooled over all pixels read 1.37. With the cap δ/v ≤ 1 for every
  direction (at most twice the stationary variance, for v = σ²), and τ ≥ 1 means δ = σ².
- ``heun-pc``: a ``heun`` predictor followed by the ``corrections`` Langevin steps of ``pc``. With
  few steps the Heun predictor over-disperses and the DDIM one under-disperses (on an exact
  Gaussian, ``tools/bench_samplers.py``), while the corrections pull each level towards its target
  distribution and, guided, towards the observations.

``churn`` (Karras et al. 2022, Alg. 2) makes any of them stochastic: before step i the noise level
is raised to σ̂ = σ_i (1 + γ) by adding √(σ̂² − σ_i²) ε, γ = min(churn / N, √2 − 1), and the step
goes from σ̂ to σ_{i+1}; with ``heun`` this is EDM's stochastic second-order sampler.

Members in one batch are independent draws: with one generator per batch row (``generator`` a
list), every random number of row b comes from its own generator, so a member sampled in a batch
equals the same member sampled alone (to float rounding of the batched network calls).
The sample returned is the final denoised mean at σ_min.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
from diffusers import EDMEulerScheduler
from torch import Tensor
from tqdm.auto import tqdm

from latentda.diffusion.settings import SAMPLERS


__all__ = ["noise_levels", "sample", "standard_normal", "SAMPLERS"]

DenoiseFn = Callable[[Tensor, Tensor], Tensor]


def noise_levels(schedule: EDMEulerScheduler, steps: int, sigma_start: float | None = None) -> Tensor:
    """The decreasing σ grid of ``steps`` levels from σ_max to σ_min (float64); ``sigma_start`` starts
    it lower than the schedule's σ_max (the same Karras grid over [σ_min, sigma_start])."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if sigma_start is not None:
        if not schedule.config.sigma_min < sigma_start <= schedule.config.sigma_max:
            raise ValueError(f"sigma_start {sigma_start} outside the prior's σ range "
                             f"({schedule.config.sigma_min}, {schedule.config.sigma_max}]")
        schedule = EDMEulerScheduler.from_config(schedule.config, sigma_max=sigma_start)
    schedule.set_timesteps(steps)
    return schedule.sigmas[:steps].to(torch.float64)


Generators = torch.Generator | Sequence[torch.Generator] | None


def standard_normal(shape, generator: Generators, like: Tensor) -> Tensor:
    """N(0, I) of ``shape``; with a list of generators, row b drawn from generator b."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=like.device, dtype=like.dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    rows = [torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generator]
    return torch.cat(rows).to(device=like.device, dtype=like.dtype)


def _row_mean(x: Tensor) -> Tensor:
    """Mean over every dimension but the first, shaped to broadcast against x."""
    return x.reshape(x.shape[0], -1).mean(dim=1).reshape(-1, *([1] * (x.ndim - 1)))


def sample(
    denoise: DenoiseFn,
    shape: tuple[int, ...],
    schedule: EDMEulerScheduler,
    steps: int = 64,
    method: Literal["ddpm", "ddim", "heun", "pc", "heun-pc"] = "ddpm",
    corrections: int = 1,
    tau: float = 0.1,
    sigma_start: float | None = None,
    churn: float = 0.0,
    generator: Generators = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    description: str = "sampling",
) -> Tensor:
    """Draw x ~ p(x) (the distribution whose mean ``denoise`` gives) of shape ``shape``."""
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler '{method}' (choose from {', '.join(SAMPLERS)})")
    if churn < 0:
        raise ValueError(f"churn must be non-negative, got {churn}")
    sigmas = noise_levels(schedule, steps, sigma_start).tolist()
    like = torch.empty(0, device=device, dtype=dtype)
    # x at the first level is data plus noise: N(0, (σ_0² + σ_data²) I) for standardised data, which
    # matters when sampling starts at a low σ_0 (sigma_start) rather than at σ_max ≫ σ_data.
    x = (sigmas[0] ** 2 + float(schedule.config.sigma_data) ** 2) ** 0.5 * standard_normal(shape, generator, like)
    gamma = min(churn / max(len(sigmas) - 1, 1), 2**0.5 - 1)
    for i in tqdm(range(len(sigmas) - 1), desc=description, disable=not progress, leave=False):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if gamma > 0:  # churn: raise the noise level to σ(1 + γ) with fresh noise, then step from there
            raised = sigma * (1 + gamma)
            x = x + (raised**2 - sigma**2) ** 0.5 * standard_normal(shape, generator, like)
            sigma = raised
        mean = denoise(x, torch.tensor(sigma, dtype=dtype, device=device))
        if method in ("heun", "heun-pc"):
            slope = (x - mean) / sigma
            guess = x + (sigma_next - sigma) * slope
            level = torch.tensor(sigma_next, dtype=dtype, device=device)
            slope_next = (guess - denoise(guess, level)) / sigma_next
            x = x + (sigma_next - sigma) * (slope + slope_next) / 2
        elif method == "ddpm":
            ratio = sigma_next**2 / sigma**2
            x = mean + ratio * (x - mean) + sigma_next * (1 - ratio) ** 0.5 * standard_normal(shape, generator, like)
        else:
            x = mean + (sigma_next / sigma) * (x - mean)
        if method in ("pc", "heun-pc"):
            level = torch.tensor(sigma_next, dtype=dtype, device=device)
            for _ in range(corrections):
                score = (denoise(x, level) - x) / sigma_next**2
                delta = (tau / _row_mean(score.square())).clamp(max=sigma_next**2)  # module docstring: δ ≤ σ²
                x = x + delta * score + (2 * delta) ** 0.5 * standard_normal(shape, generator, like)
    return denoise(x, torch.tensor(sigmas[-1], dtype=dtype, device=device))

"""EDM / variance-exploding denoiser: the posterior mean E[x | x_t] from a trained backbone.

Noising is x_t = x + σ ε with ε ~ N(0, I) and σ ∈ [σ_min, σ_max] = [1e-3, 1e3]. Following Karras
et al. (2022), the backbone F is wrapped as

    D(x_t, σ) = c_skip(σ) x_t + c_out(σ) F(c_in(σ) x_t, c_noise(σ)),
    c_skip = σ_d² / (σ² + σ_d²),  c_out = σ σ_d / √(σ² + σ_d²),  c_in = 1 / √(σ² + σ_d²),
    c_noise = ¼ log σ,

so that F's target has unit variance at every σ. These coefficients come from diffusers'
``EDMEulerScheduler`` (its ``precondition_*`` methods), which also gives the sampling σ grid and is
saved with the pipeline as its noise schedule. Training minimises

    E_{σ, x, ε} λ(σ) ‖D(x + σ ε, σ) − x‖²,   λ(σ) = 1/σ² + 1/σ_d²,

which with σ_d = 1 (standardised latents) is the weight 1/σ² + 1. The training noise levels
(:class:`TrainingNoise`) are log-uniform on [σ_min, σ_max] by default, or log-normal,
log σ ~ N(P_mean, P_std²) truncated to [log σ_min, log σ_max] (EDM's choice, P_mean = −1.2,
P_std = 1.2), which spends the network's capacity where sampling needs it: λ(σ) makes every level's
target unit-variance, so the distribution of σ alone decides how much training each level gets.

**Known frames.** A backbone built with ``known_frames`` is also the conditional denoiser of a
window given some of its states, k ⊂ {1..K} (a forecast's or a filter's history; clean, or trained
off the truth by ``history_noise``, :class:`KnownFrames`):

    D(x_t, σ; k)_t = x_t                                   for t ∈ k (the given states, unscaled),
    D(x_t, σ; k)_t = c_skip x_t + c_out F(x̃, c_noise, k)_t  otherwise,  x̃_t = x_t (t ∈ k), c_in x_t (t ∉ k),

the network seeing the given states as they are (c_in would shrink them to nothing at high σ) and a
per-state flag. Trained with :class:`KnownFrames` (a random prefix given, with some probability),
the loss λ(σ)‖D − x‖² counts the other states only. The history then conditions the
window by construction (exactly when trained clean; as a history that errs by σ_h with
``history_noise``), rather than through guidance with a slack σ_c
(:mod:`latentda.posterior.forecast`): the conditional p(z_{n+1:K} | z_{1:n}) is learnt, not
approximated by the Gaussian step of MMPS. As in video diffusion models conditioned on context
frames (e.g. Ho et al. 2022, "Video diffusion models"; Chen et al. 2024, "Diffusion forcing").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import EDMEulerScheduler
from torch import Tensor, nn

from latentda.diffusion.increments import Increments

__all__ = ["Denoiser", "make_schedule", "denoising_loss", "TrainingNoise", "KnownFrames", "NOISE_DISTRIBUTIONS", "SIGMA_MIN", "SIGMA_MAX"]

SIGMA_MIN, SIGMA_MAX = 1e-3, 1e3
NOISE_DISTRIBUTIONS = ("log-uniform", "log-normal")


@dataclass(frozen=True)
class TrainingNoise:
    """The law of the training noise level σ on [σ_min, σ_max], drawn by inverse transform from one
    uniform u ∈ [0, 1) per example:

    - ``log-uniform``: log σ = a + u (b − a), with a = log σ_min, b = log σ_max;
    - ``log-normal``: log σ = μ + s Φ⁻¹(Φ(α) + u (Φ(β) − Φ(α))), α = (a − μ)/s, β = (b − μ)/s: the normal
      N(μ, s²) with μ = ``log_sigma_mean``, s = ``log_sigma_std`` truncated to [a, b] (exactly, not
      clamped: no mass piles up at the ends).
    """

    distribution: str = "log-uniform"
    log_sigma_mean: float = -1.2
    log_sigma_std: float = 1.2

    def __post_init__(self) -> None:
        """The rules, once (``DiffusionConfig.validate`` reports them as config errors): each message
        starts with the config key it is about."""
        if self.distribution not in NOISE_DISTRIBUTIONS:
            raise ValueError(f"noise_distribution: must be one of {', '.join(NOISE_DISTRIBUTIONS)}, got {self.distribution!r}")
        if not self.log_sigma_std > 0:
            raise ValueError(f"log_sigma_std: must be positive, got {self.log_sigma_std!r}")

    def sigmas(self, u: Tensor, sigma_min: float, sigma_max: float) -> Tensor:
        """σ for uniform draws ``u`` (float64 recommended: the normal's tails need the precision)."""
        a, b = math.log(sigma_min), math.log(sigma_max)
        if self.distribution == "log-uniform":
            return torch.exp(a + u * (b - a))
        mean, std = self.log_sigma_mean, self.log_sigma_std
        low, high = (torch.special.ndtr(torch.tensor((v - mean) / std, dtype=u.dtype)) for v in (a, b))
        log_sigma = mean + std * torch.special.ndtri(low + u * (high - low))
        return torch.exp(log_sigma.clamp(a, b))  # the clamp only absorbs rounding at the ends


def make_schedule(sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, sigma_data: float = 1.0, rho: float = 7.0, sigma_schedule: str = "karras") -> EDMEulerScheduler:
    """The EDM noise schedule (Karras σ grid, preconditioning) as a diffusers scheduler."""
    return EDMEulerScheduler(sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data, rho=rho, sigma_schedule=sigma_schedule,
                             prediction_type="epsilon", final_sigmas_type="sigma_min")


def _expand(sigma: Tensor, like: Tensor) -> Tensor:
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(like.shape[0])
    return sigma.reshape(-1, *([1] * (like.ndim - 1)))


class Denoiser(nn.Module):
    """D(x_t, σ) ≈ E[x | x_t] from a backbone ``F(x, noise_label, context)`` (see module docstring)."""

    def __init__(self, backbone: nn.Module, schedule: EDMEulerScheduler | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.schedule = schedule or make_schedule()

    @property
    def sigma_min(self) -> float:
        return float(self.schedule.config.sigma_min)

    @property
    def sigma_max(self) -> float:
        return float(self.schedule.config.sigma_max)

    def forward(self, x_t: Tensor, sigma: Tensor | float, context: Tensor | None = None, known: Tensor | None = None) -> Tensor:
        """x_t: (B, ...), σ: scalar or (B,). Returns the denoised mean with the shape of x_t.
        ``known`` (B, K) bool: the states of x_t (B, K, ...) given clean (module docstring, "Known
        frames"); they are returned as they are."""
        sigma = _expand(sigma, x_t)
        scaled = self.schedule.precondition_inputs(x_t, sigma)
        noise_label = self.schedule.precondition_noise(sigma.flatten())
        if known is None:
            return self.schedule.precondition_outputs(x_t, self.backbone(scaled, noise_label, context), sigma)
        given = known.reshape(*known.shape, *([1] * (x_t.ndim - known.ndim)))
        output = self.backbone(torch.where(given, x_t, scaled), noise_label, context, known)
        return torch.where(given, x_t, self.schedule.precondition_outputs(x_t, output, sigma))


@dataclass(frozen=True)
class KnownFrames:
    """Which leading states of each training window are given (module docstring, "Known frames"):
    with probability ``probability`` a prefix of n states, n uniform in {1, …, K − 1}, otherwise none
    (the window's prior, which reanalyses and a filter's first cycle sample).

    ``noise`` σ_h > 0 gives the prefix **wrong as a whole** (conditioning augmentation, as cascaded
    diffusion models noise their low-resolution input, Ho et al. 2022): one offset e ~ N(0, σ_h² I)
    per window, in standardised latents z̃, added to every given state alike,

        z̃'_k = z̃_k + e  (k ≤ n),   z̃'_k = z̃_k  (k > n),

    and the window z̃' is the training example (given states and targets). The given history keeps its
    own dynamics (its increments are exact) but sits off the truth, as a filter member's past does;
    the network learns p(z̃_{n+1:K} | z̃'_{1:n}), whose first free state departs from the last given one
    by the forecast's increment plus a correction of variance up to σ_h² (less where a shifted history
    looks unlike the data and betrays e), and MMPS then
    sees that variance in the denoiser's Jacobian, so observations can pull a window away from a
    member's wrong past. In increment coordinates (``increments``, :mod:`latentda.diffusion.increments`)
    the offset moves u_1 by e and the first free increment by −e/s: about 10 σ_h on QG (s ≈ 0.07–0.13), so σ_h
    is small, of the order of a filter's error in z̃ (≈ 0.19 per unit of ψ error on QG)."""

    probability: float = 0.5
    noise: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.probability <= 1:
            raise ValueError(f"known_probability: must be in (0, 1], got {self.probability!r}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"history_noise: must be a finite number ≥ 0, got {self.noise!r}")

    def draw(self, random, window: int) -> Tensor:
        """(B, K) bool from two uniforms per example of ``random`` (as :func:`denoising_loss`'s)."""
        given = random.rand(dtype=torch.float64) < self.probability
        count = 1 + (random.rand(dtype=torch.float64) * (window - 1)).floor().clamp(max=window - 2)
        count = torch.where(given, count, torch.zeros_like(count))
        return torch.arange(window, device=count.device)[None] < count[:, None]

    def offset(self, x: Tensor, known: Tensor, random, increments: Increments | None = None) -> Tensor:
        """The windows x (B, K, c, h, w) with their given states off by one draw e per window (class
        docstring); x itself when ``noise`` is 0 (no draw). ``increments``: x is in increment
        coordinates, the offset is added to its latents."""
        if self.noise == 0:
            return x
        e = self.noise * random.randn(*x.shape[2:]).to(x.device, x.dtype)
        delta = known.to(x.dtype).reshape(*known.shape, *([1] * (x.ndim - 2))) * e.unsqueeze(1)
        if increments is None:
            return x + delta
        return increments.to_increments(increments.to_latents(x) + delta)


def denoising_loss(denoiser: Denoiser, x: Tensor, random, context: Tensor | None = None,
                   levels: TrainingNoise = TrainingNoise(), known_frames: KnownFrames | None = None,
                   increments: Increments | None = None) -> Tensor:
    """λ(σ)-weighted denoising score matching loss of a batch x (B, ...), σ drawn from ``levels``.

    ``random`` draws the noise levels and noise example by example (``rand(*shape)`` and
    ``randn(*shape)`` returning (B, *shape), e.g. :class:`latentda.training.loop.BatchRandom`).
    ``known_frames``: windows x (B, K, ...) some of whose leading states are given clean; their
    elements then count zero in the mean (the sum over the other states' elements over the batch's
    element count, so that the loss of a batch does not depend on how it is split over processes);
    with ``known_frames.noise`` the given states are off by one offset per window
    (:meth:`KnownFrames.offset`; ``increments``: x is in increment coordinates).
    """
    u = random.rand(dtype=torch.float64)
    sigma = levels.sigmas(u, denoiser.sigma_min, denoiser.sigma_max).to(x.device, x.dtype)
    noise = random.randn(*x.shape[1:]).to(x.device, x.dtype)
    sigma_b = _expand(sigma, x)
    sigma_data = float(denoiser.schedule.config.sigma_data)
    weight = 1 / sigma_b**2 + 1 / sigma_data**2
    if known_frames is None:
        denoised = denoiser(x + sigma_b * noise, sigma, context)
        return (weight * (denoised - x) ** 2).mean()
    known = known_frames.draw(random, x.shape[1]).to(x.device)
    x = known_frames.offset(x, known, random, increments)
    given = known.reshape(*known.shape, *([1] * (x.ndim - 2)))
    denoised = denoiser(torch.where(given, x, x + sigma_b * noise), sigma, context, known)
    free = (~given).to(x.dtype)
    return (weight * (denoised - x) ** 2 * free).mean()  # a mean over all elements: the same however a batch is split

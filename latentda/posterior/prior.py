"""What the posterior samplers need of a prior: a small protocol, not the pipeline class.

The posterior (reanalysis, forecast) conditions a latent trajectory prior p(z̃_{1:L}) on
observations through the decoder. It needs

- the trajectory denoiser E[z̃_{1:L} | z̃_t] (blankets of ``window`` states, ``overlap`` apart),
  its noise ``scheduler`` and the default :class:`latentda.diffusion.settings.SamplerSettings`
  ``sampling`` (``pipeline_config.json``), which a run's overrides replace field by field
  (:func:`resolve_sampling`, checked against the prior's σ range and window),
- the decoder D with both standardisations (``autoencoder``, ``statistics``, ``latent_statistics``)
  and the frame decoder ``decode`` z̃ → x,
- the latent shape, ``device``, ``dtype``, the model's time step (``time_step`` in ``time_units``,
  ``lead_times``) and whether it is conditioned on the calendar;
- optionally (``known_frames`` true), ``history_denoiser(known, times)``: E[z̃_{1:K} | z̃_t, z̃_{1:n} =
  known] for a window given its first n states clean, which forecasts and filters use with
  ``conditioning="known"`` (:func:`has_known_frames`);
- optionally, ``increments`` (an :class:`latentda.diffusion.increments.Increments`, or None): the prior
  samples windows in increment coordinates u, not z̃ (``model.increments``). The posterior then
  samples u, reads observations through A(L(u)) (:func:`window_operator`), gives a history as its
  increments (:func:`history_coordinates`) and returns z̃ (:func:`window_latents`); such a prior
  samples one window (K states) at a time.

:class:`latentda.pipeline.LatentDAPipeline` satisfies it; anything else that does can be sampled
the same way (a test double, a prior assembled by hand). The pipeline imports the posterior,
never the reverse.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch

from latentda.data.statistics import Statistics
from latentda.diffusion.settings import SamplerSettings
from latentda.errors import LatentdaError
from latentda.posterior.guidance import linearize

__all__ = ["PriorModel", "resolve_sampling", "InflatedDenoiser", "has_known_frames", "check_known_frames", "with_history",
           "increments_of", "window_latents", "window_operator", "history_coordinates", "check_window_length",
           "IncrementOperator"]


@runtime_checkable
class PriorModel(Protocol):
    """A latent trajectory prior with its decoder (see the module docstring)."""

    autoencoder: torch.nn.Module
    statistics: Statistics
    latent_statistics: Statistics
    scheduler: Any
    sampling: SamplerSettings  # the default sampler settings (pipeline_config.json)
    time_step: float  # between consecutive states (seconds when time_units is "seconds")
    time_units: str
    progress: bool  # progress bars while sampling

    @property
    def window(self) -> int: ...

    @property
    def overlap(self) -> int: ...

    @property
    def latent_shape(self) -> tuple[int, int, int]: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def calendar(self) -> bool: ...

    def trajectory_denoiser(self, overlap: int | None = None, times=None,
                            split_blankets: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]: ...

    def decode(self, z: torch.Tensor, batch_size: int = 64) -> np.ndarray: ...

    def lead_times(self, count: int) -> np.ndarray: ...


def has_known_frames(prior: PriorModel) -> bool:
    """Whether ``prior`` conditions a window on given leading states (``history_denoiser``)."""
    return bool(getattr(prior, "known_frames", False))


def with_history(known: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """Windows x_t (B, K, …) whose first n states are ``known`` (1 or B, n, …): what a history denoiser
    reads (the given states are not x_t's, so no gradient flows to them)."""
    return torch.cat([known.to(x_t.dtype).expand(x_t.shape[0], *known.shape[1:]), x_t[:, known.shape[1]:]], dim=1)


def increments_of(prior: PriorModel):
    """The prior's :class:`latentda.diffusion.increments.Increments`, or None (state coordinates)."""
    return getattr(prior, "increments", None)


def window_latents(prior: PriorModel, sample: torch.Tensor) -> torch.Tensor:
    """Standardised latents z̃ of windows the prior's sampler returned (increment coordinates → z̃)."""
    increments = increments_of(prior)
    return sample if increments is None else increments.to_latents(sample)


def window_operator(prior: PriorModel, operator):
    """An operator of latent windows as the prior's sampler reads it: A, or A(L(u)) in increment coordinates."""
    increments = increments_of(prior)
    return operator if increments is None else IncrementOperator(operator, increments)


def history_coordinates(prior: PriorModel, known: torch.Tensor) -> torch.Tensor:
    """A window's first n states ``known`` (B, n, …) in the coordinates the prior samples."""
    increments = increments_of(prior)
    return known if increments is None else increments.to_increments(known)


def check_window_length(prior: PriorModel, length: int) -> None:
    """A prior in increment coordinates samples windows of exactly K states (no blankets)."""
    if increments_of(prior) is not None and length != prior.window:
        raise LatentdaError(f"this prior samples in increment coordinates (model.increments): it samples one window of "
                            f"{prior.window} states at a time, not {length} (blankets need a prior in state coordinates)")


def check_known_frames(prior: PriorModel, conditioning: str) -> None:
    """``conditioning="known"`` (forecasts, filters) needs a prior trained with known frames."""
    if conditioning == "known" and not has_known_frames(prior):
        raise LatentdaError("conditioning known needs a prior trained with known frames (model.known_frames: true); "
                            "this one conditions its history with mmps or inpaint")


def resolve_sampling(prior: PriorModel, **overrides) -> SamplerSettings:
    """The prior's sampler settings with ``overrides`` (field names of :class:`SamplerSettings`;
    None: the prior's) in place, validated, and checked against the prior's σ range and window (and
    Langevin settings against its sampler), so that a bad value fails before any work, not inside the sampler."""
    sampling = prior.sampling.with_overrides(**overrides)
    sampling.check_applies(overrides)
    sampling.check_sigma_range(float(prior.scheduler.config.sigma_min), float(prior.scheduler.config.sigma_max))
    sampling.check_window(prior.window)
    return sampling


class InflatedDenoiser:
    r"""The prior's denoiser *inflated* by τ (``factor``): the denoiser called at the level σ/τ,

        D_τ(x_t, σ) = D(x_t, σ/τ).

    For a Gaussian prior N(m, Σ), D(x, σ) = m + Σ(Σ + σ²)⁻¹(x − m), so D(x, σ/τ) = m + τ²Σ(τ²Σ +
    σ²)⁻¹(x − m) is exactly the denoiser of N(m, τ²Σ): every conditional keeps its mean and has τ²
    times the covariance — the transition of a window prior from a member's history to the new state
    keeps its forecast and widens its spread by τ, the multiplicative inflation of ensemble filters
    applied to the prior's error (docs/qg-benchmark.md, "Inflating the prior"). For a non-Gaussian prior its Tweedie covariance
    σ²∂D_τ/∂x at level σ is τ² times the prior's at level σ/τ, and the support is kept (a law of
    two points ±1, whose denoiser is tanh(x/σ²), stays on ±1), unlike the law of τz̃, which rescales every state and
    which a learned prior's nonlinear dynamics do not follow (on QG τ = 1.5 about 0 made the
    forecast from the true past err 0.97 instead of 0.53; docs/qg-benchmark.md). Guidance wraps it like any
    denoiser: the Tweedie covariance σ² ∂D_τ/∂x_t is the inflated prior's."""

    def __init__(self, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], factor: float) -> None:
        self.denoise, self.factor = denoise, float(factor)

    def __call__(self, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.denoise(x_t, sigma / self.factor)


class IncrementOperator:
    """A(L(u)): an operator A of latent windows read through increment coordinates, with its
    linearisation at û composed with the map's tangent, A·L v and Lᵀ·Aᵀ w (A's own linearisation
    when it has one, e.g. the decoder's tangent passes, :mod:`latentda.posterior.guidance`)."""

    def __init__(self, operator, increments) -> None:
        self.operator, self.increments = operator, increments

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return self.operator(self.increments.to_latents(u))

    def linearize(self, anchor: torch.Tensor) -> "_IncrementLinearization":
        return _IncrementLinearization(linearize(self.operator, self.increments.to_latents(anchor.detach())), self.increments)


class _IncrementLinearization:
    def __init__(self, inner, increments) -> None:
        self.inner, self.increments = inner, increments
        self.value = inner.value

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.inner.forward(self.increments.tangent(v))

    def transpose(self, w: torch.Tensor) -> torch.Tensor:
        return self.increments.tangent_transpose(self.inner.transpose(w))

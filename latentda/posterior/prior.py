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
  ``lead_times``) and whether it is conditioned on the calendar.

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

__all__ = ["PriorModel", "resolve_sampling", "InflatedDenoiser"]


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


def resolve_sampling(prior: PriorModel, **overrides) -> SamplerSettings:
    """The prior's sampler settings with ``overrides`` (field names of :class:`SamplerSettings`;
    None: the prior's) in place, validated, and checked against the prior's σ range and window,
    so that a bad value fails before any work, not inside the sampler."""
    sampling = prior.sampling.with_overrides(**overrides)
    sampling.check_sigma_range(float(prior.scheduler.config.sigma_min), float(prior.scheduler.config.sigma_max))
    sampling.check_window(prior.window)
    return sampling


class InflatedDenoiser:
    r"""The denoiser of the prior *inflated* by τ (``factor``): the law of τ z̃ for z̃ drawn from the
    prior (standardised latents, climatological mean 0), whose denoiser is exactly

        D_τ(x_t, σ) = E[τ z̃ | τ z̃ + σ ε = x_t] = τ D(x_t / τ, σ / τ),

    since (τ z̃ + σ ε)/τ = z̃ + (σ/τ) ε: the network sees inputs of its own law at the level σ/τ.
    For a Gaussian prior N(0, Σ) it is the denoiser of N(0, τ²Σ), D(x_t, σ/τ), and every
    conditional keeps its mean and has τ² times the covariance: the transition of a window prior
    from a member's history to the new state keeps its forecast and widens its spread by τ, the
    multiplicative inflation of ensemble filters applied to the prior's error (docs/filter.md).
    Guidance wraps it like any denoiser: the Tweedie covariance σ² ∂D_τ/∂x_t is the inflated prior's."""

    def __init__(self, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], factor: float) -> None:
        self.denoise, self.factor = denoise, float(factor)

    def __call__(self, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.factor * self.denoise(x_t / self.factor, sigma / self.factor)

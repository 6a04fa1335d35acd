"""Increment coordinates of a latent window: the prior's dynamics at unit scale.

A window prior over standardised latents z̃_{1:K} must place each next state to a small fraction of
its own scale when the system moves little per step: on DAPPER's QG, one analysis cycle moves the
latents by 0.07–0.13 of their standard deviation (consecutive increments still correlate at 0.81),
so a network that denoises z̃ has to be accurate to a few percent of its output's scale to forecast
better than persistence. In **increment coordinates** the diffusion runs on

    u_1 = z̃_1,   u_k = (z̃_k − z̃_{k−1} − m) / s   (k = 2 … K),

with m, s the per-channel mean and standard deviation of the one-step increments of the training
windows (:class:`latentda.data.statistics.Statistics`), so every state of u has unit scale and the
network predicts the change, as forecast models predict the residual from the last state scaled by
the residuals' std (e.g. GenCast, Price et al. 2024). The map is linear and invertible:

    z̃_k = u_1 + Σ_{j=2}^{k} (s u_j + m)   (a cumulative sum over time),

with tangent L v = cumsum(v_1, s v_2, …, s v_K) and transpose Lᵀ w = (r_1, s r_2, …, s r_K), r_j = Σ_{k≥j} w_k.
The prior is the same law of windows written in other coordinates, but the noise σ ε of the
diffusion is added to u: on the latents it is σ on z̃_1 and a random walk of steps σ s after it.
Observation operators of latent windows are composed with the map
(:class:`latentda.posterior.prior.IncrementOperator`); the
known leading states of a window are known increments too (u_1 … u_n depend on z̃_1 … z̃_n only).

Windows only: blankets (trajectories longer than K) would need a state shared by two windows to be
denoised at the same noise level in both, but each window's first coordinate is its own absolute
state, which in another window's coordinates is a sum of noisy increments. A prior in increment
coordinates therefore samples one window at a time: forecasts, filters, reanalyses of one window of K states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from latentda.data.statistics import Statistics

__all__ = ["Increments"]

TIME = -4  # windows are (…, K, c, h, w)


@dataclass(frozen=True)
class Increments:
    """The map between standardised latent windows z̃ and increment coordinates u (module docstring);
    ``statistics``: per-channel mean and std of the one-step increments z̃_k − z̃_{k−1}."""

    statistics: Statistics

    def to_increments(self, z: Tensor) -> Tensor:
        """u of windows (…, K, c, h, w); also of a window's first n states alone (a history)."""
        steps = z.narrow(TIME, 1, z.shape[TIME] - 1) - z.narrow(TIME, 0, z.shape[TIME] - 1)
        return torch.cat([z.narrow(TIME, 0, 1), self.statistics.standardise(steps)], dim=TIME)

    def to_latents(self, u: Tensor) -> Tensor:
        """z̃ of windows u (…, K, c, h, w): the first state and the cumulative sum of the increments."""
        steps = self.statistics.destandardise(u.narrow(TIME, 1, u.shape[TIME] - 1))
        return torch.cat([u.narrow(TIME, 0, 1), steps], dim=TIME).cumsum(TIME)

    def tangent(self, v: Tensor) -> Tensor:
        """L v: the linear part of :meth:`to_latents`."""
        return torch.cat([v.narrow(TIME, 0, 1), self.statistics.scale(v.narrow(TIME, 1, v.shape[TIME] - 1))], dim=TIME).cumsum(TIME)

    def tangent_transpose(self, w: Tensor) -> Tensor:
        """Lᵀ w: reverse cumulative sums over time, the increments' part scaled by s."""
        tails = w.flip(TIME).cumsum(TIME).flip(TIME)
        return torch.cat([tails.narrow(TIME, 0, 1), self.statistics.scale(tails.narrow(TIME, 1, w.shape[TIME] - 1))], dim=TIME)

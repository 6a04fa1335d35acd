"""Forecasting and nowcasting: roll latent blankets forward from an analysis or an initial state.

A forecast member starts from a latent history h (its own posterior sample of the observation
window, or the encoded initial states), then repeats, until the lead time is covered:

    sample a window z_{1:K} ~ p(z_{1:K} | z_{1:c} = h_{−c:}),   h ← h ∥ z_{c+1:K},

with c = ``context`` states of overlap, so every window adds K − c new states at the cost of one
window sample: the cost per forecast state is constant whatever the lead. Conditioning on the
overlap is either

- ``mmps``: MMPS guidance with the latent identity operator A(z) = z_{1:c} and a small noise
  σ_c (``condition_noise``, in standardised latent units), or
- ``inpaint``: replacement — at noise level σ the known states are set to h + σ ε before each
  denoising and to h after it, or
- ``known``: the prior's own conditional given the clean states, for priors trained with known
  frames (``model.known_frames``; :mod:`latentda.diffusion.denoiser`): the history enters the network
  as it is and no guidance approximates the conditioning.

Measured on 8 held-out Kolmogorov trajectories (``tools/study_forecast.py``, docs/benchmarks.md),
MMPS with σ_c = 0.05 and 3 CG iterations is the default: one step ahead its RMSE is 0.14–0.15
against 0.28–0.33 for inpainting (and 0.20 for persistence), because inpainting only lets the known
states act through the noisy replacement, which at high σ says little, while MMPS conditions every
step on them through the denoiser's Jacobian. With the pc sampler (32 steps) its spread-skill is
0.83–0.99 over 8 steps. A smaller σ_c (0.01) or a single CG iteration makes the ensemble far too
narrow (spread-skill ≈ 0.6); σ_c is in standardised latent units, and 0.05 and 0.1 score alike.

``aao`` (all at once, as in Appa) instead samples the observation window and the lead jointly, as a
reanalysis whose operator observes nothing after "now"; nowcasting is the same with a short lead.
The output lead 0 is the analysis of the last observed state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from latentda.diffusion.settings import resolve_overlap
from latentda.diffusion.sampling import standard_normal
from latentda.errors import LatentdaError, check_integer
from latentda.observe.operators import ObservationOperator
from latentda.posterior.guidance import MMPSDenoiser, Unguided
from latentda.posterior.forecast_settings import CONDITIONINGS, MODES, ForecastSettings
from latentda.posterior.prior import PriorModel, check_known_frames, check_window_length, history_coordinates, window_operator
from latentda.posterior.reanalysis import PosteriorSettings, batches, guided_denoiser, member_generator, sample_members

__all__ = ["forecast_members", "ForecastMembers", "ForecastSettings", "default_context", "extend_operator", "MODES",
           "CONDITIONINGS"]

def extend_operator(operator: ObservationOperator, extra: int, extra_times=None) -> ObservationOperator:
    """The same observations followed by ``extra`` unobserved time steps (at ``extra_times``)."""
    groups = []
    for group in operator.groups:
        pad = np.full((extra, *group.values.shape[1:]), np.nan)
        groups.append(dataclasses.replace(group, values=np.concatenate([group.values, pad])))
    times = None
    if operator.times is not None and extra_times is not None:
        times = np.concatenate([np.asarray(operator.times), np.asarray(extra_times)])
    return ObservationOperator(groups, times)


class _Inpainting:
    """Replacement conditioning of the first c states of a window on known latents (B, c, ...)."""

    def __init__(self, denoise, known: Tensor, generators: list[torch.Generator]) -> None:
        self.denoise, self.known, self.generators = denoise, known, generators

    def __call__(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        c = self.known.shape[1]
        noise = standard_normal(self.known.shape, self.generators, x_t)
        x_t = torch.cat([self.known + sigma * noise, x_t[:, c:]], dim=1)
        with torch.no_grad():
            mean = self.denoise(x_t, sigma)
        return torch.cat([self.known, mean[:, c:]], dim=1)


def _window(prior: PriorModel, history: Tensor, context: int, conditioning: str, noise: float, settings: PosteriorSettings,
            generators: list[torch.Generator], times) -> Tensor:
    """One window (B, K, ...) per member whose first ``context`` states follow the member's
    ``history`` (``times``: the window's K times, for calendar-conditioned priors, else None)."""
    known = history[:, -context:]
    if conditioning == "known":
        denoise = Unguided(settings.prior_denoiser(prior, times, window_only=True, known=known))
        return sample_members(prior, denoise, prior.window, generators, settings)
    window_denoiser = settings.prior_denoiser(prior, times, window_only=True)  # L = K: the window denoiser
    if conditioning == "inpaint":
        denoise = _Inpainting(window_denoiser, history_coordinates(prior, known), generators)
    else:
        history_operator = window_operator(prior, lambda z: z[:, :context].reshape(z.shape[0], -1))
        denoise = MMPSDenoiser(window_denoiser, history_operator,
                               known.reshape(known.shape[0], -1), noise, iterations=settings.iterations,
                               solver=settings.solver)
    return sample_members(prior, denoise, prior.window, generators, settings)


def default_context(prior: PriorModel, settings: PosteriorSettings | None = None) -> int:
    """The states each forecast window shares with the history: the blanket overlap (the prior's, or
    that of ``settings``), or the default overlap when it is 0 (windows sharing no state could not
    follow the history)."""
    sampling = prior.sampling if settings is None else settings.sampling(prior)
    return sampling.blanket_overlap(prior.window) or resolve_overlap(prior.window, None)


def forecast_members(
    prior: PriorModel,
    members: list[int],
    lead: int,
    settings: PosteriorSettings,
    seed: int = 0,
    operator: ObservationOperator | None = None,
    initial: Tensor | None = None,
    mode: str = "autoregressive",
    conditioning: str = "mmps",
    condition_noise: float = 0.05,
    context: int | None = None,
    initial_times=None,
) -> "ForecastMembers":
    """Members of a forecast: iterate to get (member, fields (lead + 1, C, H, W)) as each finishes —
    lead 0 is the last observed/initial state. The one entry point of forecasting: every argument
    is checked here, before any work.

    ``initial`` holds standardised latents (1 or members, n0, c, h, w): with one row every member
    starts from it, with one row per member (e.g. the members of a reanalysis) member m starts from
    row m. ``context``: states each new window shares with the history (default :func:`default_context`
    of the settings' overlap).
    """
    settings.validate(prior)
    if settings.split_blankets:
        raise LatentdaError("split_blankets applies to reanalyses only (a forecast rolls one window at a time)")
    if lead < 1:
        raise LatentdaError(f"lead must be at least 1, got {lead}")
    if (operator is None) == (initial is None):
        raise LatentdaError("give exactly one of observations and initial")
    ForecastSettings(mode, conditioning, condition_noise).validate()
    check_known_frames(prior, conditioning)
    if mode == "aao" and operator is None:
        raise LatentdaError("all-at-once mode needs observations")
    if mode == "aao" and operator is not None and operator.length + lead < prior.window:
        raise LatentdaError(f"all-at-once needs observed states + lead ≥ the window of {prior.window}")
    K = prior.window
    context = default_context(prior, settings) if context is None else context
    check_integer("context", context, 1, K - 1)
    if operator is not None:  # the window sampled from the observations (a prior in increment coordinates: K states)
        check_window_length(prior, operator.length + (lead if mode == "aao" else max(0, K - operator.length)))
    if initial is not None and initial.shape[1] < context:
        raise LatentdaError(f"the initial condition has {initial.shape[1]} states; {context} are needed")
    if initial is not None and initial.shape[0] > 1 and max(members, default=0) >= initial.shape[0]:
        raise LatentdaError(f"the initial condition has {initial.shape[0]} members; member {max(members)} was asked for")
    if prior.calendar and initial is not None and initial_times is None:
        raise LatentdaError("this model is conditioned on the calendar: give the times of the initial states")
    return ForecastMembers(prior, list(members), lead, settings, seed, operator, initial, mode, conditioning,
                           condition_noise, context, initial_times)


@dataclass(frozen=True, eq=False)
class ForecastMembers:
    """The (checked: made by :func:`forecast_members`) forecast of a list of members;
    ``only(members)`` restricts it (e.g. to the members a resumed run still needs)."""

    prior: PriorModel
    members: list[int]
    lead: int
    settings: PosteriorSettings
    seed: int
    operator: ObservationOperator | None
    initial: Tensor | None
    mode: str
    conditioning: str
    noise: float
    context: int
    initial_times: np.ndarray | None = None

    def only(self, members: list[int]) -> "ForecastMembers":
        return dataclasses.replace(self, members=list(members))

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        prior, settings, context = self.prior, self.settings, self.context
        K = prior.window
        # From an initial state only the latent denoiser runs (the decoder decodes the result once).
        for batch in batches(self.members, settings.batch_size(prior.device, through_decoder=self.operator is not None)):
            generators = [member_generator(self.seed, member) for member in batch]
            if self.operator is not None:
                observed = self.operator.length
                extra = self.lead if self.mode == "aao" else max(0, K - observed)  # shorter than K: nowcast its end
                last = None if self.operator.times is None else np.asarray(self.operator.times)[-1]
                after = None if last is None else last + prior.lead_times(extra + 1)[1:]
                extended = extend_operator(self.operator, extra, after) if extra else self.operator
                denoise = guided_denoiser(prior, extended, settings)
                history = sample_members(prior, denoise, observed + extra, generators, settings)
                now = observed - 1
                start = None if self.operator.times is None else np.asarray(self.operator.times)[0]
            else:
                rows = self.initial[batch] if self.initial.shape[0] > 1 else self.initial.expand(len(batch), *self.initial.shape[1:])
                history = rows.to(prior.device, prior.dtype)
                now = history.shape[1] - 1
                start = None if self.initial_times is None else np.asarray(self.initial_times)[0]
            while history.shape[1] - 1 - now < self.lead:
                times = None
                if start is not None:  # times of the next window: its first state is history[-context]
                    times = start + prior.lead_times(history.shape[1] - context + K)[history.shape[1] - context:]
                window = _window(prior, history, context, self.conditioning, self.noise, settings, generators, times)
                history = torch.cat([history, window[:, context:]], dim=1)
            fields = prior.decode(history[:, now : now + self.lead + 1])
            yield from zip(batch, fields)

r"""Cycling filter: sequential assimilation, each member carrying its own latent history.

At cycle k the analysis uses the observations y_1, …, y_k only. Member m holds a history
h^m (its last ``context`` latent states, standardised, at most K − 1 with K the prior's window) and
each cycle draws, in **one guided sample of a window of K states**,

    z_{1:K} ~ p(z_{1:K} | z_{K−n:K−1} ≈ h^m, y_k),    analysis x_k^m = D(z_K),    h^m ← (h^m ∥ z_K)_{−context:},

where the new state is the window's last, the n = min(|h^m|, context) history states sit right
before it and the K − 1 − n first states of the window are earlier, unobserved states (sampled and
dropped: marginalised). The two conditions enter one MMPS guided denoiser
(:mod:`latentda.posterior.guidance`) through one stacked operator

    A(z) = [ z_{K−n:K−1} ;  H_k(μ_x + s_x D(μ_z + s_z z_K)) ],   Σ = diag(σ_c² I, Σ_y + Σ_ae),

the latent identity on the history with a small noise σ_c (``condition_noise``, standardised latent
units, as in :mod:`latentda.posterior.forecast`) and the pixel-space operator of the cycle through
the decoder (:class:`latentda.posterior.reanalysis.LatentOperator`) on the new state only. With
``conditioning="inpaint"`` the history is imposed by replacement instead (at noise level σ the
known states are set to h + σε before denoising and to h after it) and MMPS carries the
observations alone. With ``conditioning="known"`` (priors trained with known frames,
:mod:`latentda.diffusion.denoiser`) the window is laid out the other way: the n history states first,
given clean to the prior's own conditional, the new state(s) right after them, and any later states
of the window sampled and dropped; A is then the cycle's operator alone and the history costs
nothing. A cycle without observations (``None``) is a forecast step: the window follows
the history only. The observation operator may change every cycle (positions, counts, kinds): each
cycle has its own :class:`ObservationOperator` of one time step (:func:`split_cycles` cuts a window
of observations into cycles).

**Start.** Before any state exists (no ``initial`` latents), the first cycle samples a whole window
of the prior conditioned on y_1 at its last state: the K − 1 states before it are a spin-up drawn
from the stationary prior given y_1 and dropped; the new state starts the member's history, which
grows by one state a cycle up to ``context`` + ℓ − 1. ``initial`` latents (an encoded state, a reanalysis'
last states) replace that start.

**Lag.** With ``lag`` = ℓ > 1 each cycle samples the new state *and the ℓ − 1 states before it* anew,
given their cycles' observations and the member's history before them:

    z_{1:K} ~ p(z_{1:K} | z_{K−ℓ−n+1:K−ℓ} ≈ h^m_{:−(ℓ−1)}, y_{k−ℓ+1}, …, y_k),

the operator reading the window's last ℓ states (the cycles joined by :func:`join_cycles`) so the
decoder runs on ℓ frames. y_k then revises the member's recent past, which the plain scheme (ℓ = 1)
never does; the analysis of cycle k is still the window's last state and still uses y_1, …, y_k
only (the re-sampled earlier states are not output again). The default lag is ⌊K/2⌋
(:func:`default_lag`; 1 for K ≤ 3): on DAPPER's QG twin experiment the lag took 40 % off the plain
filter's rmse with K = 8 (ℓ = 4) and a lag of K/2 scored best with K = 16 (docs/qg-benchmark.md). The
member keeps context + ℓ − 1 states (default context K − ℓ) and the observations of its last ℓ − 1
cycles (:class:`FilterState` ``recent``). For the linear-Gaussian system the scheme's exact law
stays closed-form (a Gaussian recursion on the stacked history, ``tests/test_filter.py``): with
correlation time 100 steps and 40 % of the pixels observed a cycle, after 8 cycles of a window-8
prior the analysis spread is 1.68 × the Kalman filter's with ℓ = 1, 1.32 × with ℓ = 2 and 1.11 × with ℓ = 4
(``tools/filter_lag_closed_form.py``, docs/filter.md); a cycle costs a window with the decoder on
ℓ frames.

**What it approximates.** Each member draws its new state from p(z_k | its own past, y_k), the
*optimal proposal* of particle filtering, without weights: with ℓ = 1, y_k does not revise the
member's past (beyond the slack σ_c), so the observations are under-used compared with the exact
filter (a lag, above, lets it revise the last ℓ − 1 states). For a
linear-Gaussian system and σ_c → 0 its mean follows m_k = (I − G H) A m_{k−1} + G y_k with the gain
G = Q Hᵀ(H Q Hᵀ + R)⁻¹ of the model noise Q alone, where the Kalman filter uses the forecast
covariance A P Aᵀ + Q. ``tests/test_filter.py`` checks the sampler against the exact recursion of
this scheme (any σ_c) with the exact prior, and its gap to the Kalman filter: none to speak of when
the prior's one-step uncertainty dominates the spread of the past (fast dynamics, as chaotic systems
observed every few steps), growing with the memory of the system (correlation time 100 steps, 40 %
of the pixels observed: after 5 cycles the mean is 0.5 Kalman standard deviations off and the
spread 1.4× the Kalman filter's; docs/filter.md).

**Cost per cycle**, per member, with S denoiser calls per sample (sampler ``pc`` with s steps and c
corrections: S = (s − 1)(1 + c) + 1; the pipeline default is 15) and n solver iterations: every
call is one guided step of a window of K states, i.e. 1 denoiser forward + (n + 1) denoiser VJPs
over the window, and, through the decoder, on the ℓ frames the cycle samples (lag ℓ; one frame for
the plain filter): 1 decoder forward + n tangent passes + (n + 1) decoder VJPs each; then one
decoder forward to output the analysis. The history part of A costs nothing (a copy). So a cycle
costs a reanalysis of a single window with the decoder on ℓ frames in K; with ``forecasts`` one
more unguided (latent-only) sample and one decoder forward.

Members are independent draws: member m draws every random number of every cycle from its own
generator (seed, m), so a member is the same whatever batch it shares, and a run resumes from the
:class:`FilterState` of any finished cycle with the same result.

Written here: no library runs a cycling filter with a learned window prior.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from latentda.diffusion.sampling import standard_normal
from latentda.errors import LatentdaError, check_integer
from latentda.observe.operators import ObservationGroup, ObservationOperator
from latentda.posterior.forecast_settings import CONDITIONINGS, check_conditioning
from latentda.posterior.guidance import DPSDenoiser, MMPSDenoiser, Unguided
from latentda.posterior.prior import PriorModel, check_known_frames, increments_of, window_operator
from latentda.posterior.reanalysis import (LatentOperator, PosteriorSettings, batches, member_generator,
                                           sample_members)

__all__ = ["filter_members", "default_lag", "check_cycle_settings", "FilterCycle", "FilterState", "FilterSettings", "split_cycles", "join_cycles",
           "forecast_generator", "CONDITIONINGS"]


@dataclass(frozen=True)
class FilterSettings:
    """How each cycle follows the member's history (module docstring)."""

    conditioning: str = "mmps"  # mmps (σ_c slack), inpaint (replacement) or known (a prior trained with known frames)
    condition_noise: float = 0.05  # σ_c of the mmps conditioning, standardised latent units
    context: int | None = None  # history states conditioning each window (None: K − lag)
    forecasts: bool = False  # also draw the forecast of each cycle (the window without y_k)
    lag: int = 1  # states sampled anew each cycle: the new one and the lag − 1 before it (callers resolve None: default_lag)

    def validate(self, window: int) -> None:
        if self.conditioning not in CONDITIONINGS:
            raise LatentdaError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, got {self.conditioning!r}")
        check_conditioning(self.conditioning, self.condition_noise)
        if window < 2:
            raise LatentdaError(f"filtering needs a window of at least 2 states, the prior has {window}")
        check_integer("lag", self.lag, 1, window - 1, hint=f" (the prior's window is {window})")
        if self.context is not None:
            check_integer("context", self.context, 1, window - self.lag, hint=f" (window {window}, lag {self.lag})")

    def resolved_context(self, window: int) -> int:
        return window - self.lag if self.context is None else int(self.context)


def _stored(history: Tensor) -> Tensor:
    """The history as a filter state keeps it: float64 as it is (a float64 prior resumes bit-identically), any
    other dtype as float32 (bf16 has no numpy type)."""
    return history if history.dtype == torch.float64 else history.float()


@dataclass
class FilterState:
    """Everything a filter needs to continue after a cycle: the index of the next cycle, each
    member's latent history (standardised, (members, n, c, h, w), n ≤ context + lag − 1) and its
    random generators' states (analysis and forecast streams, ``torch.Generator.get_state()``).
    With a lag, the history's last ``len(recent)`` states are sampled again at the next cycle, with
    the observations of their cycles, ``recent`` (operators kept in memory: :meth:`to_arrays` stores
    their number only and :meth:`from_arrays` takes them back from the run's cycles)."""

    cycle: int
    members: list[int]
    history: Tensor
    generator_states: list[Tensor]
    forecast_states: list[Tensor] | None = None
    recent: list = dataclasses.field(default_factory=list)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (e.g. for a zarr store's resume record); :meth:`from_arrays` inverts it."""
        arrays = {"cycle": np.asarray(self.cycle, dtype=np.int64), "members": np.asarray(self.members, dtype=np.int64),
                  "history": _stored(self.history.detach().cpu()).numpy(),
                  "generator_states": np.stack([s.numpy() for s in self.generator_states]),
                  "recent": np.asarray(len(self.recent), dtype=np.int64)}
        if self.forecast_states is not None:
            arrays["forecast_states"] = np.stack([s.numpy() for s in self.forecast_states])
        return arrays

    @classmethod
    def from_arrays(cls, arrays, cycles: Sequence | None = None) -> "FilterState":
        """The state :meth:`to_arrays` stored. ``cycles``: every cycle of the run from the first (the
        observations of the last ``recent`` finished cycles are taken from them); needed only when
        the run has a lag."""
        forecast = arrays.get("forecast_states")
        cycle = int(np.asarray(arrays["cycle"]).reshape(-1)[0])  # a file format may store a scalar as (1,)
        count = int(np.asarray(arrays.get("recent", 0)).reshape(-1)[0])
        if count and (cycles is None or len(cycles) < cycle):
            raise LatentdaError(f"this filter state re-samples its last {count} cycle(s): give the run's cycles "
                                f"(at least the first {cycle}) to resume it")
        recent = list(cycles[cycle - count : cycle]) if count else []
        return cls(cycle, [int(m) for m in np.asarray(arrays["members"])],
                   _stored(torch.from_numpy(np.asarray(arrays["history"]))),
                   [torch.from_numpy(np.asarray(s, dtype=np.uint8)) for s in arrays["generator_states"]],
                   None if forecast is None else [torch.from_numpy(np.asarray(s, dtype=np.uint8)) for s in forecast],
                   recent)

    def only(self, members: Sequence[int]) -> "FilterState":
        """The state of some of the members (e.g. this process's share)."""
        rows = [self.members.index(m) for m in members]
        pick = (lambda states: None if states is None else [states[r] for r in rows])
        return FilterState(self.cycle, list(members), self.history[rows], pick(self.generator_states),
                           pick(self.forecast_states), list(self.recent))


@dataclass
class FilterCycle:
    """One finished cycle for the members of the call: ``analysis`` (members, C, H, W) in physical
    units, the new latent state ``latents`` (members, c, h, w), ``residual_ratio`` (members,; None
    without observations), ``forecast`` (members, C, H, W) when asked, the :class:`FilterState`
    to resume after this cycle, and ``sampled`` (members, n, c, h, w): the latents of every state the
    cycle sampled, cycles ``cycle`` − n + 1 … ``cycle`` (n = the lag once the filter has run that many
    cycles). Its first is a **fixed-lag smoother** estimate: with lag ℓ, state k − ℓ + 1 given the
    observations up to cycle k, which no later cycle samples again (a member's trajectory given ℓ − 1
    cycles of future observations; at the last cycle every state of ``sampled`` is final)."""

    cycle: int
    members: list[int]
    analysis: np.ndarray
    latents: Tensor
    residual_ratio: np.ndarray | None
    forecast: np.ndarray | None
    state: FilterState
    sampled: Tensor | None = None


def _group_at(group, t: int):
    """``group`` at time step ``t`` alone. Points and linear rows keep only the entries observed at
    ``t``: a table of moving positions (drifting buoys) is one group over every position ever seen,
    and a cycle's work and memory must be its own observations', not the whole window's."""
    noise = group.noise_std
    if np.ndim(noise):
        noise = np.broadcast_to(np.asarray(noise, dtype=np.float64), group.values.shape)[t : t + 1]
    changes = {"values": group.values[t : t + 1], "noise_std": noise}
    if group.sampling in ("points", "linear"):
        keep = np.flatnonzero(group.mask[t])
        changes["values"] = changes["values"][:, keep]
        if np.ndim(noise):
            changes["noise_std"] = noise[:, keep]
        if group.sampling == "points":
            changes["points"] = group.points[keep]
        else:
            changes["matrix"] = group.matrix[keep]
            if np.ndim(group.representation_std):  # one per row
                changes["representation_std"] = np.asarray(group.representation_std)[keep]
    return dataclasses.replace(group, **changes)


def split_cycles(operator: ObservationOperator) -> list[ObservationOperator | None]:
    """An observation window (L time steps) as L cycles of one time step each (None where nothing
    is observed); group names, kinds and noise are kept, the positions may differ per step (each
    cycle's points or rows are those it observes: :func:`_group_at`)."""
    cycles = []
    for t in range(operator.length):
        groups = [_group_at(g, t) for g in operator.groups if g.mask[t].any()]
        times = None if operator.times is None else np.asarray(operator.times)[t : t + 1]
        cycles.append(ObservationOperator(groups, times) if groups else None)
    return cycles


def _same_sampling(a, b) -> bool:
    """Whether two groups observe the same way (everything but their values)."""
    def arrays_equal(x, y):
        return (x is None and y is None) or (x is not None and y is not None and np.array_equal(x, y))
    return (a.name == b.name and a.channels == b.channels and a.transform == b.transform and a.sampling == b.sampling
            and np.array_equal(np.asarray(a.noise_std), np.asarray(b.noise_std)) and a.factor == b.factor and a.saturation == b.saturation
            and a.periodic == b.periodic and arrays_equal(a.points, b.points) and arrays_equal(a.matrix, b.matrix)
            and np.array_equal(np.asarray(a.representation_std), np.asarray(b.representation_std)))


def join_cycles(cycles: Sequence[ObservationOperator | None], times=None) -> ObservationOperator:
    """Cycles of one time step (None: unobserved) as one observation window (the inverse of
    :func:`split_cycles`), e.g. to run the smoother on what a filter assimilated. Groups that observe
    the same way at several times become one group; the others are kept apart (``name@t``)."""
    length = len(cycles)
    joined: list[tuple[ObservationGroup, np.ndarray]] = []
    for t, operator in enumerate(cycles):
        if operator is None:
            continue
        if operator.length != 1:
            raise LatentdaError(f"cycle {t}: the observations cover {operator.length} time steps, expected one")
        for group in operator.groups:
            for kept, values in joined:
                if _same_sampling(kept, group) and np.isnan(values[t]).all():
                    values[t] = group.values[0]
                    break
            else:
                values = np.full((length, *group.values.shape[1:]), np.nan)
                values[t] = group.values[0]
                joined.append((group, values))
    if not joined:
        raise LatentdaError("no cycle has observations")
    names = [g.name for g, _ in joined]
    groups = []
    for (group, values), name in zip(joined, names):
        unique = names.count(name) == 1
        first = int(np.nonzero(~np.isnan(values).reshape(length, -1).all(axis=1))[0][0])
        groups.append(dataclasses.replace(group, values=values, name=name if unique else f"{name}@{first}"))
    return ObservationOperator(groups, times)


def forecast_generator(seed: int, member: int) -> torch.Generator:
    """The forecast stream of a member: independent of its analysis stream (:func:`member_generator`)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(member) + 7_777_777_777)


class _HistoryOperator:
    """A(z) = [z_{positions} flattened ; B(z_{new})] for windows (B, K, c, h, w): the latent identity
    on the history positions (optional) stacked over an operator ``last`` of the window's states
    ``new`` (optional: a :class:`LatentOperator` of as many time steps; by default the last). Linearised
    part by part, so the decoder runs on those frames only (module docstring)."""

    def __init__(self, positions: slice | None, last: LatentOperator | None, new: slice = slice(-1, None)) -> None:
        self.positions, self.last, self.new = positions, last, new

    def __call__(self, z: Tensor) -> Tensor:
        parts = []
        if self.positions is not None:
            parts.append(z[:, self.positions].reshape(z.shape[0], -1))
        if self.last is not None:
            parts.append(self.last(z[:, self.new]))
        return torch.cat(parts, dim=1)

    def linearize(self, anchor: Tensor) -> "_HistoryLinearization":
        return _HistoryLinearization(self, anchor.detach())


class _HistoryLinearization:
    def __init__(self, parent: _HistoryOperator, anchor: Tensor) -> None:
        self.positions, self.shape, self.new = parent.positions, anchor.shape, parent.new
        self.last = None if parent.last is None else parent.last.linearize(anchor[:, self.new])
        parts = []
        if self.positions is not None:
            parts.append(anchor[:, self.positions].reshape(anchor.shape[0], -1))
        if self.last is not None:
            parts.append(self.last.value.to(anchor.dtype))
        self.value = torch.cat(parts, dim=1)
        self.known = 0 if self.positions is None else parts[0].shape[1]

    def forward(self, v: Tensor) -> Tensor:
        parts = []
        if self.positions is not None:
            parts.append(v[:, self.positions].reshape(v.shape[0], -1))
        if self.last is not None:
            parts.append(self.last.forward(v[:, self.new].contiguous()).to(v.dtype))
        return torch.cat(parts, dim=1)

    def transpose(self, u: Tensor) -> Tensor:
        out = torch.zeros(self.shape, dtype=u.dtype, device=u.device)
        if self.positions is not None:
            known = out[:, self.positions]
            out[:, self.positions] = u[:, : self.known].reshape(known.shape)
        if self.last is not None:
            out[:, self.new] = self.last.transpose(u[:, self.known :]).to(u.dtype)
        return out


class _Replacement:
    """Inpainting of the history positions (differentiable, so MMPS may wrap it): at level σ the
    known states are set to h + σε before denoising and to h after it."""

    def __init__(self, denoise, known: Tensor, positions: slice, generators: list[torch.Generator]) -> None:
        self.denoise, self.known, self.positions, self.generators = denoise, known, positions, generators

    def __call__(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        noise = standard_normal(self.known.shape, self.generators, x_t)
        start, stop = self.positions.start, self.positions.stop
        x_t = torch.cat([x_t[:, :start], self.known + sigma * noise, x_t[:, stop:]], dim=1)
        mean = self.denoise(x_t, sigma)
        return torch.cat([mean[:, :start], self.known.to(mean.dtype).expand_as(mean[:, start:stop]), mean[:, stop:]], dim=1)


def _window_sample(prior: PriorModel, history: Tensor, operator: ObservationOperator | None, options: FilterSettings,
                   settings: PosteriorSettings, generators: list[torch.Generator], times, observed: int = 1) -> Tensor:
    """The ``observed`` new states (B, observed, …) per member, sampled in one window with the member's
    history before them, whose observations ``operator`` (``observed`` time steps, or None) reads.
    ``times``: the K times of a window ending at the newest state (calendar-conditioned priors)."""
    K = prior.window
    n = min(history.shape[1], options.resolved_context(K), K - observed)
    known = history[:, history.shape[1] - n :].to(prior.device, prior.dtype)
    dtype = settings.compute_dtype(prior.device)
    if options.conditioning == "known" and n:
        # the history first, given clean; the new states right after it; any later ones sampled and dropped
        new, positions = slice(n, n + observed), None
        if times is not None and new.stop < K:
            times = np.asarray(times)
            times = times + (times[1] - times[0]) * (K - new.stop)
        denoise = settings.prior_denoiser(prior, times, window_only=True, known=known)
    else:
        new = slice(K - observed, K)
        positions = slice(K - observed - n, K - observed) if n else None
        denoise = settings.prior_denoiser(prior, times, window_only=True)  # L = K: the window denoiser
        if positions is not None and options.conditioning == "inpaint":
            denoise = _Replacement(denoise, known, positions, generators)
    latent_positions = positions if options.conditioning == "mmps" else None
    last = None if operator is None else LatentOperator(prior, operator, settings.decode_chunk, dtype)
    if latent_positions is None and last is None:
        return sample_members(prior, Unguided(denoise), K, generators, settings)[:, new]
    ys, stds = [], []
    if latent_positions is not None:
        ys.append(known.reshape(known.shape[0], -1).double().cpu())
        stds.append(torch.full((ys[0].shape[1],), float(options.condition_noise), dtype=torch.float64))
    if last is not None:
        y, std = operator.observed()
        ys.append(y.expand(len(generators), -1))
        stds.append(std)
    A = window_operator(prior, _HistoryOperator(latent_positions, last, new))
    y, std = torch.cat(ys, dim=1), torch.cat(stds)
    if settings.guidance == "dps":
        guided = DPSDenoiser(denoise, A, y, std, scale=settings.dps_scale)
    else:
        guided = MMPSDenoiser(denoise, A, y, std, iterations=settings.iterations, solver=settings.solver)
    return sample_members(prior, guided, K, generators, settings)[:, new]


def _window_times(prior: PriorModel, time) -> np.ndarray | None:
    """The K times of a window whose last state is at ``time`` (calendar-conditioned priors)."""
    return None if time is None else np.asarray(time) - prior.lead_times(prior.window)[::-1]


def _check_cycle(prior: PriorModel, index: int, operator, timed: bool) -> None:
    """Cycle ``index``'s observations: none, or an operator of one time step; and a time for it (``timed``)
    where the prior is conditioned on the calendar."""
    if operator is not None and not isinstance(operator, ObservationOperator):
        raise LatentdaError(f"cycle {index}: expected an ObservationOperator or None, got {type(operator).__name__}")
    if prior.calendar and not (timed or (operator is not None and operator.times is not None)):
        raise LatentdaError(f"cycle {index}: this model is conditioned on the calendar: give the time of every cycle")
    if operator is not None and operator.length != 1:
        raise LatentdaError(f"cycle {index}: the observations cover {operator.length} time steps, a cycle assimilates one "
                            "(split a window with split_cycles)")


def check_cycle_settings(settings: PosteriorSettings, window: int) -> None:
    """Posterior settings a cycle can use: ``overlap`` (of the blankets of a trajectory longer than the
    window) has nothing to act on in a cycle of one window, so it is refused rather than ignored and recorded."""
    if settings.overlap is not None:
        raise LatentdaError("overlap: the blankets of a trajectory longer than the window; a filter cycle samples "
                            f"one window of {window} states (leave it out)")


def default_lag(window: int) -> int:
    """The lag of a filter whose prior has a window of K states when none is given: ⌊K/2⌋, at least 1."""
    return max(1, int(window) // 2)


def filter_members(
    prior: PriorModel,
    cycles: Iterable[ObservationOperator | None],
    members: Sequence[int],
    settings: PosteriorSettings,
    seed: int = 0,
    conditioning: str = "mmps",
    condition_noise: float = 0.05,
    context: int | None = None,
    initial: Tensor | None = None,
    forecasts: bool = False,
    state: FilterState | None = None,
    times: Sequence | None = None,
    lag: int | None = None,
) -> Iterator[FilterCycle]:
    """Run the cycling filter (module docstring) for ``members``, yielding one :class:`FilterCycle`
    per cycle as soon as every member has assimilated it.

    ``cycles``: per cycle an :class:`ObservationOperator` of one time step (physical units, noise
    with the representation error as wanted), or None (no observation: a forecast step). It may be a
    lazy iterable: cycle k is read only when cycle k is computed, never before (a filter cannot see
    the future). ``initial``: standardised latents (1 or ≥ max(members) + 1, n0, c, h, w) that
    replace the start (row m for member m when there are several). ``state``: resume from the
    :class:`FilterState` of a finished cycle (its ``cycle`` is the index of the first cycle of
    ``cycles`` still to compute: pass the remaining cycles only). ``times``: the time of each cycle of
    ``cycles`` (resuming: the remaining ones), needed by calendar-conditioned priors when the operators carry none. ``forecasts``: also draw
    each cycle's forecast (the window without y_k). ``lag``: each cycle samples the new state and
    the lag − 1 states before it anew, given their cycles' observations (module docstring: a lagged
    filter; the analysis of cycle k still uses y_1, …, y_k only); None: :func:`default_lag`, ⌊K/2⌋.
    Every argument is checked before any work (cycles given lazily, as an iterator: each as it is read).
    """
    settings.validate(prior)
    lag = default_lag(prior.window) if lag is None else lag
    options = FilterSettings(conditioning, condition_noise, context, forecasts, lag)
    options.validate(prior.window)
    check_known_frames(prior, conditioning)
    if conditioning == "inpaint" and increments_of(prior) is not None:
        raise LatentdaError("conditioning inpaint replaces states inside the window, which a prior in increment coordinates "
                            "(model.increments) cannot: use known or mmps")
    if settings.split_blankets:
        raise LatentdaError("split_blankets applies to reanalyses only (a filter samples one window at a time)")
    members = list(members)
    if not members or len(set(members)) != len(members):
        raise LatentdaError("give at least one member, each once")
    if initial is not None and state is not None:
        raise LatentdaError("give initial latents or a state to resume from, not both")
    if initial is not None:
        if initial.ndim != 5 or tuple(initial.shape[2:]) != tuple(prior.latent_shape):
            raise LatentdaError(f"initial latents must be (members, states, {', '.join(map(str, prior.latent_shape))}), "
                                f"got {tuple(initial.shape)}")
        if initial.shape[0] > 1 and max(members) >= initial.shape[0]:
            raise LatentdaError(f"the initial latents have {initial.shape[0]} members; member {max(members)} was asked for")
    if state is not None and len(state.recent) > lag - 1:
        raise LatentdaError(f"the filter state re-samples {len(state.recent)} past cycle(s); lag {lag} re-samples at most {lag - 1}")
    if state is not None:
        missing = sorted(set(members) - set(state.members))
        if missing:
            raise LatentdaError(f"the filter state holds members {state.members}, not {missing}")
        if tuple(state.history.shape[2:]) != tuple(prior.latent_shape):
            raise LatentdaError(f"the filter state's latents are {tuple(state.history.shape[2:])}, "
                                f"the prior's {tuple(prior.latent_shape)}: a state of another model")
        if sorted(state.members) != sorted(members):
            state = state.only(members)
    if times is not None and isinstance(cycles, Sequence) and len(times) != len(cycles):
        raise LatentdaError(f"{len(times)} times for {len(cycles)} cycles (resuming, cut times as the cycles)")
    if isinstance(cycles, Sequence):  # a lazy iterable is checked cycle by cycle, as it is read
        first = 0 if state is None else state.cycle
        for offset, operator in enumerate(cycles):
            _check_cycle(prior, first + offset, operator, timed=times is not None)
    return _run(prior, cycles, members, settings, seed, options, initial, state, times)


def _run(prior, cycles, members, settings, seed, options, initial, state, times) -> Iterator[FilterCycle]:
    context = options.resolved_context(prior.window)
    if state is not None:
        rows = [state.members.index(m) for m in members]
        history = state.history[rows].to(prior.device, prior.dtype)
        generators = [torch.Generator() for _ in members]
        for g, r in zip(generators, rows):
            g.set_state(state.generator_states[r])
        forecast_generators = None
        if options.forecasts:
            forecast_generators = [forecast_generator(seed, m) for m in members]
            if state.forecast_states is not None:
                for g, r in zip(forecast_generators, rows):
                    g.set_state(state.forecast_states[r])
        first = state.cycle
        recent = list(state.recent)
    else:
        if initial is None:
            history = torch.zeros((len(members), 0, *prior.latent_shape), device=prior.device, dtype=prior.dtype)
        else:
            rows = initial[members] if initial.shape[0] > 1 else initial.expand(len(members), *initial.shape[1:])
            history = rows[:, -context:].to(prior.device, prior.dtype)
        generators = [member_generator(seed, m) for m in members]
        forecast_generators = [forecast_generator(seed, m) for m in members] if options.forecasts else None
        first = 0
        recent = []
    keep = context + options.lag - 1  # the history: the conditioning states and the lag − 1 to sample again
    size = settings.batch_size(prior.device)
    for offset, operator in enumerate(cycles):
        index = first + offset
        _check_cycle(prior, index, operator, timed=times is not None)
        time = None
        if times is not None:
            if offset >= len(times):  # a lazy ``cycles`` longer than ``times``
                raise LatentdaError(f"cycle {index}: {len(times)} times for more cycles")
            time = np.asarray(times)[offset]
        elif operator is not None and operator.times is not None:
            time = np.asarray(operator.times)[0]
        window_times = _window_times(prior, time) if prior.calendar else None
        resampled = len(recent)  # past states sampled again with their cycles' observations
        observed = resampled + 1
        joined = operator
        if resampled:
            joined = join_cycles([*recent, operator]) if any(c is not None for c in (*recent, operator)) else None
        new, forecast_new = [], []
        for batch in batches(list(range(len(members))), size):
            rows = history[batch]
            picked = [generators[i] for i in batch]
            z = _window_sample(prior, rows[:, : rows.shape[1] - resampled], joined, options, settings, picked, window_times,
                               observed)
            new.append(z.detach())
            if options.forecasts:
                f = _window_sample(prior, rows, None, options, settings, [forecast_generators[i] for i in batch], window_times)
                forecast_new.append(f[:, -1].detach())
        states = torch.cat(new)
        latents = states[:, -1]
        history = torch.cat([history[:, : history.shape[1] - resampled], states], dim=1)[:, -keep:]
        recent = [*recent, operator][-(options.lag - 1):] if options.lag > 1 else []
        analysis = prior.decode(latents[:, None])[:, 0]
        ratio = None
        if operator is not None:
            ratio = operator.residual_ratio(torch.from_numpy(analysis[:, None]).double()).numpy()
        forecast = prior.decode(torch.cat(forecast_new)[:, None])[:, 0] if options.forecasts else None
        snapshot = FilterState(index + 1, list(members), history.detach().cpu().clone(),
                               [g.get_state() for g in generators],
                               None if forecast_generators is None else [g.get_state() for g in forecast_generators],
                               list(recent))
        yield FilterCycle(index, list(members), analysis, latents.cpu(), ratio, forecast, snapshot, states.cpu())

r"""latentda's prior as the forecast model of DAPPER's ensemble filters: a hybrid filter.

latentda's own filter (:mod:`latentda.posterior.filtering`) both forecasts and analyses with the learned prior:
each cycle's new states are one guided sample per member. The other way to use a learned prior in data
assimilation keeps an ensemble filter's analysis and replaces only its model: the members' forecasts from one
analysis to the next come from the prior, the analysis is the filter's (e.g. DAPPER's LETKF, localised). Both
use the same prior; comparing them separates the analysis from the learned dynamics (docs/qg-benchmark.md, "The LETKF
with the learned prior as its model").

:class:`LearnedModel` is a DAPPER model function ``model(E, t, dt)``: each row of E (a member's state, as
:class:`latentda.integrations.dapper.LatentDA` reads DAPPER's states) is encoded, E(x), and its next state is
one draw of the prior's forecast one time step ahead (:func:`latentda.posterior.forecast.forecast_members`)
conditioned on the member's last ``context`` encoded states, decoded:

    x_{k+1}^m = D(z̃_{k+1}^m),   z̃_{k+1}^m ~ p(z̃_{k+1} | z̃_{k−c+1}^m … z̃_k^m),   z̃_j^m = E(x_j^m),

with x_j^m the state DAPPER handed the model for member m at time t_j (the analyses, in a filter). With
``context`` 1 (the default) the model is Markov, as DAPPER's models are: only the state it is given matters.
With c > 1 it remembers the states of its last c − 1 calls, one per member row, and uses them while the calls
follow one another in time (t of a call = t + dt of the one before, the same number of rows); otherwise it
starts again from the one state given. The model is stochastic (each call draws) and, with c > 1, stateful: use
it with filters that step it once per cycle (EnKF, LETKF), not with iterative smoothers that re-run a cycle.
One time step of the prior must be one ``dt`` of the model (the QG benchmark's prior is trained one analysis
cycle apart, and ``HMM.tseq.dko`` = 1 there).

    HMM_learned = with_learned_model(HMM, pipeline)
    LETKF(N=25, infl=1.04, loc_rad=10).assimilate(HMM_learned, xx, yy)   # xx, yy from HMM.simulate()

The truth must come from the exact ``HMM`` (a twin experiment); only the assimilation uses the copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from latentda.errors import LatentdaError, check_integer

__all__ = ["LearnedModel", "with_learned_model"]


class LearnedModel:
    """A DAPPER model function: states (N, Nx) or (Nx,) at t → the prior's forecast at t + dt (module docstring).

    ``settings``: :class:`latentda.posterior.reanalysis.PosteriorSettings` (or a dict of its fields) of the
    forecast's sampler; ``conditioning``: ``known`` (the default for a prior trained with known frames) or ``mmps``
    with slack σ_c = ``condition_noise``; ``seed``: the step from t draws member m's forecast from stream
    (seed + round(t / dt), m), so a rerun — or the same model in a second experiment — draws the same forecasts
    at the same times; ``state_index`` as :class:`latentda.integrations.dapper.LatentDA`'s. Every option is
    checked here, before DAPPER runs."""

    def __init__(self, pipeline, context: int = 1, settings: Any = None, conditioning: str | None = None,
                 condition_noise: float = 0.05, seed: int = 0, state_index: Any = None) -> None:
        from latentda.integrations.dapper import _posterior_settings
        from latentda.posterior.forecast_settings import ForecastSettings
        from latentda.posterior.prior import check_known_frames

        if pipeline.calendar:
            raise LatentdaError("the learned model cannot give a calendar-conditioned prior the dates of DAPPER's times")
        context = check_integer("context", context, 1, pipeline.window - 1,
                                hint=f" (the prior's window {pipeline.window} minus one)")
        self.pipeline, self.context, self.seed = pipeline, context, int(seed)
        self.settings = _posterior_settings(settings)
        self.conditioning = conditioning or ("known" if pipeline.known_frames else "mmps")
        self.condition_noise = float(condition_noise)
        self.state_index = None if state_index is None else np.asarray(state_index)
        ForecastSettings("autoregressive", self.conditioning, self.condition_noise).validate()
        check_known_frames(pipeline, self.conditioning)
        self.settings.validate(pipeline)
        self.shape = (pipeline.layout.num_channels, *pipeline.layout.shape)
        self._past: torch.Tensor | None = None  # (N, n < context, c, h, w): the encoded states of the last calls
        self._next_time: float | None = None

    def __call__(self, x: np.ndarray, t: float, dt: float) -> np.ndarray:
        from latentda.integrations.dapper import _fields_to_states, _states_to_fields
        from latentda.posterior.forecast import forecast_members

        x = np.asarray(x, dtype=np.float64)
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[1] != np.prod(self.shape):
            raise LatentdaError(f"the learned model was given states of {rows.shape[1]} entries; the pipeline's fields "
                                f"{self.shape} have {int(np.prod(self.shape))}")
        if not np.isfinite(rows).all():
            raise LatentdaError("the learned model was given non-finite states (the ensemble diverged)")
        latents = self.pipeline.encode(_states_to_fields(rows, self.shape, self.state_index))  # (N, c, h, w)
        follows = self._past is not None and self._past.shape[0] == len(rows) and np.isclose(t, self._next_time)
        past = torch.cat([self._past, latents[:, None]], dim=1) if follows else latents[:, None]
        self._past = past[:, past.shape[1] - self.context + 1:] if self.context > 1 else None  # the last c − 1
        self._next_time = t + dt
        run = forecast_members(self.pipeline, list(range(len(rows))), 1, self.settings, seed=self.seed + round(t / dt),
                               initial=past, conditioning=self.conditioning, condition_noise=self.condition_noise,
                               context=min(self.context, past.shape[1]))
        fields = np.stack([member_fields[1] for _, member_fields in sorted(run, key=lambda item: item[0])])
        return _fields_to_states(fields, self.state_index).reshape(x.shape)


def with_learned_model(HMM, pipeline, check_time_step: bool = True, **options):
    """A copy of the DAPPER ``HMM`` whose dynamics are ``LearnedModel(pipeline, **options)``; ``HMM`` is unchanged.
    The prior's time step must be the HMM's model step: one step per observation cycle (``HMM.tseq.dko`` = 1),
    ``pipeline.time_step`` = ``HMM.tseq.dt`` (checked on a model-time axis; ``check_time_step=False`` when the
    pipeline's time axis has other units)."""
    from latentda.integrations.dapper import check_cycle_step

    if HMM.tseq.dko != 1:
        raise LatentdaError(f"the learned model steps one observation cycle at a time; this HMM takes "
                            f"{HMM.tseq.dko} model steps per cycle (dko)")
    if check_time_step:
        check_cycle_step(pipeline, HMM.tseq.dto)
    learned = HMM.copy()
    learned.Dyn.model = LearnedModel(pipeline, **options)
    if hasattr(learned.Dyn, "linear"):  # the exact model's tangent would be mixed with the learned forecast (ExtKF, 4D-Var)
        learned.Dyn.linear = _no_tangent
    return learned


def _no_tangent(*args, **kwargs):
    raise LatentdaError("the learned model has no tangent-linear model: assimilate with an ensemble method (EnKF, LETKF)")

"""The latentda pipeline: autoencoder + latent trajectory denoiser + noise schedule, in one folder.

A pipeline folder (the layout of a diffusers ``DiffusionPipeline``)::

    model_index.json            component classes, latentda version
    pipeline_config.json        time step between states, default sampler settings
    autoencoder/                AutoEncoder config + safetensors, layout.json, statistics.json,
                                representation_error.json (optional, latentda.components)
    denoiser/                   TrajectoryTransformer config + safetensors, latent_statistics.json,
                                increment_statistics.json (priors in increment coordinates only)
    scheduler/                  diffusers EDMEulerScheduler config (σ range, preconditioning)
    README.md                   model card

Latents are standardised per channel before diffusion, z̃ = (z − μ_z)/s_z, so the prior works with
σ_data = 1; ``decode`` maps z̃ → z → fields x = μ_x + s_x D(z). Only the classes named here are ever
instantiated (no code is loaded from a folder or a hub repository) and only safetensors weights are
read.

The pipeline is the user's entry point (the Python API); sampling the posterior is
:mod:`latentda.posterior` (which sees the pipeline through :class:`latentda.posterior.prior.PriorModel`)
and writing ensembles, resumably and over processes, is :mod:`latentda.runs`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import pandas as pd
import torch
import xarray as xr
from diffusers import EDMEulerScheduler

from latentda import __version__
from latentda.allocator import keep_freed_memory
from latentda.components import (check_inside, checked_representation_error, load_autoencoder, load_model,
                                 load_representation_error, save_autoencoder)
from latentda.config import MAX_SEED, parse, parse_file, parse_known, read_json, require
from latentda.data.calendar import calendar_features
from latentda.data.ensemble_store import ensemble_dataset
from latentda.data.io import atomic_path, check_replaceable_folder, open_dataset
from latentda.data.layout import FieldLayout
from latentda.data.statistics import Statistics, check_finite
from latentda.data.times import calendar_attrs, calendar_time, climate_calendar, standard_time_axis, time_step
from latentda.devices import check_device
from latentda.diffusion.denoiser import Denoiser
from latentda.diffusion.increments import Increments
from latentda.diffusion.distributed import blanket_denoiser
from latentda.diffusion.sampling import sample as run_sampler
from latentda.diffusion.settings import SamplerSettings
from latentda.errors import LatentdaError, check_integer
from latentda.nn.compilation import compile_blocks
from latentda.nn.transformer import TrajectoryTransformer
from latentda.observe.files import read_observations
from latentda.observe.tabular import observation_dataset, table_to_cycles
from latentda.observe.window import TableWindow
from latentda.observe.operators import ObservationOperator, nothing_off_mask
from latentda.posterior.forecast import default_context, forecast_members
from latentda.posterior.prior import check_window_length, history_coordinates, resolve_sampling, window_latents, with_history
from latentda.posterior.reanalysis import PosteriorSettings
from latentda.runs import Report, input_fingerprint, run_filter, run_forecast, run_reanalysis

__all__ = ["LatentDAPipeline"]

MODEL_INDEX = {
    "_class_name": "LatentDAPipeline",
    "autoencoder": ["latentda.nn", "AutoEncoder"],
    "denoiser": ["latentda.nn", "TrajectoryTransformer"],
    "scheduler": ["diffusers", "EDMEulerScheduler"],
}
PIPELINE_ENTRIES = ("model_index.json", "pipeline_config.json", "README.md", "autoencoder", "denoiser", "scheduler")


@dataclass(frozen=True)
class SavedSettings(SamplerSettings):
    """The checked entries of ``pipeline_config.json`` (written by :meth:`LatentDAPipeline.save_pretrained`;
    a folder may have been edited by hand, and a bad value must fail at load, not deep in a sampler):
    the time step between states and the default :class:`SamplerSettings`, flat in one JSON object."""

    time_step: float = 1.0
    time_units: str = "1"

    def validate(self, prefix: str = "") -> None:
        super().validate(prefix)
        require(self.time_step > 0, f"{prefix}.time_step" if prefix else "time_step", "must be positive")

    @property
    def sampling(self) -> SamplerSettings:
        return SamplerSettings.of(self)

    def to_json(self) -> dict:
        """The JSON object of ``pipeline_config.json``: the time step first, then the sampler settings."""
        return {"time_step": self.time_step, "time_units": self.time_units, **dataclasses.asdict(self.sampling)}


@dataclass
class SavedSchedule:
    """The checked entries of the scheduler's ``scheduler_config.json`` (EDM σ range and preconditioning)."""

    sigma_min: float
    sigma_max: float
    sigma_data: float = 1.0
    rho: float = 7.0
    sigma_schedule: Literal["karras", "exponential"] = "karras"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"

    def validate(self, prefix: str) -> None:
        require(0 < self.sigma_min < self.sigma_max, "sigma_min", "must satisfy 0 < sigma_min < sigma_max")
        require(self.sigma_data > 0 and self.rho > 0, "sigma_data", "sigma_data and rho must be positive")


class LatentDAPipeline:
    """Everything needed to sample, reanalyse and forecast trajectories of physical fields."""

    def __init__(
        self,
        autoencoder: torch.nn.Module,
        layout: FieldLayout,
        statistics: Statistics,
        backbone: torch.nn.Module,
        latent_statistics: Statistics,
        scheduler: EDMEulerScheduler,
        settings: SavedSettings | Mapping[str, Any] | None = None,
        representation_error: np.ndarray | None = None,
        increment_statistics: Statistics | None = None,
    ) -> None:
        """``settings``: the contents of ``pipeline_config.json`` (a :class:`SavedSettings`, or a mapping
        of some of its keys, checked; the others take the defaults). ``representation_error``: the
        autoencoder's validation reconstruction RMSE per channel in standardised units
        (``autoencoder/representation_error.json``; None: 0), added to the observation noise.
        ``increment_statistics``: the one-step increments' per-channel moments of a prior trained in
        increment coordinates (``model.increments``, ``denoiser/increment_statistics.json``;
        :mod:`latentda.diffusion.increments`); None: state coordinates."""
        keep_freed_memory()  # sampling allocates and frees megabytes per operation (latentda.allocator)
        self.autoencoder = autoencoder.eval()
        self.layout = layout
        self.statistics = statistics
        try:
            self.representation_error = checked_representation_error(
                np.zeros(layout.num_channels) if representation_error is None else representation_error, layout.channels)
        except LatentdaError as error:
            raise LatentdaError(f"representation_error {error}") from None
        self.backbone = backbone.eval()
        self.latent_statistics = latent_statistics
        self.scheduler = scheduler
        if isinstance(settings, SavedSettings):
            settings.validate()
        else:
            settings = parse(SavedSettings, dict(settings or {}))  # types, unknown keys and every rule
        self.sampling: SamplerSettings = settings.sampling  # default sampler settings (pipeline_config.json)
        self.time_step: float = settings.time_step  # between consecutive states (seconds for datetime axes)
        self.time_units: str = settings.time_units
        self.denoiser = Denoiser(backbone, scheduler)
        self.progress = True
        self.model_card: str | None = None
        self.source: str | None = None  # the folder or hub id it was loaded from (recorded in run outputs)
        self.increments = None if increment_statistics is None else Increments(increment_statistics)

    def __repr__(self) -> str:
        """Where it was loaded from (or "in memory"), its fields, window and time step: what a table of
        experiments (DAPPER's xp tables) shows for it."""
        source = repr(self.source) if self.source is not None else "in memory"
        shape = "×".join(str(n) for n in (self.layout.num_channels, *self.layout.shape))
        return f"LatentDAPipeline({source}, fields {shape}, window {self.window}, time step {self.time_step:g})"

    # ------------------------------------------------------------------ properties
    @property
    def window(self) -> int:
        return int(self.backbone.config.window)

    @property
    def overlap(self) -> int:
        """States shared by consecutive blankets (``pipeline_config.json``'s ``overlap``, default K // 2)."""
        return self.sampling.blanket_overlap(self.window)

    @property
    def saved_settings(self) -> SavedSettings:
        """What ``pipeline_config.json`` holds: the time step and the default sampler settings."""
        return SavedSettings(**dataclasses.asdict(self.sampling), time_step=self.time_step, time_units=self.time_units)

    @property
    def settings(self) -> dict:
        """``pipeline_config.json`` as a plain dict (a copy, read-only: the typed values are
        :attr:`sampling`, :attr:`time_step` and :attr:`time_units`)."""
        return self.saved_settings.to_json()

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.autoencoder.latent_shape)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "LatentDAPipeline":
        _check_device(device, dtype)
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        if kwargs:
            self.autoencoder.to(**kwargs)
            self.backbone.to(**kwargs)
        return self

    def compile(self, **options) -> "LatentDAPipeline":
        """``torch.compile`` the denoiser's transformer blocks in place (:mod:`latentda.nn.compilation`;
        ``options`` go to ``torch.compile``). The first calls at each new shape compile. On CPU it
        speeds up unguided denoising but slows guided steps (docs/benchmarks.md). The decoder stays
        eager: the guidance differentiates it twice, which compiled graphs do not support."""
        import torch._functorch.config

        # The guidance takes several VJPs through one graph (retain_graph): inductor's donated
        # buffers free the saved tensors after the first, so they are turned off (a global switch).
        torch._functorch.config.donated_buffer = False
        compile_blocks(self.backbone, **options)
        return self

    def set_progress_bar_config(self, disable: bool = False) -> None:
        self.progress = not disable

    @property
    def calendar(self) -> bool:
        """Whether the prior is conditioned on calendar features (training data of dated times: datetimes or dates
        of a climate calendar)."""
        return bool(self.backbone.config.context_features)

    @property
    def known_frames(self) -> bool:
        """Whether the prior was also trained given leading states (``model.known_frames``; clean, or
        off the truth with ``model.history_noise``): then :meth:`history_denoiser` conditions a window on
        a history by construction, without guidance."""
        return bool(getattr(self.backbone.config, "known_frames", False))

    def history_denoiser(self, known: torch.Tensor, times=None):
        """E[z̃_{1:K} | z̃_t, z̃_{1:n} = known] for one window whose first n states are ``known`` (B, n,
        c, h, w), standardised: the window's states 1..n are taken from ``known`` whatever x_t holds
        there (:mod:`latentda.diffusion.denoiser`, "Known frames"). Priors trained with
        ``known_frames`` only. ``times``: the window's K times (calendar-conditioned priors). A prior in
        increment coordinates (:attr:`increments`) takes ``known`` as z̃ and denoises u, the given
        states being their increments (:mod:`latentda.diffusion.increments`)."""
        if not self.known_frames:
            raise LatentdaError("this prior was not trained with known frames (model.known_frames): condition the "
                                "history with mmps or inpaint")
        n, K = known.shape[1], self.window
        given_states = history_coordinates(self, known)
        if not 1 <= n < K:
            raise LatentdaError(f"{n} known states: a window of {K} takes 1 to {K - 1}")
        context = self._calendar_context(times) if self.calendar else None
        given = (torch.arange(K, device=known.device) < n)[None]

        def denoise(x, sigma):
            x = with_history(given_states, x)
            batch_context = None if context is None else context.expand(x.shape[0], -1, -1).to(x.dtype)
            return self.denoiser(x, sigma, batch_context, given.expand(x.shape[0], -1))

        return denoise

    def _calendar_context(self, times) -> torch.Tensor:
        """The calendar features of ``times`` (1, L, F), for a calendar-conditioned prior."""
        features = calendar_features(times, climate_calendar(self.time_units)) if times is not None else None
        if features is None:
            raise LatentdaError("this model is conditioned on the calendar: it needs the dates of the trajectory (to sample: "
                                "start_time=, --start-time on the command line)")
        return torch.from_numpy(features).to(self.device, self.dtype)[None]

    def trajectory_denoiser(self, overlap: int | None = None, times=None, split_blankets: bool = False):
        """E[z̃_{1:L} | z̃_t] for any L ≥ K from the window denoiser (overlapping blankets).

        A calendar-conditioned prior needs the ``times`` (length L: datetime64, or the model axis' numbers for
        dates of a climate calendar) of the trajectory.
        ``split_blankets``: under torchrun/accelerate launch, each process evaluates only its share of
        the windows and the outputs are gathered (:mod:`latentda.diffusion.distributed`); every process
        must then make the same calls. Alone, it is the plain denoiser. A prior in increment coordinates
        (:attr:`increments`) denoises u, one window of K states (no blankets).
        """
        overlap = self.overlap if overlap is None else overlap
        blanket = blanket_denoiser(self.denoiser, self.window, overlap, split=split_blankets)
        if not self.calendar:
            return blanket
        context = self._calendar_context(times)

        def denoise(x, sigma):
            return blanket(x, sigma, context.expand(x.shape[0], -1, -1))

        return denoise

    # ------------------------------------------------------------------ latents ↔ fields
    def standardise_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.latent_statistics.standardise(z)

    def destandardise_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.latent_statistics.destandardise(z)

    def decode_standardised(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised latents (N, c, h, w) → standardised fields (N, C, H, W); differentiable."""
        return self.autoencoder.decode(self.destandardise_latents(z))

    def decode(self, z: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """Standardised latents (..., T, c, h, w) → physical fields (..., T, C, H, W) as numpy."""
        lead = z.shape[:-3]
        flat = z.reshape(-1, *z.shape[-3:])
        out = []
        with torch.no_grad():
            for start in range(0, len(flat), batch_size):
                x = self.decode_standardised(flat[start : start + batch_size].to(self.device, self.dtype))
                out.append(self.statistics.destandardise(x.double()).float().cpu())
        return torch.cat(out).reshape(*lead, *out[0].shape[1:]).numpy()

    def encode(self, fields: np.ndarray, batch_size: int = 64) -> torch.Tensor:
        """Physical fields (..., T, C, H, W) → standardised latents (..., T, c, h, w); masked (NaN)
        pixels, and every pixel of the fixed mask, enter the encoder as 0, the channel mean, as in training."""
        fields = self.layout.off_mask(np.asarray(fields, dtype=np.float32))
        lead = fields.shape[:-3]
        flat = torch.from_numpy(np.nan_to_num(self.statistics.standardise(fields.reshape(-1, *fields.shape[-3:]))))
        out = []
        with torch.no_grad():
            for start in range(0, len(flat), batch_size):
                z = self.autoencoder.encode(flat[start : start + batch_size].to(self.device, self.dtype))
                out.append(self.standardise_latents(z).cpu())
        return torch.cat(out).reshape(*lead, *out[0].shape[1:])

    def to_dataset(self, fields: np.ndarray, time: np.ndarray | xr.DataArray | None = None, attrs: dict | None = None) -> xr.Dataset:
        """Fields (realization, T, C, H, W) → CF dataset with dims (realization, time, ...)."""
        if time is None:
            time = xr.DataArray(self.lead_times(fields.shape[1]), dims="time", attrs={"long_name": "time since start"})
        return ensemble_dataset(self.layout, fields, time, attrs=attrs)

    # ------------------------------------------------------------------ sampling
    def sample_latents(self, length: int, members: int = 1, steps: int | None = None, method: str | None = None,
                       seed: int = 0, denoise=None, start_time=None, **overrides) -> torch.Tensor:
        """Standardised latent trajectories (members, L, c, h, w) from the prior (or ``denoise``);
        a calendar-conditioned prior needs the ``start_time`` (a date: :meth:`_start_time`) of the trajectories.
        ``steps``, ``method`` (the sampler) and ``overrides`` (the other :class:`SamplerSettings`
        fields: corrections, tau, sigma_start, churn, overlap) replace the pipeline's defaults
        (:attr:`sampling`) where not None; ``sampler=`` (the field's name, as in ``reanalyze``) is
        ``method``."""
        sampler = overrides.pop("sampler", None)
        if sampler is not None:
            if method is not None:
                raise LatentdaError("give the sampler as method or as sampler, not both")
            method = sampler
        sampling = resolve_sampling(self, steps=steps, sampler=method, **overrides)
        check_integer("length", length, minimum=1)
        check_integer("members", members, minimum=1)
        check_integer("seed", seed, 0, MAX_SEED)
        if start_time is not None:
            start_time = self._start_time(start_time)
        padded = max(length, self.window)  # shorter trajectories: sample one window, keep the start
        check_window_length(self, padded)
        if denoise is None:
            times = None if start_time is None else start_time + self.lead_times(padded)
            blanket = self.trajectory_denoiser(sampling.overlap, times=times)

            def denoise(x, sigma):
                with torch.no_grad():
                    return blanket(x, sigma)

        generator = torch.Generator().manual_seed(seed)
        z = run_sampler(denoise, (members, padded, *self.latent_shape), self.scheduler, generator=generator,
                        device=self.device, dtype=self.dtype, progress=self.progress, description="sample",
                        **sampling.sample_kwargs())
        return window_latents(self, z)[:, :length]

    def sample(self, length: int, members: int = 1, steps: int | None = None, method: str | None = None,
               seed: int = 0, start_time=None, **overrides) -> xr.Dataset:
        """Unconditional trajectories decoded to physical fields, dims (realization, time, ...);
        sampler settings as for :meth:`sample_latents`, recorded with the seed and the pipeline's folder or
        hub id (``latentda_<name>``; a setting left out is the pipeline's default)."""
        z = self.sample_latents(length, members, steps, method, seed, start_time=start_time, **overrides)
        time = None
        if start_time is not None:
            time = xr.DataArray(self._start_time(start_time) + self.lead_times(length), dims="time",
                                attrs=calendar_attrs(self.time_units))
        given = {"pipeline": self.source, "seed": seed, "steps": steps, "sampler": method, **overrides}
        recorded = {f"latentda_{name}": str(value) for name, value in given.items() if value is not None}
        return self.to_dataset(self.decode(z), time, attrs={"title": "latentda unconditional samples", **recorded})

    # ------------------------------------------------------------------ posterior
    @property
    def physical_representation_error(self) -> np.ndarray:
        """r_c s_c: each channel's reconstruction error r_c (standardised units) times its physical std s_c
        (for a channel with a transform, the std of the variable as observed, not of the transformed one):
        the noise std that ``representation_error`` adds to observations of channel c."""
        return np.asarray(self.representation_error, dtype=np.float64) * self.statistics.physical_std

    def observation_operator(self, observations, allow_short: bool = False,
                             representation_error: bool = True) -> ObservationOperator:
        """The pixel-space operator, y and σ of an observation dataset (or a pandas DataFrame of
        tabular observations, :mod:`latentda.observe.tabular`, on the window it infers with the
        model's time step), checked against the model
        (``allow_short``: a window shorter than K, as when nowcasting its continuation). With
        ``representation_error`` each observation's noise variance is inflated by the autoencoder's
        reconstruction error of its channel(s), r_c s_c in physical units (:mod:`latentda.observe.operators`)."""
        observations = observation_dataset(observations, self.layout, self.time_step, time_units=self.time_units)
        operator, dropped = self._read_operator(observations, representation_error)
        _warn_off_mask(dropped)
        if operator.length < self.window and not allow_short:
            raise LatentdaError(f"the observation window has {operator.length} states, fewer than the model's window of {self.window}")
        self._check_times(observations["time"])
        return operator

    def _read_operator(self, observations: xr.Dataset, representation_error: bool,
                       refuse_empty: bool = True) -> tuple[ObservationOperator | None, int]:
        """(operator, the number of observations left out on the fixed mask) of an observation dataset
        (``refuse_empty``: an error when every one is, else None for the operator; :meth:`ObservationOperator.off_mask`)."""
        operator = read_observations(observations, self.layout, self.statistics)
        dropped = 0
        if self.layout.mask is not None:
            operator, dropped = operator.off_mask(self.layout.mask, refuse_empty)
        if operator is not None and representation_error:
            operator = operator.with_representation_error(self.physical_representation_error)
        return operator, dropped

    def _check_times(self, time: xr.DataArray) -> None:
        """The observation window's times: the model's time step apart, dates for a calendar model."""
        self.check_time_step(time)
        if self.calendar and calendar_features(time.values, climate_calendar(self.time_units)) is None:
            raise LatentdaError("this model is conditioned on the calendar: the observations need dated times")

    def filter_cycles(self, observations, table_window: TableWindow | None = None, representation_error: bool = True
                      ) -> tuple[xr.DataArray, list[ObservationOperator | None], xr.Dataset | list]:
        """(times, one operator per cycle (None: nothing observed), what was read) of a filter's observations:
        a dataset is read whole and split (:func:`latentda.posterior.filtering.split_cycles`); a table
        (``table_window``: :class:`latentda.observe.TableWindow`) is read state by state
        (:func:`latentda.observe.table_to_cycles`), so that a table of moving positions never becomes
        a (cycles × positions) array. Either way a cycle keeps only what it observes off the fixed mask."""
        from latentda.posterior.filtering import split_cycles

        if table_window is not None and not isinstance(table_window, TableWindow):
            raise LatentdaError(f"table_window: expected a latentda.observe.TableWindow, got {type(table_window).__name__}")
        if not isinstance(observations, pd.DataFrame):
            observations = observation_dataset(observations, self.layout, self.time_step, table_window, self.time_units)
            operator = self.observation_operator(observations, allow_short=True, representation_error=representation_error)
            return observations["time"], split_cycles(operator), observations
        time, datasets = table_to_cycles(observations, self.layout, time_step=self.time_step, time_units=self.time_units,
                                         **dataclasses.asdict(table_window or TableWindow()))
        self._check_times(time)
        cycles, dropped, remaining = [], 0, 0
        for dataset in datasets:
            if dataset is None:
                cycles.append(None)
                continue
            operator, left_out = self._read_operator(dataset, representation_error, refuse_empty=False)
            cycles.append(None if operator is None else split_cycles(operator)[0])  # without the entries on the mask
            dropped, remaining = dropped + left_out, remaining + (0 if operator is None else operator.size)
        if not remaining:
            raise nothing_off_mask(dropped)
        _warn_off_mask(dropped)
        return time, cycles, datasets

    def check_time_step(self, time: xr.DataArray) -> None:
        """Consecutive times must be the model's time step apart (seconds for datetime axes):
        :func:`latentda.data.times.time_step` with the model's step expected."""
        time_step(time, expected=self.time_step, what="observation times", expected_units=self.time_units)

    def _start_time(self, start_time):
        """``start_time`` as a datetime64, for a pipeline whose time axis is dates; as its number on the
        model's axis (seconds since 0001-01-01 in the calendar) for dates of a climate calendar, given as an
        ISO date or a cftime date (:func:`latentda.data.times.calendar_time`)."""
        calendar = climate_calendar(self.time_units)
        if calendar is not None:
            return calendar_time(start_time, calendar, "start_time")
        if self.time_units != "seconds":
            raise LatentdaError(f"start_time: this pipeline's time axis is model time (units {self.time_units!r}), "
                                "not dates: leave start_time out")
        try:
            return np.datetime64(start_time)
        except (ValueError, TypeError):
            raise LatentdaError(f"start_time: {start_time!r} is not a date and time") from None

    def lead_times(self, count: int) -> np.ndarray:
        """Lead times 0, Δ, …, (count−1)Δ: timedelta64 for datetime models, numbers otherwise."""
        if self.time_units == "seconds":
            return np.arange(count) * np.timedelta64(int(round(self.time_step)), "s")
        return np.arange(count) * self.time_step

    def _run_settings(self, settings: PosteriorSettings | None, options: dict) -> PosteriorSettings:
        """``settings``, or a :class:`PosteriorSettings` of the keyword ``options``; validated."""
        if settings is not None and options:
            raise LatentdaError(f"give settings or their fields as keywords, not both ({', '.join(options)})")
        if isinstance(settings, Mapping):  # settings={"steps": 16}: the fields as a mapping
            settings, options = None, dict(settings)
        if settings is not None and not isinstance(settings, PosteriorSettings):
            raise LatentdaError(f"settings: expected a PosteriorSettings or a dict of its fields, got {type(settings).__name__}")
        try:
            settings = settings or PosteriorSettings(**options)
        except TypeError as error:  # an unknown keyword
            raise LatentdaError(str(error)) from None
        settings.validate(self)
        return settings

    @staticmethod
    def _check_run(members, seed, attrs, observations=None, needs_observations: bool = False) -> None:
        """The arguments every ensemble run shares, checked before any work."""
        check_integer("members", members, minimum=1)
        check_integer("seed", seed, 0, MAX_SEED)
        if attrs is not None and not isinstance(attrs, Mapping):
            raise LatentdaError(f"attrs: expected a dict of attributes to record, got {type(attrs).__name__}")
        if needs_observations and observations is None:
            raise LatentdaError("observations: none given (an observation dataset or a pandas DataFrame)")

    def _recorded(self, attrs: dict | None, observations: xr.Dataset | list | None = None,
                  initial: xr.Dataset | None = None, out=None) -> dict:
        """The attributes a run records: ``attrs``, the folder or hub id of this pipeline, and, when it is
        written to ``out``, the fingerprints of its observations and of the initial states it reads
        (:func:`latentda.runs.input_fingerprint`: a resumed run must read the same)."""
        inputs = {"observations": observations, "initial": initial} if out is not None else {}
        return {**(attrs or {}), **({"latentda_pipeline": self.source} if self.source is not None else {}),
                **{f"latentda_{name}_sha256": input_fingerprint(data) for name, data in inputs.items() if data is not None}}

    def reanalyze(self, observations, members: int = 8, seed: int = 0, settings: PosteriorSettings | None = None,
                  *, out: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
                  attrs: dict | None = None, report: Report | None = None, **options) -> xr.Dataset:
        """Posterior ensemble p(x_{1:L} | y) of the observation window, dims (realization, time, ...).

        ``observations``: an observation dataset, or a pandas DataFrame of tabular observations
        (:mod:`latentda.observe.tabular`: the window from the earliest row to the latest at the model's
        time step; :func:`latentda.observe.table_to_dataset` sets another window or tolerance).
        ``settings`` is a :class:`PosteriorSettings` (or pass its fields as keywords: guidance,
        iterations, solver, sampler, steps, ...). With ``out`` (``PATH.zarr`` or ``.nc``) the members are
        written one by one to ``out.partial``, renamed to ``out`` when complete, and the dataset is
        returned opened from ``out``; an interrupted run keeps its finished members, and
        ``resume=True`` completes it with a result identical to an uninterrupted run. Under
        torchrun/accelerate launch the members are dealt over the processes (or, with
        ``split_blankets``, the blanket windows). ``attrs`` are recorded in the output; ``report``
        receives progress messages (e.g. ``print``). See :mod:`latentda.runs`.
        """
        self._check_run(members, seed, attrs, observations, needs_observations=True)
        settings = self._run_settings(settings, options)
        observations = observation_dataset(observations, self.layout, self.time_step, time_units=self.time_units)
        operator = self.observation_operator(observations, representation_error=settings.representation_error)
        return run_reanalysis(self, self.layout, operator, observations["time"], members, settings, seed,
                              self._recorded(attrs, observations, out=out), out, resume, overwrite, report)

    def _forecast_start(self, members: int, observations, initial: xr.Dataset | None,
                        settings: PosteriorSettings, states: int | None = None):
        """(observation operator, encoded initial latents, their times, the times ending at "now", the
        initial states read) of a forecast's source: the observations, or the last states of ``initial`` (member m of an
        initial ensemble for forecast member m; the last ``states``, default ``default_context``)."""
        operator = encoded = initial_times = used = None
        source = observations  # a dataset (the caller converts a table: observation_dataset)
        if observations is not None:
            operator = self.observation_operator(observations, allow_short=True,  # shorter than K: nowcast
                                                 representation_error=settings.representation_error)
        if initial is not None:
            initial = standard_time_axis(initial)  # e.g. valid_time, as open_dataset reads a file
            if "time" not in initial.dims:
                raise LatentdaError("the initial state has no 'time' dimension")
            self.layout.check(initial)
            count = default_context(self, settings) if states is None else states
            first = max(0, initial.sizes["time"] - count)  # errors name the file's indices, not the used states'
            source = initial.isel(time=slice(first, None))  # only these condition the forecast
            time_step(source["time"], expected=self.time_step, what="the initial state's times",  # consecutive steps
                      first_index=first, expected_units=self.time_units)
            if "realization" in source.dims and source.sizes["realization"] < members:
                raise LatentdaError(f"the initial state has {source.sizes['realization']} members, fewer than {members}")
            rows = [source.isel(realization=m) for m in range(members)] if "realization" in source.dims else [source]
            arrays = [self.layout.to_array(row) for row in rows]  # e.g. a reanalysis: member m continues member m
            for array in arrays:
                check_finite(array, self.layout.channels, " in the initial state", self.statistics, self.layout.mask,
                             first_step=first, hint=None)
            encoded = torch.stack([self.encode(array) for array in arrays])
            used = source[[spec.name for spec in self.layout.variables]]  # what the run reads: its variables and members
            if "realization" in used.dims:
                used = used.isel(realization=slice(members))
            initial_times = source["time"].values
        return operator, encoded, initial_times, None if source is None else source["time"], used

    def forecast(self, lead: int, members: int = 8, observations=None,
                 initial: xr.Dataset | None = None, seed: int = 0, mode: str = "autoregressive",
                 conditioning: str = "mmps", condition_noise: float = 0.05, settings: PosteriorSettings | None = None,
                 *, out: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
                 attrs: dict | None = None, report: Report | None = None, **options) -> xr.Dataset:
        """Forecast ensemble from an observation window or initial state(s), in WeatherBench2 layout:
        dims (realization, time, prediction_timedelta, ...), lead 0 being "now".

        ``observations``: a dataset or a DataFrame of tabular observations, as for :meth:`reanalyze`.
        ``initial`` may carry a ``realization`` dim (e.g. a reanalysis): member m continues member m.
        ``mode``: autoregressive or aao; ``conditioning``: mmps, inpaint or known (priors trained with
        known frames, :attr:`known_frames`), ``condition_noise`` the σ_c of mmps (:mod:`latentda.posterior.forecast`).
        ``settings``/keywords, ``out``, ``resume``, ``overwrite``, ``attrs``, ``report`` as for :meth:`reanalyze`.
        """
        self._check_run(members, seed, attrs)
        check_integer("lead", lead, minimum=1)
        settings = self._run_settings(settings, options)
        observations = observation_dataset(observations, self.layout, self.time_step, time_units=self.time_units)
        operator, encoded, initial_times, time, used = self._forecast_start(members, observations, initial, settings)
        run = forecast_members(self, list(range(members)), lead, settings, seed, operator, encoded, mode, conditioning,
                               condition_noise, initial_times=initial_times)  # every check, before any work
        return run_forecast(run, self.layout, time, self._recorded(attrs, observations, used, out), out, resume, overwrite,
                            report)

    def filter(self, observations, members: int = 8, seed: int = 0, settings: PosteriorSettings | None = None, *,
               conditioning: str = "mmps", condition_noise: float = 0.05, context: int | None = None, lag: int | None = None,
               initial: xr.Dataset | None = None, table_window: TableWindow | None = None,
               out: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
               attrs: dict | None = None, report: Report | None = None, **options) -> xr.Dataset:
        """Cycling filter: the analysis of each time step of ``observations`` given the observations up
        to it only, members carried from cycle to cycle (:mod:`latentda.posterior.filtering`), dims
        (realization, time, ...). Each cycle conditions a window of K states on the member's last
        ``context`` latent states (default K − lag; ``conditioning`` mmps with slack ``condition_noise``,
        inpaint, or known for priors trained with known frames) and on the cycle's observations through the decoder; with ``lag`` > 1 the
        lag − 1 states before the new one are sampled again with their own cycles' observations
        (default ⌊K/2⌋). ``initial`` (e.g. a reanalysis, member m for member m) gives the states just
        before the first cycle (its last ``context`` states; the last one time step before the first
        cycle, checked); without it the first cycle starts from the prior. ``observations``: a
        dataset or a table, as for :meth:`reanalyze` (a cycle may observe other positions than the
        last, or nothing: a forecast step); a table is read state by state (:meth:`filter_cycles`: its
        memory grows with its rows, whatever the positions), on ``table_window`` (a
        :class:`latentda.observe.TableWindow`: start, length, time tolerance; default the rows' span). With
        ``out`` the analyses are written cycle by cycle and
        ``resume=True`` continues an interrupted run from its last finished cycle (bit-identical).
        Under torchrun/accelerate launch the members are dealt over the processes and each cycle
        gathered (:func:`latentda.runs.run_filter`). ``settings``/keywords, ``attrs``, ``report`` as
        for :meth:`reanalyze`."""
        from latentda.posterior.filtering import FilterSettings, check_cycle_settings, default_lag

        self._check_run(members, seed, attrs, observations, needs_observations=True)
        settings = self._run_settings(settings, options)
        check_cycle_settings(settings, self.window)
        filtering = FilterSettings(conditioning, condition_noise, context, lag=default_lag(self.window) if lag is None else lag)
        filtering.validate(self.window)
        time, cycles, read = self.filter_cycles(observations, table_window, settings.representation_error)
        encoded = used = None
        if initial is not None:
            _, encoded, initial_times, _, used = self._forecast_start(members, None, initial, settings,
                                                                      states=filtering.resolved_context(self.window))
            first = time.values[:1]
            if np.issubdtype(initial_times.dtype, np.datetime64) != np.issubdtype(first.dtype, np.datetime64):
                raise LatentdaError(f"the initial state's times ({initial_times.dtype}) and the observation times "
                                    f"({first.dtype}) are not of one kind")
            # the initial states are the ones just before the first cycle: one time axis, one model step apart
            time_step(xr.DataArray(np.concatenate([initial_times, first]), dims="time", attrs=time.attrs),
                      expected=self.time_step, what="time axis of the initial state followed by the first cycle")
        recorded = self._recorded(attrs, read, used, out)
        return run_filter(self, self.layout, cycles, time, members, settings, filtering, seed, encoded,
                          recorded, out, resume, overwrite, report)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | os.PathLike, model_card: str | None = None) -> Path:
        """Write the pipeline folder (to a temporary folder renamed into place: never half-written), with
        ``model_card`` (default: the card it was loaded with, :attr:`model_card`) as its README.md. An existing
        ``path`` is replaced only if it is a pipeline folder holding nothing else (an earlier save); any other
        file or folder there is refused, never deleted."""
        path = Path(path).expanduser().absolute()
        model_card = self.model_card if model_card is None else model_card
        if model_card is not None and not isinstance(model_card, str):
            raise LatentdaError(f"model_card: expected the card's text, got {type(model_card).__name__}")
        _check_replaceable(path)
        try:
            self._write_folder(path, model_card)
        except OSError as error:  # a full disk, no permission, a file where a parent folder should be
            where = f": {error.filename}" if error.filename else ""
            raise LatentdaError(f"{path}: cannot write the pipeline folder ({error.strerror or error}{where})") from None
        return path

    def _write_folder(self, path: Path, model_card: str | None) -> None:
        with atomic_path(path, overwrite=True) as folder:
            folder.mkdir(parents=True)
            save_autoencoder(folder / "autoencoder", self.autoencoder, self.layout, self.statistics,
                             representation_error=self.representation_error)
            self.backbone.save_pretrained(folder / "denoiser", safe_serialization=True)
            self.latent_statistics.save(folder / "denoiser" / "latent_statistics.json")
            if self.increments is not None:
                self.increments.statistics.save(folder / "denoiser" / "increment_statistics.json")
            self.scheduler.save_pretrained(folder / "scheduler")
            (folder / "model_index.json").write_text(json.dumps({**MODEL_INDEX, "_latentda_version": __version__}, indent=1))
            (folder / "pipeline_config.json").write_text(json.dumps(self.saved_settings.to_json(), indent=1))
            if model_card is not None:
                (folder / "README.md").write_text(model_card, encoding="utf-8")

    def push_to_hub(self, repo_id: str, commit_message: str = "Upload latentda pipeline", private: bool | None = None,
                    token: str | None = None, revision: str | None = None, create_pr: bool = False):
        """Upload the pipeline folder (safetensors, JSON, model card) to the Hugging Face Hub."""
        import tempfile

        from huggingface_hub import CommitOperationAdd, HfApi
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(repo_id)
        except Exception as error:  # HFValidationError; a non-string id
            raise LatentdaError(f"{repo_id!r}: not a hub repo id ({str(error).splitlines()[0]})") from None
        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder) / "pipeline"
            self.save_pretrained(folder)
            operations = [
                CommitOperationAdd(path_in_repo=file.relative_to(folder).as_posix(), path_or_fileobj=str(file))
                for file in sorted(folder.rglob("*")) if file.is_file()
            ]
            try:  # offline, refused, rate-limited: huggingface_hub and its HTTP client raise many types
                api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
                return api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision,
                                         create_pr=create_pr, repo_type="model")
            except Exception as error:
                message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise LatentdaError(f"{repo_id}: upload to the hub failed ({message})") from error

    @staticmethod
    def _resolve(path_or_repo_id: str | os.PathLike, revision: str | None, cache_dir: str | os.PathLike | None) -> Path:
        """A local folder as is; otherwise a hub repo id resolved through huggingface_hub's cache.

        Only JSON, safetensors and the model card are fetched: no code and no pickle ever is.
        """
        if not isinstance(path_or_repo_id, (str, os.PathLike)):
            raise LatentdaError(f"a pipeline folder or hub id (org/name) is needed, got {type(path_or_repo_id).__name__}")
        path = Path(path_or_repo_id)
        if path.is_dir():
            if revision is not None or cache_dir is not None:
                warnings.warn(f"{path}: a local folder is loaded as it is; revision and cache_dir apply to hub ids only",
                              stacklevel=3)
            return path
        text = str(path_or_repo_id)
        # A hub id is exactly org/name, and no local folder 'org' exists (runs/typo is a mistyped folder).
        if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1 or path.parent.exists():
            raise LatentdaError(f"{text}: pipeline folder not found (and not a hub id of the form org/name)")
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            return Path(snapshot_download(text, revision=revision, cache_dir=cache_dir, repo_type="model",
                                          allow_patterns=["*.json", "*.safetensors", "README.md"]))
        except LocalEntryNotFoundError:
            raise LatentdaError(f"{text}: not in the local hub cache and the hub cannot be reached (offline?)") from None
        except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError) as error:
            raise LatentdaError(f"{text}: {str(error).splitlines()[0]}") from None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None) -> "LatentDAPipeline":
        """Load a pipeline from a folder written by :meth:`save_pretrained` (or ``latentda train-ldm``)
        or from a Hugging Face Hub repo id (``org/name``, at ``revision``; honours HF_HUB_OFFLINE)."""
        _check_device(device, dtype)  # before any weight is read
        given, path = path, cls._resolve(path, revision, cache_dir)
        for part in ("model_index.json", "pipeline_config.json", "autoencoder", "denoiser", "scheduler"):
            if not (path / part).exists():
                raise LatentdaError(f"{path}: pipeline folder lacks '{part}'")
        check_inside(path, "pipeline")
        index = read_json(path / "model_index.json", "model index")
        for name in ("_class_name", "autoencoder", "denoiser", "scheduler"):
            if index.get(name) != MODEL_INDEX[name]:
                raise LatentdaError(f"{path}: model_index.json names {index.get(name)} for '{name}', expected {MODEL_INDEX[name]}")
        _warn_newer(index.get("_latentda_version"), path)
        settings_file, schedule_file = path / "pipeline_config.json", path / "scheduler" / "scheduler_config.json"
        entries = read_json(settings_file, "pipeline config")
        if isinstance(entries, dict) and "time_step" not in entries:  # a default would silently set the model's clock
            raise LatentdaError(f"{settings_file}: lacks 'time_step' (the model time between consecutive states)")
        saved = parse_file(SavedSettings, entries, settings_file)  # latentda's own file
        schedule = parse_known(SavedSchedule, read_json(schedule_file, "scheduler config"), schedule_file)
        autoencoder, layout, statistics = load_autoencoder(path / "autoencoder", device)
        backbone = load_model(TrajectoryTransformer, path / "denoiser", "denoiser")
        try:  # the rules that need the model: the scheduler's σ range and the window
            saved.check_sigma_range(schedule.sigma_min, schedule.sigma_max)
            saved.check_window(backbone.config.window)
        except LatentdaError as error:
            raise LatentdaError(f"{settings_file}: {str(error).removeprefix('config: ')}") from None
        try:
            scheduler = EDMEulerScheduler.from_pretrained(path / "scheduler")
        except Exception as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise LatentdaError(f"{path}: cannot load the scheduler ({message})") from None
        latent_statistics = Statistics.load(path / "denoiser" / "latent_statistics.json")
        if tuple(backbone.config.sample_size) != tuple(autoencoder.latent_shape[1:]) or backbone.config.in_channels != autoencoder.latent_shape[0]:
            raise LatentdaError(f"{path}: denoiser expects latents {backbone.config.in_channels}×{tuple(backbone.config.sample_size)}, "
                                f"autoencoder gives {tuple(autoencoder.latent_shape)}")
        if len(latent_statistics.channels) != autoencoder.latent_shape[0]:
            raise LatentdaError(f"{path}: latent statistics have {len(latent_statistics.channels)} channels, latents {autoencoder.latent_shape[0]}")
        representation_error = load_representation_error(path / "autoencoder", layout.channels)
        increments_file = path / "denoiser" / "increment_statistics.json"
        increment_statistics = Statistics.load(increments_file) if increments_file.is_file() else None
        if increment_statistics is not None and (len(increment_statistics.channels) != autoencoder.latent_shape[0]
                                                 or increment_statistics.bounded):
            raise LatentdaError(f"{increments_file}: needs {autoencoder.latent_shape[0]} unbounded channels, "
                                f"has {len(increment_statistics.channels)}{' (bounded)' if increment_statistics.bounded else ''}")
        pipeline = cls(autoencoder, layout, statistics, backbone, latent_statistics, scheduler, saved, representation_error,
                       increment_statistics)
        pipeline.source = str(Path(given).resolve()) if Path(given).is_dir() else str(given)
        card = path / "README.md"
        pipeline.model_card = card.read_text(encoding="utf-8", errors="replace") if card.is_file() else None
        return pipeline.to(device, dtype)


def _warn_newer(version, path: Path) -> None:
    """Warn when the folder at ``path`` was written by a newer latentda than this one."""
    from packaging.version import InvalidVersion, Version

    try:
        newer = version is not None and Version(str(version)) > Version(__version__)
    except InvalidVersion:
        newer = False
    if newer:
        warnings.warn(f"{path}: written by latentda {version}, newer than this {__version__}; if loading or sampling "
                      "fails, update latentda", stacklevel=3)


def _warn_off_mask(dropped: int) -> None:
    """Warn that ``dropped`` observations fell on the model's fixed mask and were left out."""
    if dropped:
        warnings.warn(f"{dropped} observation(s) read pixels of the model's fixed mask (pixels without values, e.g. "
                      "land): left out", stacklevel=3)


def _check_device(device, dtype) -> None:
    """``device`` is one this machine has (:func:`latentda.devices.check_device`) and ``dtype`` a floating torch
    dtype (or None)."""
    if device is not None:
        check_device(device)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise LatentdaError(f"dtype: expected a floating torch dtype (e.g. torch.float32), got {dtype!r}")


def _check_replaceable(path: Path) -> None:
    """``path`` may be written by :meth:`LatentDAPipeline.save_pretrained`: absent, an empty folder, or a
    pipeline folder holding nothing but a pipeline's files and a file browser's junk (which the new save replaces)."""
    check_replaceable_folder(path, PIPELINE_ENTRIES, "model_index.json", "a pipeline", verb="saving")

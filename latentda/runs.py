"""Ensemble runs: the members of a reanalysis or forecast sampled one by one into their output.

A run of N members writes into an ensemble store (:class:`latentda.data.ensemble_store.EnsembleWriter`,
a ``<out>.partial`` zarr store renamed to ``out`` when complete) or, without ``out``, gathers them in
memory. Member m depends only on (seed, m) (:func:`latentda.posterior.reanalysis.member_generator`),
so members may be computed in any order and on any process:

- **resume**: an interrupted run (Ctrl-C, SIGTERM) keeps every finished member; run again with
  ``resume=True`` it computes only the others, and the result is bit-identical to an
  uninterrupted run. The settings that decide the members are recorded in the store's attributes
  (:func:`run_attributes`), with a fingerprint of the input (:func:`input_fingerprint`), and a resumed
  run must match them.
- **processes**: under ``torchrun``/``accelerate launch`` the main process creates the store, the
  others attach to it, and the unfinished members are dealt round-robin — or, with
  ``split_blankets``, every process samples every member, sharing the blanket windows, and the main
  process writes.
- **errors**: a store this run created is removed when the run fails on a problem of its inputs or
  settings (a :class:`~latentda.errors.LatentdaError`) or before it finished anything; when it fails
  otherwise (out of memory, a full disk, a lost node) after finishing members or cycles, the store
  is kept for ``resume`` and the error says so. An interrupted one is always kept.
- **one writer**: the main process holds the output's lock (:class:`latentda.data.io.OutputLock`) from
  creating or reopening the store until it is finished, failed or interrupted, so a second run to the
  same output at the same time (a new one, or a ``resume`` while the first still runs) is refused.

Both the Python API (:meth:`latentda.pipeline.LatentDAPipeline.reanalyze`, ``.forecast``) and the
command line go through :func:`run_reanalysis` and :func:`run_forecast`.

A cycling filter (:func:`run_filter`) is written cycle by cycle instead: each cycle's analyses of
every member go into their time step of the store, then the members' state after it
(:class:`latentda.posterior.filtering.FilterState`, a safetensors file in the partial store), so an
interrupted filter resumes from its last finished cycle, again bit-identical. Under several processes
its members are dealt round-robin too (member m to process m mod P), each cycle's analyses and states
gathered (:func:`gather_members`, an all-gather) and written by the main process: a cycle costs
⌈N/P⌉ members' work, and the members are those of one process (each draws from its own stream).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from latentda.data.ensemble_store import EnsembleInMemory, EnsembleWriter, ensemble_dataset, open_ensemble
from latentda.data.io import remove_path
from latentda.data.layout import FieldLayout
from latentda.data.times import climate_calendar
from latentda.diffusion.distributed import check_blanket_split
from latentda.errors import LatentdaError
from latentda.observe.operators import ObservationOperator
from latentda.posterior import reanalysis
from latentda.posterior.forecast import ForecastMembers
from latentda.posterior.prior import PriorModel
from latentda.processes import deal_members, gather_members, process_state, run_on_main, wait_for_all
from latentda.posterior.reanalysis import PosteriorSettings

__all__ = ["EnsembleRun", "run_reanalysis", "run_forecast", "run_filter", "run_attributes", "lead_time_axis"]

Report = Callable[[str], None]
UNRECORDED = ("batch_members", "split_blankets", "decode_chunk")  # change float rounding only, not the members





def _stopped(error: BaseException, store: EnsembleWriter, created: bool, what: str) -> None:
    """What a run that failed or was interrupted (``error``) leaves (module docstring, **errors**): a fresh
    (``created``) run's store is removed after a :class:`LatentdaError` or when nothing is finished;
    otherwise (or interrupted) its finished members or cycles (``what``) are kept for ``resume``, the
    error carrying a note saying where. The output's lock is released (a resume, even in this process,
    may take it)."""
    if isinstance(error, Exception) and created:
        finished = len(store.completed())
        if isinstance(error, LatentdaError) or finished == 0:
            remove_path(store.partial)
        else:
            error.add_note(f"latentda: {finished} finished {what}(s) kept in {store.partial}: run again with --resume "
                           "(resume=True) to continue, or remove it")
    store.release()


# The revision of the sampling code a run's members come from, recorded with its settings: "2" since the pc
# sampler's Langevin step is capped at σ² and MMPS sums its correction from the solver's products. A partial run
# of another revision (none recorded: an earlier latentda) is not resumed, whose members would mix two samplers.
SAMPLER_REVISION = "2"


def run_attributes(settings: PosteriorSettings, **recorded) -> dict[str, str]:
    """The settings that decide a run's members, as recorded in its output (``latentda_<name>``):
    every posterior setting given (None: the pipeline's default, which ``pipeline`` identifies),
    ``recorded`` (e.g. the pipeline's folder) and the :data:`SAMPLER_REVISION`. Batching and how
    processes share the work change nothing but float rounding, and are left out."""
    given = {k: v for k, v in dataclasses.asdict(settings).items() if v is not None and k not in UNRECORDED}
    given.update({k: v for k, v in recorded.items() if v is not None})
    return {"latentda_sampler_revision": SAMPLER_REVISION, **{f"latentda_{k}": str(v) for k, v in given.items()}}


# The attributes of an input's variables that say what it is: an observation group's σ, source variables,
# transform, sampling and its parameters, and units. They count in its fingerprint: a resume with another σ
# or of another variable would otherwise mix two runs (other attributes — titles, history — do not count).
FINGERPRINTED_ATTRIBUTES = ("latentda_sampling", "latentda_source", "latentda_transform", "noise_std",
                            "coarsen_factor", "saturation", "units")


def input_fingerprint(dataset: xr.Dataset | Sequence[xr.Dataset | None], states_per_read: int = 16) -> str:
    """sha256 (16 hex digits) of a run's input — its observations, or the initial states it reads —
    recorded as ``latentda_observations_sha256`` / ``latentda_initial_sha256`` so that ``resume`` refuses
    to complete a run with members of another input. The values and coordinates count (times as
    nanoseconds, whatever precision they were decoded with), and the variables' attributes that define
    observations (:data:`FINGERPRINTED_ATTRIBUTES`); file names do not. Read ``states_per_read`` time steps at a time: a large
    lazily opened input is never held whole. A sequence of datasets (a table's cycles, None where nothing
    is observed) is hashed in its order."""
    import hashlib

    if not isinstance(dataset, xr.Dataset):
        parts = ("-" if part is None else input_fingerprint(part, states_per_read) for part in dataset)
        return hashlib.sha256(" ".join(parts).encode()).hexdigest()[:16]
    digest = hashlib.sha256()
    for name in sorted(dataset.variables, key=str):
        variable = dataset[name].variable
        kind = variable.dtype.kind
        stored = "ns" if kind in "mM" else "text" if kind in "OUS" else variable.dtype.str  # as hashed below
        digest.update(f"\x00{name}:{variable.dims}:{variable.shape}:{stored}".encode())
        described = {key: np.asarray(variable.attrs[key]).tolist() for key in FINGERPRINTED_ATTRIBUTES
                     if key in variable.attrs}
        digest.update(repr(sorted(described.items())).encode())
        steps = variable.sizes.get("time", 1)
        for start in range(0, steps, states_per_read):
            part = variable.isel(time=slice(start, start + states_per_read)) if "time" in variable.dims else variable
            values = np.asarray(part.values)
            if values.dtype.kind == "M":  # datetimes and durations: their instants, not their decoded precision
                values = values.astype("datetime64[ns]").view(np.int64)
            elif values.dtype.kind == "m":
                values = values.astype("timedelta64[ns]").view(np.int64)
            if values.dtype.kind in "OUS":  # text: its characters, not object pointers
                digest.update("".join(f"{value}\x1f" for value in values.ravel()).encode())
            else:
                digest.update(np.ascontiguousarray(values).data)
    return digest.hexdigest()[:16]


def lead_time_axis(prior: PriorModel, count: int) -> xr.DataArray:
    """The forecast lead times 0, Δ, …, (count − 1)Δ with their CF attributes."""
    leads = xr.DataArray(prior.lead_times(count), dims="time", attrs={"long_name": "forecast lead time"})
    if prior.time_units != "seconds":  # timedelta64 leads carry their units in the encoding
        leads.attrs["units"] = "seconds" if climate_calendar(prior.time_units) else prior.time_units
    return leads


class EnsembleRun:
    """One ensemble run: its output (a store at ``out``, or memory when ``out`` is None) and this
    process's share of the members still to compute (:attr:`members`).

    Use as a context manager around the sampling loop (a store created by this run is removed if
    the loop fails with an error; an interrupted one is kept), then call :meth:`finish`.
    """

    def __init__(self, layout: FieldLayout, time: xr.DataArray, members: int, attrs: dict, out: str | os.PathLike | None = None,
                 resume: bool = False, overwrite: bool = False, init_time: xr.DataArray | None = None,
                 deal_members: bool = True, report: Report | None = None, state=None) -> None:
        self.out = None if out is None else Path(out)
        self.overwrite, self.report = overwrite, report
        self.state = state or process_state()
        self.created = False
        if self.out is None:  # every process computes every member and keeps them
            self.store, self.members, self.writes = EnsembleInMemory(layout, time, members, attrs, init_time), list(range(members)), True
            return
        EnsembleWriter.check(self.out, resume, overwrite)  # every process, before any waits
        partial = self.out.with_name(self.out.name + ".partial")
        self.created = not partial.exists()

        def store(**kwargs) -> EnsembleWriter:
            return EnsembleWriter(self.out, layout, time, members, attrs, resume=resume, overwrite=overwrite,
                                  init_time=init_time, **kwargs)

        self.state.wait_for_everyone()
        writer = run_on_main(store, self.is_main)  # a refused resume stops every process with its message
        self.store = writer or store(attach=True)
        pending = self.store.pending()
        if len(pending) < members:
            self.say(f"resuming: {members - len(pending)} member(s) already complete")
        share = slice(self.state.process_index, None, self.state.num_processes) if deal_members else slice(None)
        self.members = pending[share]
        self.writes = self.is_main or deal_members  # split blankets: every process has every member; one writes

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def say(self, message: str) -> None:
        """Report a message of the run as a whole (from the main process only)."""
        if self.report is not None and self.is_main:
            self.report(message)

    def write(self, member: int, fields: np.ndarray, message: str | None = None) -> None:
        """Keep member ``member``'s fields (time, C, H, W) — and report ``message`` — on the process that writes it."""
        if self.writes:
            self.store.write(member, fields)
            if message is not None and self.report is not None:
                self.report(message)

    def __enter__(self) -> "EnsembleRun":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None and isinstance(self.store, EnsembleWriter):
            _stopped(error, self.store, self.created and self.is_main, "member")

    def finish(self) -> xr.Dataset:
        """The complete ensemble: the store moved to ``out`` (and opened lazily, variables in the
        model's channel order), or the dataset in memory."""
        if self.out is None:
            return self.store.finalize()
        wait_for_all()  # members take unequal times: the processes done first wait without a deadline
        if self.is_main:
            self.say(f"wrote {self.store.finalize(overwrite=self.overwrite)}")
        self.state.wait_for_everyone()
        return open_ensemble(self.out, self.store.layout)


def run_reanalysis(prior: PriorModel, layout: FieldLayout, operator: ObservationOperator, time: xr.DataArray,
                   members: int, settings: PosteriorSettings, seed: int = 0, attrs: dict | None = None,
                   out: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
                   report: Report | None = None) -> xr.Dataset:
    """The posterior ensemble of ``operator``'s observations (at ``time``), dims (realization, time, ...),
    written to ``out`` when given (see the module docstring). ``settings`` must be validated;
    ``attrs`` are recorded in the output next to the title, seed and :func:`run_attributes`.
    With ``prior.progress``, each member reports its observation residual ratio."""
    state = process_state()
    ratios = prior.progress  # each member's residual ratio is reported by the process that samples it
    if settings.split_blankets:
        check_blanket_split(operator.length, prior.window, settings.sampling(prior).blanket_overlap(prior.window),
                            state.num_processes)
    if not state.is_main_process:
        prior.progress = False  # one progress bar (the main process's), not one per process interleaved
    attrs = {"title": "latentda reanalysis (posterior ensemble)", **(attrs or {}), "seed": seed, **run_attributes(settings)}
    run = EnsembleRun(layout, time, members, attrs, out, resume, overwrite, deal_members=not settings.split_blankets,
                      report=report, state=state)
    with run:
        # looked up when called, so that it can be replaced (tests interrupt a run after some members)
        for member, fields, ratio in reanalysis.posterior_members(prior, operator, run.members, settings, seed):
            run.write(member, fields, f"member {member}: observation residual ratio {ratio:.3f}" if ratios else None)
    return run.finish()


def run_forecast(forecast: ForecastMembers, layout: FieldLayout, time: xr.DataArray, attrs: dict | None = None,
                 out: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
                 report: Report | None = None) -> xr.Dataset:
    """The forecast ensemble of the checked ``forecast`` (:func:`latentda.posterior.forecast.forecast_members`)
    in WeatherBench2 layout, dims (realization, time, prediction_timedelta, ...), the single ``time``
    being the last of ``time`` ("now"); written to ``out`` when given (see the module docstring)."""
    prior = forecast.prior
    attrs = {"title": "latentda forecast ensemble", **(attrs or {}), "mode": forecast.mode,
             "conditioning": forecast.conditioning, "seed": forecast.seed,
             **run_attributes(forecast.settings, condition_noise=forecast.noise if forecast.conditioning == "mmps" else None)}
    now = xr.DataArray(time.values[-1:], dims="time", attrs=time.attrs)
    run = EnsembleRun(layout, lead_time_axis(prior, forecast.lead + 1), len(forecast), attrs, out, resume, overwrite,
                      init_time=now, report=report)
    with run:
        for member, fields in tqdm(forecast.only(run.members), total=len(run.members), desc="forecast members",
                                   disable=not (prior.progress and run.is_main)):
            run.write(member, fields)
    return run.finish()


def run_filter(prior: PriorModel, layout: FieldLayout, cycles: Sequence[ObservationOperator | None], time: xr.DataArray,
               members: int, settings: PosteriorSettings, options, seed: int = 0, initial: torch.Tensor | None = None,
               attrs: dict | None = None, out: str | os.PathLike | None = None, resume: bool = False,
               overwrite: bool = False, report: Report | None = None) -> xr.Dataset:
    """The cycling filter's analyses (:mod:`latentda.posterior.filtering`) of ``cycles``, the observations
    of one time step each (None: nothing observed; :func:`latentda.posterior.filtering.split_cycles`),
    dims (realization, time, ...), written to ``out`` cycle by cycle when given (module docstring). ``options``: a validated :class:`latentda.posterior.filtering.FilterSettings`;
    ``initial``: encoded latents the members start from (None: the prior, conditioned on the first cycle)."""
    from latentda.posterior.filtering import FilterState, filter_members

    attrs = {"title": "latentda cycling filter (analyses)", **(attrs or {}), "seed": seed,
             **run_attributes(settings, conditioning=options.conditioning, context=options.context,
                              condition_noise=options.condition_noise if options.conditioning == "mmps" else None,
                              lag=options.lag if options.lag > 1 else None)}
    cycles = list(cycles)
    processes = process_state()
    main = processes.is_main_process
    mine = deal_members(members, processes.process_index, processes.num_processes)
    state = None
    writer = created = None
    if out is not None:
        EnsembleWriter.check(out, resume, overwrite)  # every process, before any waits
        created = not Path(out).with_name(Path(out).name + ".partial").exists()

        def store(**kwargs) -> EnsembleWriter:
            return EnsembleWriter(out, layout, time, members, attrs, resume=resume, overwrite=overwrite, by_time=True, **kwargs)

        processes.wait_for_everyone()
        writer = run_on_main(store, main)
        saved = (writer or store(attach=True)).load_state()
        if saved is not None:
            state = FilterState.from_arrays(saved, cycles)  # a lagged filter re-reads its last cycles
            if report is not None and main:
                report(f"resuming: {state.cycle} cycle(s) already complete")
    first = 0 if state is None else state.cycle
    analyses = []
    try:
        run = filter_members(prior, cycles[first:], mine, settings, seed, options.conditioning,
                             options.condition_noise, options.context, initial if state is None else None,
                             state=state, times=np.asarray(time.values)[first:], lag=options.lag)
        for cycle in tqdm(run, total=len(cycles) - first, desc="cycles", disable=not (prior.progress and main)):
            analysis = gather_members(cycle.analysis, members)
            if out is None:
                analyses.append(analysis)
                continue
            arrays = cycle.state.to_arrays()
            for name in ("history", "generator_states", "forecast_states"):
                if name in arrays:
                    arrays[name] = gather_members(arrays[name], members)
            arrays["members"] = np.arange(members, dtype=np.int64)
            ratio = None if cycle.residual_ratio is None else gather_members(np.asarray(cycle.residual_ratio), members)
            if main:
                writer.write(cycle.cycle, analysis)
                writer.save_state(arrays)
                if report is not None and ratio is not None and prior.progress:
                    report(f"cycle {cycle.cycle}: observation residual ratio {float(np.mean(ratio)):.3f}")
    except BaseException as error:
        if writer is not None:
            _stopped(error, writer, created, "cycle")
        raise
    if out is None:
        return ensemble_dataset(layout, np.stack(analyses, axis=1), time, attrs=attrs)
    processes.wait_for_everyone()
    if main:
        final = writer.finalize(overwrite=overwrite)
        if report is not None:
            report(f"wrote {final}")
    processes.wait_for_everyone()
    return open_ensemble(out, layout)

"""``latentda evaluate``: score an ensemble against the truth or the observations, write a table and figures.

The prediction (dims realization, time, …; or a forecast with dims realization, time,
prediction_timedelta, … scored at valid times time + prediction_timedelta) is matched to the truth by time coordinate (one
trajectory of the truth is selected when it has several). Scores per channel and time step are in
:mod:`latentda.metrics`; with observations, the observation-space scores below and, for a reanalysis, the
observation residual ratio (RMS of (y − H(x))/σ per member over the times both have, ≈ 1 when consistent) are
added. Outputs: ``metrics.csv`` (one row per channel and time),
``summary.json`` (means over time; ``rmse_pooled``, ``spread_pooled``: √(mean over time of the squares),
WeatherBench2's time average; the spread-skill ratio pooled over time, √((m+1)/m · mean spread² / mean
rmse²), :func:`latentda.metrics.pooled_spread_skill_ratio`), ``scores.png`` (scores against time) and
``spectra.png`` (the prediction's and the truth's on the points scored in both, at the summarised times). A
forecast's lead 0 is its initial state (the states it was given, or the analysis it starts from), not a
forecast: it has its rows in ``metrics.csv`` (column ``lead`` the lead time, ``step`` its index; a
reanalysis' rows have ``step``, the time index) but is left out of the summary, the rank histograms, the
coverage curve and the spectra; a forecast without a lead 0 is summarised over all its leads.

A forecast may hold several initialisation times (WeatherBench2's layout: forecasts of one lead set,
concatenated along ``time``), or one of either left as a coordinate (``.sel(prediction_timedelta=…)``,
``.isel(time=i)``). Every (initialisation, lead) pair is scored at its valid time (rows with
``init_time``); the summary averages over all pairs past lead 0, as WeatherBench2 averages over
initialisation times, and ``summary["by_lead"]`` gives each score by lead, averaged over the
initialisation times (``rmse_pooled``: √ of the mean square), the curve against lead WeatherBench2
plots. Leads written as numbers with CF units (``hours``) are read as durations.

Against observations (real data: no truth; ``truth`` None): the ensemble is scored in observation space, each
member mapped through the observation file's operator (:func:`latentda.observe.files.read_observations`), per
observation group and time (a forecast at its valid times; a time without observations has no rows), by
:func:`latentda.metrics.observation_space_scores` (bias, rmse, spread, noise_std, the spread-skill ratio with the
observation error, the dressed CRPS): rows with ``observation`` in place of ``channel``, the summary per group
pooled over every observation (over a forecast's leads past 0, and ``by_lead``), for a reanalysis also the
residual ratio. With the truth too, the same summary is ``summary["observation_space"]``.

Memory: the prediction (and the truth, and the observations of the block's times) are read and scored a block of
times at a time (:data:`BLOCK_BYTES` of float32 states, at least one time; a forecast's initialisations read one by
one), so the memory is a block's, not the ensemble's; what is kept whole is one number per (time, channel) per
score, the rank and coverage counts, the spectra's sums, and the observation file's parts that have no time (point
positions, a linear group's matrix; read once). The scores are those of one block of all (the draws at ties of the PIT
and the ranks come from one stream each, block after block); the spectra to rounding (sums in another order).

Masks and missing values: every score is over the points where the truth and all members have
values. NaN in the truth (a land mask, a missing step) is left out; NaN in the prediction is
accepted only on its fixed mask (its ``<variable>_mask`` variables), anywhere else it is an error; a
variable with no point to score is an error (exit 2). ``summary["valid_points"]`` gives, per channel,
the fraction of points scored and the number of times with none (their rows hold NaN, null in JSON).

On a lat-lon grid reaching the poles (first/last row within one grid step of ±90°) the scores
include ``pole_rmse``, the unweighted RMSE over the pole rows: the area-weighted scores give those
rows little weight (see ``FieldLayout.area_weights``), so errors there would go unseen.

Calibration (ensembles of two or more members): per channel and time the coverage of the central
50 % and 90 % intervals (``coverage_50``, ``coverage_90``: ≈ 0.5 and 0.9 when calibrated, lower
when under-dispersed; Student-t prediction intervals from the ensemble mean and spread); per channel the rank histogram of the truth pooled over space and time with
its χ² flatness statistic, p-value and flatness χ²/m (``summary[channel]["rank_histogram"]``; every
pixel one count, as a χ² test of counts needs) and the coverage of central intervals of levels 0.1 … 0.9
(``summary[channel]["coverage_curve"]``, area-weighted as ``coverage_50``/``coverage_90``);
``calibration.png`` draws the rank histograms, the coverage (PIT reliability) curve and the
spread-skill ratio by time. Definitions in :mod:`latentda.metrics`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from latentda.data.io import already_exists, atomic_path, check_replaceable_folder
from latentda.data.layout import TIME, TRAJECTORY, FieldLayout
from latentda.data.statistics import check_finite
from latentda.data.times import axis_units, climate_calendar, describe_time, standard_time_axis, time_kind
from latentda.errors import LatentdaError
from latentda.metrics import (CURVE_LEVELS, coverage_sums, ensemble_scores, interval_coverage, observation_space_scores,
                              pole_rmse, pooled_observation_scores, pooled_spread_skill_ratio, predictive_pit,
                              rank_flatness, rank_histogram, spectrum_sums)

__all__ = ["evaluate", "is_forecast", "valid_times", "write_report", "check_report_path", "NOT_CHANNELS"]

COVERAGE_LEVELS = (0.5, 0.9)
# The prediction is read and scored this many bytes of float32 states at a time (a block of times, at least one):
# evaluate's arrays peak at ~7x a block, not ~7x the ensemble (read whole). 16-64 MiB scored as fast as the whole
# (faster: 13 s against 16 s), 4 MiB 2x slower (a 1 MiB output chunk then decompressed for several blocks);
# tools/bench_evaluate_memory.py, docs/benchmarks.md "Scoring in blocks of times".
BLOCK_BYTES = 1 << 25
REPORT_FILES = ("metrics.csv", "summary.json", "scores.png", "spectra.png", "calibration.png")  # what write_report writes
NOT_CHANNELS = ("spectra", "members", "observation_residual_ratio", "valid_points", "by_lead", "initialisation_times",
                "observation_space")  # summary keys that are not channels


def _time_units(datasets: dict[str, xr.Dataset | None]) -> str:
    """The :func:`axis_units` of the prediction's time axis. Every dataset's axis (observations may have none)
    must be of its kind (:func:`time_kind`: date-times, dates of one climate calendar, or numbers), else an error
    naming both."""
    for name in ("prediction", "truth"):
        if datasets[name] is not None and TIME not in datasets[name].coords:  # the bare index would be taken for times 0, 1, …
            raise LatentdaError(f"the {name} has no 'time' coordinate: its states cannot be matched")
    kinds = {name: time_kind(dataset[TIME]) for name, dataset in datasets.items()
             if dataset is not None and TIME in dataset.coords}
    for name, kind in kinds.items():
        if kind != kinds["prediction"]:
            whose = f"{name}'" if name.endswith("s") else f"{name}'s"
            raise LatentdaError(f"the prediction's times are {kinds['prediction']}, the {whose} are {kind}")
    return axis_units(datasets["prediction"][TIME])


def _align(times: np.ndarray, truth: xr.Dataset, trajectory: int | None, units: str) -> xr.Dataset:
    """The truth at the prediction's ``times`` (of one trajectory), not read yet."""
    if TRAJECTORY not in truth.dims and trajectory is not None:
        raise LatentdaError(f"--trajectory {trajectory}: the truth has no '{TRAJECTORY}' dimension (leave it out)")
    if TRAJECTORY in truth.dims:
        if trajectory is None:
            raise LatentdaError(f"the truth has {truth.sizes[TRAJECTORY]} trajectories: choose one with --trajectory")
        if not 0 <= trajectory < truth.sizes[TRAJECTORY]:
            raise LatentdaError(f"--trajectory {trajectory} out of range (the truth has {truth.sizes[TRAJECTORY]})")
        truth = truth.isel({TRAJECTORY: trajectory}, drop=True)
    _check_unique(truth[TIME].values, "the truth's", units)
    calendar = climate_calendar(units) is not None
    known = truth[TIME].values
    try:
        if np.issubdtype(times.dtype, np.number):  # float model times: tolerate rounding of time + lead
            return truth.sel({TIME: times}, method="nearest", tolerance=_time_tolerance(times, known, calendar))
        return truth.sel({TIME: times})
    except KeyError:
        if np.issubdtype(times.dtype, np.number):
            absent = (np.abs(times.astype(np.float64)[:, None] - known.astype(np.float64)[None]).min(axis=1)
                      > _time_tolerance(times, known, calendar))
        else:
            absent = ~np.isin(times, known)
        raise LatentdaError(f"the prediction's times are not all in the truth: {int(absent.sum())} are not, the first "
                            f"{describe_time(times[np.argmax(absent)], units)} (the truth has {_time_span(known, units)})") from None


def _check_unique(times: np.ndarray, whose: str, units: str) -> None:
    """One state (or set of observations) per time: which of two at one time to score is not defined."""
    values, counts = np.unique(times, return_counts=True)
    if (counts > 1).any():
        raise LatentdaError(f"{whose} times are not unique: {describe_time(values[counts > 1][0], units)} appears "
                            f"{counts[counts > 1][0]} times")


CALENDAR_TOLERANCE = 1e-3  # seconds: dates of a climate calendar are whole seconds, exact in float64


def _time_tolerance(times: np.ndarray, reference: np.ndarray | None = None, calendar: bool = False) -> float:
    """How far float model times may differ and be the same time: the rounding of time + lead (10⁻⁶ of
    their magnitude), at most a quarter of the ``reference`` axis' smallest step (large model times must
    not match a neighbouring state); for dates of a climate calendar (``calendar``: seconds since year 1,
    whose 10⁻⁶ would be hours) :data:`CALENDAR_TOLERANCE`."""
    if calendar:
        return CALENDAR_TOLERANCE
    tolerance = 1e-6 * max(1.0, float(np.abs(times).max())) if len(times) else 1e-6
    if reference is not None and len(np.unique(reference)) > 1:
        tolerance = min(tolerance, 0.25 * float(np.diff(np.unique(np.asarray(reference, dtype=np.float64))).min()))
    return tolerance


def _time_span(times: np.ndarray, units: str | None = None) -> str:
    """The first and last of ``times`` for messages (:func:`describe_time`: dates of a climate calendar as dates)."""
    return f"{describe_time(times[0], units)} … {describe_time(times[-1], units)}" if len(times) else "none"


def evaluate(prediction: xr.Dataset, truth: xr.Dataset | None = None, observations: xr.Dataset | None = None,
             trajectory: int | None = None, block_bytes: int | None = None, progress: bool = False) -> tuple[list[dict], dict]:
    """Rows (channel, time, scores…) and a summary (scores averaged over time, per channel) against the
    ``truth``; without a truth (real data), rows (observation, time, scores…) and a summary per observation
    group against the ``observations`` (module docstring, "Against observations"); with both, the truth's
    report, the observation-space summary under ``summary["observation_space"]``. Time axes are read as
    ``open_dataset`` reads a file's (:func:`latentda.data.times.standard_time_axis`: e.g. the cftime dates
    of a climate calendar that ``xr.open_dataset`` gives). ``progress``: a progress bar over the times read, when
    they take more than one block (``block_bytes``, default :data:`BLOCK_BYTES`: module docstring, "Memory")."""
    if truth is None and observations is None:
        raise LatentdaError("nothing to score against: give the truth, observations or both")
    if truth is None and trajectory is not None:
        raise LatentdaError(f"--trajectory {trajectory} selects a trajectory of the truth: there is none (leave it out)")
    prediction = standard_time_axis(prediction)
    truth = standard_time_axis(truth) if truth is not None else None
    if observations is not None:
        observations = standard_time_axis(observations)
    if "realization" not in prediction.dims:
        raise LatentdaError("the prediction has no 'realization' dimension (is it an ensemble?)")
    units = _time_units({"prediction": prediction, "truth": truth, "observations": observations})
    calendar = climate_calendar(units) is not None  # dates of a climate calendar: matched to the second
    forecast = is_forecast(prediction)
    inits = leads = None
    count = 1
    if forecast:  # score against the truth at valid times
        cases, inits, leads, count = _valid_times(prediction)  # count: leads per initialisation time
    else:
        cases = _Cases([prediction])
    prediction = cases.parts[0]  # the variables, grid, members and mask of every part
    times = cases.times
    if not len(times) or not prediction.sizes["realization"]:
        raise LatentdaError(f"the prediction has {len(times)} time(s) and {prediction.sizes['realization']} member(s): "
                            "nothing to score")
    layout = FieldLayout.from_dataset(prediction)
    if truth is not None:
        truth = _align(times, truth, trajectory, units)
        layout.check(truth)
    members = prediction.sizes["realization"]
    mask = _prediction_mask(prediction, layout)
    blocks = _time_blocks(len(times), 4 * members * layout.num_channels * int(np.prod(layout.shape)),
                          BLOCK_BYTES if block_bytes is None else block_bytes)
    time_texts = _time_texts(times, units)
    if forecast:
        init_texts = _time_texts(inits, units)
        if calendar:  # seconds on the calendar's axis: durations, as for datetimes
            leads = pd.to_timedelta(leads, unit="s").to_numpy()
    where = [{"init_time": init_texts[t], "lead": _lead_text(leads[t]), "step": t % count} if forecast else {"step": t}
             for t in range(len(times))]  # a forecast's step: its lead's index
    summarised = np.ones(len(times), dtype=bool)
    if forecast and not _is_zero(leads).all():  # a forecast's lead 0 is no forecast: its initial state
        summarised = ~_is_zero(leads)
    in_observations = None
    if observations is not None:  # the observations matched to the prediction's times before any read
        in_observations = _ObservationScores(observations, layout, times, units, mask, members)
    if truth is None:
        for block in _progress(blocks, progress):
            in_observations.add(_read_block(cases.block(block), layout, members, block.start, mask), block)
        rows, summary = in_observations.result(time_texts, where, summarised, leads if forecast else None, count)
        if forecast:
            summary["initialisation_times"] = len(inits) // count
        summary["members"] = members
        return rows, summary
    areas = layout.area_weights(floor=0.0)  # scores weigh the plain cell areas (WeatherBench2); the floor is training's
    channels = range(layout.num_channels)
    parts = []  # each block's scores per (time, channel)
    scored = np.zeros(layout.num_channels, dtype=np.int64)  # points where the truth and every member have values
    any_valid = np.zeros((len(times), layout.num_channels), dtype=bool)
    covered_area = np.zeros((layout.num_channels, len(CURVE_LEVELS)))  # the coverage curve's sums (coverage_sums)
    scored_area = np.zeros(layout.num_channels)
    pit_draws = np.random.default_rng(0)  # the PIT's and the ranks' draws at ties: one stream each, block after block
    rank_draws = [np.random.default_rng(0) for _ in channels]
    counts = np.zeros((layout.num_channels, members + 1), dtype=np.int64)
    spectra = {side: [_SpectrumSums(layout.periodic) for _ in channels] for side in ("prediction", "truth")}
    for block in _progress(blocks, progress):
        ensemble = _read_block(cases.block(block), layout, members, block.start, mask)
        truth_here, kept = layout.to_array(truth.isel({TIME: block})), summarised[block]
        # in the truth NaN is masked or missing and left out of every score
        check_finite(truth_here, layout.channels, " in the truth", allow_missing=True)
        valid = np.isfinite(truth_here) & np.isfinite(ensemble).all(axis=0)
        scored += valid.sum(axis=(0, 2, 3))
        any_valid[block] = valid.any(axis=(2, 3))
        part = ensemble_scores(ensemble, truth_here, areas)
        if layout.pole_rows():
            part["pole_rmse"] = pole_rmse(ensemble, truth_here, layout.pole_rows())
        if members > 1:  # one draw at ties for every coverage
            pit = predictive_pit(ensemble, truth_here, rng=pit_draws)
            for level in COVERAGE_LEVELS:
                part[f"coverage_{round(100 * level)}"] = interval_coverage(ensemble, truth_here, level, areas, pit)
            for c in channels:
                counts[c] += rank_histogram(ensemble[:, kept, c], truth_here[kept, c], rng=rank_draws[c])
                covered, total = coverage_sums(pit[kept, c], CURVE_LEVELS, areas)  # as coverage_50/90
                covered_area[c] += covered
                scored_area[c] += total
        for c in channels:  # both over the points scored, at the summarised times
            spectra["prediction"][c].add(np.where(valid[kept, c], ensemble[:, kept, c], np.nan))
            spectra["truth"][c].add(np.where(valid[kept, c], truth_here[kept, c], np.nan))
        if in_observations is not None:
            in_observations.add(ensemble, block)
        parts.append(part)
        del ensemble, truth_here
    if not scored.all():
        empty = [c for c, n in zip(layout.channels, scored) if n == 0]
        raise LatentdaError(f"nothing to score for {', '.join(empty)}: no point where the truth and the prediction "
                            "both have values (all masked or missing)")
    scores = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    rows = [{"channel": channel, "time": time, **where[t], **{name: float(value[t, c]) for name, value in scores.items()}}
            for c, channel in enumerate(layout.channels) for t, time in enumerate(time_texts)]
    summary = {channel: {name: float(np.nanmean(value[summarised, c])) for name, value in scores.items()}
               for c, channel in enumerate(layout.channels)}
    if forecast:  # WeatherBench2's headline: each score by lead, averaged over the initialisation times
        summary["by_lead"] = {channel: {_lead_text(leads[i]): {
            **{name: float(np.nanmean(value[i::count, c])) for name, value in scores.items()},
            **{f"{name}_pooled": float(np.sqrt(np.nanmean(scores[name][i::count, c] ** 2)))
               for name in ("rmse", "spread") if name in scores}} for i in range(count)}
            for c, channel in enumerate(layout.channels)}
        summary["initialisation_times"] = len(inits) // count
    for c, channel in enumerate(layout.channels):  # WeatherBench2's time averages: roots of the mean squares
        for name in ("rmse", "spread"):
            if name in scores:  # a single member has no spread
                summary[channel][f"{name}_pooled"] = float(np.sqrt(np.nanmean(scores[name][summarised, c] ** 2)))
    if members > 1:
        pooled = pooled_spread_skill_ratio(scores["spread"][summarised], scores["rmse"][summarised], members)
        for c, channel in enumerate(layout.channels):
            summary[channel]["spread_skill_ratio"] = float(pooled[c])
            summary[channel]["rank_histogram"] = {"counts": counts[c].tolist(), **rank_flatness(counts[c])}
            summary[channel]["coverage_curve"] = {"level": CURVE_LEVELS.tolist(),
                                                  "observed": (covered_area[c] / scored_area[c]).tolist()}
    if in_observations is not None:
        _, space = in_observations.result(time_texts, where, summarised, leads if forecast else None, count, alone=False)
        summary["observation_residual_ratio"] = space.pop("observation_residual_ratio")  # where it always was
        summary["observation_space"] = space
    summary["spectra"] = {}
    for c, channel in enumerate(layout.channels):
        k, predicted = spectra["prediction"][c].spectrum()
        _, true = spectra["truth"][c].spectrum()
        summary["spectra"][channel] = {"wavenumber": k.tolist(), "prediction": predicted.tolist(), "truth": true.tolist()}
    summary["members"] = members
    summary["valid_points"] = {channel: {"fraction": float(n / (len(times) * int(np.prod(layout.shape)))),
                                         "times_without_any": int((~any_valid[:, c]).sum())}
                               for c, (channel, n) in enumerate(zip(layout.channels, scored))}
    return rows, summary


def _time_blocks(times: int, bytes_per_time: int, block_bytes: int) -> list[slice]:
    """Consecutive slices of ``times`` times, each as many as ``block_bytes`` hold at ``bytes_per_time`` (at least one)."""
    size = max(1, block_bytes // max(bytes_per_time, 1))
    return [slice(start, min(start + size, times)) for start in range(0, times, size)]


def _progress(blocks: list[slice], shown: bool):
    """The ``blocks`` one by one, with a bar counting their times when ``shown`` and more than one (cleared at the
    end, or at an error: its one line stands alone)."""
    from tqdm.auto import tqdm

    with tqdm(total=blocks[-1].stop, desc="evaluate", unit="time", disable=not shown or len(blocks) < 2,
              leave=False, dynamic_ncols=True) as bar:
        for block in blocks:
            yield block
            bar.update(block.stop - block.start)


def _read_block(prediction: xr.Dataset, layout: FieldLayout, members: int, first_step: int,
                mask: np.ndarray | None) -> np.ndarray:
    """The states of ``prediction`` (a block of times, the first the prediction's ``first_step``), (m, T, C, H, W),
    checked: NaN only on its fixed ``mask`` (NaN scores would pass for results). Each variable read once: a store
    chunk spanning several members would be decompressed once per member."""
    loaded = prediction[[spec.name for spec in layout.variables]].load()
    ensemble = np.stack([layout.to_array(loaded.isel(realization=m)) for m in range(members)])
    check_finite(ensemble, layout.channels, " in the prediction", mask=mask, hint=None, first_step=first_step)
    return ensemble


class _Cases:
    """A prediction as an ensemble along ``time``, read a block of times at a time: a reanalysis, one part, as it is;
    a forecast's (initialisation, lead) pairs at their valid times, one part per initialisation (init-major: case k
    is part k // L, lead k % L), each read lazily — concatenated first, the whole forecast was read at once."""

    def __init__(self, parts: list[xr.Dataset]) -> None:
        self.parts = parts
        self.length = parts[0].sizes[TIME]  # every part's
        self.times = np.concatenate([part[TIME].values for part in parts])

    def block(self, block: slice) -> xr.Dataset:
        """The cases ``block`` (a slice of their indices) as one dataset along ``time``, not read yet."""
        pieces = [self.parts[i].isel({TIME: slice(max(block.start - i * self.length, 0),
                                                  min(block.stop - i * self.length, self.length))})
                  for i in range(block.start // self.length, (block.stop - 1) // self.length + 1)]
        if len(pieces) == 1:
            return pieces[0]
        return xr.concat(pieces, TIME, data_vars="minimal", coords="minimal", compat="override")


class _SpectrumSums:
    """The energy spectrum (:func:`latentda.metrics.energy_spectrum`) of fields given block by block."""

    def __init__(self, periodic: tuple[bool, bool]) -> None:
        self.periodic, self.k, self.sums, self.count = periodic, None, 0.0, 0

    def add(self, fields: np.ndarray) -> None:
        if fields.size:
            self.k, sums, count = spectrum_sums(fields, self.periodic)
            self.sums, self.count = self.sums + sums, self.count + count

    def spectrum(self) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.k, self.sums / self.count


class _ObservationScores:
    """The ensemble (m, T, C, H, W) at ``times`` (a forecast's valid times) against the ``observations`` in observation
    space (:func:`latentda.metrics.observation_space_scores`), given block of times by block (:meth:`add`):
    :meth:`result` gives rows per observation group and time observed, and per group the scores pooled over the
    summarised times (sums over every observation: ``rmse`` = √(Σ d² / n), ...), by lead for a forecast; and each
    member's residual ratio (RMS of (y − H(x_i))/σ over every observation, ≈ 1 for a reanalysis consistent with its
    observations). A time of the prediction without observations has no rows; observations of no time of the
    prediction are an error (raised here, before any read). The observations of a block's times are read with it
    (their parts without time once, here). Observations reading a pixel of the prediction's fixed ``mask`` (C, H, W;
    NaN there) are left out, as ``reanalyze`` leaves them out; with none left, or none but NaN at the prediction's
    times, an error when scoring against observations ``alone``, else no group and a NaN ratio."""

    def __init__(self, observations: xr.Dataset, layout: FieldLayout, times: np.ndarray, units: str,
                 mask: np.ndarray | None, members: int) -> None:
        from latentda.observe.files import read_observation_groups

        if TIME not in observations.dims:  # before any read: without it, every variable would be loaded below
            raise LatentdaError("observations have no 'time' dimension")
        # what has no time (point positions, a linear group's matrix) is read once; the values a block at a time
        observations = observations.assign_coords({name: observations[name].load() for name in observations.coords
                                                   if TIME not in observations[name].dims})
        observations = observations.assign({name: observations[name].load() for name in observations.data_vars
                                            if TIME not in observations[name].dims})
        structure = read_observation_groups(observations.isel({TIME: slice(0, 0)}), layout)  # every check but the values'
        taken = sorted({group.name for group in structure} & set(NOT_CHANNELS))
        if taken:
            raise LatentdaError(f"observation group {taken[0]!r}: a name the report gives to other results (rename it)")
        calendar = climate_calendar(units) is not None
        known = observations[TIME].values
        _check_unique(known, "the observations'", units)
        self.index = _match_times(times, known, calendar)
        self.cases = np.flatnonzero(self.index >= 0)
        if not len(self.cases):
            raise LatentdaError(f"the observations are of other times ({_time_span(known, units)}) than the prediction "
                                f"({_time_span(np.unique(times), units)}): nothing to score")
        self.observations, self.layout, self.mask, self.members = observations, layout, mask, members
        self.names = [group.name for group in structure]
        self.squares = np.zeros(members)  # the residual ratio's sum over every observation
        self.per_case = {name: [] for name in self.names}  # per group: the scores of each case, in order
        self.entries = {name: 0 for name in self.names}  # per group: its observations off the mask
        self.observed = 0  # observations at the prediction's times, the mask's included

    def _read(self, cases: np.ndarray) -> dict:
        """Per name the :class:`~latentda.observe.operators.ObservationGroup` observed at ``cases`` (its values in the
        cases' order), without the entries that read the mask."""
        from latentda.observe.files import read_observation_groups

        groups = read_observation_groups(self.observations.isel({TIME: self.index[cases]}), self.layout)
        self.observed += sum(int(group.mask.sum()) for group in groups)
        if self.mask is not None:
            groups = [group.off_mask(self.mask)[0] for group in groups]
        return {group.name: group for group in groups}

    def add(self, ensemble: np.ndarray, block: slice) -> None:
        """Score the states ``ensemble`` (m, T, C, H, W) of the times of ``block``, reading their observations."""
        import torch

        cases = self.cases[(self.cases >= block.start) & (self.cases < block.stop)]
        if not len(cases):
            return
        members = self.members
        groups = self._read(cases)
        for name in self.names:
            part, per_case = groups[name], self.per_case[name]
            if not part.mask.any():  # none here: each case without observations, as a case is among others
                nothing = observation_space_scores(np.zeros((members, 0)), np.zeros(0), np.zeros(0))
                per_case.extend(dict(nothing) for _ in cases)
                continue
            with torch.no_grad():  # member by member: a float64 copy of one member's states at a time; the mask's NaN
                states = ensemble[:, cases - block.start]
                predicted = np.concatenate([part(torch.from_numpy(np.nan_to_num(states[i : i + 1])).double()).numpy()
                                            for i in range(members)])  # 0 (no entry reads it); (m, entries), case by case
            y, std = part.observed(representation=False)
            self.squares += (((y[None] - predicted) / std[None]) ** 2).sum(axis=1)
            self.entries[name] += y.size
            split = np.cumsum(part.mask.reshape(len(cases), -1).sum(axis=1))[:-1]
            per_case.extend(observation_space_scores(h, obs, sigma) for h, obs, sigma in
                            zip(np.split(predicted, split, axis=1), np.split(y, split), np.split(std, split)))

    def result(self, time_texts: list[str], where: list[dict], summarised: np.ndarray, leads: np.ndarray | None,
               count: int, alone: bool = True) -> tuple[list[dict], dict]:
        """Rows and summary once every block is given (``leads`` given: a forecast, ``count`` leads per initialisation)."""
        if not self.observed and alone:
            raise LatentdaError("the observations are all NaN at the prediction's times: nothing is observed")
        rows, summary, cases = [], {}, self.cases
        for name in self.names:
            if not self.entries[name]:
                continue
            per_case = self.per_case[name]
            rows += [{"observation": name, "time": time_texts[case], **where[case], **scores}
                     for case, scores in zip(cases, per_case) if scores["count"]]
            kept = summarised[cases]
            summary[name] = pooled_observation_scores([s for s, k in zip(per_case, kept) if k], self.members)
            if leads is not None:
                summary.setdefault("by_lead", {})[name] = {
                    _lead_text(leads[step]): pooled_observation_scores([s for s, case in zip(per_case, cases)
                                                                         if case % count == step], self.members)
                    for step in range(count) if (cases % count == step).any()}
        if not rows and alone:
            raise LatentdaError("every observation of the prediction's times reads its fixed mask (no values there): "
                                "nothing to score")
        entries = sum(self.entries.values())
        ratios = np.sqrt(self.squares / entries) if entries else np.full(self.members, np.nan)
        summary["observation_residual_ratio"] = {"mean": float(ratios.mean()), "members": ratios.tolist()}
        return rows, summary


def _match_times(times: np.ndarray, known: np.ndarray, calendar: bool = False) -> np.ndarray:
    """For each of ``times`` the index of the same time in ``known`` (unique; float model times up to
    :func:`_time_tolerance`, as :func:`_align` selects them), −1 where there is none."""
    if np.issubdtype(times.dtype, np.datetime64) != np.issubdtype(known.dtype, np.datetime64):
        return np.full(len(times), -1)
    if np.issubdtype(times.dtype, np.datetime64):  # exactly, whatever the units of either
        return pd.Index(known).get_indexer(times)
    order = np.argsort(known)  # nearest needs a monotonic index
    found = pd.Index(known[order]).get_indexer(times, method="nearest", tolerance=_time_tolerance(times, known, calendar))
    return np.where(found >= 0, order[found], -1)


def is_forecast(prediction: xr.Dataset) -> bool:
    """Whether ``prediction`` is a forecast: a ``prediction_timedelta`` dimension, or a single lead left as a
    coordinate (``.sel(prediction_timedelta=…)``); a lead coordinate along another dimension is refused."""
    if "prediction_timedelta" in prediction.dims:
        return True
    if "prediction_timedelta" not in prediction.coords:
        return False
    if prediction["prediction_timedelta"].ndim:
        raise LatentdaError(f"prediction_timedelta runs along {', '.join(map(str, prediction['prediction_timedelta'].dims))}: "
                            "a forecast has it as a dimension (WeatherBench2's layout), or as one lead; drop it to score "
                            "the states at their times")
    return True


_DURATIONS = {"days": "D", "day": "D", "d": "D", "hours": "h", "hour": "h", "hr": "h", "h": "h", "minutes": "min",
              "minute": "min", "min": "min", "seconds": "s", "second": "s", "sec": "s", "s": "s", "milliseconds": "ms",
              "microseconds": "us", "nanoseconds": "ns"}  # CF duration units → pandas'


def _valid_times(forecast: xr.Dataset) -> tuple[_Cases, np.ndarray, np.ndarray, int]:
    """A forecast (realization, time, prediction_timedelta, …) — one or several initialisation times
    ``time``, either of them also a single value left as a coordinate (``.sel(prediction_timedelta=…)``,
    ``.isel(time=i)``) — as an ensemble along ``time`` of its valid times init + lead, case by case
    (init-major: case k is init k // L, lead k % L), with the init and the lead of each case. Leads of a
    datetime forecast written as numbers with CF units ("hours", WeatherBench2's and older xarray's
    encoding) are read as durations. Also returns the number of leads."""
    for name in (TIME, "prediction_timedelta"):
        if name not in forecast.dims:  # a single value left as a coordinate: a dimension of one, for the members only
            coordinate = forecast[name].variable.set_dims(name)
            forecast = forecast.drop_vars(name)
            forecast = forecast.assign({v: forecast[v].expand_dims(name) for v in forecast.data_vars
                                        if "realization" in forecast[v].dims}).assign_coords({name: coordinate})
    inits, leads = forecast[TIME].values, forecast["prediction_timedelta"].values
    if np.issubdtype(inits.dtype, np.datetime64):
        leads = _lead_durations(forecast["prediction_timedelta"], "date-times")
    elif climate_calendar(axis_units(forecast[TIME])) is not None:  # dates of a climate calendar: seconds on their axis
        leads = _lead_durations(forecast["prediction_timedelta"], "dates of a climate calendar") / np.timedelta64(1, "s")
    parts = [forecast.isel({TIME: i}, drop=True).rename(prediction_timedelta=TIME).assign_coords({TIME: init + leads})
             for i, init in enumerate(inits)]
    return _Cases(parts), np.repeat(inits, len(leads)), np.tile(leads, len(inits)), len(leads)


def valid_times(forecast: xr.Dataset) -> np.ndarray:
    """The distinct valid times (initialisation + lead) of a forecast, in order (as :func:`evaluate` scores them)."""
    return np.unique(_valid_times(standard_time_axis(forecast))[0].times)


def _lead_durations(leads: xr.DataArray, times: str) -> np.ndarray:
    """Forecast leads as durations (timedelta64), for initialisation ``times`` that are dates: durations as
    they are, numbers with CF duration units ("hours": WeatherBench2's and older xarray's encoding) converted."""
    values = leads.values
    if np.issubdtype(values.dtype, np.timedelta64):
        return values
    units = str(leads.attrs.get("units", "")).strip().lower()
    if units not in _DURATIONS:
        raise LatentdaError(f"the forecast's prediction_timedelta holds numbers (units {units!r}), its times are {times}: "
                            "give the leads as durations, or numbers with units such as 'hours'")
    return pd.to_timedelta(values, unit=_DURATIONS[units]).to_numpy()


def _is_zero(leads: np.ndarray) -> np.ndarray:
    """Which leads are 0: durations exactly, model times up to the rounding of time + lead (:func:`_time_tolerance`)."""
    if np.issubdtype(leads.dtype, np.timedelta64):
        return leads == np.timedelta64(0)
    leads = leads.astype(np.float64)
    return np.abs(leads) <= _time_tolerance(leads)


def _time_texts(times: np.ndarray, units: str) -> list[str]:
    """Times as ``metrics.csv`` writes them: datetimes and numbers as numpy prints them, dates of a climate
    calendar (``units``: the axis' :func:`axis_units`) as ISO dates of that calendar (:func:`describe_time`)."""
    if climate_calendar(units) is None:
        return [str(time) for time in times]
    return [describe_time(time, units) for time in times]


def _lead_text(lead) -> str:
    """A forecast lead as ``metrics.csv`` writes it: a duration (``6:00:00``, ``1 day, 0:00:00``) or a number
    of model time units."""
    if isinstance(lead, np.timedelta64):
        import datetime

        return str(datetime.timedelta(microseconds=int(lead.astype("timedelta64[us]").astype(np.int64))))
    return f"{float(lead):.12g}"


def _prediction_mask(prediction: xr.Dataset, layout: FieldLayout) -> np.ndarray | None:
    """The prediction's fixed mask (C, H, W), True where valid, from its ``<variable>_mask``
    variables (:meth:`FieldLayout.mask_variables`); None when it has none."""
    names = [f"{spec.name}_mask" for spec in layout.variables]
    if not any(name in prediction.data_vars for name in names):
        return None
    parts = []
    for spec, name in zip(layout.variables, names):
        shape = ((layout.level.size,) if spec.has_level else (1,)) + layout.shape
        if name in prediction.data_vars:
            values = np.asarray(prediction[name].values, dtype=np.float64).reshape(shape)
            parts.append(values > 0.5)
        else:
            parts.append(np.ones(shape, dtype=bool))
    return np.concatenate(parts)


def _json_numbers(value):
    """``value`` with every non-finite float as null: bare NaN is not JSON (strict readers refuse it)."""
    if isinstance(value, dict):
        return {k: _json_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_numbers(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def check_report_path(out: str | os.PathLike, overwrite: bool = False) -> None:
    """``out`` may receive a report: it does not exist, or (``overwrite``) it is an earlier report — a folder of
    nothing but a report's files — never a folder holding anything else, which replacing would delete."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise already_exists(out)
        check_replaceable_folder(out, REPORT_FILES, "summary.json", "an evaluation report")


def write_report(rows: list[dict], summary: dict, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write metrics.csv, summary.json and figures into the new folder ``out`` (atomically; an existing
    ``out`` is replaced with ``overwrite`` only when it is an earlier report: :func:`check_report_path`)."""
    final = Path(out)
    check_report_path(final, overwrite)
    with atomic_path(final, overwrite=overwrite) as out:
        out.mkdir(parents=True)
        _write_report(rows, summary, out)
    return final


def _write_report(rows: list[dict], summary: dict, out: Path) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "summary.json").write_text(json.dumps(_json_numbers(summary), indent=1, allow_nan=False))
    key = "observation" if "observation" in rows[0] else "channel"  # against observations alone: per group
    channels = [c for c in summary if c not in NOT_CHANNELS]
    names = [n for n in ("rmse", "crps", "spread", "spread_skill_ratio") if n in rows[0]]
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), constrained_layout=True)
    for axis, name in zip(np.atleast_1d(axes), names):
        for channel in channels:
            axis.plot(*_by_step(rows, channel, name, key), marker="o", ms=3, label=channel)  # a single lead is a point
        if name == "spread_skill_ratio":
            axis.axhline(1.0, color="k", lw=0.8, ls="--")
        axis.set_title(name)
        axis.set_xlabel("lead step (mean over initialisation times)" if "lead" in rows[0] else "time step")
    np.atleast_1d(axes)[0].legend()
    figure.savefig(out / "scores.png", dpi=120)
    plt.close(figure)
    if "spectra" not in summary:  # against observations alone: no fields to compare
        return
    figure, axis = plt.subplots(figsize=(4.5, 3.5), constrained_layout=True)
    for channel, spectrum in summary["spectra"].items():
        line, = axis.loglog(spectrum["wavenumber"], spectrum["truth"], label=f"{channel} truth")
        axis.loglog(spectrum["wavenumber"], spectrum["prediction"], ls="--", color=line.get_color(), label=f"{channel} ensemble")
    axis.set_xlabel("wavenumber")
    axis.set_ylabel("power")
    axis.legend(fontsize=7)
    figure.savefig(out / "spectra.png", dpi=120)
    plt.close(figure)
    if any("rank_histogram" in summary[channel] for channel in channels):
        _calibration_figure(rows, summary, channels, out / "calibration.png")


def _by_step(rows: list[dict], channel: str, name: str, key: str = "channel") -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean of score ``name`` at each step) of the rows of ``channel`` (their ``key``: an observation
    group's name in a report against observations alone): a forecast's lead steps averaged over its
    initialisation times (one row each otherwise)."""
    series = [r for r in rows if r[key] == channel]
    steps = np.unique([r["step"] for r in series])
    values = np.array([np.nanmean([r[name] for r in series if r["step"] == step]) for step in steps])
    return steps, values


def _calibration_figure(rows: list[dict], summary: dict, channels: list[str], path: Path) -> None:
    """Rank histograms, coverage of central intervals against their level, spread-skill by time."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.4), constrained_layout=True)
    for channel in channels:
        histogram = summary[channel]["rank_histogram"]
        counts = np.asarray(histogram["counts"], dtype=np.float64)
        frequency = counts * counts.size / max(counts.sum(), 1)
        axes[0].step(np.arange(counts.size + 1), np.append(frequency, frequency[-1]), where="post",
                     label=f"{channel} (χ²/m {histogram['flatness']:.2f}, p {histogram['p_value']:.2g})")
        curve = summary[channel]["coverage_curve"]
        axes[1].plot(curve["level"], curve["observed"], marker="o", ms=3, label=channel)
        axes[2].plot(*_by_step(rows, channel, "spread_skill_ratio"), marker="o", ms=3, label=channel)
    axes[0].axhline(1.0, color="k", lw=0.8, ls="--")
    axes[0].set(title="rank histogram of the truth", xlabel="rank among members", ylabel="frequency × (m+1)")
    axes[1].plot([0, 1], [0, 1], color="k", lw=0.8, ls="--")
    axes[1].set(title="coverage of central intervals", xlabel="nominal level", ylabel="observed coverage",
                xlim=(0, 1), ylim=(0, 1))
    axes[2].axhline(1.0, color="k", lw=0.8, ls="--")
    axes[2].set(title="spread-skill ratio", xlabel="lead step" if "lead" in rows[0] else "time step")
    for axis in axes:
        axis.legend(fontsize=7)
    figure.savefig(path, dpi=120)
    plt.close(figure)

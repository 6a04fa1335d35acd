"""Dates of climate-model calendars (noleap, 360_day): read as seconds since 0001-01-01 in their calendar
whatever their CF units, carried through every stage, written back as the same dates; calendars not mixed.

Ground truth: a noleap year has 365 days and a 360_day year 360 (twelve months of 30 days), so the
seconds of a date since 0001-01-01 are counted by hand."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from conftest import make_tiny_pipeline, train_tiny_prior
from latentda import cli
from latentda.components import save_autoencoder
from latentda.data import FieldLayout, compute_statistics, open_dataset, time_step, write_dataset
from latentda.data.times import CALENDAR_REFERENCE, calendar_time, calendar_time_units, describe_step, standard_time_axis
from latentda.encoding import encode_dataset
from latentda.errors import LatentdaError
from latentda.nn.autoencoder import AutoEncoder
from latentda.observe import observations_from_table
from latentda.pipeline import LatentDAPipeline

cftime = pytest.importorskip("cftime")

NOLEAP = calendar_time_units("noleap")
DAY, HOUR = 86400.0, 3600.0
# 2004-02-28T12:00 in noleap: 2003 whole years of 365 days, January's 31 days and 27 of February, half a day
START = (2003 * 365 + 31 + 27 + 0.5) * DAY


def noleap_axis(length: int, step: float = 6 * HOUR) -> xr.DataArray:
    """Seconds of the noleap calendar from 2004-02-28T12:00 (across the leap day it lacks), 6-hourly."""
    return xr.DataArray(START + step * np.arange(length), dims="time",
                        attrs={"units": CALENDAR_REFERENCE, "calendar": "noleap"})


def dates(values) -> list[str]:
    """cftime dates to the minute, refusing any fraction of a second (dates written back exactly)."""
    assert all(value.second == 0 and value.microsecond == 0 for value in np.asarray(values))
    return [value.strftime("%Y-%m-%dT%H:%M") for value in np.asarray(values)]


def field_file(path, time: dict, calendar: str | None, values) -> str:
    attrs = {"units": time["units"], **({"calendar": calendar} if calendar else {})}
    dataset = xr.Dataset({"u": (("time", "y", "x"), np.ones((len(values), 2, 2), np.float32))},
                         coords={"time": ("time", np.asarray(values, dtype=np.float64), attrs)})
    dataset.to_netcdf(path)
    return str(path)


def test_seconds_whatever_the_units(tmp_path):
    # numbers in hours since 2000 (noleap): day 1999·365 since 0001-01-01, then 6-hourly
    noleap = open_dataset(field_file(tmp_path / "a.nc", {"units": "hours since 2000-01-01"}, "noleap", [0, 6, 12]))
    np.testing.assert_array_equal(noleap["time"].values, 1999 * 365 * DAY + np.array([0, 6, 12]) * HOUR)
    assert noleap["time"].attrs["calendar"] == "noleap" and noleap["time"].attrs["units"] == CALENDAR_REFERENCE
    assert time_step(noleap["time"]) == (6 * HOUR, NOLEAP)
    assert describe_step(6 * HOUR, NOLEAP) == "6 hours" and describe_step(DAY, NOLEAP) == "1 day"
    # 365_day is noleap's other name; a 360_day 29 February exists: 2000 years of 360 days, 30 + 28 days
    alias = open_dataset(field_file(tmp_path / "b.nc", {"units": "days since 2000-01-01"}, "365_day", [0, 1]))
    assert time_step(alias["time"]) == (DAY, NOLEAP)
    days360 = open_dataset(field_file(tmp_path / "c.nc", {"units": "days since 2001-02-29"}, "360_day", [0, 1, 2]))
    np.testing.assert_array_equal(days360["time"].values, (2000 * 360 + 30 + 28 + np.arange(3.0)) * DAY)
    assert time_step(days360["time"]) == (DAY, calendar_time_units("360_day"))
    # an hourly axis: whole seconds, exact (as float days, 1/24 would be 5 µs off at this magnitude)
    hourly = open_dataset(field_file(tmp_path / "h.nc", {"units": "hours since 1850-01-01"}, "noleap", np.arange(5.0)))
    assert time_step(hourly["time"]) == (HOUR, NOLEAP) and describe_step(HOUR, NOLEAP) == "1 hour"
    # a calendar axis under another name (xarray keeps its units in the encoding): found as ERA5's valid_time is
    renamed = xr.Dataset({"u": (("valid_time", "y", "x"), np.ones((2, 2, 2), np.float32))},
                         coords={"valid_time": ("valid_time", [0.0, 6.0], {"units": "hours since 2000-01-01",
                                                                         "calendar": "noleap"})})
    renamed.to_netcdf(tmp_path / "valid.nc")
    assert time_step(open_dataset(tmp_path / "valid.nc")["time"]) == (6 * HOUR, NOLEAP)
    # dates xarray decoded to cftime objects (a zarr store read with cftime installed): the same numbers,
    # and an axis across 29 February is regular in noleap
    axis = noleap_axis(4)
    stored = tmp_path / "d.zarr"
    xr.Dataset({"u": (("time",), np.zeros(4))}, coords={"time": axis}).to_zarr(stored)
    decoded = xr.open_zarr(stored)["time"].values
    assert dates(decoded) == ["2004-02-28T12:00", "2004-02-28T18:00", "2004-03-01T00:00", "2004-03-01T06:00"]
    again = open_dataset(stored)
    np.testing.assert_array_equal(again["time"].values, axis.values)
    assert time_step(again["time"]) == (6 * HOUR, NOLEAP)
    # cftime dates of the standard calendar are numpy datetimes, as a file read without cftime
    standard = standard_time_axis(xr.Dataset(coords={"time": xr.date_range("2004-02-28", periods=3, freq="D",
                                                                           calendar="standard", use_cftime=True)}))
    assert standard["time"].values[2] == np.datetime64("2004-03-01")


def test_dates_given_as_text():
    assert calendar_time("2004-02-28T12:00", "noleap") == START
    assert calendar_time("2001-02-30 06:00:00", "360_day") == (2000 * 360 + 30 + 29) * DAY + 6 * HOUR
    assert calendar_time(cftime.datetime(2004, 3, 1, calendar="noleap"), "noleap") == START + 12 * HOUR
    for value, message in (("2004-02-29", "'2004-02-29' is not a date of the noleap calendar"),
                           (cftime.datetime(2004, 3, 1, calendar="360_day"), "a date of the 360_day calendar, the "
                                                                              "model's dates are of the noleap"),
                           (START, "is not a date"), ("2004-02-28T12:00Z", "without a time zone")):
        with pytest.raises(LatentdaError, match=message):
            calendar_time(value, "noleap")


def test_unknown_calendar_refused(tmp_path):
    path = field_file(tmp_path / "m.nc", {"units": "hours since 2000-01-01"}, "martian", [0, 6])
    assert cli.main(["inspect", path, "--quiet"]) == 2
    with pytest.raises(LatentdaError, match="calendar 'martian' is not supported"):
        open_dataset(path)


def test_inspect_names_the_calendar_and_the_span(noleap_run, capsys):
    root, _, _ = noleap_run
    assert cli.main(["inspect", str(root / "truth.nc"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "times 2004-02-28T12:00:00 … 2004-03-03T06:00:00: dates of the noleap calendar" in out
    assert "time step 6 hours (regular)" in out


def test_standard_dates_beyond_numpy_refused_in_one_line(tmp_path, recwarn):
    """Standard-calendar dates past 2262 (CMIP extensions to 2299) cannot be numpy datetimes: one line that says so and
    what to do, without xarray's warning about cftime (an internal overflow message before)."""
    path = field_file(tmp_path / "far.nc", {"units": "days since 1850-01-01"}, "standard", [160000.0, 160001.0])
    with pytest.raises(LatentdaError, match="dates 2288-01-25 00:00:00 … 2288-01-26 00:00:00 of the standard calendar lie "
                                            r"outside the years numpy datetimes hold \(1678–2262\)"):
        open_dataset(path)
    assert not [w for w in recwarn if "Unable to decode time axis" in str(w.message)]


@pytest.fixture(scope="module")
def noleap_run(tmp_path_factory):
    """A tiny noleap pipeline, its truth (12 states) written as netCDF and observe's observations of the first 8."""
    root = tmp_path_factory.mktemp("noleap")
    pipeline, truth = make_tiny_pipeline(root / "pipeline", times=12, time_axis=noleap_axis(12), time_step=6 * HOUR,
                                         time_units=NOLEAP)
    truth_path = write_dataset(truth, root / "truth.nc")
    operator = root / "op.yaml"
    operator.write_text("observations:\n  - {name: o, variables: [u, v], fraction: 0.5, noise_std: 0.1}\n")
    assert cli.main(["observe", "--truth", str(truth_path), "--operator", str(operator), "--out",
                     str(root / "obs.nc"), "--length", "8", "--quiet"]) == 0
    return root, pipeline, truth


def test_every_stage_writes_the_same_dates(noleap_run):
    root, _, truth = noleap_run
    truth_dates = dates(xr.open_dataset(root / "truth.nc")["time"].values)[:8]
    assert truth_dates[2] == "2004-03-01T00:00"  # no 29 February
    common = ["--pipeline", str(root / "pipeline"), "--observations", str(root / "obs.nc"), "--members", "2",
              "--steps", "2", "--quiet"]
    assert cli.main(["reanalyze", *common, "--out", str(root / "re.zarr")]) == 0
    assert dates(xr.open_zarr(root / "re.zarr")["time"].values) == truth_dates  # as cftime dates, opened by xarray
    table = root / "stations.csv"  # the residual ratio against a table of dates of the calendar
    pd.DataFrame({"time": ["2004-02-28T18:00", "2004-03-01T00:00"], "y": [1.0, 2.0], "x": [3.0, 4.0], "variable": "u",
                  "value": [0.1, 0.2], "noise_std": 0.5}).to_csv(table, index=False)
    assert cli.main(["evaluate", "--prediction", str(root / "re.zarr"), "--truth", str(root / "truth.nc"),
                     "--observations", str(table), "--out", str(root / "table-report"), "--quiet"]) == 0
    assert cli.main(["filter", *common, "--out", str(root / "filter.zarr")]) == 0
    assert dates(xr.open_zarr(root / "filter.zarr")["time"].values) == truth_dates
    assert cli.main(["forecast", *common, "--lead", "3", "--out", str(root / "fc.zarr")]) == 0
    forecast = xr.open_zarr(root / "fc.zarr")
    assert dates(forecast["time"].values) == truth_dates[-1:]
    leads = xr.open_zarr(root / "fc.zarr", decode_timedelta=False)["prediction_timedelta"]
    assert leads.attrs["units"] == "seconds"
    np.testing.assert_array_equal(leads.values, np.arange(4) * 6 * HOUR)
    # scored at valid times init + lead (seconds on the calendar's axis): states 7 to 10 of the truth
    assert cli.main(["evaluate", "--prediction", str(root / "fc.zarr"), "--truth", str(root / "truth.nc"),
                     "--out", str(root / "report"), "--quiet"]) == 0
    rows = pd.read_csv(root / "report" / "metrics.csv")  # dates of the calendar, leads as durations
    # state 7 is 2004-03-02T06:00 (28 February 12:00 + 7 × 6 h, no 29 February)
    assert sorted(set(rows["time"])) == ["2004-03-02T06:00:00", "2004-03-02T12:00:00", "2004-03-02T18:00:00",
                                         "2004-03-03T00:00:00"]
    assert set(rows["init_time"]) == {"2004-03-02T06:00:00"}
    assert list(rows["lead"][:4]) == ["0:00:00", "6:00:00", "12:00:00", "18:00:00"]
    assert "18:00:00" in json.loads((root / "report" / "summary.json").read_text())["by_lead"]["u"]
    # leads read as durations (older xarray decodes numbers in seconds so): the same valid times
    from latentda.evaluation import evaluate

    durations = forecast.assign_coords(prediction_timedelta=pd.to_timedelta(leads.values, unit="s").to_numpy())
    assert np.asarray(durations["time"].values)[0].calendar == "noleap"  # cftime dates, as xr.open_zarr gives them
    rows_api, _ = evaluate(durations, open_dataset(root / "truth.nc"))
    assert sorted({row["time"] for row in rows_api}) == sorted(set(rows["time"]))
    assert cli.main(["sample", "--pipeline", str(root / "pipeline"), "--length", "3", "--members", "1", "--steps", "2",
                     "--start-time", "2004-02-28T18:00", "--out", str(root / "sample.zarr"), "--quiet"]) == 0
    assert dates(xr.open_zarr(root / "sample.zarr")["time"].values) == ["2004-02-28T18:00", "2004-03-01T00:00",
                                                                         "2004-03-01T06:00"]
    assert cli.main(["sample", "--pipeline", str(root / "pipeline"), "--length", "3", "--start-time", "2004-02-29",
                     "--out", str(root / "bad.zarr"), "--quiet"]) == 2
    assert not (root / "bad.zarr").exists()


def test_calendars_not_mixed(noleap_run, tmp_path):
    root, pipeline, _ = noleap_run
    observations = open_dataset(root / "obs.nc")
    days360 = observations.assign_coords(time=observations["time"].assign_attrs(calendar="360_day"))
    with pytest.raises(LatentdaError, match="dates of the 360_day calendar, but the model's time axis is dates of the "
                                            "noleap calendar"):
        pipeline.reanalyze(days360, members=1, steps=2)
    datetimes = observations.assign_coords(time=pd.date_range("2004-02-28T12:00", periods=8, freq="6h"))
    with pytest.raises(LatentdaError, match="date-times, but the model's time axis is dates of the noleap calendar"):
        pipeline.reanalyze(datetimes, members=1, steps=2)
    model_time, _ = make_tiny_pipeline(tmp_path / "model-time")  # numbers 0.2 apart, units "1"
    with pytest.raises(LatentdaError, match="dates of the noleap calendar, but the model's time axis is numbers"):
        model_time.reanalyze(observations, members=1, steps=2)


def test_table_of_dates(noleap_run):
    _, pipeline, _ = noleap_run
    table = pd.DataFrame({"time": ["2004-02-28T12:00", "2004-03-01T01:00", "2004-03-01T06:00"], "y": [0.0, 1, 2],
                          "x": [0.0, 1, 2], "variable": "u", "value": [0.5, 1.0, 1.5], "noise_std": 0.1})
    operator = observations_from_table(table, pipeline.layout, time_step=6 * HOUR, time_units=NOLEAP, time_tolerance="1h")
    np.testing.assert_array_equal(operator.times, noleap_axis(4).values)  # 28 Feb 12:00 to 1 Mar 06:00: 4 states
    values = operator.groups[0].values
    assert [np.flatnonzero(np.isfinite(values[:, point]))[0] for point in range(3)] == [0, 2, 3]
    dataset = pipeline.reanalyze(table, members=1, steps=2)
    assert dates(xr.decode_cf(dataset[["time"]])["time"].values)[-1] == "2004-03-01T06:00"
    with pytest.raises(LatentdaError, match=r"'2004-02-29T00:00' is not a date of the noleap calendar \(column 'time', "
                                            r"row 1\)"):
        observations_from_table(table.assign(time=["2004-02-28T12:00", "2004-02-29T00:00", "2004-03-01T00:00"]),
                                pipeline.layout, time_step=6 * HOUR, time_units=NOLEAP)
    with pytest.raises(LatentdaError, match="the table's times are numbers, the model's are dates of the noleap"):
        observations_from_table(table.assign(time=[0.0, 0.5, 0.75]), pipeline.layout, time_step=6 * HOUR,
                                time_units=NOLEAP)


@pytest.mark.parametrize(("calendar", "year"), [("noleap", 365), ("all_leap", 366), ("360_day", 360), ("julian", 365.25)])
def test_calendar_features_of_each_calendar(calendar, year):
    """Time of day and of year on a climate calendar's axis, counted by hand: 6:00 is a quarter day, the last day of
    the year is day year − 1 (0-based), and the season's phase repeats exactly a year later."""
    from latentda.data.calendar import calendar_features

    last_day = {"noleap": "2003-12-31", "all_leap": "2003-12-31", "360_day": "2003-12-30", "julian": "2003-12-31"}[calendar]
    times = [calendar_time(text, calendar) for text in ("2003-01-01T06:00", f"{last_day}T00:00", "2004-01-01T06:00")]
    features = calendar_features(np.array(times), calendar)
    np.testing.assert_allclose(features[0], [1, 0, np.sin(2 * np.pi * 0.25 / year), np.cos(2 * np.pi * 0.25 / year)],
                               atol=1e-6)
    days = {"julian": 364}.get(calendar, int(year) - 1)  # julian 2003 is not a leap year: its last day is day 364
    np.testing.assert_allclose(features[1], [0, 1, np.sin(2 * np.pi * days / year), np.cos(2 * np.pi * days / year)],
                               atol=1e-6)
    if calendar != "julian":  # 365.25 days: the phase of a real year drifts by a quarter day
        np.testing.assert_allclose(features[2], features[0], atol=1e-6)
    assert calendar_features(np.array(times)) is None  # numbers without a calendar: model time
    alias = {"noleap": "365_day", "all_leap": "366_day"}.get(calendar)
    if alias:  # CF's other names of the calendar
        np.testing.assert_array_equal(calendar_features(np.array(times), alias), features)
    with pytest.raises(LatentdaError, match="calendar 'martian' is not supported"):
        calendar_features(np.array(times), "martian")


def noleap_latents(folder) -> str:
    """Latents of 24 hourly noleap states (a tiny autoencoder), encoded into ``folder``/latents.zarr."""
    truth = make_tiny_pipeline(folder / "unused", times=24, time_axis=noleap_axis(24, HOUR), time_step=HOUR,
                               time_units=NOLEAP)[1]
    data = write_dataset(truth, folder / "data.nc")
    layout = FieldLayout.from_dataset(open_dataset(data))
    torch.manual_seed(0)
    autoencoder = AutoEncoder(in_channels=2, latent_channels=2, hidden_channels=[8, 8], blocks_per_stage=1,
                              sample_size=[8, 8], periodic=[True, True])
    ae = save_autoencoder(folder / "ae", autoencoder, layout, compute_statistics(truth, layout, progress=False))
    return str(encode_dataset(ae, data, folder / "latents.zarr", progress=False))


def test_training_records_the_calendar(tmp_path):
    """encode keeps the calendar axis' attributes, and the prior trained on them has the calendar's time units and
    is conditioned on its time of day and year: it needs dates to sample, and another season samples otherwise."""
    latents = noleap_latents(tmp_path)
    assert time_step(open_dataset(latents)["time"]) == (HOUR, NOLEAP)
    pipeline = LatentDAPipeline.from_pretrained(train_tiny_prior(latents, tmp_path / "run"))
    assert (pipeline.time_step, pipeline.time_units, pipeline.calendar) == (HOUR, NOLEAP, True)
    # hourly dates written back exactly (no 00:59:59.999997)
    pipeline.set_progress_bar_config(disable=True)
    with pytest.raises(LatentdaError, match="conditioned on the calendar"):
        pipeline.sample(3, 1, steps=2)
    pipeline.sample(3, 1, steps=2, start_time="2004-02-28T23:00").to_zarr(tmp_path / "sample.zarr")
    assert dates(xr.open_zarr(tmp_path / "sample.zarr")["time"].values) == ["2004-02-28T23:00", "2004-03-01T00:00",
                                                                             "2004-03-01T01:00"]
    with torch.no_grad():  # two training steps leave the zero-initialised output layers near zero
        generator = torch.Generator().manual_seed(0)
        for parameter in pipeline.backbone.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    winter, summer, next_winter = (pipeline.sample(3, 1, steps=2, start_time=date)["u"].values
                                   for date in ("2004-01-10T06:00", "2004-07-10T06:00", "2005-01-10T06:00"))
    assert not np.allclose(winter, summer)  # the same noise in another season
    np.testing.assert_allclose(winter, next_winter, atol=1e-5)  # a noleap year later: the same features


def test_a_run_started_unconditioned_is_resumed_unconditioned(tmp_path, monkeypatch):
    """A train-ldm run on climate-calendar dates started by a latentda that did not condition them (its checkpoints
    have no calendar weights) resumes without the calendar, with a warning, instead of failing to load."""
    from latentda.config import parse, to_dict
    from latentda.data import windows
    from latentda.training.diffusion import LatentDiffusionConfig, train_latent_diffusion

    latents = noleap_latents(tmp_path)
    with monkeypatch.context() as before:  # the earlier latentda: no calendar features for climate calendars
        before.setattr(windows, "climate_calendar", lambda units: None)
        assert not LatentDAPipeline.from_pretrained(train_tiny_prior(latents, tmp_path / "run")).calendar
    config = parse(LatentDiffusionConfig, {
        "output": str(tmp_path / "run"), "splits": [0.5, 0.25, 0.25], "valid_windows": 2,
        "model": {"window": 4, "hidden_size": 16, "depth": 1, "num_heads": 2, "patch_size": [1, 2, 2]},
        "diffusion": {"steps": 3, "sampler": "ddpm"},
        "training": {"steps": 4, "batch_size": 2, "checkpoint_every": 2, "validate_every": 2},
    })
    with pytest.warns(UserWarning, match="did not condition a climate calendar's dates on the calendar"):
        train_latent_diffusion(config, latents, resume=True, progress=False)
    pipeline = LatentDAPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert not pipeline.calendar
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())[-1] == "step-000004"
    # a new run starting from it (init_from) is told how
    fresh = parse(LatentDiffusionConfig, {**to_dict(config), "output": str(tmp_path / "fresh"),
                                          "init_from": str(tmp_path / "run" / "pipeline")})
    with pytest.raises(LatentdaError, match="context_features: 0 → 4.*set model.calendar: false to start from it"):
        train_latent_diffusion(fresh, latents, progress=False)


def test_evaluate_checks_every_time_axis_kind(noleap_run):
    """evaluate reads observations as it reads predictions and truths (cftime dates from xr.open_dataset: a TypeError
    before), refuses observations or truths of another kind or calendar naming both (observations of another calendar
    were compared as bare seconds), and names calendar dates as dates in its messages."""
    root, _, truth = noleap_run
    from latentda.evaluation import evaluate

    prediction = truth.isel(time=slice(0, 8)).expand_dims(realization=2)
    prediction["u"] = prediction["u"] + 0.1 * np.random.default_rng(0).standard_normal(prediction["u"].shape)
    opened = xr.open_dataset(root / "obs.nc")  # cftime dates of the noleap calendar
    assert type(np.asarray(opened["time"].values)[0]).__name__ == "DatetimeNoLeap"
    _, summary = evaluate(prediction, truth, opened)
    _, expected = evaluate(prediction, truth, open_dataset(root / "obs.nc"))
    assert summary["observation_residual_ratio"] == expected["observation_residual_ratio"]
    days360 = opened.assign_coords(time=xr.open_dataset(root / "obs.nc", decode_times=False)["time"].assign_attrs(
        calendar="360_day"))
    with pytest.raises(LatentdaError, match="the prediction's times are dates of the noleap calendar, the observations' "
                                            "are dates of the 360_day calendar"):
        evaluate(prediction, truth, days360)
    with pytest.raises(LatentdaError, match="the prediction's times are dates of the noleap calendar, the truth's are "
                                            "date-times"):
        evaluate(prediction, truth.assign_coords(time=pd.date_range("2004-02-28T12:00", periods=12, freq="6h")))
    with pytest.raises(LatentdaError, match="the truth has no 'time' coordinate"):  # a traceback before
        evaluate(prediction, truth.drop_vars("time"))
    # plain numbers are numbers whatever their units say ("seconds" was taken for date-times: refused)
    numbers = {units: prediction.assign_coords(time=("time", np.arange(8) * 60.0, {"units": units})) for units in ("seconds", "s")}
    rows, _ = evaluate(numbers["seconds"], truth.isel(time=slice(0, 8)).assign_coords(numbers["s"]["time"].coords))
    assert len(rows) == 2 * 8
    with pytest.raises(LatentdaError, match="the prediction's times are numbers \\(model time\\), the truth's are date-times"):
        evaluate(numbers["seconds"], truth.assign_coords(time=pd.date_range("2004-02-28T12:00", periods=12, freq="6h")))
    late = prediction.assign_coords(time=prediction["time"] + 8 * 6 * HOUR)  # states 8 to 15: 12 to 15 are not there
    with pytest.raises(LatentdaError, match=r"4 are not, the first 2004-03-03T12:00:00 \(the truth has "
                                            r"2004-02-28T12:00:00 … 2004-03-03T06:00:00\)"):
        evaluate(late, truth)


def test_calendar_times_are_matched_exactly(noleap_run, tmp_path):
    """evaluate matches dates of a calendar to the second (seconds since year 1: the float tolerance of model time,
    10⁻⁶ of the magnitude, would be hours), and a table's cftime dates keep their calendar."""
    root, pipeline, truth = noleap_run
    from latentda.evaluation import evaluate

    prediction = truth.isel(time=slice(0, 4)).expand_dims(realization=2)
    shifted = prediction.assign_coords(time=prediction["time"] + HOUR)  # one hour off: no truth state there
    with pytest.raises(LatentdaError, match="the prediction's times are not all in the truth"):
        evaluate(shifted, truth)
    rows, _ = evaluate(prediction.assign_coords(time=prediction["time"] + 1e-4), truth)  # float rounding: the same
    assert len(rows) == 2 * 4
    table = pd.DataFrame({"time": [cftime.datetime(2004, 3, 1, calendar="360_day")], "y": [1.0], "x": [1.0],
                          "variable": "u", "value": [0.0], "noise_std": 0.1})
    with pytest.raises(LatentdaError, match="a date of the 360_day calendar, the model's dates are of the noleap"):
        observations_from_table(table, pipeline.layout, time_step=6 * HOUR, time_units=NOLEAP)
    noleap = table.assign(time=[cftime.datetime(2004, 3, 1, calendar="noleap")])
    operator = observations_from_table(noleap, pipeline.layout, time_step=6 * HOUR, time_units=NOLEAP)
    assert operator.times[0] == START + 12 * HOUR

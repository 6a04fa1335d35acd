"""forecast: WeatherBench2 layout, conditioning keeps the initial state, modes, resume, bad input."""

import numpy as np
import pytest

from conftest import make_observed_pipeline
from latentda import cli
from latentda.data import open_dataset, write_dataset
from latentda.errors import LatentdaError
from latentda.pipeline import LatentDAPipeline
from latentda.posterior.forecast import forecast_members
from latentda.posterior.reanalysis import PosteriorSettings


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("forecast")
    pipeline, truth, truth_path, observations = make_observed_pipeline(root, times=8, fraction=0.3, length=5)
    return root, pipeline, truth, truth_path, observations


def test_forecast_from_observations_has_weatherbench_layout(setup, tmp_path):
    root, pipeline, truth, truth_path, observations = setup
    out = tmp_path / "fc.zarr"
    assert cli.main(["forecast", "--pipeline", str(root / "pipeline"), "--observations", str(observations), "--lead", "5",
                     "--members", "2", "--steps", "3", "--out", str(out), "--quiet"]) == 0
    forecast = open_dataset(out)
    assert forecast["u"].dims == ("realization", "time", "prediction_timedelta", "y", "x")
    assert forecast.sizes["prediction_timedelta"] == 6 and forecast["time"].values[0] == pytest.approx(0.8)
    np.testing.assert_allclose(forecast["prediction_timedelta"].values, 0.2 * np.arange(6))
    assert np.isfinite(forecast["u"].values).all()
    report = tmp_path / "report"
    assert cli.main(["evaluate", "--prediction", str(out), "--truth", str(truth_path), "--out", str(report)]) == 2  # beyond
    short = tmp_path / "short.zarr"
    assert cli.main(["forecast", "--pipeline", str(root / "pipeline"), "--observations", str(observations), "--lead", "3",
                     "--members", "2", "--steps", "3", "--out", str(short), "--quiet"]) == 0
    assert cli.main(["evaluate", "--prediction", str(short), "--truth", str(truth_path), "--out", str(report)]) == 0
    assert (report / "metrics.csv").read_text().count("\n") == 1 + 2 * 4  # header + 2 channels × 4 leads


@pytest.mark.parametrize("conditioning,tolerance", [("inpaint", 1e-5), ("mmps", 0.1)])
def test_forecast_from_initial_state_follows_it(setup, conditioning, tolerance):
    """Lead 0 is the (encoded-decoded) initial state: exactly with inpainting, up to σ_c with MMPS."""
    root, pipeline, truth, truth_path, observations = setup
    pipeline.set_progress_bar_config(disable=True)
    initial = pipeline.encode(pipeline.layout.to_array(truth.isel(time=slice(0, 2))))[None]
    settings = PosteriorSettings(steps=4)
    (member, fields), = forecast_members(pipeline, [0], 5, settings, operator=None, initial=initial,
                                         conditioning=conditioning, context=2)
    assert fields.shape == (6, 2, 8, 8)
    expected = pipeline.decode(initial[:, -1:])[0, 0]
    assert np.abs(fields[0] - expected).max() < tolerance * np.abs(expected).max()


def test_forecast_conditioning_uses_the_settings_solver(setup, monkeypatch):
    """The history's MMPS solve runs the solver of the settings (it once always ran CG): GMRES is called with the
    settings' iteration count, and not when the settings ask for CG."""
    from latentda.posterior import solvers

    root, pipeline, truth, truth_path, observations = setup
    pipeline.set_progress_bar_config(disable=True)
    initial = pipeline.encode(pipeline.layout.to_array(truth.isel(time=slice(0, 2))))[None]
    calls = []

    def counted(matvec, b, iterations, lifted=False):
        calls.append(iterations)
        return solvers.gmres(matvec, b, iterations, lifted)

    def run(solver):
        (_, fields), = forecast_members(pipeline, [0], 2, PosteriorSettings(steps=3, iterations=2, solver=solver),
                                        initial=initial, context=2)
        return fields

    monkeypatch.setitem(solvers.SOLVERS, "gmres", counted)
    assert np.isfinite(run("gmres")).all()
    assert calls and set(calls) == {2}
    calls.clear()
    run("cg")
    assert not calls


def test_all_at_once_and_autoregressive_cover_the_lead(setup):
    root, pipeline, truth, truth_path, observations = setup
    operator = pipeline.observation_operator(open_dataset(observations))
    settings = PosteriorSettings(steps=3)
    drawn = {}
    for mode in ("aao", "autoregressive"):
        (_, fields), = forecast_members(pipeline, [0], 6, settings, operator=operator, mode=mode)
        assert fields.shape == (7, 2, 8, 8) and np.isfinite(fields).all()
        drawn[mode] = fields
    assert not np.allclose(drawn["aao"], drawn["autoregressive"], atol=0.1)  # two algorithms, not one under two names


def test_bad_forecast_inputs(setup, tmp_path, capsys):
    root, pipeline, truth, truth_path, observations = setup
    base = ["forecast", "--pipeline", str(root / "pipeline"), "--members", "1", "--steps", "2", "--quiet"]
    out = tmp_path / "x.zarr"
    with pytest.raises(SystemExit):
        cli.main(base + ["--observations", str(observations), "--lead", "0", "--out", str(out)])
    assert cli.main(base + ["--lead", "2", "--out", str(out)]) == 2
    assert "exactly one of --observations and --initial" in capsys.readouterr().err
    other = write_dataset(open_dataset(observations).isel(x=slice(0, 4)), tmp_path / "small.nc")
    assert cli.main(base + ["--observations", str(other), "--lead", "2", "--out", str(out)]) == 2
    assert "grid" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "x.zarr.partial").exists()
    with pytest.raises(LatentdaError, match="initial condition has 1 states"):
        list(forecast_members(pipeline, [0], 2, PosteriorSettings(), initial=pipeline.encode(
            pipeline.layout.to_array(truth.isel(time=slice(0, 1))))[None]))


def test_forecast_continues_each_reanalysis_member(setup, tmp_path):
    root, pipeline, truth, truth_path, observations = setup
    post = tmp_path / "post.zarr"
    base = ["--pipeline", str(root / "pipeline"), "--members", "2", "--steps", "3", "--quiet"]
    assert cli.main(["reanalyze", "--observations", str(observations), "--out", str(post), *base]) == 0
    fc = tmp_path / "fc.zarr"
    assert cli.main(["forecast", "--initial", str(post), "--lead", "3", "--out", str(fc), "--conditioning", "inpaint", *base]) == 0
    analysis, forecast = open_dataset(post), open_dataset(fc)
    for m in range(2):  # lead 0 is member m's last analysed state (through the autoencoder)
        last = pipeline.layout.to_array(analysis.isel(realization=m, time=slice(-1, None)))
        expected = pipeline.decode(pipeline.encode(last))[0]
        np.testing.assert_allclose(forecast["u"].isel(realization=m, time=0, prediction_timedelta=0).values,
                                   expected[0], atol=1e-4 * np.abs(expected).max())
    assert not np.allclose(forecast["u"].isel(realization=0).values, forecast["u"].isel(realization=1).values)


def test_invalid_conditioning_writes_nothing(setup, tmp_path, capsys):
    root, pipeline, truth, truth_path, observations = setup
    out = tmp_path / "fc.zarr"
    assert cli.main(["forecast", "--pipeline", str(root / "pipeline"), "--observations", str(observations), "--lead", "2",
                     "--conditioning", "mmps", "--condition-noise", "0", "--out", str(out), "--quiet"]) == 2
    assert "conditioning noise must be positive" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "fc.zarr.partial").exists()


def test_datetime_time_axes(setup):
    import pandas as pd
    import xarray as xr

    root, pipeline, truth, truth_path, observations = setup
    saved = pipeline.time_step, pipeline.time_units
    pipeline.time_step, pipeline.time_units = 3600.0, "seconds"
    try:
        times = xr.DataArray(pd.date_range("2020-01-01", periods=4, freq="1h"), dims="time")
        pipeline.check_time_step(times)
        with pytest.raises(LatentdaError, match="apart"):
            pipeline.check_time_step(xr.DataArray(pd.date_range("2020-01-01", periods=4, freq="6h"), dims="time"))
        assert pipeline.lead_times(3)[2] == np.timedelta64(7200, "s")
    finally:
        pipeline.time_step, pipeline.time_units = saved


def test_pipeline_forecast_api(setup):
    root, pipeline, truth, truth_path, observations = setup
    pipeline.set_progress_bar_config(disable=True)
    forecast = pipeline.forecast(lead=3, members=2, initial=truth.isel(time=slice(0, 4)), steps=2)
    assert forecast["u"].dims == ("realization", "time", "prediction_timedelta", "y", "x")
    assert forecast.sizes["prediction_timedelta"] == 4 and forecast["time"].values[0] == truth["time"].values[3]
    from_obs = pipeline.forecast(lead=2, members=1, observations=open_dataset(observations), steps=2)
    assert np.isfinite(from_obs["v"].values).all()
    with pytest.raises(LatentdaError, match="exactly one"):
        pipeline.forecast(lead=2)


def test_more_bad_forecast_inputs(setup, tmp_path, capsys):
    root, pipeline, truth, truth_path, observations = setup
    short = write_dataset(open_dataset(observations).isel(time=slice(0, 1)), tmp_path / "short.nc")
    out = tmp_path / "fc.zarr"
    assert cli.main(["forecast", "--pipeline", str(root / "pipeline"), "--observations", str(short), "--mode", "aao",
                     "--lead", "1", "--members", "1", "--out", str(out), "--quiet"]) == 2
    assert "all-at-once needs" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "fc.zarr.partial").exists()
    broken = truth.isel(time=slice(0, 4)).copy(deep=True)
    broken["u"][-1, 0, 0] = np.nan
    with pytest.raises(LatentdaError, match="'u' holds NaN"):
        pipeline.forecast(lead=1, members=1, initial=broken)
    with pytest.raises(LatentdaError, match="no 'time' dimension"):
        pipeline.forecast(lead=1, members=1, initial=truth.isel(time=0))

"""Rank histograms, their χ² flatness and interval coverage against known distributions; evaluate's report."""

import json

import numpy as np
import pytest
import xarray as xr

from conftest import make_box_dataset
from latentda import cli
from latentda.data import write_dataset
from latentda.errors import LatentdaError
from latentda.evaluation import evaluate
from latentda.metrics import coverage_curve, interval_coverage, rank_flatness, rank_histogram, truth_ranks


def _draws(members: int, spread: float = 1.0, bias: float = 0.0, seed: int = 0):
    """Truth ~ N(0, 1) and an ensemble ~ N(bias, spread²), shapes (m, T, C, H, W) and (T, C, H, W)."""
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal((4, 2, 16, 16))
    ensemble = bias + spread * rng.standard_normal((members, *truth.shape))
    return ensemble, truth


def test_exchangeable_samples_have_flat_ranks_and_nominal_coverage():
    ensemble, truth = _draws(members=9)
    counts = rank_histogram(ensemble, truth)
    assert counts.shape == (10,) and counts.sum() == truth.size
    flatness = rank_flatness(counts)
    assert flatness["dof"] == 9 and flatness["p_value"] > 1e-3 and flatness["flatness"] < 2.5
    for level in (0.5, 0.9):
        assert interval_coverage(ensemble, truth, level).mean() == pytest.approx(level, abs=0.02)
    levels, observed = coverage_curve(ensemble, truth)
    np.testing.assert_allclose(observed, levels, atol=0.03)
    with pytest.raises(ValueError, match="read-only"):  # the default levels are shared by every later curve
        levels[0] = 0.5


def test_coverage_is_nominal_even_for_small_ensembles():
    """With 4 members the member range covers (m−1)/(m+1) = 60 %; the Student-t 90 % interval covers 90 %."""
    ensemble, truth = _draws(members=4, seed=1)
    inside_range = ((ensemble.min(0) < truth) & (truth < ensemble.max(0))).mean()
    assert inside_range == pytest.approx(0.6, abs=0.02)
    assert interval_coverage(ensemble, truth, 0.9).mean() == pytest.approx(0.9, abs=0.02)


def test_under_dispersed_ensemble_gives_u_shaped_ranks_and_low_coverage():
    ensemble, truth = _draws(members=9, spread=0.4, seed=2)
    counts = rank_histogram(ensemble, truth)
    middle = counts[1:-1].mean()
    assert counts[0] > 3 * middle and counts[-1] > 3 * middle  # U shape
    assert rank_flatness(counts)["p_value"] < 1e-10
    assert interval_coverage(ensemble, truth, 0.9).mean() < 0.6
    assert interval_coverage(ensemble, truth, 0.5).mean() < 0.3


def test_biased_and_over_dispersed_ensembles():
    ensemble, truth = _draws(members=9, bias=0.8, seed=3)
    counts = rank_histogram(ensemble, truth)
    assert counts[0] > 3 * counts[-1]  # the truth sits low: a slope
    ensemble, truth = _draws(members=9, spread=2.0, seed=4)
    counts = rank_histogram(ensemble, truth)
    assert counts[4:6].mean() > 1.5 * counts[[0, -1]].mean()  # a dome
    assert interval_coverage(ensemble, truth, 0.5).mean() > 0.7


def test_ties_and_nan():
    ensemble = np.zeros((3, 1000))
    truth = np.zeros(1000)
    ranks = truth_ranks(ensemble, truth)
    assert set(np.unique(ranks)) == {0, 1, 2, 3}  # ties spread evenly, not all in one bin
    truth[:10] = np.nan
    assert rank_histogram(ensemble, truth).sum() == 990
    # members all equal: a truth on them (a dry pixel forecast dry) has the randomised PIT U(0, 1), so it is
    # covered at the interval's level; a truth off them never is; missing truths are left out
    truth[10:20] = 1.0
    coverage = interval_coverage(ensemble[:, None, None, None], truth[None, None, None], 0.5).item()
    assert coverage == pytest.approx(0.5 * 980 / 990, abs=0.05)


def test_a_calibrated_zero_inflated_ensemble_covers_its_intervals_at_their_level():
    """Half the points dry (truth and every member 0: an atom), half a calibrated Gaussian ensemble: the
    coverage curve lies on the diagonal (a dry point counted covered at every level would lift it to
    0.5 + level/2)."""
    rng = np.random.default_rng(3)
    m, points = 10, 40_000
    centre = rng.standard_normal(points)
    ensemble = centre + rng.standard_normal((m, points))
    truth = centre + rng.standard_normal(points)
    dry = np.arange(points) < points // 2
    ensemble[:, dry], truth[dry] = 0.0, 0.0
    levels, observed = coverage_curve(ensemble[:, None, None, None, :], truth[None, None, None, :])
    np.testing.assert_allclose(observed, levels, atol=0.02)


def test_weighted_coverage_curve_agrees_with_interval_coverage():
    """On a grid whose rows weigh differently, the curve's points are the area-weighted coverages."""
    rng = np.random.default_rng(5)
    ensemble = rng.standard_normal((5, 1, 1, 6, 40))  # (m, T, C, H, W)
    truth = rng.standard_normal((1, 1, 6, 40)) * np.linspace(0.2, 3.0, 6)[:, None]  # calibrated in some rows only
    weights = np.linspace(0.1, 2.0, 6)[:, None]
    levels, weighted = coverage_curve(ensemble[:, :, 0], truth[:, 0], np.array([0.5, 0.9]), weights=weights)
    for level, value in zip(levels, weighted):
        assert value == pytest.approx(interval_coverage(ensemble, truth, level, weights).item())
    _, plain = coverage_curve(ensemble[:, :, 0], truth[:, 0], np.array([0.5, 0.9]))
    assert not np.allclose(plain, weighted)


def test_evaluate_reports_calibration(tmp_path):
    truth = make_box_dataset(trajectories=1, times=6, size=8)
    truth_path = write_dataset(truth, tmp_path / "truth.zarr")
    rng = np.random.default_rng(0)
    target = truth.isel(trajectory=0, drop=True)
    members = target.expand_dims(realization=np.arange(8)).copy(deep=True)
    for name in ("u", "v"):  # u: members and truth exchangeable around a centre; v: far too narrow
        centre = target[name] + xr.DataArray(rng.standard_normal(target[name].shape), dims=target[name].dims)
        spread = 1.0 if name == "u" else 0.1
        noise = rng.standard_normal(members[name].shape)
        members[name] = (centre + spread * xr.DataArray(noise, dims=members[name].dims)).astype(np.float32)
    prediction = write_dataset(members, tmp_path / "prediction.nc")
    out = tmp_path / "report"
    assert cli.main(["evaluate", "--prediction", str(prediction), "--truth", str(truth_path), "--trajectory", "0",
                     "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["u"]["coverage_90"] == pytest.approx(0.9, abs=0.05)
    assert summary["v"]["coverage_90"] < 0.5
    assert summary["u"]["rank_histogram"]["p_value"] > 1e-4 > summary["v"]["rank_histogram"]["p_value"]
    assert len(summary["u"]["rank_histogram"]["counts"]) == 9
    assert len(summary["v"]["coverage_curve"]["observed"]) == 9
    assert "calibration.png" in {p.name for p in out.iterdir()}
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "coverage_50" in header and "coverage_90" in header
    (out / "summary.json").write_text("{}")  # an earlier report: replaced whole with --overwrite
    assert cli.main(["evaluate", "--prediction", str(prediction), "--truth", str(truth_path), "--trajectory", "0",
                     "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["u"]["coverage_90"] == summary["u"]["coverage_90"]


def test_evaluate_leaves_a_forecasts_initial_state_out_of_its_summary(tmp_path):
    """A forecast's lead 0 is the state it starts from (here given: every member equal to the truth):
    it has its rows in metrics.csv but the summary, the rank histogram and the coverage curve score the
    forecast, leads 1 to 8, which are calibrated."""
    truth = make_box_dataset(trajectories=1, times=9, size=16)
    truth_path = write_dataset(truth, tmp_path / "truth.zarr")
    rng = np.random.default_rng(1)
    target = truth.isel(trajectory=0, drop=True)
    members = target.expand_dims(realization=np.arange(6)).copy(deep=True)
    for name in ("u", "v"):
        centre = target[name] + xr.DataArray(rng.standard_normal(target[name].shape), dims=target[name].dims)
        drawn = centre + xr.DataArray(rng.standard_normal(members[name].shape), dims=members[name].dims)
        members[name] = drawn.where(drawn["time"] > 0, target[name]).astype(np.float32)  # lead 0: the truth
    times = target["time"].values
    forecast = members.rename(time="prediction_timedelta").assign_coords(prediction_timedelta=times - times[0])
    prediction = write_dataset(forecast.expand_dims(time=[times[0]]), tmp_path / "forecast.nc")
    out = tmp_path / "report"
    assert cli.main(["evaluate", "--prediction", str(prediction), "--truth", str(truth_path), "--trajectory", "0",
                     "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for name in ("u", "v"):
        assert summary[name]["coverage_90"] == pytest.approx(0.9, abs=0.03)
        assert summary[name]["spread_skill_ratio"] == pytest.approx(1.0, abs=0.06)
        assert sum(summary[name]["rank_histogram"]["counts"]) == 8 * 16 * 16  # leads 1–8, every pixel
        assert summary[name]["rank_histogram"]["flatness"] < 2.0
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    first = dict(zip(header, rows[1].split(",")))
    assert header[:5] == ["channel", "time", "init_time", "lead", "step"] and len(rows) == 1 + 2 * 9
    assert first["lead"] == "0" and float(first["spread"]) == 0.0 and float(first["rmse"]) == 0.0

    # a forecast from elsewhere whose first lead is not 0: every lead is a forecast, labelled by its lead
    later = forecast.isel(prediction_timedelta=slice(1, None)).expand_dims(time=[times[0]])
    rows, summary = evaluate(later, truth, trajectory=0)
    assert rows[0]["lead"] == f"{times[1] - times[0]:g}" and rows[0]["step"] == 0
    for name in ("u", "v"):
        assert sum(summary[name]["rank_histogram"]["counts"]) == 8 * 16 * 16
        per_lead = np.array([row["rmse"] for row in rows if row["channel"] == name])
        assert summary[name]["rmse"] == pytest.approx(per_lead.mean())  # the mean over the leads, all of them
        assert summary[name]["rmse_pooled"] == pytest.approx(np.sqrt(np.mean(per_lead**2)))  # WeatherBench2's


def _forecasts_of(truth: xr.Dataset, starts: list[int], leads: int, members: int = 4, seed: int = 0) -> xr.Dataset:
    """WeatherBench2's layout (realization, time = initialisation, prediction_timedelta, …): per initialisation
    ``truth.time[start]``, members scattered around the truth at the valid times, the spread growing with lead."""
    rng = np.random.default_rng(seed)
    times = truth["time"].values
    parts = []
    for start in starts:
        valid = truth.isel(time=slice(start, start + leads + 1))
        scale = xr.DataArray(0.1 * (1 + np.arange(leads + 1)), dims="time")
        drawn = valid.expand_dims(realization=np.arange(members)).map(
            lambda v: (v + scale * xr.DataArray(rng.standard_normal(v.shape), dims=v.dims)).astype(np.float32))
        parts.append(drawn.rename(time="prediction_timedelta").assign_coords(
            prediction_timedelta=times[start : start + leads + 1] - times[start]).expand_dims(time=[times[start]]))
    return xr.concat(parts, "time")


def test_forecasts_of_several_initialisation_times_are_scored_as_weatherbench2_averages(tmp_path):
    """Every (initialisation, lead) pair scored at its valid time: each row equals the single forecast's; the
    summary and `by_lead` average over the initialisation times; a scalar lead or initialisation is scored at
    its valid time; leads in CF integer hours read as durations."""
    from conftest import make_latlon_dataset

    truth = make_latlon_dataset(times=12)
    forecast = _forecasts_of(truth, [0, 2, 5], leads=3)
    rows, summary = evaluate(forecast, truth)
    singles = [evaluate(forecast.isel(time=[i]), truth) for i in range(3)]
    channel = "temperature@500"
    assert summary["initialisation_times"] == 3 and len(rows) == 3 * 4 * 3  # channels × inits × leads
    for i, (single_rows, _) in enumerate(singles):
        mine = [row for row in rows if row["init_time"] == str(forecast["time"].values[i])]
        assert [row["rmse"] for row in mine] == [row["rmse"] for row in single_rows]
        assert [row["time"] for row in mine] == [row["time"] for row in single_rows]  # valid times
    by_lead = summary["by_lead"][channel]
    assert list(by_lead) == ["0:00:00", "6:00:00", "12:00:00", "18:00:00"]
    for step, lead in enumerate(by_lead):
        per_init = [[row for row in single if row["channel"] == channel][step]["rmse"] for single, _ in singles]
        assert by_lead[lead]["rmse"] == pytest.approx(np.mean(per_init), rel=1e-12)
        assert by_lead[lead]["rmse_pooled"] == pytest.approx(np.sqrt(np.mean(np.square(per_init))), rel=1e-12)
    assert by_lead["0:00:00"]["rmse"] < by_lead["18:00:00"]["rmse"]  # the spread grows with lead
    assert summary[channel]["rmse"] == pytest.approx(np.mean([s[channel]["rmse"] for _, s in singles]), rel=1e-12)
    assert sum(summary[channel]["rank_histogram"]["counts"]) == 3 * 3 * 8 * 16  # 3 inits × leads 1–3 × every pixel

    lead_rows, _ = evaluate(forecast.isel(prediction_timedelta=2), truth)  # a lead chosen as a scalar: its valid time
    assert [row["rmse"] for row in lead_rows if row["channel"] == channel] == [
        row["rmse"] for row in rows if row["channel"] == channel and row["lead"] == "12:00:00"]
    assert lead_rows[0]["time"] == str(forecast["time"].values[0] + np.timedelta64(12, "h"))
    init_rows, _ = evaluate(forecast.isel(time=1), truth)
    assert [row["rmse"] for row in init_rows] == [row["rmse"] for row in singles[1][0]]

    hours = forecast["prediction_timedelta"].values // np.timedelta64(1, "h")  # WeatherBench2's / older xarray's encoding
    encoded = forecast.assign_coords(prediction_timedelta=("prediction_timedelta", hours, {"units": "hours"}))
    assert [row["rmse"] for row in evaluate(encoded, truth)[0]] == [row["rmse"] for row in rows]
    with pytest.raises(LatentdaError, match="prediction_timedelta holds numbers .units 'steps'"):
        evaluate(encoded.assign_coords(prediction_timedelta=encoded["prediction_timedelta"].assign_attrs(units="steps")), truth)
    with pytest.raises(LatentdaError, match="the prediction has no 'time' coordinate"):
        evaluate(forecast.drop_vars("time"), truth)
    valid = forecast.isel(time=0, drop=True).rename(prediction_timedelta="time")  # a lead coordinate along time
    valid = valid.assign_coords(time=truth["time"].values[:4], prediction_timedelta=("time", valid["time"].values))
    with pytest.raises(LatentdaError, match="prediction_timedelta runs along time: .*drop it"):
        evaluate(valid, truth)
    assert evaluate(valid.drop_vars("prediction_timedelta"), truth)[0][0]["rmse"] == rows[0]["rmse"]


def test_large_model_times_are_not_matched_to_a_neighbouring_state():
    """The tolerance of float model times (the rounding of time + lead) stays below the truth's step however
    large the times: a prediction half a step off is refused at t ≈ 2·10⁶ as at t ≈ 1."""
    truth = make_box_dataset(trajectories=1, times=6, size=8).isel(trajectory=0, drop=True)
    prediction = truth.expand_dims(realization=[0, 1])
    for offset in (0.0, 2e6):
        shifted = truth.assign_coords(time=truth["time"] + offset)
        assert evaluate(prediction.assign_coords(time=prediction["time"] + offset), shifted)[1]["u"]["rmse"] == 0.0
        with pytest.raises(LatentdaError, match="not all in the truth"):
            evaluate(prediction.assign_coords(time=prediction["time"] + offset + 0.1), shifted)


def test_coverage_50_and_the_curve_agree_when_members_and_truth_tie(tmp_path):
    """70 % of the points dry (every member and the truth 0): coverage_50 and coverage_90, means over the
    times of equally many points, equal the curve's points at 0.5 and 0.9 (one random draw for the ties)."""
    truth = make_box_dataset(trajectories=1, times=4, size=8).isel(trajectory=0, drop=True)
    rng = np.random.default_rng(4)
    members = truth.expand_dims(realization=np.arange(5)).copy(deep=True)
    dry = xr.DataArray(rng.uniform(size=(4, 8, 8)) < 0.7, dims=("time", "y", "x"))
    for name in ("u", "v"):
        members[name] = (members[name] + xr.DataArray(rng.standard_normal(members[name].shape), dims=members[name].dims))
        members[name], truth[name] = members[name].where(~dry, 0.0), truth[name].where(~dry, 0.0)
    _, summary = evaluate(members, truth)
    for name in ("u", "v"):
        curve = dict(zip(np.round(summary[name]["coverage_curve"]["level"], 6), summary[name]["coverage_curve"]["observed"]))
        assert summary[name]["coverage_50"] == pytest.approx(curve[0.5]) and summary[name]["coverage_90"] == pytest.approx(curve[0.9])


def test_spectra_compare_the_points_both_have():
    """The prediction is NaN on its fixed mask (``u_mask``: say land) where the truth has values: the truth's
    spectrum is taken on the points scored too, so a prediction equal to the truth up to 1e-3 has its spectrum."""
    truth = make_box_dataset(trajectories=1, times=4, size=16).isel(trajectory=0, drop=True)
    rng = np.random.default_rng(2)
    members = truth.expand_dims(realization=np.arange(3)).copy(deep=True)
    land = xr.DataArray(rng.uniform(size=(16, 16)) < 0.3, dims=("y", "x"))
    for name in ("u", "v"):
        members[name] = members[name] + 1e-3 * xr.DataArray(rng.standard_normal(members[name].shape), dims=members[name].dims)
    members["u"] = members["u"].where(~land)
    members["u_mask"] = (~land).astype(np.float32)
    _, summary = evaluate(members, truth)
    for name in ("u", "v"):
        spectrum = summary["spectra"][name]
        np.testing.assert_allclose(spectrum["prediction"], spectrum["truth"], rtol=0.02)

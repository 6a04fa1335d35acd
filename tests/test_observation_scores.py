"""Scoring against observations alone (real data: no truth): the dressed CRPS in closed form, spread-skill
with the observation error, and `evaluate --observations` without `--truth` for reanalyses and forecasts."""

import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml
from scipy.stats import norm

from conftest import make_box_dataset
from latentda import cli
from latentda.data import FieldLayout, open_dataset, write_dataset
from latentda.evaluation import NOT_CHANNELS, evaluate
from latentda.metrics import dressed_crps, fair_crps, observation_space_scores
from latentda.observe import files
from latentda.observe.files import read_observations


def test_dressed_crps_is_the_integral_of_the_mixtures_squared_distance():
    """Against ∫ (F(z) − 1[z ≥ y])² dz of F = (1/m) Σ N(h_i, σ²) numerically: the closed form plus the fair
    correction of the self-pairs; σ → 0 gives fair_crps; one member the CRPS of N(h, σ²) in closed form."""
    rng = np.random.default_rng(0)
    members, y, std = rng.normal(size=(5, 3)), rng.normal(size=3), np.array([0.3, 0.5, 1.0])
    z = np.linspace(-15, 15, 200_001)
    for j in range(3):
        mixture = np.trapezoid((norm.cdf((z[:, None] - members[:, j]) / std[j]).mean(axis=1) - (z >= y[j])) ** 2, z)
        differences = members[:, j, None] - members[None, :, j]
        s = np.sqrt(2) * std[j]
        pair_means = differences * (2 * norm.cdf(differences / s) - 1) + 2 * s * norm.pdf(differences / s)  # E|d + sZ|
        # the mixture's own term ½ mean over all m² pairs, the fair one ½ over the m(m − 1) distinct pairs
        fair = mixture + pair_means.sum() / (2 * 25) - (pair_means.sum() - np.trace(pair_means)) / (2 * 20)
        assert dressed_crps(members[:, j:j + 1], y[j:j + 1], std[j])[0] == pytest.approx(fair, abs=1e-5)
    np.testing.assert_allclose(dressed_crps(members, y, 1e-12), fair_crps(members, y), atol=1e-9)
    one, tau = members[:1], 0.7
    w = (y - one[0]) / tau
    gaussian = tau * (w * (2 * norm.cdf(w) - 1) + 2 * norm.pdf(w) - 1 / np.sqrt(np.pi))  # Gneiting & Raftery 2007
    np.testing.assert_allclose(dressed_crps(one, y, tau), gaussian, rtol=1e-12)


def test_a_calibrated_ensemble_against_noisy_observations_scores_one():
    """Members and truth exchangeable (spread s), y = truth + ε of std σ = 2 s: the spread-skill ratio with the
    observation error is 1; without it the ensemble would read 0.47, under-dispersed. The dressed CRPS's mean is
    the CRPS of y's law N(μ, s² + σ²) (members → ∞, fair: unbiased at m = 8)."""
    rng = np.random.default_rng(1)
    m, entries, s, sigma = 8, 40_000, 0.5, 1.0
    centre = rng.normal(size=entries) * 3
    truth = centre + s * rng.standard_normal(entries)
    members = centre + s * rng.standard_normal((m, entries))
    y = truth + sigma * rng.standard_normal(entries)
    scores = observation_space_scores(members, y, np.full(entries, sigma))
    assert scores["count"] == entries and abs(scores["bias"]) < 0.02
    assert scores["spread_skill_ratio"] == pytest.approx(1.0, abs=0.01)
    assert np.sqrt((m + 1) / m) * scores["spread"] / scores["rmse"] == pytest.approx(
        np.sqrt((m + 1) / m * s**2 / ((m + 1) / m * s**2 + sigma**2)), abs=0.01)  # the ratio without σ: 0.47
    tau = np.hypot(s, sigma)
    w = (y - centre) / tau
    expected = np.mean(tau * (w * (2 * norm.cdf(w) - 1) + 2 * norm.pdf(w) - 1 / np.sqrt(np.pi)))
    assert scores["crps"] == pytest.approx(expected, rel=0.01)
    narrow = observation_space_scores(centre + 0.2 * (members - centre), y, np.full(entries, sigma))
    assert narrow["spread_skill_ratio"] < 0.95  # an under-dispersed ensemble is seen through the observation error


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A truth (6 states of u, v on 8×8), 16 members exchangeable with it, and observations of u at 25 % of the
    pixels (σ = 0.5) and of the speed at 4 fixed points (σ = 0.3) over states 1–4."""
    root = tmp_path_factory.mktemp("obs-scores")
    truth = make_box_dataset(trajectories=1, times=6, size=8).isel(trajectory=0, drop=True)
    truth_path = write_dataset(truth, root / "truth.zarr")
    rng = np.random.default_rng(2)
    members = truth.expand_dims(realization=np.arange(16)).copy(deep=True)
    for name in ("u", "v"):
        members[name] = members[name] + xr.DataArray(0.3 * rng.standard_normal(members[name].shape).astype(np.float32),
                                                     dims=members[name].dims)
    prediction = write_dataset(members, root / "prediction.nc")
    operator = root / "observe.yaml"
    operator.write_text(yaml.safe_dump({"observations": [
        {"name": "u_grid", "variables": ["u"], "sampling": "grid", "fraction": 0.25, "noise_std": 0.5},
        {"name": "wind", "variables": ["u", "v"], "transform": "speed", "sampling": "points", "points": 4, "noise_std": 0.3},
    ]}))
    assert cli.main(["observe", "--truth", str(truth_path), "--start", "1", "--length", "4", "--operator", str(operator),
                     "--out", str(root / "obs.nc"), "--seed", "3"]) == 0
    return root, truth_path, prediction, root / "obs.nc"


def test_evaluate_against_observations_alone(world, capsys):
    """No truth: rows per observation group and observed time (states 1–4 of 0–5), the group's scores equal to
    hand-computed ones at its observed pixels, pooled as sums over every observation; the residual ratio as with
    the truth; the same observation-space summary when the truth is given too; a report without spectra."""
    root, truth_path, prediction, observations = world
    capsys.readouterr()
    out = root / "report"
    assert cli.main(["evaluate", "--prediction", str(prediction), "--observations", str(observations), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "against the observations" in printed and "u_grid" in printed and "wind" in printed
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["observation"], int(r["step"])) for r in rows} == {(g, t) for g in ("u_grid", "wind") for t in (1, 2, 3, 4)}
    assert {"metrics.csv", "summary.json", "scores.png"} == {p.name for p in out.iterdir()}

    ensemble = open_dataset(prediction)["u"].values.astype(np.float64)  # (16, 6, 8, 8)
    obs = open_dataset(observations)
    y = obs["u_grid"].values  # (4, 8, 8), NaN where unobserved
    predicted = ensemble[:, 1:5][:, ~np.isnan(y)]
    observed = y[~np.isnan(y)]
    distance = observed - predicted.mean(axis=0)
    expected = {"count": observed.size, "bias": distance.mean(), "rmse": np.sqrt(np.mean(distance**2)),
                "spread": np.sqrt(predicted.var(axis=0, ddof=1).mean()), "noise_std": 0.5,
                "spread_skill_ratio": np.sqrt((17 / 16 * predicted.var(axis=0, ddof=1).mean() + 0.25) / np.mean(distance**2)),
                "crps": dressed_crps(predicted, observed, 0.5).mean()}
    for name, value in expected.items():
        assert summary["u_grid"][name] == pytest.approx(value, rel=1e-6), name
    layout = FieldLayout.from_dataset(open_dataset(prediction))
    states = np.stack([layout.to_array(open_dataset(prediction).isel(realization=i)) for i in range(16)])[:, 1:5]
    ratios = read_observations(obs, layout).residual_ratio(torch.from_numpy(states).double())  # the operator's own
    assert summary["observation_residual_ratio"]["members"] == pytest.approx(ratios.tolist(), rel=1e-6)
    at_time_2 = next(r for r in rows if r["observation"] == "u_grid" and r["step"] == "2")
    pixels = ~np.isnan(y[1])
    assert float(at_time_2["rmse"]) == pytest.approx(np.sqrt(np.mean((y[1][pixels] - ensemble[:, 2][:, pixels].mean(0)) ** 2)),
                                                     rel=1e-6)

    def dated(dataset):  # model time 0.2 k → 2020-01-01 + 6 h · k (date-times, in units other than ns)
        steps = np.rint(dataset["time"].values / 0.2).astype(int)
        return dataset.assign_coords(time=(np.datetime64("2020-01-01", "s") + steps * np.timedelta64(6, "h")))

    _, by_date = evaluate(dated(open_dataset(prediction)), observations=dated(open_dataset(observations)))
    assert by_date["u_grid"] == pytest.approx(summary["u_grid"])

    both = root / "both"
    assert cli.main(["evaluate", "--prediction", str(prediction), "--truth", str(truth_path), "--observations",
                     str(observations), "--out", str(both)]) == 0
    with_truth = json.loads((both / "summary.json").read_text())
    assert with_truth["observation_space"]["u_grid"] == pytest.approx(summary["u_grid"])
    for key in ("mean", "members"):
        assert with_truth["observation_residual_ratio"][key] == pytest.approx(summary["observation_residual_ratio"][key])
    assert with_truth["u"]["rmse"] > 0 and "spectra.png" in {p.name for p in both.iterdir()}


def _forecast(truth: xr.Dataset, rng, inits=(0, 2), leads=3, members=8) -> xr.Dataset:
    """Forecasts from states ``inits`` of ``truth``: the truth at each valid time plus member noise growing with lead."""
    parts = []
    for init in inits:
        states = truth.isel(time=slice(init, init + leads))
        noise = {name: (("realization", "prediction_timedelta", *states[name].dims[1:]),
                        states[name].values[None] + (0.1 + 0.2 * np.arange(leads))[None, :, None, None]
                        * rng.standard_normal((members, *states[name].shape)))
                 for name in ("u", "v")}
        step = truth["time"].values[1] - truth["time"].values[0]
        parts.append(xr.Dataset(noise, coords={"realization": np.arange(members), "prediction_timedelta": np.arange(leads) * step,
                                                "time": truth["time"].values[init], "y": truth["y"], "x": truth["x"]}))
    return xr.concat(parts, "time")


def test_evaluate_a_forecast_against_observations_at_valid_times(world):
    """Each (initialisation, lead) scored against the observations at its valid time where there are some; by lead
    averaged (as sums) over the initialisations; lead 0 out of the summary; errors that name what is wrong."""
    root, truth_path, _, observations = world
    truth = open_dataset(truth_path)
    forecast = _forecast(truth, np.random.default_rng(4))
    rows, summary = evaluate(forecast, observations=open_dataset(observations))
    # valid times: init 0 → states 0, 1, 2; init 2 → states 2, 3, 4; observed: states 1–4
    cases = {(r["observation"], r["init_time"], r["step"]) for r in rows}
    assert len(cases) == 2 * 5 and all(step in (0, 1, 2) for _, _, step in cases)
    leads = list(summary["by_lead"]["u_grid"])
    assert len(leads) == 3
    assert summary["u_grid"]["count"] == sum(summary["by_lead"]["u_grid"][lead]["count"] for lead in leads[1:])
    assert summary["by_lead"]["u_grid"][leads[2]]["spread"] > summary["by_lead"]["u_grid"][leads[1]]["spread"]
    assert summary["initialisation_times"] == 2 and len(summary["observation_residual_ratio"]["members"]) == 8
    y = open_dataset(observations)["u_grid"].values  # states 1..4
    lead_1 = [(forecast["u"].isel(time=i, prediction_timedelta=1).transpose("realization", ...).values, y[init])
              for i, init in enumerate((0, 2))]  # valid states 1 and 3: observations 0 and 2
    squares = [((obs - f.mean(0))[~np.isnan(obs)] ** 2) for f, obs in lead_1]
    pooled = np.sqrt(np.concatenate(squares).mean())
    assert summary["by_lead"]["u_grid"][leads[1]]["rmse"] == pytest.approx(pooled, rel=1e-6)

    with pytest.raises(Exception, match="other times .* nothing to score"):
        evaluate(forecast.assign_coords(time=forecast["time"] + 100 * (truth["time"][1] - truth["time"][0]).values),
                 observations=open_dataset(observations))
    with pytest.raises(Exception, match="nothing to score against"):
        evaluate(forecast)
    twice = open_dataset(observations).isel(time=[0, 1, 1, 2])
    with pytest.raises(Exception, match="the observations' times are not unique"):
        evaluate(forecast, observations=twice)
    observed = open_dataset(observations).load()
    later = observed.isel(time=[0, 1, 2, 3, 3]).assign_coords(time=np.append(observed["time"].values, 1e6))
    later = later.map(lambda v: v.where(v["time"] > 1e5) if "time" in v.dims else v)  # values at a time not forecast only
    with pytest.raises(Exception, match="all NaN at the prediction's times: nothing is observed"):
        evaluate(forecast, observations=later)
    with pytest.raises(Exception, match="observations have no 'time' dimension"):
        evaluate(forecast, observations=observed.isel(time=0))
    _, beside_truth = evaluate(forecast, truth, observations=later)  # with the truth: its report, no observation group
    assert beside_truth["observation_space"] == {} and np.isnan(beside_truth["observation_residual_ratio"]["mean"])
    assert cli.main(["evaluate", "--prediction", str(root / "prediction.nc")]) == 2
    assert cli.main(["evaluate", "--prediction", str(root / "prediction.nc"), "--observations", str(observations),
                     "--trajectory", "0"]) == 2


def test_a_table_of_observations_scores_a_forecast(world, tmp_path, capsys):
    """A table (CSV) is placed on the forecast's valid times and scored as the file would be."""
    root, truth_path, _, observations = world
    truth = open_dataset(truth_path)
    forecast = write_dataset(_forecast(truth, np.random.default_rng(5)), tmp_path / "forecast.nc")
    times = truth["time"].values
    table = pd.DataFrame({"time": [times[1], times[3], times[4]], "variable": "u", "y": [2.0, 5.0, 1.0],
                          "x": [3.0, 1.0, 6.0], "value": [0.1, -0.2, 0.3], "noise_std": 0.4})
    table.to_csv(tmp_path / "obs.csv", index=False)
    out = tmp_path / "report"
    assert cli.main(["evaluate", "--prediction", str(forecast), "--observations", str(tmp_path / "obs.csv"),
                     "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    (group,) = [k for k in summary if k not in NOT_CHANNELS]
    assert summary[group]["count"] == 3 and summary[group]["noise_std"] == pytest.approx(0.4)
    # valid times 0, 0.2, 0.6, 0.8 (starts 0 and 0.6, leads 0 and 0.2): uneven, rows within 0.1 of one
    uneven = write_dataset(_forecast(truth, np.random.default_rng(6), inits=(0, 3), leads=2), tmp_path / "uneven.nc")
    table.iloc[[0, 2]].to_csv(tmp_path / "near.csv", index=False)  # states 1 and 4: valid times
    assert cli.main(["evaluate", "--prediction", str(uneven), "--observations", str(tmp_path / "near.csv"),
                     "--out", str(tmp_path / "uneven")]) == 0
    assert json.loads((tmp_path / "uneven" / "summary.json").read_text())[group]["count"] == 2
    table.assign(time=[times[1], times[2], times[4]]).to_csv(tmp_path / "far.csv", index=False)
    assert cli.main(["evaluate", "--prediction", str(uneven), "--observations", str(tmp_path / "far.csv")]) == 2
    assert "1 observation row(s) are more than 0.1 from every state" in capsys.readouterr().err  # 0.4: no valid time


def test_observations_reading_the_predictions_mask_are_left_out(world):
    """A prediction with NaN on its fixed mask (<variable>_mask): a linear row or a station reading only valid pixels
    is scored (a zero weight on a masked pixel reads nothing), one reading a masked pixel is left out, as reanalyze
    leaves it out; nothing left to score is an error."""
    root, truth_path, prediction, _ = world
    ensemble = open_dataset(prediction)
    land = np.zeros((8, 8), dtype=bool)
    land[:, :3] = True  # columns 0–2 of u are land
    masked = ensemble.assign(u=ensemble["u"].where(~land), u_mask=(("y", "x"), (~land).astype(np.float32)))
    obs = open_dataset(world[3]).isel(time=slice(0, 2))
    rows = np.zeros((3, 64))
    rows[0, 8 * 4 + 5] = rows[0, 8 * 6 + 7] = 0.5  # sea pixels only
    rows[1, 8 * 2 + 6] = 1.0
    rows[2, 8 * 2 + 1] = rows[2, 8 * 2 + 4] = 0.5  # reads a land pixel
    values = np.full((2, 3), 0.3)
    attrs = {"latentda_source": "u", "noise_std": 0.2, "units": "1"}
    linear = xr.Dataset({"line": (("time", "line_row"), values, {"latentda_sampling": "linear", **attrs}),
                         "line_matrix": (("line_row", "line_column"), rows)}, coords={"time": obs["time"]})
    _, summary = evaluate(masked, observations=linear)
    assert summary["line"]["count"] == 2 * 2 and np.isfinite(summary["line"]["rmse"])
    station = xr.Dataset({"station": (("time", "station_point"), np.full((2, 1), 0.1), {"latentda_sampling": "points", **attrs}),
                          "station_y": ("station_point", masked["y"].values[[4]]),
                          "station_x": ("station_point", masked["x"].values[[3]])},  # the sea pixel beside land
                         coords={"time": obs["time"]})
    _, summary = evaluate(masked, observations=station)
    assert summary["station"]["count"] == 2
    with pytest.raises(Exception, match="reads its fixed mask"):
        evaluate(masked, observations=linear.assign(line_matrix=linear["line_matrix"].where(False, 0) + rows[2]))


def _same(a, b, where: str = "") -> None:
    """``a`` equals ``b`` (rows, summaries): floats to 1e-12 relative (spectra are sums in another order), NaN as NaN."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-300), where
    else:
        assert a == b, where


def test_scoring_block_by_block_equals_scoring_whole(world, monkeypatch):
    """evaluate reads and scores the prediction a block of times at a time (its memory is a block's): blocks of
    two times and of one give every row and summary entry that one block of all gives — against a truth with
    missing values and a dry region (the truth and every member 0: the PIT's atom and tied ranks, drawn at random),
    against observations, both, and for a forecast of two initialisations at its valid times — and no block read,
    of the prediction or of the observations (those of the block's times), holds more times than ``block_bytes``
    allow (the observations' first read, of their structure, holds none)."""
    from latentda import evaluation

    _, truth_path, prediction, observations = world
    truth, ensemble = open_dataset(truth_path).load(), open_dataset(prediction).load()
    truth["v"][:, :3, :3] = 0.0
    ensemble["v"][:, :, :3, :3] = 0.0
    truth["u"][2, 4:, 4:] = np.nan
    observed = open_dataset(observations)
    reads = []
    read = evaluation._read_block

    def recording(prediction, layout, members, first_step, mask):
        reads.append(prediction.sizes["time"])
        return read(prediction, layout, members, first_step, mask)

    monkeypatch.setattr(evaluation, "_read_block", recording)
    observation_reads = []
    read_groups = files.read_observation_groups

    def recording_groups(observations, layout):
        observation_reads.append(observations.sizes["time"])
        return read_groups(observations, layout)

    monkeypatch.setattr(files, "read_observation_groups", recording_groups)
    forecast = _forecast(truth.fillna(0.0), np.random.default_rng(6))  # 2 initialisations × 3 leads: 6 valid times
    cases = [(ensemble, {"truth": truth, "observations": observed}), (ensemble, {"truth": truth}),
             (ensemble, {"observations": observed}), (forecast, {"truth": truth, "observations": observed})]
    for prediction, against in cases:
        per_time = 4 * prediction.sizes["realization"] * 2 * 8 * 8  # float32 states of one time
        results = []
        for block_bytes, sizes in ((1 << 40, [6]), (2 * per_time + 1, [2, 2, 2]), (1, [1] * 6)):
            reads.clear()
            observation_reads.clear()
            results.append(evaluate(prediction, **against, block_bytes=block_bytes))
            assert reads == sizes
            if "observations" in against:  # the structure, then the observed times of each block read
                assert observation_reads[0] == 0 and all(0 < n <= sizes[0] for n in observation_reads[1:])
                assert len(observation_reads) > 1
        whole, pairs, single = results
        _same(pairs, whole)
        _same(single, whole)
    rows, summary = whole
    assert summary["v"]["rank_histogram"]["counts"][0] > 0 and summary["u"]["rmse"] > 0


def test_evaluate_shows_its_progress_over_blocks_and_an_error_line_stands_alone(world, monkeypatch, capsys, tmp_path):
    """The CLI's evaluate draws a bar over the times read when they take several blocks (none with --quiet, none for
    one block); a bad value met in a later block stops it with its one line, the bar cleared, no report written."""
    from latentda import evaluation

    _, truth_path, prediction, _ = world
    monkeypatch.setattr(evaluation, "BLOCK_BYTES", 1)  # one time per block: 6 blocks
    arguments = ["evaluate", "--prediction", str(prediction), "--truth", str(truth_path)]
    capsys.readouterr()
    assert cli.main(arguments) == 0
    shown = capsys.readouterr().err
    assert "evaluate:" in shown and "0/6" in shown  # the bar over 6 times (cleared at the end)
    assert cli.main([*arguments, "--quiet"]) == 0
    assert "evaluate:" not in capsys.readouterr().err
    monkeypatch.setattr(evaluation, "BLOCK_BYTES", 1 << 40)
    assert cli.main(arguments) == 0
    assert "evaluate:" not in capsys.readouterr().err

    broken = open_dataset(prediction).load()
    broken["u"][3, 4, 2, 2] = np.nan  # member 3, time 4: read in the 5th block
    path = write_dataset(broken, tmp_path / "broken.nc")
    monkeypatch.setattr(evaluation, "BLOCK_BYTES", 1)
    out = tmp_path / "report"
    assert cli.main(["evaluate", "--prediction", str(path), "--truth", str(truth_path), "--out", str(out)]) == 2
    lines = [line.strip() for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()]
    assert "holds NaN values at step 4 in the prediction" in lines[-1] and not out.exists()


def test_a_prediction_without_times_or_members_is_one_line(world, tmp_path, capsys):
    """An empty prediction (no time, or no member) is refused in one line naming what it lacks, exit 2."""
    _, truth_path, prediction, _ = world
    ensemble = open_dataset(prediction).load()
    for name, empty in (("no-times", ensemble.isel(time=slice(0, 0))), ("no-members", ensemble.isel(realization=slice(0, 0)))):
        path = write_dataset(empty, tmp_path / f"{name}.nc")
        capsys.readouterr()
        assert cli.main(["evaluate", "--prediction", str(path), "--truth", str(truth_path)]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and "nothing to score" in lines[0], lines

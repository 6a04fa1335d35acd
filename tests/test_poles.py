"""Latitude-longitude grids: area weights that keep the pole rows in the loss, and pole scores."""

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conftest import make_box_dataset
from latentda import cli
from latentda.data import write_dataset
from latentda.data.layout import AREA_WEIGHT_FLOOR, FieldLayout
from latentda.evaluation import evaluate


def _latlon(latitude, times=3, seed=0) -> xr.Dataset:
    """One surface variable on ``latitude`` × 16 longitudes; pole rows constant along longitude."""
    rng = np.random.default_rng(seed)
    latitude = np.asarray(latitude, dtype=np.float64)
    longitude = np.arange(16) * 22.5
    phi, lam = np.meshgrid(np.deg2rad(latitude), np.deg2rad(longitude), indexing="ij")
    field = 270 + 25 * np.cos(phi) + 5 * np.sin(phi) * rng.standard_normal((times, 1, 1)) + np.cos(phi) * np.cos(lam)
    return xr.Dataset({"t2m": (("time", "latitude", "longitude"), field.astype(np.float32), {"units": "K"})},
                      coords={"time": pd.date_range("2000-01-01", periods=times, freq="6h"),
                              "latitude": ("latitude", latitude, {"units": "degrees_north"}),
                              "longitude": ("longitude", longitude, {"units": "degrees_east"})})


def _weights(latitude, **kwargs) -> np.ndarray:
    return FieldLayout.from_dataset(_latlon(latitude)).area_weights(**kwargs)[:, 0]


def test_pole_rows_weigh_their_polar_cap_and_at_least_the_floor():
    latitude = np.linspace(90, -90, 181)  # 1°, decreasing, with the pole rows
    cells = _weights(latitude, floor=0)
    cap = 1 - np.cos(np.deg2rad(0.5))  # the pole row's band is the cap above 89.5°
    band = np.sin(np.deg2rad(latitude[1:-1] + 0.5)) - np.sin(np.deg2rad(latitude[1:-1] - 0.5))
    np.testing.assert_allclose(cells / cells.mean(), np.r_[cap, band, cap] / np.r_[cap, band, cap].mean(), rtol=1e-5)
    assert cells[0] == pytest.approx(cells[-1]) and 0 < cells[0] < 0.01  # positive, but far too small to be learnt
    weights = _weights(latitude)
    assert weights.mean() == pytest.approx(1.0, rel=1e-6)
    assert weights[0] == weights[-1] == pytest.approx(AREA_WEIGHT_FLOOR)
    assert weights.min() == pytest.approx(AREA_WEIGHT_FLOOR)
    kept = weights > AREA_WEIGHT_FLOOR * (1 + 1e-6)  # rows above the floor: exactly ∝ cos φ
    ratio = weights[kept] / np.cos(np.deg2rad(latitude[kept]))
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    assert abs(latitude[kept]).max() == pytest.approx(80.0)  # floored: the rows poleward of ~81°
    np.testing.assert_allclose(_weights(latitude[::-1]), weights[::-1], rtol=1e-6)  # orientation does not matter


def test_irregular_latitudes_weigh_their_cell_bands():
    latitude = np.array([-90.0, -80.0, -60.0, -30.0, 0.0, 10.0, 45.0, 85.0, 90.0])
    edges = np.r_[-90.0, (latitude[:-1] + latitude[1:]) / 2, 90.0]
    band = np.diff(np.sin(np.deg2rad(edges)))
    np.testing.assert_allclose(_weights(latitude, floor=0), band / band.mean(), rtol=1e-5)
    weights = _weights(latitude)
    assert weights.min() >= AREA_WEIGHT_FLOOR * (1 - 1e-6) and weights.mean() == pytest.approx(1.0, rel=1e-6)
    assert _weights(latitude, floor=1.0).tolist() == [1.0] * latitude.size


def test_non_latlon_grids_keep_unit_weights_and_no_pole_rows():
    layout = FieldLayout.from_dataset(make_box_dataset(size=8))
    assert layout.area_weights().tolist() == [[1.0]] * 8
    assert layout.pole_rows() == []


@pytest.mark.parametrize("latitude, rows", [
    (np.linspace(90, -90, 19), [0, 18]),  # rows on the poles
    (np.linspace(-87.5, 87.5, 8), [0, 7]),  # cell centres, half a step from the poles
    (np.linspace(20, 60, 9), []),  # regional
    (np.linspace(0, 85, 18), [17]),  # one hemisphere: the north pole row only
])
def test_pole_rows(latitude, rows):
    assert FieldLayout.from_dataset(_latlon(latitude)).pole_rows() == rows


def test_evaluate_reports_unweighted_pole_rmse(tmp_path, capsys):
    latitude = np.linspace(90, -90, 13)
    truth = _latlon(latitude, times=4)
    members = truth.expand_dims(realization=np.arange(3)).copy(deep=True)
    error = np.zeros(members["t2m"].shape, dtype=np.float32)
    error[..., [0, -1], :] = 3.0  # only the pole rows are wrong, by 3 K
    members["t2m"] = members["t2m"] + error + 0.1 * np.arange(3).reshape(3, 1, 1, 1).astype(np.float32) - 0.1
    rows, summary = evaluate(members, truth)
    assert summary["t2m"]["pole_rmse"] == pytest.approx(3.0)
    weights = FieldLayout.from_dataset(truth).area_weights(floor=0.0)[:, 0]  # scores: the plain areas
    assert summary["t2m"]["rmse"] == pytest.approx(3.0 * np.sqrt(2 * weights[0] / 13), rel=1e-5)  # hidden there
    assert all(row["pole_rmse"] == pytest.approx(3.0) for row in rows)
    prediction, truth_path = write_dataset(members, tmp_path / "p.nc"), write_dataset(truth, tmp_path / "t.nc")
    out = tmp_path / "report"
    assert cli.main(["evaluate", "--prediction", str(prediction), "--truth", str(truth_path), "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["t2m"]["pole_rmse"] == pytest.approx(3.0)
    printed = capsys.readouterr().out.splitlines()
    header = next(line for line in printed if line.startswith("channel"))
    assert header.split()[-1] == "pole_rmse" and float(next(l for l in printed if l.startswith("t2m")).split()[-1]) == pytest.approx(3.0)
    regional, _ = evaluate(members.sel(latitude=slice(60, 0)), truth.sel(latitude=slice(60, 0)))
    assert "pole_rmse" not in regional[0]

"""Scores against direct formulas and known distributions; spectra of known fields; evaluate CLI."""

import json

import numpy as np
import pytest
import xarray as xr

from conftest import make_box_dataset
from latentda import cli
from latentda.data import write_dataset
from latentda.metrics import energy_spectrum, ensemble_scores, fair_crps, lag_autocorrelation, pooled_spread_skill_ratio


def test_fair_crps_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    ensemble = rng.standard_normal((7, 5))
    truth = rng.standard_normal(5)
    pairwise = np.abs(ensemble[:, None] - ensemble[None, :]).sum(axis=(0, 1))
    expected = np.abs(ensemble - truth).mean(0) - pairwise / (2 * 7 * 6)
    np.testing.assert_allclose(fair_crps(ensemble, truth), expected, rtol=1e-12)


def test_calibrated_ensemble_has_unit_spread_skill_and_gaussian_crps():
    """Truth and members drawn from the same N(0, 1): SSR ≈ 1, CRPS ≈ 1/√π, RMSE ≈ √((m+1)/m)."""
    rng = np.random.default_rng(1)
    m = 5
    ensemble = rng.standard_normal((m, 4, 1, 64, 64))
    truth = rng.standard_normal((4, 1, 64, 64))
    scores = ensemble_scores(ensemble, truth)
    assert scores["spread_skill_ratio"].mean() == pytest.approx(1.0, abs=0.02)
    assert scores["crps"].mean() == pytest.approx(1 / np.sqrt(np.pi), abs=0.01)
    assert scores["rmse"].mean() == pytest.approx(np.sqrt((m + 1) / m), abs=0.02)
    overconfident = ensemble_scores(0.3 * ensemble, truth)
    assert overconfident["spread_skill_ratio"].mean() < 0.4


def test_spread_skill_ratio_on_few_points_is_pooled_over_time():
    """m = 4 members exchangeable with the truth on 2×2 fields: each time's ratio of roots is biased
    above 1 (Jensen: ≈ 1.2 here), the ratio of the time-mean squares is not."""
    rng = np.random.default_rng(2)
    m = 4
    ensemble = rng.standard_normal((m, 2000, 1, 2, 2))
    truth = rng.standard_normal((2000, 1, 2, 2))
    scores = ensemble_scores(ensemble, truth)
    assert scores["spread_skill_ratio"].mean() > 1.15
    pooled = pooled_spread_skill_ratio(scores["spread"], scores["rmse"], m)
    assert pooled.shape == (1,) and pooled[0] == pytest.approx(1.0, abs=0.03)
    assert pooled_spread_skill_ratio(scores["spread"] * 0.5, scores["rmse"], m)[0] == pytest.approx(0.5 * pooled[0])


def test_spread_skill_ratio_where_the_ensemble_mean_is_exact():
    """rmse 0: the ratio is ∞ with a spread, NaN without (not a huge finite number that would pass for a score)."""
    truth = np.zeros((1, 1, 2, 2))
    assert ensemble_scores(np.stack([truth - 0.1, truth + 0.1]), truth)["spread_skill_ratio"][0, 0] == np.inf
    assert np.isnan(ensemble_scores(np.stack([truth, truth]), truth)["spread_skill_ratio"][0, 0])


def test_area_weights_change_rmse():
    truth = np.zeros((1, 1, 2, 3))
    ensemble = np.zeros((2, 1, 1, 2, 3))
    ensemble[:, :, :, 0] = 1.0  # error only in the first row
    weights = np.array([[1.5], [0.5]])
    assert ensemble_scores(ensemble, truth, weights)["rmse"][0, 0] == pytest.approx(np.sqrt(0.75))


def test_spectrum_of_a_single_wave():
    H = W = 32
    y, x = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    field = np.sin(2 * np.pi * 3 * x / W) + 0.5 * np.cos(2 * np.pi * 5 * y / H)
    k, power = energy_spectrum(field[None], (True, True))
    assert k[np.argmax(power)] == 3 and power[4] == pytest.approx(0.5**2 / 2)
    assert power.sum() == pytest.approx(field.var())  # Parseval
    k, zonal = energy_spectrum(field[None], (False, True))
    assert k[np.argmax(zonal)] == 3


def test_isotropic_spectrum_counts_a_wavelength_alike_along_either_axis_of_a_rectangle():
    """On an 8 × 32 periodic box (wavenumbers in cycles per 32 cells) a wave 8 cells long is k = 4 whether
    it runs along y or along x, the longest waves along x (32 and 16 cells: k = 1, 2) and a short one (4
    cells: k = 8) are kept, and the power sums to the variance."""
    H, W = 8, 32
    y, x = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    along_y, along_x = np.sin(2 * np.pi * y / 8), np.sin(2 * np.pi * x / 8)
    k, power_y = energy_spectrum(along_y[None], (True, True))
    _, power_x = energy_spectrum(along_x[None], (True, True))
    assert k.tolist() == list(range(1, 17)) and power_y.tolist() == pytest.approx(power_x.tolist())
    assert power_y[3] == pytest.approx(0.5)
    field = along_y + np.cos(2 * np.pi * x / 32) + 0.8 * np.sin(2 * np.pi * x / 16) + 0.7 * np.cos(2 * np.pi * x / 4)
    _, power = energy_spectrum(field[None], (True, True))
    assert power[[0, 1, 3, 7]] == pytest.approx([0.5, 0.8**2 / 2, 0.5, 0.7**2 / 2])
    assert power.sum() == pytest.approx(field.var())


@pytest.mark.parametrize("width", [8, 7])
def test_zonal_spectrum_keeps_parseval_with_the_shortest_wave(width):
    """Along one periodic axis the power sums to the variance, the shortest wave included: for an even
    width the Nyquist wave cos(πx) has no negative-frequency twin and is counted once."""
    x = np.arange(width)
    field = np.sin(2 * np.pi * x / width) + 0.5 * np.cos(2 * np.pi * 3 * x / width)
    if width % 2 == 0:
        field = field + np.cos(np.pi * x)  # the Nyquist wave (an odd width has none)
    field = np.broadcast_to(field, (5, width))
    k, zonal = energy_spectrum(field[None], (False, True))
    assert k.tolist() == list(range(1, width // 2 + 1))
    assert zonal.sum() == pytest.approx(field.var())
    assert zonal[0] == pytest.approx(0.5) and zonal[2] == pytest.approx(0.5**2 / 2)
    if width % 2 == 0:
        assert zonal[-1] == pytest.approx(1.0)  # mean of cos²(πx) = 1


def test_lag_autocorrelation():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((50, 20, 1, 4, 4))
    assert abs(lag_autocorrelation(noise)[0]) < 0.05
    smooth = np.cumsum(noise, axis=1)
    assert lag_autocorrelation(smooth)[0] > 0.8
    ar = np.zeros((200, 40, 2, 4, 4))  # AR(1), φ = 0.6 (0.3 on the second channel), stationary start: ρ(ℓ) = φ^ℓ
    phi = np.array([0.6, 0.3])[:, None, None]
    ar[:, 0] = rng.standard_normal(ar[:, 0].shape) / np.sqrt(1 - phi**2)
    for t in range(1, 40):
        ar[:, t] = phi * ar[:, t - 1] + rng.standard_normal(ar[:, t].shape)
    np.testing.assert_allclose(lag_autocorrelation(ar), [0.6, 0.3], atol=0.02)
    np.testing.assert_allclose(lag_autocorrelation(ar, lag=2), [0.36, 0.09], atol=0.02)


def test_evaluate_cli(tmp_path, capsys):
    truth = make_box_dataset(trajectories=2, times=6, size=8)
    truth_path = write_dataset(truth, tmp_path / "truth.zarr")
    rng = np.random.default_rng(0)
    members = truth.isel(trajectory=1, drop=True).expand_dims(realization=np.arange(4)).copy(deep=True)
    for name in ("u", "v"):
        members[name] = members[name] + xr.DataArray(rng.standard_normal(members[name].shape).astype(np.float32), dims=members[name].dims)
    prediction = write_dataset(members, tmp_path / "prediction.nc")
    out = tmp_path / "report"
    assert cli.main(["evaluate", "--prediction", str(prediction), "--truth", str(truth_path), "--trajectory", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["u"]["rmse"] == pytest.approx(0.5, abs=0.1)  # mean of 4 unit-noise members
    assert {"metrics.csv", "scores.png", "spectra.png"} <= {p.name for p in out.iterdir()}
    assert cli.main(["evaluate", "--prediction", str(prediction), "--truth", str(truth_path)]) == 2
    assert "choose one with --trajectory" in capsys.readouterr().err


def test_scores_in_time_blocks_equal_the_whole(monkeypatch):
    """ensemble_scores scores blocks of times (memory): with blocks of one or three times, the same numbers."""
    from latentda import metrics

    rng = np.random.default_rng(0)
    ensemble = rng.standard_normal((5, 7, 2, 4, 6)).astype(np.float32)
    truth = rng.standard_normal((7, 2, 4, 6))
    truth[2, 0, 1, 1] = np.nan  # missing truth: left out in its block as in the whole
    weights = rng.uniform(0.5, 1.5, (4, 1))
    whole = metrics.ensemble_scores(ensemble, truth, weights)
    per_time = 8 * 5 * 2 * 4 * 6
    for times in (1, 3):
        monkeypatch.setattr(metrics, "SCORE_BLOCK_BYTES", times * per_time)
        blocked = metrics.ensemble_scores(ensemble, truth, weights)
        assert blocked.keys() == whole.keys()
        for name in whole:
            np.testing.assert_array_equal(blocked[name], whole[name])

"""Real data end to end: a lat-lon file with decreasing latitude reaching the poles, a land mask, a
missing step, an integer "hours since" time axis with an irregular gap, and a non-negative
precipitation-like variable — through inspect → train-ae → encode → train-ldm → observe →
reanalyze → evaluate on the command line, as docs/own-data.md walks through it."""

import json

import numpy as np
import pytest
import xarray as xr
import yaml

from latentda import cli
from latentda.components import load_autoencoder
from latentda.data import FieldLayout, open_dataset, write_dataset
from latentda.simulate import EXAMPLE_STEP_HOURS, latlon_example

STEP_HOURS = EXAMPLE_STEP_HOURS


def make_own_data(**kwargs) -> xr.Dataset:
    """The example file (``latentda.simulate.latlon_example``): a 12 h gap at state 20, state 33 missing."""
    return latlon_example(**kwargs)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


def _write_yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """The walk-through's files, trained once for the module."""
    root = tmp_path_factory.mktemp("own")
    raw = make_own_data()
    raw.encoding = {}
    write_dataset(raw, root / "irregular.nc")
    hours = raw["time_index"].values
    regular = raw.reindex(time_index=np.arange(hours[0], hours[-1] + 1, STEP_HOURS))  # the gap: a missing state
    regular["time_index"].attrs = raw["time_index"].attrs
    data = write_dataset(regular, root / "own.nc")
    ae_config = _write_yaml(root / "ae.yaml", {
        "data": {"path": str(data), "splits": [0.7, 0.15, 0.15], "allow_missing": True, "non_negative": ["tp"]},
        "output": str(root / "ae"),
        "model": {"latent_channels": 6, "hidden_channels": [16, 32], "blocks_per_stage": 1},
        "training": {"steps": 400, "batch_size": 8, "learning_rate": 0.003, "warmup_steps": 20, "ema_decay": 0.9,
                     "checkpoint_every": 400, "validate_every": 400, "seed": 0},
        "valid_samples": 16,
    })
    ldm_config = _write_yaml(root / "ldm.yaml", {
        "output": str(root / "ldm"), "splits": [0.7, 0.15, 0.15], "valid_windows": 2,
        "model": {"window": 4, "hidden_size": 32, "depth": 1, "num_heads": 2, "patch_size": [1, 3, 4]},
        "diffusion": {"sampler": "pc", "steps": 4, "sigma_start": 20.0},
        "training": {"steps": 40, "batch_size": 4, "checkpoint_every": 40, "validate_every": 40},
    })
    return root, data, ae_config, ldm_config


def test_inspect_refuses_the_gap_then_missing_values_until_allowed(own_run, capsys):
    root, data, _, _ = own_run
    code, text = _run(["inspect", str(root / "irregular.nc"), "--quiet"], capsys)
    assert code == 2 and "irregular" in text and "20" in text  # the index where the step changes
    code, text = _run(["inspect", str(data), "--quiet"], capsys)
    assert code == 2 and "NaN" in text and "allow_missing" in text and "step" in text
    code, text = _run(["inspect", str(data), "--quiet", "--allow-missing"], capsys)
    assert code == 0, text
    assert "fixed mask: sst" in text and "step(s) with missing values" in text
    assert "compression" in text  # the latent shapes a config would give


def test_own_data_end_to_end(own_run, capsys):
    root, data, ae_config, ldm_config = own_run
    code, text = _run(["train-ae", "--config", ae_config, "--quiet"], capsys)
    assert code == 0, text
    assert "compression" in text
    folder = root / "ae" / "autoencoder"
    model, layout, statistics = load_autoencoder(folder)
    sst = layout.channels.index("sst")
    assert layout.mask is not None and layout.allow_missing
    assert (~layout.mask[sst]).sum() == int(np.isnan(make_own_data()["sst"].values[0]).sum())  # the land box
    assert layout.mask[[layout.channels.index("t2m"), layout.channels.index("tp")]].all()
    assert statistics.transforms[layout.channels.index("tp")].transform == "sqrt"

    # the pole rows are learnt: their reconstruction error within 2x the global one (t2m, test states)
    dataset = open_dataset(data)
    fields = layout.to_array(dataset)[-8:]
    fields = fields[~np.isnan(fields).all(axis=(1, 2, 3))]
    x = statistics.standardise(fields)
    import torch

    with torch.no_grad():
        decoded = statistics.destandardise(model(torch.from_numpy(np.nan_to_num(x))).double()).numpy()
    error = (decoded - fields)[:, layout.channels.index("t2m")]
    poles = np.sqrt(np.mean(error[:, [0, -1]] ** 2))
    everywhere = np.sqrt(np.mean(error**2))
    assert poles <= 2 * everywhere, (poles, everywhere)

    code, text = _run(["encode", "--autoencoder", str(folder), "--data", str(data), "--out", str(root / "latents.zarr"),
                       "--quiet"], capsys)
    assert code == 0, text
    latents = open_dataset(root / "latents.zarr")
    missing = json.loads(latents.attrs["latentda_missing_states"])
    assert [step for _, step in missing] == [20, 33]  # the filled gap and the all-NaN step
    assert np.isnan(latents["latent"].values[[20, 33]]).all() and np.isfinite(latents["latent"].values[:20]).all()

    code, text = _run(["train-ldm", "--config", ldm_config, "--latents", str(root / "latents.zarr"), "--quiet"], capsys)
    assert code == 0, text
    from latentda.components import load_representation_error

    error = load_representation_error(folder, layout.channels)  # measured by train-ae, carried into the pipeline
    assert (error > 0).all()
    np.testing.assert_array_equal(load_representation_error(root / "ldm" / "pipeline" / "autoencoder", layout.channels), error)

    observe = _write_yaml(root / "observe.yaml", {"observations": [
        {"name": "stations", "variables": ["t2m", "sst"], "sampling": "points", "points": 40, "noise_std": 0.5},
        {"name": "rain", "variables": ["tp"], "sampling": "coarsen", "factor": 4, "noise_std": 0.2},
    ]})
    code, text = _run(["observe", "--truth", str(data), "--start", "40", "--length", "8", "--operator", observe,
                       "--out", str(root / "obs.nc"), "--seed", "1"], capsys)
    assert code == 0, text
    pipeline = str(root / "ldm" / "pipeline")
    code, text = _run(["reanalyze", "--pipeline", pipeline, "--observations", str(root / "obs.nc"), "--members", "2",
                       "--out", str(root / "reanalysis.nc"), "--quiet"], capsys)
    assert code == 0, text
    reanalysis = open_dataset(root / "reanalysis.nc")
    land = ~layout.mask[sst]
    values = reanalysis["sst"].values
    assert np.isnan(values[..., land]).all() and np.isfinite(values[..., ~land]).all()  # NaN exactly on the mask
    assert "sst_mask" in reanalysis and np.array_equal(reanalysis["sst_mask"].values == 0, land)
    assert (reanalysis["tp"].values >= 0).all() and (reanalysis["tp"].values == 0).any()  # bounded, dry pixels exact
    assert list(reanalysis.data_vars)[:3] == ["sst", "t2m", "tp"]  # the model's order
    assert reanalysis["latitude"].values[0] == 90  # the input's (decreasing) latitude

    code, text = _run(["evaluate", "--prediction", str(root / "reanalysis.nc"), "--truth", str(data),
                       "--observations", str(root / "obs.nc"), "--out", str(root / "scores")], capsys)
    assert code == 0, text
    summary = json.loads((root / "scores" / "summary.json").read_text())
    for channel in ("sst", "t2m", "tp"):
        assert np.isfinite([summary[channel]["rmse"], summary[channel]["crps"], summary[channel]["pole_rmse"]]).all()
    assert summary["valid_points"]["sst"]["fraction"] < 1 == summary["valid_points"]["t2m"]["fraction"]
    assert np.isfinite(summary["observation_residual_ratio"]["mean"])
    tp_row = next(line for line in text.splitlines() if line.startswith("tp "))  # metres: small numbers, not 0.0000
    assert float(tp_row.split()[2]) == pytest.approx(summary["tp"]["crps"], rel=1e-3) and summary["tp"]["crps"] > 0

    # a station table with one sst row on land: the model has no sst there, so that row is left out, with a warning
    import pandas as pd

    from latentda.pipeline import LatentDAPipeline

    i, j = np.argwhere(land)[0]
    sea = np.argwhere(~land)[0]
    latitude, longitude = reanalysis["latitude"].values, reanalysis["longitude"].values
    table = pd.DataFrame({"time": [reanalysis["time"].values[0]] * 2, "latitude": [latitude[i], latitude[sea[0]]],
                          "longitude": [longitude[j], longitude[sea[1]]], "variable": "sst",
                          "value": float(np.nanmean(values)), "noise_std": 0.5})
    with pytest.warns(UserWarning, match=r"1 observation\(s\) read pixels of the model's fixed mask"):
        operator = LatentDAPipeline.from_pretrained(pipeline).observation_operator(table, allow_short=True)
    assert operator.size == 1


def test_evaluate_scores_valid_points_and_refuses_nothing_to_score(tmp_path, capsys):
    from latentda.data.ensemble_store import ensemble_dataset
    from latentda.evaluation import evaluate
    from latentda.errors import LatentdaError

    truth = make_own_data(times=6, gap_at=5, missing_step=4).isel(time_index=slice(0, 4))
    truth = truth.rename(time_index="time").assign_coords(time=np.arange(4.0))
    layout = FieldLayout.from_dataset(truth)
    target = layout.to_array(truth)
    layout.mask = np.isfinite(target).all(axis=0)
    members = np.stack([np.nan_to_num(target) + 0.1, np.nan_to_num(target) - 0.1])
    prediction = ensemble_dataset(layout, members, truth["time"])
    rows, summary = evaluate(prediction, truth)
    assert summary["sst"]["rmse"] == pytest.approx(0.0, abs=1e-4)  # the mean is exact on the valid points
    assert summary["sst"]["spread"] == pytest.approx(np.sqrt(0.02), rel=1e-3)
    broken = prediction.copy(deep=True)
    broken["t2m"][0, 1, 3, 3] = np.nan  # NaN where the prediction has no mask
    with pytest.raises(LatentdaError, match="t2m.*NaN"):
        evaluate(broken, truth)
    empty = truth.copy(deep=True)
    empty["tp"][:] = np.nan
    with pytest.raises(LatentdaError, match="nothing to score for tp"):
        evaluate(prediction, empty)

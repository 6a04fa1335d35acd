"""The autoencoder's representation error: saved with the model, read back (0 when absent), checked,
and added to the observation noise variance, σ_eff² = σ_y² + (r_c s_c)² g (latentda.observe.operators)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import make_observed_pipeline
from latentda import cli
from latentda.components import REPRESENTATION_FILE, load_representation_error, save_representation_error
from latentda.data import open_dataset
from latentda.errors import LatentdaError
from latentda.observe.operators import ObservationGroup, ObservationOperator
from latentda.pipeline import LatentDAPipeline

R = np.array([0.05, 0.2])  # standardised reconstruction RMSE of u and v


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("representation")
    pipeline, truth, truth_path, observations = make_observed_pipeline(root)
    save_representation_error(root / "pipeline" / "autoencoder" / REPRESENTATION_FILE, ["u", "v"], R)
    return root, pipeline, observations


def test_round_trip_and_missing_file(world, tmp_path):
    root, _, _ = world
    loaded = LatentDAPipeline.from_pretrained(root / "pipeline")
    np.testing.assert_array_equal(loaded.representation_error, R)
    record = json.loads((root / "pipeline" / "autoencoder" / REPRESENTATION_FILE).read_text())
    assert record["channels"] == ["u", "v"] and "standardised" in record["units"]
    loaded.save_pretrained(tmp_path / "again")  # save_pretrained writes it back
    np.testing.assert_array_equal(load_representation_error(tmp_path / "again" / "autoencoder", ["u", "v"]), R)
    old = tmp_path / "old"  # a folder written before the file existed
    shutil.copytree(root / "pipeline", old)
    (old / "autoencoder" / REPRESENTATION_FILE).unlink()
    np.testing.assert_array_equal(LatentDAPipeline.from_pretrained(old).representation_error, [0.0, 0.0])


@pytest.mark.parametrize("rmse", [[0.1, float("nan")], [0.1, -0.2], [0.1], "big", [[0.1, 0.2]]])
def test_corrupt_value_is_a_one_line_error(tmp_path, rmse):
    file = tmp_path / REPRESENTATION_FILE
    file.write_text(json.dumps({"channels": ["u", "v"], "rmse": rmse}))
    with pytest.raises(LatentdaError) as error:
        load_representation_error(tmp_path, ["u", "v"])
    assert str(file) in str(error.value) and "\n" not in str(error.value)


def test_wrong_channels_and_bad_json_are_refused(tmp_path):
    file = tmp_path / REPRESENTATION_FILE
    file.write_text(json.dumps({"channels": ["v", "u"], "rmse": [0.1, 0.1]}))
    with pytest.raises(LatentdaError, match="one value per channel"):
        load_representation_error(tmp_path, ["u", "v"])
    file.write_text("{not json")
    with pytest.raises(LatentdaError, match="representation error"):
        load_representation_error(tmp_path, ["u", "v"])


def test_effective_noise_by_hand(world):
    """grid: g = 1; coarse block means: g = 1 (errors fully correlated); linear: g = (Σ|a|)²;
    speed: (r_u s_u)² + (r_v s_v)²; off: σ_y unchanged."""
    root, pipeline, observations = world
    loaded = LatentDAPipeline.from_pretrained(root / "pipeline")
    s = np.asarray(loaded.statistics.std)
    obs = open_dataset(observations).load()
    operator = loaded.observation_operator(obs)
    _, std = operator.observed()
    sizes = [int(g.mask.sum()) for g in operator.groups]
    expected = np.concatenate([np.full(n, np.sqrt(0.1**2 + (R[c] * s[c]) ** 2)) for n, c in zip(sizes, (0, 1))])
    np.testing.assert_allclose(std.numpy(), expected, rtol=1e-12)
    _, plain = loaded.observation_operator(obs, representation_error=False).observed()
    np.testing.assert_array_equal(plain.numpy(), np.full(sum(sizes), 0.1))
    _, noise_only = operator.observed(representation=False)  # what the residual ratio divides by
    np.testing.assert_array_equal(noise_only.numpy(), plain.numpy())

    error = R * s
    values = np.zeros((2, 4, 4))
    coarse = ObservationGroup("c", [1], "identity", "coarsen", values.copy(), 0.3, factor=2)
    matrix = np.zeros((2, 64))
    matrix[0, :3], matrix[1, 5] = [0.5, -0.25, 1.0], 2.0
    linear = ObservationGroup("l", [0], "identity", "linear", np.zeros((2, 2)), 0.3, matrix=matrix)
    speed = ObservationGroup("s", [0, 1], "speed", "grid", np.zeros((2, 8, 8)), 0.3)
    inflated = ObservationOperator([coarse, linear, speed]).with_representation_error(error)
    np.testing.assert_array_equal(coarse.observed()[1], 0.3)  # a copy: the given groups keep σ_y
    coarse, linear, speed = inflated.groups
    np.testing.assert_allclose(coarse.observed()[1], np.sqrt(0.09 + error[1] ** 2), rtol=1e-12)
    np.testing.assert_allclose(linear.observed()[1], np.sqrt(0.09 + (np.array([1.75, 2.0] * 2) * error[0]) ** 2), rtol=1e-12)
    np.testing.assert_allclose(speed.observed()[1], np.sqrt(0.09 + error[0] ** 2 + error[1] ** 2), rtol=1e-12)


def test_residual_ratio_stays_against_the_observation_noise(world):
    root, _, observations = world
    loaded = LatentDAPipeline.from_pretrained(root / "pipeline")
    obs = open_dataset(observations).load()
    x = torch.zeros(1, obs.sizes["time"], 2, 8, 8, dtype=torch.float64)
    on, off = (loaded.observation_operator(obs, representation_error=flag).residual_ratio(x) for flag in (True, False))
    torch.testing.assert_close(on, off)


def test_reanalyze_with_and_without_the_flag(world, tmp_path):
    root, _, observations = world
    for flags, recorded in (([], "True"), (["--no-representation-error"], "False")):
        out = tmp_path / f"post{len(flags)}.zarr"
        code = cli.main(["reanalyze", "--pipeline", str(root / "pipeline"), "--observations", str(observations),
                         "--members", "1", "--steps", "2", "--out", str(out), "--quiet", *flags])
        assert code == 0
        assert open_dataset(out).attrs["latentda_representation_error"] == recorded

"""train-ae: a killed run resumed equals an uninterrupted one; saved folders load; bad configs fail."""

import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import kill_training_at, make_box_dataset
from latentda import cli
from latentda.components import load_autoencoder, load_representation_error
from latentda.config import load_config, parse
from latentda.data import write_dataset
from latentda.errors import LatentdaError
from latentda.training.autoencoder import AutoEncoderConfig, train_autoencoder
from latentda.training.checkpoint import list_checkpoints


def _config(tmp_path, data, name, **training):
    return parse(AutoEncoderConfig, {
        "data": {"path": str(data)},
        "output": str(tmp_path / name),
        "model": {"latent_channels": 2, "hidden_channels": [8, 16], "blocks_per_stage": 1},
        "training": {"steps": 9, "batch_size": 4, "learning_rate": 3e-3, "warmup_steps": 2,
                     "checkpoint_every": 3, "validate_every": 9, **training},
        "valid_samples": 4,
    })


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return write_dataset(make_box_dataset(trajectories=4, times=8, size=8), tmp_path_factory.mktemp("data") / "box.zarr")


def _weights(run):
    return load_file(run / "autoencoder" / "diffusion_pytorch_model.safetensors")


def test_killed_then_resumed_run_equals_uninterrupted(tmp_path, data_path):
    torch.manual_seed(0)
    train_autoencoder(_config(tmp_path, data_path, "straight"), progress=False)

    torch.manual_seed(1)  # global RNG state must not matter: init comes from the config's seed
    config = _config(tmp_path, data_path, "killed")
    kill_training_at(7, lambda: train_autoencoder(config, progress=False))  # killed after the step-6 checkpoint
    assert [step for step, _ in list_checkpoints(tmp_path / "killed" / "checkpoints")] == [3, 6]
    stale = tmp_path / "killed" / "checkpoints" / ".step-000009.tmp-0123abcd"  # as a save killed half-way leaves it
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert not (tmp_path / "killed" / "autoencoder").exists()
    with pytest.raises(LatentdaError, match="already has checkpoints"):
        train_autoencoder(config, progress=False)
    # the newest checkpoint corrupt (e.g. a disk failure): resumed from the older complete one, to the same weights
    (tmp_path / "killed" / "checkpoints" / "step-000006" / "ema.safetensors").write_bytes(b"garbage")
    with pytest.raises(LatentdaError, match=r"other settings \(training.learning_rate: 0.003 → 0.001\)"):
        train_autoencoder(_config(tmp_path, data_path, "killed", learning_rate=1e-3), resume=True, progress=False)
    moved = shutil.copytree(data_path, tmp_path / "moved.zarr")  # the data may move (or grow) between attempts
    with pytest.warns(UserWarning, match="step-000006: corrupt or incomplete checkpoint .*; resuming from the older step-000003"):
        train_autoencoder(_config(tmp_path, moved, "killed"), resume=True, progress=False)

    assert not stale.exists()  # cleared by the next save
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert max(steps) == 9


def test_saved_autoencoder_reconstructs_and_reports(tmp_path, data_path):
    train_autoencoder(_config(tmp_path, data_path, "run", steps=3), progress=False)
    model, layout, statistics = load_autoencoder(tmp_path / "run" / "autoencoder")
    assert layout.channels == statistics.channels == ["u", "v"]
    assert model.config.periodic == [True, True]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["compression_factor"] == pytest.approx(2 * 8 * 8 / (2 * 4 * 4))
    assert set(metrics["valid"]["rmse"]) == {"u", "v"}
    saved = load_representation_error(tmp_path / "run" / "autoencoder", layout.channels)  # the final validation RMSE
    assert saved.tolist() == [metrics["valid"]["rmse"][c] for c in layout.channels] and (saved > 0).all()


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, data_path):
    config = _config(tmp_path, data_path, "run", steps=3)
    train_autoencoder(config, progress=False)
    (tmp_path / "run" / "checkpoints" / "step-000003" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(LatentdaError, match="corrupt or incomplete checkpoint"):
        train_autoencoder(config, resume=True, progress=False)


def test_bad_configs_name_the_key(tmp_path, data_path):
    base = {"data": {"path": str(data_path)}, "output": str(tmp_path / "x")}
    with pytest.raises(LatentdaError, match=r"unknown key 'training.stepz'"):
        parse(AutoEncoderConfig, {**base, "training": {"stepz": 3}})
    with pytest.raises(LatentdaError, match=r"training.learning_rate: expected a number"):
        parse(AutoEncoderConfig, {**base, "training": {"learning_rate": "fast"}})
    with pytest.raises(LatentdaError, match=r"training.steps: must be at least 1"):
        parse(AutoEncoderConfig, {**base, "training": {"steps": 0}})
    with pytest.raises(LatentdaError, match=r"model.groups: must divide"):
        parse(AutoEncoderConfig, {**base, "model": {"hidden_channels": [12], "groups": 8}})
    with pytest.raises(LatentdaError, match=r"model.groups: must be at least 1"):
        parse(AutoEncoderConfig, {**base, "model": {"hidden_channels": [12], "groups": 0}})
    with pytest.raises(LatentdaError, match=r"model.attention_heads: must divide the coarsest width"):
        parse(AutoEncoderConfig, {**base, "model": {"hidden_channels": [8, 16], "attention_heads": 3}})
    with pytest.raises(LatentdaError, match=r"model.attention_heads: must be 0"):
        parse(AutoEncoderConfig, {**base, "model": {"attention_heads": -1}})
    with pytest.raises(LatentdaError, match=r"missing required key 'output'"):
        parse(AutoEncoderConfig, {"data": {"path": "x"}})
    path = tmp_path / "c.yaml"
    path.write_text("data: {path: x}\noutput: y\ntraining: !!python/object:os.system {}\n")
    with pytest.raises(LatentdaError, match="invalid YAML"):
        load_config(AutoEncoderConfig, path)


def test_cli_errors_are_one_line_exit_2(tmp_path, data_path, capsys):
    config = tmp_path / "ae.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": str(tmp_path / "missing.zarr")}, "output": str(tmp_path / "o")}))
    assert cli.main(["train-ae", "--config", str(config), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "missing.zarr: no such file" in error
    assert not (tmp_path / "o").exists()
    assert cli.main(["train-ae", "--config", str(config), "--set", "training.steps=abc", "--quiet"]) == 2
    assert "latentda train-ae: error: config: training.steps: expected an integer" in capsys.readouterr().err  # not --config


def test_a_warmup_as_long_as_the_run_is_one_warning_line(tmp_path, data_path, capsys):
    config = tmp_path / "ae.yaml"  # the default warmup (100 steps) and a short run: the rate would never peak
    config.write_text(yaml.safe_dump({"data": {"path": str(data_path)}, "output": str(tmp_path / "short"),
                                      "model": {"latent_channels": 2, "hidden_channels": [8]},
                                      "training": {"steps": 2, "batch_size": 4}, "valid_samples": 4}))
    with warnings.catch_warnings():  # printed as a plain run prints it (pytest records warnings otherwise)
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        assert cli.main(["train-ae", "--config", str(config), "--quiet"]) == 0
    error = capsys.readouterr().err
    assert ("latentda train-ae: warning: training.warmup_steps 100 ≥ training.steps 2: the learning rate never reaches "
            "training.learning_rate") in error
    assert "UserWarning" not in error and "warnings.warn" not in error
    assert (tmp_path / "short" / "autoencoder").is_dir()


def test_yaml_exponent_floats_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {path: x}\noutput: y\ntraining: {learning_rate: 1e-3}\n")
    assert load_config(AutoEncoderConfig, path).training.learning_rate == pytest.approx(1e-3)


def test_malformed_config_files(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(LatentdaError, match="top level must be a mapping"):
        load_config(AutoEncoderConfig, path)
    path.write_text("data: {path: x}\noutput: y\ntraining: {steps: 3}\n")
    with pytest.raises(LatentdaError, match="is not a section"):
        load_config(AutoEncoderConfig, path, {"training.steps.x": 1})


def test_identity_autoencoder_is_written_without_training_and_is_exact(tmp_path, data_path):
    config = parse(AutoEncoderConfig, {"data": {"path": str(data_path)}, "output": str(tmp_path / "identity"),
                                       "model": {"latent_channels": 2, "hidden_channels": []}})
    metrics = train_autoencoder(config, progress=False)
    assert metrics["rmse_mean"] == 0.0
    assert not (tmp_path / "identity" / "checkpoints").exists()
    model, layout, statistics = load_autoencoder(tmp_path / "identity" / "autoencoder")
    assert model.is_identity and model.compression_factor == 1.0
    x = torch.randn(3, layout.num_channels, *layout.shape)
    assert torch.equal(model.encode(x), x) and torch.equal(model.decode(x), x)
    summary = json.loads((tmp_path / "identity" / "metrics.json").read_text())
    assert summary["identity"] and summary["latent_shape"] == [layout.num_channels, *layout.shape]
    assert load_representation_error(tmp_path / "identity" / "autoencoder", layout.channels).tolist() == [0.0] * layout.num_channels


def test_train_ae_prints_the_latent_shape_and_compression(tmp_path, data_path, capsys):
    config = tmp_path / "ae.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": str(data_path)}, "output": str(tmp_path / "identity"),
                                      "model": {"latent_channels": 2, "hidden_channels": []}}))
    assert cli.main(["train-ae", "--config", str(config), "--quiet"]) == 0
    assert "latent shape 2 × 8 × 8, compression ×1\n" in capsys.readouterr().out


def test_identity_autoencoder_needs_one_latent_channel_per_variable(tmp_path, data_path):
    config = parse(AutoEncoderConfig, {"data": {"path": str(data_path)}, "output": str(tmp_path / "identity"),
                                       "model": {"latent_channels": 3, "hidden_channels": []}})
    with pytest.raises(LatentdaError, match="identity autoencoder .* needs latent_channels = in_channels"):
        train_autoencoder(config, progress=False)
    assert not (tmp_path / "identity" / "autoencoder").exists()


def test_a_finished_run_is_not_rewritten(tmp_path, data_path):
    config = parse(AutoEncoderConfig, {"data": {"path": str(data_path)}, "output": str(tmp_path / "identity"),
                                       "model": {"latent_channels": 2, "hidden_channels": []}})
    train_autoencoder(config, progress=False)
    before = (tmp_path / "identity" / "autoencoder" / "statistics.json").stat().st_mtime_ns
    with pytest.raises(LatentdaError, match="already has an autoencoder"):
        train_autoencoder(config, progress=False)
    assert (tmp_path / "identity" / "autoencoder" / "statistics.json").stat().st_mtime_ns == before


def test_latent_noise_trains_the_decoder_on_perturbed_latents_reproducibly(tmp_path, data_path):
    def config(name, noise):
        base = _config(tmp_path, data_path, name, steps=3)
        base.latent_noise = noise
        return base

    for name, noise in (("clean", 0.0), ("noisy", 0.5), ("noisy-again", 0.5)):
        train_autoencoder(config(name, noise), progress=False)
    clean, noisy, again = (_weights(tmp_path / name) for name in ("clean", "noisy", "noisy-again"))
    assert all(torch.equal(noisy[k], again[k]) for k in noisy)  # the noise is drawn from the seeded batch draws
    assert any(not torch.equal(clean[k], noisy[k]) for k in clean)  # and it reaches the loss
    model, _, _ = load_autoencoder(tmp_path / "noisy" / "autoencoder")
    x = torch.randn(2, 2, 8, 8)
    eps = 0.5 * torch.randn(2, *model.latent_shape)
    with torch.no_grad():
        assert torch.allclose(model(x, eps), model.decode(model.encode(x) + eps))
    with pytest.raises(LatentdaError, match="latent_noise: must be at least 0"):
        parse(AutoEncoderConfig, {"data": {"path": str(data_path)}, "output": "x", "latent_noise": -0.1})


def test_a_second_run_into_a_training_folder_is_refused_while_the_first_trains(tmp_path, data_path):
    """A requeued job while the first still trains, a script submitted twice: refused before any work
    (not trained beside the first, removing its checkpoint temporaries); free once the holder is gone."""
    import os
    import signal
    import subprocess

    import latentda

    config = _config(tmp_path, data_path, "run")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from latentda.data.io import OutputLock; "
                               "lock = OutputLock(sys.argv[1]); print('held', flush=True); time.sleep(60)", config.output],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(latentda.__file__).parents[1])})
    try:
        assert holder.stdout.readline().strip() == "held"
        for resume in (False, True):
            with pytest.raises(LatentdaError, match=r"run: another process is writing it now"):
                train_autoencoder(config, resume=resume, progress=False)
        assert not (tmp_path / "run").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    train_autoencoder(config, progress=False)
    assert (tmp_path / "run" / "autoencoder").is_dir() and not (tmp_path / ".run.lock").exists()

"""train-ldm, the pipeline folder and sample: round trips, resume, two processes, bad input."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from safetensors.torch import load_file, save_file

from conftest import kill_training_at, make_box_dataset, run_torchrun
from latentda import cli
from latentda.components import save_autoencoder
from latentda.config import config_defaults, parse, to_dict
from latentda.data import FieldLayout, compute_statistics, open_dataset, write_dataset
from latentda.encoding import encode_dataset
from latentda.errors import LatentdaError
from latentda.nn.autoencoder import AutoEncoder
from latentda.pipeline import LatentDAPipeline
from latentda.training import loop
from latentda.training.diffusion import LatentDiffusionConfig, train_latent_diffusion

TINY = {"model": {"window": 4, "hidden_size": 16, "depth": 1, "num_heads": 2}, "diffusion": {"steps": 4}}


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm")
    dataset = make_box_dataset(trajectories=5, times=10, size=8)
    data = write_dataset(dataset, root / "box.zarr")
    layout = FieldLayout.from_dataset(dataset)
    torch.manual_seed(0)
    model = AutoEncoder(in_channels=2, latent_channels=2, hidden_channels=[8, 8], blocks_per_stage=1,
                        sample_size=[8, 8], periodic=[True, True])
    folder = save_autoencoder(root / "ae", model, layout, compute_statistics(dataset, layout, progress=False))
    return encode_dataset(folder, data, root / "latents.zarr", progress=False)


def _config(output, **training):
    return parse(LatentDiffusionConfig, {
        "output": str(output), **TINY, "valid_windows": 4,
        "training": {"steps": 6, "batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 1,
                     "checkpoint_every": 3, "validate_every": 6, **training},
    })


def test_pipeline_round_trip_and_sample(tmp_path, latents):
    train_latent_diffusion(_config(tmp_path / "run"), str(latents), progress=False)
    folder = tmp_path / "run" / "pipeline"
    assert json.loads((folder / "model_index.json").read_text())["denoiser"] == ["latentda.nn", "TrajectoryTransformer"]
    assert "# latentda pipeline" in (folder / "README.md").read_text()
    pipeline = LatentDAPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline.time_step == pytest.approx(0.2)
    first = pipeline.sample(length=9, members=2, seed=3)  # L > K: blankets
    pipeline.save_pretrained(tmp_path / "copy")
    again = LatentDAPipeline.from_pretrained(tmp_path / "copy")
    again.set_progress_bar_config(disable=True)
    copied = again.sample(length=9, members=2, seed=3)
    assert (first.attrs.pop("latentda_pipeline"), copied.attrs.pop("latentda_pipeline")) == (
        str(folder.resolve()), str((tmp_path / "copy").resolve()))  # each records the folder it came from
    xr.testing.assert_identical(copied, first)
    assert dict(first.sizes) == {"realization": 2, "time": 9, "y": 8, "x": 8}
    assert np.isfinite(first["u"].values).all()
    assert first["y"].attrs["periodic"] == 1 and first.attrs["Conventions"] == "CF-1.10"
    short = pipeline.sample(length=2, members=1, seed=0)  # L < K: one window, cropped
    assert short.sizes["time"] == 2


def test_sample_cli_and_bad_pipeline(tmp_path, latents, capsys):
    train_latent_diffusion(_config(tmp_path / "run", steps=2), str(latents), progress=False)
    folder = tmp_path / "run" / "pipeline"
    out = tmp_path / "samples.nc"
    assert cli.main(["sample", "--pipeline", str(folder), "--length", "5", "--members", "2", "--out", str(out), "--quiet"]) == 0
    assert open_dataset(out).sizes["realization"] == 2
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "scheduler")
    assert cli.main(["sample", "--pipeline", str(broken), "--length", "5", "--out", str(tmp_path / "x.nc"), "--quiet"]) == 2
    assert "lacks 'scheduler'" in capsys.readouterr().err
    (broken / "scheduler").mkdir()
    (broken / "scheduler" / "scheduler_config.json").write_text((folder / "scheduler" / "scheduler_config.json").read_text())
    (broken / "denoiser" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(LatentdaError, match="no .safetensors weights"):
        LatentDAPipeline.from_pretrained(broken)
    assert not (tmp_path / "x.nc").exists()
    # a finished run whose checkpoints were pruned is not trained again over its pipeline, resumed or not
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    before = (folder / "denoiser" / "diffusion_pytorch_model.safetensors").read_bytes()
    for resume, told in ((False, "a pipeline \\(choose"), (True, "a pipeline and no checkpoint to continue from")):
        with pytest.raises(LatentdaError, match=f"run already has {told}"):
            train_latent_diffusion(_config(tmp_path / "run", steps=2), str(latents), resume=resume, progress=False)
    assert (folder / "denoiser" / "diffusion_pytorch_model.safetensors").read_bytes() == before


def test_ldm_resume_equals_uninterrupted(tmp_path, latents):
    train_latent_diffusion(_config(tmp_path / "straight"), str(latents), progress=False)
    _killed_at(4, _config(tmp_path / "killed"), latents)
    recorded = (tmp_path / "killed" / "config.yaml").read_text()
    # the checkpoint's optimizer would silently keep the first learning rate: a changed one is refused, as is
    # another model (named by the first run's config.yaml; without it, by the checkpoint's tensors)
    with pytest.raises(LatentdaError, match=r"other settings \(training.learning_rate: 0.001 → 0.01\)"):
        train_latent_diffusion(_config(tmp_path / "killed", learning_rate=1e-2), str(latents), resume=True, progress=False)
    wider = parse(LatentDiffusionConfig, {**to_dict(_config(tmp_path / "killed")),
                                          "model": {**TINY["model"], "hidden_size": 32}})
    with pytest.raises(LatentdaError, match="model.hidden_size: 16 → 32"):
        train_latent_diffusion(wider, str(latents), resume=True, progress=False)
    assert (tmp_path / "killed" / "config.yaml").read_text() == recorded  # the first run's record is kept
    # a record written before model.increments existed had its default: another value now is refused too
    older = yaml.safe_load(recorded)
    del older["model"]["increments"]
    (tmp_path / "killed" / "config.yaml").write_text(yaml.safe_dump(older, sort_keys=False))
    newer = parse(LatentDiffusionConfig, {**to_dict(_config(tmp_path / "killed")), "model": {**TINY["model"], "increments": True}})
    with pytest.raises(LatentdaError, match=r"model.increments: not recorded, the default False → True"):
        train_latent_diffusion(newer, str(latents), resume=True, progress=False)
    loop.check_resumed_config(tmp_path / "killed", to_dict(_config(tmp_path / "killed")),
                              defaults=config_defaults(LatentDiffusionConfig))  # the default itself: accepted
    # without its record the run's settings are unknown (a learning rate is not in the tensors): refused
    (tmp_path / "killed" / "config.yaml").unlink()
    with pytest.raises(LatentdaError, match=r"killed/config.yaml: missing, the run's first config is lost"):
        train_latent_diffusion(_config(tmp_path / "killed"), str(latents), resume=True, progress=False)
    # a record edited to another model: the checkpoint's tensors still tell
    (tmp_path / "killed" / "config.yaml").write_text(yaml.safe_dump(to_dict(wider), sort_keys=False))
    with pytest.raises(LatentdaError, match="checkpoint does not match the model"):
        train_latent_diffusion(wider, str(latents), resume=True, progress=False)
    (tmp_path / "killed" / "config.yaml").write_text(recorded)
    train_latent_diffusion(_config(tmp_path / "killed"), str(latents), resume=True, progress=False)
    a = load_file(tmp_path / "straight" / "pipeline" / "denoiser" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "killed" / "pipeline" / "denoiser" / "diffusion_pytorch_model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0)


def test_bad_ldm_inputs(tmp_path, latents):
    with pytest.raises(LatentdaError, match="no 'latent' variable"):
        train_latent_diffusion(_config(tmp_path / "r"), str(latents.parent / "box.zarr"), progress=False)
    # an autoencoder of the same latent shape but other weights (e.g. retrained at the same path) did not write them
    other = shutil.copytree(latents.parent / "ae", tmp_path / "other-ae")
    weights = other / "diffusion_pytorch_model.safetensors"
    save_file({k: v + 0.01 for k, v in load_file(weights).items()}, weights)
    config = parse(LatentDiffusionConfig, {**to_dict(_config(tmp_path / "r")), "autoencoder": str(other)})
    with pytest.raises(LatentdaError, match="encoded by another autoencoder than"):
        train_latent_diffusion(config, str(latents), progress=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(LatentdaError, match="hidden_size: must be divisible"):
        parse(LatentDiffusionConfig, {"output": "x", "model": {"hidden_size": 10, "num_heads": 4}})
    with pytest.raises(LatentdaError, match="num_heads: must be at least 1"):
        parse(LatentDiffusionConfig, {"output": "x", "model": {"num_heads": 0}})
    with pytest.raises(LatentdaError, match="mlp_ratio: must be positive"):
        parse(LatentDiffusionConfig, {"output": "x", "model": {"mlp_ratio": -1.0}})
    with pytest.raises(LatentdaError, match="training.compile_backend: must be one of torch's compile backends"):
        parse(LatentDiffusionConfig, {"output": "x", "training": {"compile": True, "compile_backend": "inductr"}})
    with pytest.raises(LatentdaError, match="diffusion.sampler"):
        parse(LatentDiffusionConfig, {"output": "x", "diffusion": {"sampler": "magic"}})
    with pytest.raises(LatentdaError, match="diffusion.noise_distribution: must be one of log-uniform, log-normal"):
        parse(LatentDiffusionConfig, {"output": "x", "diffusion": {"noise_distribution": "gaussian"}})
    with pytest.raises(LatentdaError, match="diffusion.log_sigma_std: must be positive"):
        parse(LatentDiffusionConfig, {"output": "x", "diffusion": {"noise_distribution": "log-normal", "log_sigma_std": 0}})


def _train_two_processes(tmp_path, latents, training: dict, resume_steps: int | None = None) -> dict:
    """torchrun with 2 CPU processes (gloo) on a tiny config, then the same run in this process;
    both ranks must agree. Returns the final pipelines' weights {"two": …, "one": …} and the
    fraction of the parameters each rank held ("held")."""
    data = {**TINY, "model": {**TINY["model"], "depth": 2}, "valid_windows": 4,
            "training": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "validate_every": 4, **training}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"output": str(tmp_path / "two"), **data}))
    script = str(Path(__file__).parent / "scripts" / "distributed_train.py")
    extra = [str(resume_steps)] if resume_steps else []
    run_torchrun([script, str(latents), str(config), str(tmp_path), *extra])
    reports = [(tmp_path / f"rank{r}-of-2.txt").read_text().split() for r in range(2)]
    assert reports[0][0] == reports[1][0]  # the same (gathered) weights on both ranks
    one = parse(LatentDiffusionConfig, {**data, "output": str(tmp_path / "one")})
    train_latent_diffusion(one, str(latents), progress=False)
    if resume_steps:
        one.training.steps = resume_steps
        train_latent_diffusion(one, str(latents), progress=False, resume=True)
    weights = "pipeline/denoiser/diffusion_pytorch_model.safetensors"
    return {**{name: load_file(tmp_path / name / weights) for name in ("two", "one")},
            "held": [float(report[1]) for report in reports]}


needs_torchrun = pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                                    reason="torchrun missing")


@needs_torchrun
def test_two_processes_train_identical_weights(tmp_path, latents):
    """DDP over 2 CPU processes: the same weights on both ranks, matching a one-process run with
    the same global batch up to floating-point reduction order."""
    weights = _train_two_processes(tmp_path, latents, {})
    assert weights["held"] == [1.0, 1.0]  # replicated
    for name in weights["one"]:
        torch.testing.assert_close(weights["two"][name], weights["one"][name], rtol=1e-4, atol=1e-5)


@needs_torchrun
def test_fsdp_two_processes_resume_match_one_process(tmp_path, latents):
    """strategy fsdp over 2 processes (2 micro-batches a step): parameters, gradients, AdamW moments
    and EMA are sharded, the
    checkpoint at step 4 is gathered, then resumed (sharded again) to step 6 — the same weights as
    one process running the same two stages; the checkpoints hold whole tensors."""
    weights = _train_two_processes(tmp_path, latents, {"strategy": "fsdp", "gradient_accumulation": 2},
                                   resume_steps=6)
    assert all(0.4 < held < 0.6 for held in weights["held"]), weights["held"]  # each rank holds half
    for name in weights["one"]:
        torch.testing.assert_close(weights["two"][name], weights["one"][name], rtol=1e-4, atol=1e-5)
    saved = load_file(tmp_path / "two" / "checkpoints" / "step-000006" / "optimizer.safetensors")
    reference = load_file(tmp_path / "one" / "checkpoints" / "step-000006" / "optimizer.safetensors")
    assert saved.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(saved[key], reference[key], rtol=1e-3, atol=1e-6)


def test_compiled_blocks_train_like_eager(tmp_path, latents):
    """training.compile: the transformer blocks run through torch.compile (TorchDynamo graphs and
    AOTAutograd; the "aot_eager" backend skips inductor's C++ build to keep the suite fast — the
    inductor speed-up is measured by tools/bench_compile.py); the weights after a few steps match
    eager training (the same math, other kernels: float rounding only)."""
    eager = train_latent_diffusion(_config(tmp_path / "eager", steps=3), str(latents), progress=False)
    compiled = train_latent_diffusion(_config(tmp_path / "compiled", steps=3, compile=True,
                                                       compile_backend="aot_eager"), str(latents), progress=False)
    weights = "pipeline/denoiser/diffusion_pytorch_model.safetensors"
    a, b = load_file(tmp_path / "eager" / weights), load_file(tmp_path / "compiled" / weights)
    assert a.keys() == b.keys()  # compilation leaves parameter names alone
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
    assert compiled["denoising_mse_mean"] == pytest.approx(eager["denoising_mse_mean"], rel=1e-3)


def test_known_frames_prior_trains_and_conditions_forecasts_and_filters(tmp_path, latents):
    """model.known_frames: the saved pipeline knows it, validation reports the conditional's error, the
    history denoiser keeps the given states and reads them (another history, other free states), and a
    forecast and a filter run with conditioning known, the forecast starting from its history."""
    from latentda.posterior.filtering import filter_members
    from latentda.posterior.forecast import forecast_members
    from latentda.posterior.reanalysis import PosteriorSettings

    config = _config(tmp_path / "run", steps=6)
    config.model.known_frames = True
    metrics = train_latent_diffusion(config, str(latents), progress=False)
    assert set(metrics["known_3_denoising_mse"]) == set(metrics["denoising_mse"])  # the forecast's case, 3 of 4 given
    pipeline = LatentDAPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline.known_frames
    torch.manual_seed(0)
    history = torch.randn(1, 2, *pipeline.latent_shape)
    x_t = torch.randn(1, 4, *pipeline.latent_shape)
    with torch.no_grad():
        out = pipeline.history_denoiser(history)(x_t, torch.tensor(1.0))
        other = pipeline.history_denoiser(history + 1)(x_t, torch.tensor(1.0))
    assert torch.equal(out[:, :2], history) and not torch.allclose(out[:, 2:], other[:, 2:])
    settings = PosteriorSettings(steps=3)
    run = forecast_members(pipeline, [0, 1], 2, settings, initial=history, conditioning="known", context=2)
    fields = np.stack([f for _, f in run])
    assert fields.shape == (2, 3, 2, 8, 8) and np.isfinite(fields).all()
    start = pipeline.decode(history[0, -1:])[0]  # known conditioning keeps the history: lead 0 is its last state
    for member in fields:
        np.testing.assert_allclose(member[0], start, rtol=1e-5, atol=1e-5)
    assert not np.allclose(fields[0, 1:], fields[1, 1:])  # members differ after it
    cycles = list(filter_members(pipeline, [None, None, None], [0, 1], settings, conditioning="known", lag=1))
    assert len(cycles) == 3 and np.isfinite(cycles[-1].analysis).all()
    config.model.known_probability = 1.5
    with pytest.raises(LatentdaError, match="known_probability"):
        parse(LatentDiffusionConfig, to_dict(config))
    config.model.known_probability = 0.5
    for noise, known, message in ((-0.1, True, "must be a finite number"), (0.1, False, "needs known_frames")):
        config.model.history_noise, config.model.known_frames = noise, known
        with pytest.raises(LatentdaError, match=f"history_noise.*{message}"):
            parse(LatentDiffusionConfig, to_dict(config))


def test_history_noise_trains_on_offset_histories(tmp_path, latents, monkeypatch):
    """model.history_noise: the same run (seed, batches) with the given states offset trains other
    weights, a finite loss, and a pipeline that loads and forecasts from a known history; the offset
    reaches the loss with σ_h and, in increment coordinates, the run's map (it is added to the latents)."""
    from latentda.diffusion.denoiser import KnownFrames
    from latentda.diffusion.increments import Increments
    from latentda.posterior.forecast import forecast_members
    from latentda.posterior.reanalysis import PosteriorSettings

    calls, offset = [], KnownFrames.offset

    def spy(self, x, known, random, increments=None):
        calls.append((self.noise, increments))
        return offset(self, x, known, random, increments)

    monkeypatch.setattr(KnownFrames, "offset", spy)
    weights = {}
    for noise in (0.0, 0.3):
        config = _config(tmp_path / f"run{noise}", steps=3)
        config.model.known_frames, config.model.known_probability, config.model.increments = True, 1.0, True
        config.model.history_noise = noise
        metrics = train_latent_diffusion(config, str(latents), progress=False)
        assert np.isfinite(metrics["denoising_mse_mean"])
        weights[noise] = load_file(tmp_path / f"run{noise}" / "pipeline/denoiser/diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(weights[0.0][name], weights[0.3][name]) for name in weights[0.0])
    assert {noise for noise, _ in calls} == {0.0, 0.3} and all(isinstance(i, Increments) for _, i in calls)
    pipeline = LatentDAPipeline.from_pretrained(tmp_path / "run0.3" / "pipeline")
    pipeline.set_progress_bar_config(disable=True)
    history = torch.randn(1, 2, *pipeline.latent_shape)
    run = forecast_members(pipeline, [0], 1, PosteriorSettings(steps=2), initial=history, conditioning="known", context=2)
    assert np.isfinite(np.stack([f for _, f in run])).all()


def test_increment_prior_trains_on_increments_and_samples_one_window_at_a_time(tmp_path, latents):
    """model.increments: the run measures the one-step increments of the training split's standardised
    latents (against numpy on the same segments), the pipeline saves and reloads them, forecasts and
    filters run in increment coordinates, and a trajectory longer than the window is a clear error."""
    from latentda.data import LatentSource, split_segments
    from latentda.posterior.filtering import filter_members
    from latentda.posterior.forecast import forecast_members
    from latentda.posterior.reanalysis import PosteriorSettings

    config = _config(tmp_path / "run", steps=6)
    config.model.increments = True
    config.model.known_frames = True
    train_latent_diffusion(config, str(latents), progress=False)
    pipeline = LatentDAPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    pipeline.set_progress_bar_config(disable=True)
    source = LatentSource(str(latents))
    steps = []
    for segment in split_segments(source.dataset, config.splits)["train"]:
        z = pipeline.latent_statistics.standardise(source.read(segment.trajectory, segment.start, segment.stop).astype(np.float64))
        steps.append(z[1:] - z[:-1])
    steps = np.concatenate(steps)
    np.testing.assert_allclose(pipeline.increments.statistics.mean, steps.mean(axis=(0, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(pipeline.increments.statistics.std, steps.std(axis=(0, 2, 3)), rtol=1e-4)
    pipeline.save_pretrained(tmp_path / "copy")
    again = LatentDAPipeline.from_pretrained(tmp_path / "copy")
    np.testing.assert_array_equal(again.increments.statistics.std, pipeline.increments.statistics.std)
    settings = PosteriorSettings(steps=3)
    history = pipeline.encode(np.random.default_rng(0).standard_normal((2, 2, 8, 8)))[None]
    with torch.no_grad():  # the history denoiser takes z̃ and gives the window's first states as their increments
        given = pipeline.history_denoiser(history)(torch.randn(1, 4, *pipeline.latent_shape), torch.tensor(1.0))[:, :2]
    np.testing.assert_allclose(given.numpy(), pipeline.increments.to_increments(history).numpy(), atol=1e-6)
    assert not torch.allclose(given, history)
    run = forecast_members(pipeline, [0, 1], 2, settings, initial=history, conditioning="known", context=2)
    fields = np.stack([f for _, f in run])
    assert fields.shape == (2, 3, 2, 8, 8) and np.isfinite(fields).all()
    run = forecast_members(pipeline, [0], 1, settings, initial=history, context=2)  # mmps through L
    assert np.isfinite(np.stack([f for _, f in run])).all()
    cycles = list(filter_members(pipeline, [None, None, None], [0, 1], settings, conditioning="known", lag=1))
    assert len(cycles) == 3 and np.isfinite(cycles[-1].analysis).all()
    assert pipeline.sample_latents(4, steps=2).shape == (1, 4, *pipeline.latent_shape)
    with pytest.raises(LatentdaError, match="increment coordinates"):
        pipeline.sample_latents(6, steps=2)


def test_init_from_starts_from_a_pipeline_of_another_window(tmp_path, latents, capsys):
    """init_from: the run starts from the pipeline's denoiser weights (with a learning rate too small to move
    them its pipeline holds them, a run without init_from does not), also at another window K; a resumed run
    keeps its checkpoint's weights; a folder that is not a pipeline, another architecture, another autoencoder
    or the other coordinates are refused in one line before any training."""
    train_latent_diffusion(_config(tmp_path / "first", steps=3, seed=1), str(latents), progress=False)  # another init
    first = tmp_path / "first" / "pipeline"
    start = load_file(first / "denoiser" / "diffusion_pytorch_model.safetensors")

    def longer(output, **training):
        config = _config(output, **training)
        config.model.window = 6
        return config

    still = longer(tmp_path / "still", steps=1, learning_rate=1e-12)
    still.init_from = str(first)
    train_latent_diffusion(still, str(latents), progress=False)
    pipeline = LatentDAPipeline.from_pretrained(tmp_path / "still" / "pipeline")
    assert pipeline.window == 6
    weights = pipeline.backbone.state_dict()
    for name in start:
        torch.testing.assert_close(weights[name], start[name], rtol=0, atol=1e-9)
    train_latent_diffusion(longer(tmp_path / "fresh", steps=1, learning_rate=1e-12), str(latents), progress=False)
    fresh = load_file(tmp_path / "fresh" / "pipeline" / "denoiser" / "diffusion_pytorch_model.safetensors")
    assert max(float((fresh[n] - start[n]).abs().max()) for n in start) > 1e-2
    # interrupted after its checkpoint at step 3, the fine-tuning resumes from it, not from init_from again
    # (which may be gone by then)
    tuned = longer(tmp_path / "tuned")
    tuned.init_from = str(first)
    train_latent_diffusion(tuned, str(latents), progress=False)
    killed = longer(tmp_path / "killed")
    killed.init_from = str(shutil.copytree(first, tmp_path / "gone"))
    _killed_at(4, killed, latents)
    shutil.rmtree(tmp_path / "gone")
    train_latent_diffusion(killed, str(latents), resume=True, progress=False)
    a = load_file(tmp_path / "tuned" / "pipeline" / "denoiser" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "killed" / "pipeline" / "denoiser" / "diffusion_pytorch_model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0)

    with pytest.raises(LatentdaError, match=r"other settings \(init_from: "):  # the record of where it started
        train_latent_diffusion(longer(tmp_path / "killed"), str(latents), resume=True, progress=False)

    def refused(pattern, folder=first, **model):
        config = _config(tmp_path / "refused", steps=1)
        config.init_from = str(folder)
        for key, value in model.items():
            setattr(config.model, key, value)
        with pytest.raises(LatentdaError, match=pattern):
            train_latent_diffusion(config, str(latents), progress=False)
        assert not (tmp_path / "refused").exists()  # refused before the statistics pass writes the run folder

    refused("init_from: .* is not a pipeline folder", folder=first / "denoiser")
    refused(r"init_from: .*'s denoiser has another architecture than this run's \(hidden_size: 16 → 32", hidden_size=32)
    refused(r"init_from: .*'s denoiser has another architecture than this run's \(known_frames: False → True",
            known_frames=True)
    refused("init_from: .* is a prior in state coordinates, this run's model.increments is true",
            increments=True, known_frames=True)
    increment = _config(tmp_path / "increment", steps=1)
    increment.model.increments = increment.model.known_frames = True
    train_latent_diffusion(increment, str(latents), progress=False)
    refused("init_from: .* is a prior in increment coordinates, this run's model.increments is false",
            folder=tmp_path / "increment" / "pipeline")
    other = shutil.copytree(first, tmp_path / "other")
    weights = other / "autoencoder" / "diffusion_pytorch_model.safetensors"
    save_file({k: v + 0.01 for k, v in load_file(weights).items()}, weights)
    refused("init_from: .* was trained on the latents of another autoencoder", folder=other)
    config = _write(tmp_path / "c.yaml", {**to_dict(_config(tmp_path / "cli")), "init_from": str(tmp_path / "none")})
    assert cli.main(["train-ldm", "--config", str(config), "--latents", str(latents), "--quiet"]) == 2
    assert "init_from: " in capsys.readouterr().err and not (tmp_path / "cli").exists()


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_latents_are_of_the_autoencoder_whatever_copy_of_it_is_named(tmp_path, latents):
    """The autoencoder's fingerprint is of its settings, weights, layout and statistics: a pipeline's re-saved
    copy of the autoencoder that encoded the latents trains on them (its config.json gains `_name_or_path`), and a
    store recording the fingerprint of earlier versions (config.json's bytes) is still accepted."""
    from latentda.components import autoencoder_fingerprint

    train_latent_diffusion(_config(tmp_path / "first", steps=1), str(latents), progress=False)
    copy = tmp_path / "first" / "pipeline" / "autoencoder"
    original = latents.parent / "ae"
    assert (copy / "config.json").read_bytes() != (original / "config.json").read_bytes()
    assert autoencoder_fingerprint(copy) == autoencoder_fingerprint(original)
    config = parse(LatentDiffusionConfig, {**to_dict(_config(tmp_path / "copy", steps=1)), "autoencoder": str(copy)})
    train_latent_diffusion(config, str(latents), progress=False)
    import zarr

    older = shutil.copytree(latents, tmp_path / "older.zarr")
    assert zarr.open_group(str(older), mode="r").attrs["latentda_autoencoder_sha256"] == autoencoder_fingerprint(original)
    legacy = autoencoder_fingerprint(original, legacy=True)
    assert legacy != autoencoder_fingerprint(original)
    zarr.open_group(str(older), mode="r+").attrs["latentda_autoencoder_sha256"] = legacy
    train_latent_diffusion(_config(tmp_path / "legacy", steps=1), str(older), progress=False)
    zarr.open_group(str(older), mode="r+").attrs["latentda_autoencoder_sha256"] = "0" * 64
    with pytest.raises(LatentdaError, match="encoded by another autoencoder than"):
        train_latent_diffusion(_config(tmp_path / "other", steps=1), str(older), progress=False)


def _killed_at(step, config, latents):
    kill_training_at(step, lambda: train_latent_diffusion(config, str(latents), progress=False))


@pytest.fixture(scope="module")
def other_latents(latents, tmp_path_factory):
    """The same data encoded by another autoencoder of the same latent shape (other weights)."""
    root = tmp_path_factory.mktemp("other")
    other_ae = shutil.copytree(latents.parent / "ae", root / "other-ae")
    weights = other_ae / "diffusion_pytorch_model.safetensors"
    save_file({k: v + 0.01 for k, v in load_file(weights).items()}, weights)
    return encode_dataset(other_ae, latents.parent / "box.zarr", root / "other.zarr", progress=False)


def test_resume_refuses_the_latents_of_another_autoencoder(tmp_path, latents, other_latents):
    """The denoiser learns what its autoencoder's latents mean: a run resumed on latents another autoencoder encoded
    (the config names none, so it is the latents' own) is refused in one line naming the checkpoint, and nothing is
    written; more latents of the same autoencoder (another store) continue it."""
    _killed_at(4, _config(tmp_path / "run"), latents)
    before = {p: p.read_bytes() for p in sorted((tmp_path / "run").rglob("*")) if p.is_file()}
    with pytest.raises(LatentdaError, match=r"run/checkpoints/step-000003: the run was trained with another autoencoder "
                                            r"of the latents \(sha256 [0-9a-f]{12}…, now [0-9a-f]{12}…\): resume with the "
                                            "inputs it used, or start a new run"):
        train_latent_diffusion(_config(tmp_path / "run"), str(other_latents), resume=True, progress=False)
    assert {p: p.read_bytes() for p in sorted((tmp_path / "run").rglob("*")) if p.is_file()} == before
    more = shutil.copytree(latents, tmp_path / "more.zarr")
    train_latent_diffusion(_config(tmp_path / "run"), str(more), resume=True, progress=False)
    assert (tmp_path / "run" / "pipeline").is_dir()


def test_ldm_resume_before_the_first_checkpoint_starts_from_scratch(tmp_path, latents, other_latents):
    """A run killed before its first checkpoint left latent_statistics.json of its latents; resumed on other latents
    it starts from scratch: their statistics and the weights of a new run on them."""
    train_latent_diffusion(_config(tmp_path / "fresh"), str(other_latents), progress=False)
    _killed_at(1, _config(tmp_path / "early"), latents)
    assert not (tmp_path / "early" / "checkpoints").exists() and (tmp_path / "early" / "latent_statistics.json").is_file()
    train_latent_diffusion(_config(tmp_path / "early"), str(other_latents), resume=True, progress=False)
    assert ((tmp_path / "early" / "latent_statistics.json").read_text()
            == (tmp_path / "fresh" / "latent_statistics.json").read_text())
    fresh, early = (load_file(tmp_path / run / "pipeline" / "denoiser" / "diffusion_pytorch_model.safetensors")
                    for run in ("fresh", "early"))
    assert all(torch.equal(early[k], fresh[k]) for k in fresh)


def test_ldm_resume_without_its_statistics_is_refused_before_any_pass(tmp_path, latents):
    """The checkpoints were trained on latents standardised by latent_statistics.json and, with increments, scaled by
    increment_statistics.json: either deleted, resuming is refused rather than computing them again (more latents
    may continue a run, so they could differ); a run resumed with increments it was not trained with is refused by
    its config, before any statistics are written."""
    def with_increments(run):
        config = _config(run)
        config.model.increments = True
        return config

    _killed_at(4, with_increments(tmp_path / "run"), latents)
    for name in ("increment_statistics.json", "latent_statistics.json"):
        saved = tmp_path / "run" / name
        kept = saved.read_bytes()
        saved.unlink()
        with pytest.raises(LatentdaError, match=rf"run/{name}: missing, and the run's checkpoints were trained with it"):
            train_latent_diffusion(with_increments(tmp_path / "run"), str(latents), resume=True, progress=False)
        assert not saved.exists()
        saved.write_bytes(kept)
    _killed_at(4, _config(tmp_path / "plain"), latents)
    with pytest.raises(LatentdaError, match=r"model.increments: False → True"):
        train_latent_diffusion(with_increments(tmp_path / "plain"), str(latents), resume=True, progress=False)
    assert not (tmp_path / "plain" / "increment_statistics.json").exists()


def test_ldm_output_is_not_another_runs_folder(tmp_path, latents):
    """train-ldm into a train-ae run's folder (its statistics, layout, autoencoder/) is refused, nothing written."""
    run = tmp_path / "ae-run"
    (run / "autoencoder").mkdir(parents=True)
    (run / "layout.json").write_text("{}")
    with pytest.raises(LatentdaError, match=r"ae-run: not a folder of this kind of run \(it holds autoencoder, layout.json\)"):
        train_latent_diffusion(_config(run), str(latents), progress=False)
    assert sorted(p.name for p in run.iterdir()) == ["autoencoder", "layout.json"]


def test_latent_statistics_stream_long_segments_in_blocks(tmp_path):
    """A segment of 150 states (3 blocks of at most 64) and a gap (NaN state): the moments of every latent and
    of every one-step increment, as computed on the whole arrays at once — the pass holds one block at a time."""
    from latentda.data.splits import Segment
    from latentda.data.statistics import Statistics
    from latentda.data.windows import LatentSource
    from latentda.training import diffusion

    rng = np.random.default_rng(0)
    z = (rng.standard_normal((2, 150, 3, 2, 2)) * [[[[[1.0]], [[2.0]], [[0.5]]]]] + 3).astype(np.float32)
    z[1, 70] = np.nan  # a missing state: skipped, and so are the two increments touching it
    xr.Dataset({"latent": (("trajectory", "time", "channel", "latent_y", "latent_x"), z)},
               coords={"time": np.arange(150.0)}).to_zarr(tmp_path / "z.zarr")
    source, segments = LatentSource(tmp_path / "z.zarr"), [Segment(0, 0, 150), Segment(1, 10, 150)]
    reads = []
    real = source.read
    source.read = lambda *block: reads.append(block) or real(*block)
    statistics = diffusion.latent_statistics(source, segments, progress=False)
    assert max(stop - start for _, start, stop in reads) == diffusion.STATES_PER_READ
    values = np.concatenate([z[0], z[1, 10:]])
    np.testing.assert_allclose(statistics.mean, np.nanmean(values, axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(statistics.std, np.nanstd(values, axis=(0, 2, 3)), rtol=1e-5)
    plain = Statistics(statistics.channels, np.zeros(3), np.ones(3))
    increments = diffusion.increment_statistics(source, segments, plain, progress=False)
    steps = np.concatenate([np.diff(z[0], axis=0), np.diff(z[1, 10:], axis=0)])
    np.testing.assert_allclose(increments.mean, np.nanmean(steps, axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(increments.std, np.nanstd(steps, axis=(0, 2, 3)), rtol=1e-5)


def test_latents_held_in_memory_read_as_from_disk(tmp_path, monkeypatch):
    """A latent store within IN_MEMORY_BYTES is read whole once and sliced: every window of every
    trajectory equals the window read from disk (the budget 0), with and without a trajectory dimension,
    and a source sent to a DataLoader worker (pickled) leaves the array behind."""
    import pickle

    from latentda.data import windows
    from latentda.data.splits import Segment
    from latentda.data.windows import LatentSource, WindowDataset

    rng = np.random.default_rng(1)
    z = rng.standard_normal((3, 12, 2, 2, 3)).astype(np.float32)
    xr.Dataset({"latent": (("trajectory", "time", "channel", "latent_y", "latent_x"), z)},
               coords={"time": np.arange(12.0)}).to_zarr(tmp_path / "z.zarr")
    xr.Dataset({"latent": (("time", "channel", "latent_y", "latent_x"), z[1])},
               coords={"time": np.arange(12.0)}).to_zarr(tmp_path / "one.zarr")
    for store, segments in (("z.zarr", [Segment(t, 0, 12) for t in range(3)]), ("one.zarr", [Segment(None, 2, 12)])):
        memory = WindowDataset(LatentSource(tmp_path / store), segments, window=4)
        items = [memory[i] for i in range(len(memory))]
        assert memory.source._values is not None  # held whole
        assert pickle.loads(pickle.dumps(memory.source))._values is None
        monkeypatch.setattr(windows, "IN_MEMORY_BYTES", 0)
        disk = WindowDataset(LatentSource(tmp_path / store), segments, window=4)
        assert len(disk) == len(memory) > 0
        for i, item in enumerate(items):
            torch.testing.assert_close(item, disk[i], rtol=0, atol=0)
        assert disk.source._values is None
        monkeypatch.undo()

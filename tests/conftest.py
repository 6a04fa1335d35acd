"""Shared fixtures: small synthetic datasets built in memory (no download, seeds fixed)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr


def free_port() -> int:
    """A TCP port no process listens on now (the kernel's choice), for one torchrun's rendezvous: fixed ports
    shared by tests let a run meet the store of another still alive (a killed run's orphaned workers, a
    second suite on the machine) and wait there until its timeout."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_torchrun(arguments: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2`` (gloo CPU processes, one thread each, on a free port) on ``arguments``
    — a script and its arguments, or ``-m module ...`` — asserting it succeeds unless ``check`` is
    False; returns the process."""
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), *arguments],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 or not check, result.stderr[-3000:]
    return result


def make_latlon_dataset(times: int = 6, seed: int = 0) -> xr.Dataset:
    """A lat-lon dataset with a levelled and a surface variable, CF attributes, datetime times."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(-87.5, 87.5, 8)
    lon = np.arange(0, 360, 22.5)
    level = np.array([500, 850])
    time = pd.date_range("2020-01-01", periods=times, freq="6h")
    temperature = (280 + 10 * rng.standard_normal((times, 2, 8, 16))).astype(np.float32)
    pressure = (1e5 + 500 * rng.standard_normal((times, 8, 16))).astype(np.float32)
    return xr.Dataset(
        {
            "temperature": (("time", "level", "latitude", "longitude"), temperature,
                            {"units": "K", "standard_name": "air_temperature", "long_name": "Temperature"}),
            "mean_sea_level_pressure": (("time", "latitude", "longitude"), pressure,
                                        {"units": "Pa", "standard_name": "air_pressure_at_mean_sea_level"}),
        },
        coords={
            "time": time,
            "level": ("level", level, {"units": "hPa", "long_name": "pressure level"}),
            "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude"}),
            "longitude": ("longitude", lon, {"units": "degrees_east", "standard_name": "longitude"}),
        },
        attrs={"Conventions": "CF-1.10", "title": "synthetic lat-lon test data"},
    )


def make_box_dataset(trajectories: int = 5, times: int = 12, size: int = 16, seed: int = 0) -> xr.Dataset:
    """A periodic-box dataset laid out like the built-in Kolmogorov data (trajectory, time, y, x)."""
    rng = np.random.default_rng(seed)
    coord = np.arange(size) * 2 * np.pi / size
    shape = (trajectories, times, size, size)
    periodic = {"units": "1", "periodic": 1}
    return xr.Dataset(
        {
            "u": (("trajectory", "time", "y", "x"), rng.standard_normal(shape).astype(np.float32), {"units": "1"}),
            "v": (("trajectory", "time", "y", "x"), (2 + 3 * rng.standard_normal(shape)).astype(np.float32), {"units": "1"}),
        },
        coords={
            "trajectory": np.arange(trajectories),
            "time": ("time", 0.2 * np.arange(times), {"units": "1", "long_name": "model time"}),
            "y": ("y", coord, {**periodic, "axis": "Y"}),
            "x": ("x", coord, {**periodic, "axis": "X"}),
        },
        attrs={"Conventions": "CF-1.10"},
    )


@pytest.fixture
def latlon_dataset() -> xr.Dataset:
    return make_latlon_dataset()


@pytest.fixture
def box_dataset() -> xr.Dataset:
    return make_box_dataset()


def make_tiny_pipeline(folder, times: int = 6, time_axis: xr.DataArray | None = None, time_step: float = 0.2,
                       time_units: str = "1"):
    """An untrained but complete pipeline on an 8×8 periodic box (window 4), saved to ``folder``;
    returns (pipeline, truth dataset). The zero-initialised backbone makes the prior N(0, I) latents.
    ``time_axis`` replaces the truth's (model time 0.2 k), with the model's ``time_step`` and ``time_units``."""
    import torch

    from latentda.data import FieldLayout, compute_statistics
    from latentda.data.statistics import Statistics
    from latentda.diffusion.denoiser import make_schedule
    from latentda.nn.autoencoder import AutoEncoder
    from latentda.nn.transformer import TrajectoryTransformer
    from latentda.pipeline import LatentDAPipeline

    truth = make_box_dataset(trajectories=1, times=times, size=8).isel(trajectory=0, drop=True)
    if time_axis is not None:
        truth = truth.assign_coords(time=time_axis)
    layout = FieldLayout.from_dataset(truth)
    torch.manual_seed(0)
    autoencoder = AutoEncoder(in_channels=2, latent_channels=2, hidden_channels=[8, 8], blocks_per_stage=1,
                              sample_size=[8, 8], periodic=[True, True])
    backbone = TrajectoryTransformer(in_channels=2, window=4, sample_size=(4, 4), patch_size=(1, 2, 2), hidden_size=16,
                                     depth=1, num_heads=2, periodic=(True, True))
    pipeline = LatentDAPipeline(autoencoder, layout, compute_statistics(truth, layout, progress=False), backbone,
                                Statistics(["latent0", "latent1"], [0, 0], [1, 1]), make_schedule(),
                                {"time_step": time_step, "time_units": time_units, "steps": 4, "sampler": "ddpm"})
    pipeline.save_pretrained(folder, model_card="# tiny test pipeline\n")
    return pipeline, truth


def train_tiny_prior(latents, output) -> Path:
    """Two training steps of a one-block prior (window 4) on ``latents``; returns its pipeline folder."""
    from latentda.config import parse
    from latentda.training.diffusion import LatentDiffusionConfig, train_latent_diffusion

    config = parse(LatentDiffusionConfig, {
        "output": str(output), "splits": [0.5, 0.25, 0.25], "valid_windows": 2,
        "model": {"window": 4, "hidden_size": 16, "depth": 1, "num_heads": 2, "patch_size": [1, 2, 2]},
        "diffusion": {"steps": 3, "sampler": "ddpm"},
        "training": {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "validate_every": 2},
    })
    train_latent_diffusion(config, str(latents), progress=False)
    return Path(output) / "pipeline"


def make_observed_pipeline(root: Path, times: int = 6, fraction: float = 0.5, length: int | None = None):
    """A tiny pipeline in ``root/pipeline`` (:func:`make_tiny_pipeline`), its truth in ``root/truth.nc``
    and ``root/obs.nc``: ``latentda observe`` of a ``fraction`` of the u and v pixels (σ = 0.1,
    operator ``root/op.yaml``) over the first ``length`` states (default all).
    Returns (pipeline, truth, truth path, observations path)."""
    from latentda import cli
    from latentda.data import write_dataset

    pipeline, truth = make_tiny_pipeline(root / "pipeline", times=times)
    truth_path = write_dataset(truth, root / "truth.nc")
    operator = root / "op.yaml"
    operator.write_text(f"observations:\n  - {{name: o, variables: [u, v], fraction: {fraction}, noise_std: 0.1}}\n")
    observations = root / "obs.nc"
    window = [] if length is None else ["--length", str(length)]
    assert cli.main(["observe", "--truth", str(truth_path), "--operator", str(operator), "--out", str(observations),
                     *window, "--quiet"]) == 0
    return pipeline, truth, truth_path, observations


def interrupt_reanalyses_after(monkeypatch, members: int):
    """Make reanalyses stop with Ctrl-C after ``members`` finished members (as an interrupted run
    would); returns the real ``posterior_members`` generator."""
    from latentda.posterior import reanalysis

    real = reanalysis.posterior_members

    def interrupted(*a, **k):
        for count, item in enumerate(real(*a, **k)):
            if count == members:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(reanalysis, "posterior_members", interrupted)
    return real


def kill_training_at(step: int, train) -> None:
    """Run ``train()`` (a train_autoencoder or train_latent_diffusion call) until the job is killed, as by Ctrl-C,
    when it reaches ``step`` (after the checkpoints before it)."""
    from latentda.training import loop

    real = loop.batch_random

    def dies(seed, at, rank, local):
        if at == step:
            raise KeyboardInterrupt
        return real(seed, at, rank, local)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "batch_random", dies)
        with pytest.raises(KeyboardInterrupt):
            train()


def interrupt_filter_at(monkeypatch, call: int, error=KeyboardInterrupt):
    """Make the filter raise ``error`` (Ctrl-C by default) at its ``call``-th window sample (one per cycle and
    batch of members), as an interrupted run would; returns the real ``_window_sample``."""
    from latentda.posterior import filtering

    real, calls = filtering._window_sample, []

    def stops(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(filtering, "_window_sample", stops)
    return real


def interrupt_forecasts_after(monkeypatch, members: int) -> None:
    """Make forecasts stop with Ctrl-C after ``members`` finished members (as an interrupted run would)."""
    from latentda.posterior.forecast import ForecastMembers

    real = ForecastMembers.__iter__

    def interrupted(self):
        for count, item in enumerate(real(self)):
            if count == members:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(ForecastMembers, "__iter__", interrupted)

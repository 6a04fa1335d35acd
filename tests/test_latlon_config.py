"""The documented config for large latitude-longitude grids (configs/ae/latlon.yaml) on a synthetic
lat-lon dataset: pressure levels and surface fields, both poles, periodic longitude."""

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml

from latentda import cli
from latentda.data import FieldLayout, write_dataset
from latentda.nn.autoencoder import AutoEncoder

CONFIG = "configs/ae/latlon.yaml"


def _reanalysis_like(times: int = 6, seed: int = 0) -> xr.Dataset:
    """Two upper-air variables on two pressure levels and two surface fields, 33 latitudes from 90° N
    to 90° S (5.625°) × 64 longitudes, 6-hourly: smooth large scales, travelling waves, small noise."""
    rng = np.random.default_rng(seed)
    latitude = np.linspace(90, -90, 33)
    longitude = np.arange(64) * 5.625
    level = np.array([500.0, 850.0])
    t = np.arange(times)[:, None, None, None]
    phi, lam = np.meshgrid(np.deg2rad(latitude), np.deg2rad(longitude), indexing="ij")
    wave = np.cos(phi) * np.cos(3 * lam - 0.2 * t)
    shape = (times, level.size, latitude.size, longitude.size)
    temperature = 250 + 30 * np.cos(phi) + 5 * wave + (level[:, None, None] - 500) / 20 + rng.normal(0, 0.5, shape)
    geopotential = 5e4 + 5e3 * np.cos(phi) ** 2 + 300 * wave - 40 * (level[:, None, None] - 500) + rng.normal(0, 20, shape)
    surface = (times, latitude.size, longitude.size)
    msl = 101000 + 1500 * np.sin(2 * phi) + 800 * wave[:, 0] + rng.normal(0, 50, surface)
    u10 = 8 * np.sin(2 * phi) * np.cos(lam + 0.1 * t[:, 0]) + rng.normal(0, 0.3, surface)
    upper, flat = ("time", "level", "latitude", "longitude"), ("time", "latitude", "longitude")
    return xr.Dataset(
        {"t": (upper, temperature.astype(np.float32), {"units": "K"}),
         "z": (upper, geopotential.astype(np.float32), {"units": "m2 s-2"}),
         "msl": (flat, msl.astype(np.float32), {"units": "Pa"}),
         "u10": (flat, u10.astype(np.float32), {"units": "m s-1"})},
        coords={"time": pd.date_range("2000-01-01", periods=times, freq="6h"),
                "level": ("level", level, {"units": "hPa"}),
                "latitude": ("latitude", latitude, {"units": "degrees_north"}),
                "longitude": ("longitude", longitude, {"units": "degrees_east"})})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The config as documented, trained for two steps on the synthetic dataset."""
    root = tmp_path_factory.mktemp("latlon")
    dataset = _reanalysis_like()
    write_dataset(dataset, root / "reanalysis.zarr")
    with open(CONFIG) as file:
        config = yaml.safe_load(file)
    config["data"]["path"] = str(root / "reanalysis.zarr")
    config["output"] = str(root / "ae")
    config["training"].update(steps=2, batch_size=2, warmup_steps=1, checkpoint_every=2, validate_every=2)
    config["valid_samples"] = 2
    (root / "latlon.yaml").write_text(yaml.safe_dump(config))
    assert cli.main(["train-ae", "--config", str(root / "latlon.yaml"), "--quiet"]) == 0
    model = AutoEncoder.from_pretrained(root / "ae" / "autoencoder").eval()
    return dataset, config, model


def test_latlon_config_builds_the_documented_autoencoder(trained):
    dataset, config, model = trained
    layout = FieldLayout.from_dataset(dataset)
    assert layout.channels == ["msl", "t@500.0", "t@850.0", "u10", "z@500.0", "z@850.0"]
    assert layout.channel_index("t@850") == layout.channels.index("t@850.0")  # a config may spell it as the docs do
    assert model.config.hidden_channels == config["model"]["hidden_channels"]
    assert model.config.latent_channels == 64 and model.config.blocks_per_stage == 2
    assert model.downsample_factor == 16
    assert list(model.config.periodic) == [False, True]  # latitude bounded by the poles, longitude periodic


def test_latlon_config_round_trip_shapes_and_compression(trained):
    dataset, _, model = trained
    x = torch.randn(2, 6, 33, 64)
    with torch.no_grad():
        z = model.encode(x)
        y = model.decode(z)
    assert z.shape == (2, 64, 3, 4)  # 33 latitudes padded to 48 at the south end, then ÷16; 64 ÷ 16
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert z.abs().max() <= model.config.latent_bound
    assert x[0].numel() / z[0].numel() == pytest.approx(16.5)  # 6·33·64 / (64·3·4)


def test_latlon_config_is_equivariant_to_longitude_shifts_only(trained):
    _, _, model = trained
    x = torch.randn(1, 6, 33, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = model.encode(x)
        shifted = model.encode(torch.roll(x, 16, dims=-1))  # 16 pixels = one latent column
        flipped = model.encode(torch.flip(x, dims=[-2]))  # north-south mirror: not a symmetry of the padding
    torch.testing.assert_close(shifted, torch.roll(z, 1, dims=-1), atol=1e-4, rtol=1e-4)
    assert (flipped - torch.flip(z, dims=[-2])).abs().max() > 1e-3

"""encode: streamed latents equal the encoder's output; saved folders are checked; bad input fails cleanly."""

import json

import warnings

import numpy as np
import pytest
import torch
import xarray as xr

from conftest import make_box_dataset, make_latlon_dataset
from latentda import cli
from latentda.components import load_autoencoder, save_autoencoder
from latentda.data import FieldLayout, compute_statistics, open_dataset, write_dataset
from latentda.encoding import encode_dataset
from latentda.errors import LatentdaError
from latentda.nn.autoencoder import AutoEncoder


def _autoencoder(tmp_path, dataset, name="ae"):
    torch.manual_seed(0)
    layout = FieldLayout.from_dataset(dataset)
    statistics = compute_statistics(dataset, layout, progress=False)
    model = AutoEncoder(in_channels=layout.num_channels, latent_channels=3, hidden_channels=[8, 16], blocks_per_stage=1,
                        sample_size=list(layout.shape), periodic=list(layout.periodic))
    return save_autoencoder(tmp_path / name, model, layout, statistics)


@pytest.mark.parametrize("make", [make_box_dataset, make_latlon_dataset])
def test_streamed_latents_equal_direct_encoding(tmp_path, make):
    dataset = make()
    data = write_dataset(dataset, tmp_path / "data.zarr")
    folder = _autoencoder(tmp_path, dataset)
    out = encode_dataset(folder, data, tmp_path / "latents.zarr", batch_size=5, progress=False)  # uneven batches
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consolidated: a user's xr.open_zarr does not warn
        xr.open_zarr(out)
    latents = open_dataset(out)
    model, layout, statistics = load_autoencoder(folder)
    has_trajectory = "trajectory" in dataset.dims
    x = layout.to_array(dataset, 1 if has_trajectory else None)
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(statistics.standardise(x))).numpy()
    got = latents["latent"].isel(trajectory=1).values if has_trajectory else latents["latent"].values
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert latents["latent"].encoding["chunks"][-4:] == (1, 3, *model.latent_shape[1:])
    xr.testing.assert_identical(latents["time"], dataset["time"])
    assert FieldLayout.from_dict(json.loads(latents.attrs["latentda_layout"])).channels == layout.channels
    assert latents.attrs["compression_factor"] == pytest.approx(model.compression_factor)


def test_values_on_the_fixed_mask_are_encoded_as_missing(tmp_path):
    """Pixels of the autoencoder's fixed mask were NaN (0 standardised) at every training step: values a file holds
    there (after the training period, say) enter the encoder as they did in training — missing — with a warning;
    the latents equal those of the same data with NaN there."""
    dataset = make_box_dataset(trajectories=1, times=6, size=8).isel(trajectory=0, drop=True)
    folder = _autoencoder(tmp_path, dataset)
    model, layout, statistics = load_autoencoder(folder)
    layout.mask = np.ones((layout.num_channels, *layout.shape), dtype=bool)
    layout.mask[0, :3, :2] = False  # u has no values there
    masked = save_autoencoder(tmp_path / "masked", model, layout, statistics)
    holes = dataset.copy(deep=True)
    holes["u"][:, :3, :2] = np.nan
    with pytest.warns(UserWarning, match=r"36 value\(s\) lie on the autoencoder's fixed mask"):
        full = encode_dataset(masked, write_dataset(dataset, tmp_path / "full.zarr"), tmp_path / "full-latents.zarr",
                              progress=False)
    empty = encode_dataset(masked, write_dataset(holes, tmp_path / "holes.zarr"), tmp_path / "hole-latents.zarr",
                           progress=False)
    np.testing.assert_array_equal(open_dataset(full)["latent"].values, open_dataset(empty)["latent"].values)
    filled = dataset.copy(deep=True)
    filled["u"][:, :3, :2] = 1e20  # an undeclared fill value on land: no data, not an error
    with pytest.warns(UserWarning, match="lie on the autoencoder's fixed mask"):
        fill = encode_dataset(masked, write_dataset(filled, tmp_path / "fill.zarr"), tmp_path / "fill-latents.zarr",
                              progress=False)
    np.testing.assert_array_equal(open_dataset(fill)["latent"].values, open_dataset(empty)["latent"].values)
    assert not np.array_equal(open_dataset(full)["latent"].values,
                              open_dataset(encode_dataset(folder, tmp_path / "full.zarr", tmp_path / "plain.zarr",
                                                          progress=False))["latent"].values)  # the mask matters


def test_folder_checks(tmp_path):
    folder = _autoencoder(tmp_path, make_box_dataset())
    (folder / "statistics.json").unlink()
    with pytest.raises(LatentdaError, match="statistics file not found"):
        load_autoencoder(folder)
    folder = _autoencoder(tmp_path, make_box_dataset(), "ae2")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(LatentdaError, match="refusing pickle-based weight file"):
        load_autoencoder(folder)
    folder = _autoencoder(tmp_path, make_box_dataset(), "ae3")
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"truncated")
    with pytest.raises(LatentdaError, match="cannot load the autoencoder weights"):
        load_autoencoder(folder)
    folder = _autoencoder(tmp_path, make_box_dataset(), "ae4")
    other = _autoencoder(tmp_path, make_latlon_dataset(), "other")
    (folder / "layout.json").write_text((other / "layout.json").read_text())
    with pytest.raises(LatentdaError, match="statistics channels"):
        load_autoencoder(folder)


def test_encode_rejects_other_grid_and_writes_nothing(tmp_path, capsys):
    folder = _autoencoder(tmp_path, make_box_dataset())
    other = write_dataset(make_box_dataset(size=8), tmp_path / "small.zarr")
    out = tmp_path / "latents.zarr"
    code = cli.main(["encode", "--autoencoder", str(folder), "--data", str(other), "--out", str(out), "--quiet"])
    assert code == 2
    assert "dimension 'y' has size 8, expected 16" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".latents*"))


def test_encode_does_not_overwrite(tmp_path):
    dataset = make_box_dataset(trajectories=3, times=4)
    data = write_dataset(dataset, tmp_path / "data.zarr")
    folder = _autoencoder(tmp_path, dataset)
    out = encode_dataset(folder, data, tmp_path / "latents.zarr", progress=False)
    before = open_dataset(out).load()
    with pytest.raises(LatentdaError, match="already exists"):
        encode_dataset(folder, data, out, progress=False)
    xr.testing.assert_identical(open_dataset(out).load(), before)


def test_encode_reads_zarr_format_2_sources(tmp_path):
    """Coordinates carrying zarr-2 codecs (e.g. Blosc) must not leak into the zarr-3 output."""
    dataset = make_box_dataset(trajectories=2, times=3)
    data = tmp_path / "v2.zarr"
    dataset.to_zarr(data, zarr_format=2, consolidated=True)
    folder = _autoencoder(tmp_path, dataset)
    latents = open_dataset(encode_dataset(folder, data, tmp_path / "latents.zarr", progress=False))
    assert latents["latent"].shape[:2] == (2, 3)

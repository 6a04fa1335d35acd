"""Inputs: the format told by the content, not the name; several files merged by a glob pattern."""

import numpy as np
import pytest
import xarray as xr

from conftest import make_box_dataset
from latentda import cli
from latentda.data import open_dataset
from latentda.data.io import input_format
from latentda.errors import LatentdaError


def test_netcdf_with_any_name_is_read_by_its_content(tmp_path):
    dataset = make_box_dataset(trajectories=1, times=4, size=8).isel(trajectory=0)
    dataset.to_netcdf(tmp_path / "storm.cdf", engine="scipy")  # netCDF-3, the name of the files
    dataset.to_netcdf(tmp_path / "storm", engine="h5netcdf")  # netCDF-4 without a suffix
    for name in ("storm.cdf", "storm"):
        assert input_format(tmp_path / name) == "netcdf"
        np.testing.assert_array_equal(open_dataset(tmp_path / name)["u"].values, dataset["u"].values)
    (tmp_path / "fake.nc").write_text("time,u\n0,1\n")
    with pytest.raises(LatentdaError, match="fake.nc: neither a netCDF file"):
        open_dataset(tmp_path / "fake.nc")


def test_files_of_one_variable_each_merge_by_pattern(tmp_path, capsys):
    dataset = make_box_dataset(trajectories=1, times=4, size=8).isel(trajectory=0)
    for name in dataset.data_vars:
        dataset[[name]].to_netcdf(tmp_path / f"part_{name}.cdf", engine="scipy")
    merged = open_dataset(tmp_path / "part_*.cdf")
    assert sorted(merged.data_vars) == sorted(dataset.data_vars)
    xr.testing.assert_allclose(merged[list(dataset.data_vars)], dataset[list(dataset.data_vars)])
    assert cli.main(["inspect", str(tmp_path / "part_*.cdf")]) == 0
    shifted = dataset[["u"]].assign_coords(x=dataset["x"] + 0.5)  # another grid: no exact join
    shifted.rename({"u": "w"}).to_netcdf(tmp_path / "part_w.cdf", engine="scipy")
    with pytest.raises(LatentdaError, match=r"the 3 files do not merge"):
        open_dataset(tmp_path / "part_*.cdf")
    with pytest.raises(LatentdaError, match="matches no file"):
        open_dataset(tmp_path / "none_*.nc")
    for month, part in enumerate((dataset.isel(time=slice(0, 2)), dataset.isel(time=slice(2, 4)))):  # split along time
        part.to_netcdf(tmp_path / f"month_{month}.nc", engine="h5netcdf")
    with pytest.raises(LatentdaError, match="they hold different times .*join them along time into one store"):
        open_dataset(tmp_path / "month_*.nc")

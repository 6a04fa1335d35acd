"""Data layer: exact round trips, streaming statistics against numpy, splits, windows, bad input."""

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from conftest import make_box_dataset, make_latlon_dataset
from latentda.data import (
    FieldLayout, FieldSource, Statistics, WindowDataset, compute_statistics, open_dataset, split_segments, write_dataset,
)
from latentda.errors import LatentdaError


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_latlon_round_trip_is_exact(tmp_path, suffix):
    original = make_latlon_dataset()
    path = write_dataset(original, tmp_path / f"data{suffix}")
    dataset = open_dataset(path)
    layout = FieldLayout.from_dataset(dataset)
    assert layout.channels == ["mean_sea_level_pressure", "temperature@500", "temperature@850"]
    assert layout.periodic == (False, True)  # longitude circle detected from the coordinate spacing
    array = layout.to_array(dataset)
    assert array.shape == (6, 3, 8, 16)
    rebuilt = layout.to_dataset(array, dataset["time"])
    xr.testing.assert_identical(rebuilt, original)

    # the layout survives JSON: a saved layout inverts the mapping just as well
    layout.save(tmp_path / "layout.json")
    again = FieldLayout.load(tmp_path / "layout.json").to_dataset(array, dataset["time"])
    xr.testing.assert_identical(again, original)


def test_box_round_trip_with_trajectories(tmp_path):
    original = make_box_dataset()
    dataset = open_dataset(write_dataset(original, tmp_path / "box.zarr"))
    layout = FieldLayout.from_dataset(dataset)
    assert layout.periodic == (True, True) and not layout.is_latlon
    stacked = np.stack([layout.to_array(dataset, i) for i in range(dataset.sizes["trajectory"])])
    rebuilt = layout.to_dataset(stacked, dataset["time"], leading=[("trajectory", dataset["trajectory"].values)])
    xr.testing.assert_equal(rebuilt, original)
    assert rebuilt["y"].attrs["periodic"] == 1


def test_partial_reads_match_full(box_dataset):
    layout = FieldLayout.from_dataset(box_dataset)
    full = layout.to_array(box_dataset, 2)
    np.testing.assert_array_equal(layout.to_array(box_dataset, 2, slice(3, 7)), full[3:7])


def test_area_weights():
    layout = FieldLayout.from_dataset(make_latlon_dataset())
    lat = np.deg2rad(layout.grid[0].values)  # ±87.5° in steps of 25°: the outer bands are clipped at the poles
    ratio = layout.area_weights(floor=0)[1:-1, 0] / np.cos(lat[1:-1])  # the others' cell areas are ∝ cos φ
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)
    weights = layout.area_weights()[:, 0]  # the default floors the two outer rows (more in tests/test_poles.py)
    assert weights.mean() == pytest.approx(1.0)
    assert weights.min() == pytest.approx(0.25)


def test_streaming_statistics_match_numpy(box_dataset):
    layout = FieldLayout.from_dataset(box_dataset)
    statistics = compute_statistics(box_dataset, layout, chunk_size=5, progress=False)  # uneven chunks
    everything = np.stack([layout.to_array(box_dataset, i) for i in range(5)]).astype(np.float64)
    np.testing.assert_allclose(statistics.mean, everything.mean(axis=(0, 1, 3, 4)), rtol=1e-10)
    np.testing.assert_allclose(statistics.std, everything.std(axis=(0, 1, 3, 4)), rtol=1e-10)
    assert statistics.count == 5 * 12 * 16 * 16


def test_statistics_save_load_and_standardise(tmp_path, box_dataset):
    layout = FieldLayout.from_dataset(box_dataset)
    statistics = compute_statistics(box_dataset, layout, progress=False)
    statistics.save(tmp_path / "statistics.json")
    loaded = Statistics.load(tmp_path / "statistics.json")
    np.testing.assert_array_equal(loaded.mean, statistics.mean)
    x = layout.to_array(box_dataset, 0).astype(np.float64)
    z = loaded.standardise(x)
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=0.2)
    np.testing.assert_allclose(loaded.destandardise(z), x, rtol=1e-12)


def test_splits_by_trajectory_and_by_time(box_dataset, latlon_dataset):
    splits = split_segments(make_box_dataset(trajectories=10))
    assert [s.trajectory for s in splits["train"]] == list(range(8))
    assert [s.trajectory for s in splits["valid"]] == [8] and [s.trajectory for s in splits["test"]] == [9]
    splits = split_segments(make_latlon_dataset(times=20))
    assert [(s.start, s.stop) for k in ("train", "valid", "test") for s in splits[k]] == [(0, 16), (16, 18), (18, 20)]


def test_window_dataset_reads_standardised_windows(tmp_path):
    path = write_dataset(make_box_dataset(), tmp_path / "box.zarr")
    dataset = open_dataset(path)
    layout = FieldLayout.from_dataset(dataset)
    splits = split_segments(dataset, (0.6, 0.2, 0.2))
    statistics = compute_statistics(dataset, layout, splits["train"], progress=False)
    windows = WindowDataset(FieldSource(path, layout, statistics), splits["train"], window=4, stride=2)
    assert len(windows) == 3 * 5  # 3 trajectories, starts 0,2,4,6,8
    item = windows[6]  # trajectory 1, start 2
    expected = statistics.standardise(layout.to_array(dataset, 1, slice(2, 6)))
    np.testing.assert_allclose(item.numpy(), expected, rtol=1e-6)
    assert item.dtype.is_floating_point and item.shape == (4, 2, 16, 16)


def test_fields_held_in_memory_read_as_from_disk(tmp_path, monkeypatch):
    """Fields within windows.IN_MEMORY_BYTES are read whole once and sliced (train-ae's windows): every window equals
    the one read from disk (the budget 0), with and without a trajectory dimension, float64 files included; a NaN
    outside the mask stops at the same window with the same message; a pickled source leaves the arrays behind."""
    import pickle

    from latentda.data import windows

    default = windows.IN_MEMORY_BYTES
    box = make_box_dataset(trajectories=3, times=10, size=8)
    box["v"] = box["v"].astype(np.float64)
    broken = box.copy(deep=True)
    broken["u"][2, 7, 3, 3] = np.nan  # trajectory 2, step 7
    for name, data, trajectories in (("box.zarr", box, True), ("one.nc", box.isel(trajectory=1, drop=True), False),
                                     ("broken.zarr", broken, True)):
        path = write_dataset(data, tmp_path / name)
        layout = FieldLayout.from_dataset(open_dataset(path))
        statistics = compute_statistics(box, FieldLayout.from_dataset(box), progress=False)
        segments = split_segments(open_dataset(path), (1.0, 0.0, 0.0))["train"]
        outcomes = {}
        for budget in (default, 0):
            monkeypatch.setattr(windows, "IN_MEMORY_BYTES", budget)
            dataset = WindowDataset(FieldSource(path, layout, statistics), segments, window=3)
            items = []
            for i in range(len(dataset)):
                try:
                    items.append(dataset[i].numpy())
                except LatentdaError as error:
                    items.append(str(error))
            outcomes[budget] = items
            assert (dataset.source._values is not None) == (budget > 0)
            assert pickle.loads(pickle.dumps(dataset.source))._values is None
        held, disk = outcomes.values()
        assert len(held) == len(disk) == (3 if trajectories else 1) * 8
        for a, b in zip(held, disk):
            if isinstance(b, str):
                assert a == b and "trajectory 2" in b and "step 7" in b
            else:
                np.testing.assert_array_equal(a, b)
        assert sum(isinstance(item, str) for item in disk) == (3 if name == "broken.zarr" else 0)


def test_a_corrupt_chunk_no_window_reads_does_not_stop_training(tmp_path):
    """A source held in memory is read whole: a corrupt chunk where no training window reads (the test split's last
    state) must not stop train-ae or train-ldm: the source falls back to reading window by window, and a window that
    touches the chunk names it as before."""
    from latentda.data.splits import Segment
    from latentda.data.windows import LatentSource

    path = write_dataset(make_box_dataset(trajectories=2, times=6, size=8), tmp_path / "box.zarr")
    latents = tmp_path / "z.zarr"
    xr.Dataset({"latent": (("trajectory", "time", "channel", "latent_y", "latent_x"), np.zeros((2, 6, 2, 2, 2), np.float32))},
               coords={"time": np.arange(6.0)}).to_zarr(latents, encoding={"latent": {"chunks": (1, 1, 2, 2, 2)}})
    for chunk in (path / "u" / "c" / "0" / "5" / "0" / "0", latents / "latent" / "c" / "1" / "5" / "0" / "0" / "0"):
        chunk.write_bytes(b"not zstd at all")
    layout = FieldLayout.from_dataset(open_dataset(path))
    statistics = Statistics(channels=layout.channels, mean=np.zeros(2), std=np.ones(2))
    for source in (FieldSource(path, layout, statistics), LatentSource(latents)):
        windows = WindowDataset(source, [Segment(0, 0, 5), Segment(1, 0, 5)], window=2)
        assert all(np.isfinite(windows[i].numpy()).all() for i in range(len(windows)))  # steps 0 to 4
        assert source._values is None  # left on disk
        with pytest.raises(LatentdaError, match="cannot read variable '(u|latent)'.*a corrupt chunk"):
            source.read(1, 4, 6)


def test_bad_inputs(tmp_path):
    with pytest.raises(LatentdaError, match="no such file"):
        open_dataset(tmp_path / "missing.nc")
    (tmp_path / "junk.nc").write_text("not a netcdf file")
    with pytest.raises(LatentdaError, match="junk.nc: neither a netCDF file"):
        open_dataset(tmp_path / "junk.nc")
    (tmp_path / "broken.nc").write_bytes(b"CDF\x01" + b"\x00" * 3 + b"garbage")  # the signature, then nothing valid
    with pytest.raises(LatentdaError, match="not a readable netcdf"):
        open_dataset(tmp_path / "broken.nc")
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(LatentdaError, match="data.csv: neither a netCDF file"):
        open_dataset(tmp_path / "data.csv")
    dataset = make_latlon_dataset()
    with pytest.raises(LatentdaError, match="no 'time' dimension"):
        FieldLayout.from_dataset(dataset.isel(time=0))
    with pytest.raises(LatentdaError, match="no 2-D grid"):
        FieldLayout.from_dataset(dataset.isel(longitude=0))
    with pytest.raises(LatentdaError, match="unknown variable.*humidity"):
        FieldLayout.from_dataset(dataset, ["temperature", "humidity"])
    broken = dataset.copy(deep=True)
    broken["temperature"][2, 1, 3, 4] = np.nan
    layout = FieldLayout.from_dataset(broken)
    with pytest.raises(LatentdaError, match="'temperature' holds NaN"):
        compute_statistics(broken, layout, progress=False)


def test_layout_check_rejects_other_grid():
    layout = FieldLayout.from_dataset(make_latlon_dataset())
    other = make_latlon_dataset().assign_coords(latitude=np.linspace(-80, 80, 8))
    with pytest.raises(LatentdaError, match="coordinate 'latitude' differs"):
        layout.check(other)
    with pytest.raises(LatentdaError, match="lacks variable 'temperature'"):
        layout.check(other.drop_vars("temperature"))


def test_ensembles_carry_cf_coordinates_and_no_input_global_attributes(tmp_path):
    from latentda.data.ensemble_store import ensemble_dataset

    dataset = make_latlon_dataset()
    layout = FieldLayout.from_dataset(dataset.assign_coords(latitude=dataset["latitude"].assign_attrs(units="degrees")))
    fields = layout.to_array(dataset)[None]
    output = ensemble_dataset(layout, fields, dataset["time"], attrs={"title": "a reanalysis"})
    assert output.attrs == {"title": "a reanalysis", "Conventions": "CF-1.10"}  # not the input's title
    assert output["latitude"].attrs == {"long_name": "latitude", "standard_name": "latitude", "units": "degrees_north",
                                        "axis": "Y"}  # CF units, whatever the input said
    assert output["longitude"].attrs == {"long_name": "longitude", "standard_name": "longitude", "units": "degrees_east",
                                         "axis": "X"}
    assert output["level"].attrs["axis"] == "Z" and output["level"].attrs["units"] == "hPa"
    assert output["time"].attrs == {"long_name": "time", "axis": "T", "standard_name": "time"}
    assert list(output.data_vars) == [spec.name for spec in layout.variables]
    forecast = ensemble_dataset(layout, fields, xr.DataArray(np.arange(6) * np.timedelta64(6, "h"), dims="time"),
                                init_time=dataset["time"][:1])
    assert forecast["prediction_timedelta"].attrs == {"long_name": "forecast lead time", "standard_name": "forecast_period"}
    assert forecast["time"].attrs["standard_name"] == "forecast_reference_time" and forecast["time"].attrs["axis"] == "T"
    write_dataset(forecast, tmp_path / "forecast.nc")  # CF attributes and xarray's time encoding agree


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    dataset = make_box_dataset()
    target = tmp_path / "out.zarr"
    write_dataset(dataset, target)
    with pytest.raises(LatentdaError, match="already exists"):
        write_dataset(dataset, target)
    real_to_zarr = xr.Dataset.to_zarr

    def interrupted(self, store, **kwargs):  # writes part of the store, then dies
        real_to_zarr(self.isel(time=slice(0, 3)), store, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.Dataset, "to_zarr", interrupted)
    for overwrite in (False, True):
        with pytest.raises(KeyboardInterrupt):
            write_dataset(dataset, tmp_path / ("other.zarr" if not overwrite else "out.zarr"), overwrite=overwrite)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
    xr.testing.assert_equal(open_dataset(target).load(), dataset)


def test_replacing_an_output_never_leaves_neither(tmp_path, monkeypatch):
    """--overwrite: a file is replaced by one rename; a folder (zarr) is swapped in two, and Ctrl-C arriving between
    them is held back until the new folder is in place (before, it left the path empty, the old output hidden in
    .out.zarr.old-*); the interrupt is then delivered, and nothing else is left beside the output."""
    import os
    import signal

    from latentda.data import io

    renames = []
    real_replace = os.replace

    def replace(source, target):
        real_replace(source, target)
        renames.append(Path(target).name)
        if len(renames) == 1 and Path(target).name.startswith(".out.zarr.old-"):
            signal.raise_signal(signal.SIGINT)  # Ctrl-C right after the old folder is moved aside

    monkeypatch.setattr(io.os, "replace", replace)
    # Python's own Ctrl-C handler: a suite started with SIGINT ignored (some background launches) would ignore the
    # held-back interrupt, as it goes to the handler of before (tests/test_simulate.py does the same)
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        (tmp_path / "out.txt").write_text("old")
        with io.atomic_path(tmp_path / "out.txt", overwrite=True) as temporary:
            temporary.write_text("new")
        assert (tmp_path / "out.txt").read_text() == "new" and renames == ["out.txt"]  # one atomic rename
        (tmp_path / "out.zarr").mkdir()
        (tmp_path / "out.zarr" / "a").write_text("old")
        renames.clear()
        with pytest.raises(KeyboardInterrupt):
            with io.atomic_path(tmp_path / "out.zarr", overwrite=True) as temporary:
                temporary.mkdir()
                (temporary / "a").write_text("new")
        assert (tmp_path / "out.zarr" / "a").read_text() == "new"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "out.zarr"]
    finally:
        signal.signal(signal.SIGINT, ignored)


def test_a_terminated_folder_swap_leaves_the_new_output_alone(tmp_path):
    """SIGTERM with its default action (a Python program calling the API) between the two renames of a folder's
    swap: the process ends once the swap is complete and the old folder removed — nothing left beside the output."""
    import subprocess
    import sys

    script = f"""
import os, signal
from pathlib import Path
from latentda.data import io
real = os.replace
def replace(source, target):
    real(source, target)
    if Path(target).name.startswith(".out.zarr.old-"):
        os.kill(os.getpid(), signal.SIGTERM)
io.os.replace = replace
out = Path({str(tmp_path)!r}) / "out.zarr"
with io.atomic_path(out, overwrite=True) as temporary:
    temporary.mkdir()
    (temporary / "a").write_text("new")
print("not reached")
"""
    (tmp_path / "out.zarr").mkdir()
    (tmp_path / "out.zarr" / "a").write_text("old")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == -15 and "not reached" not in result.stdout, result.stderr
    assert (tmp_path / "out.zarr" / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_netcdf3_classic_files_are_read(tmp_path):
    dataset = make_box_dataset(trajectories=2, times=3, size=4)
    path = tmp_path / "classic.nc"
    dataset.to_netcdf(path, engine="scipy", format="NETCDF3_64BIT")
    xr.testing.assert_allclose(open_dataset(path).load(), dataset)


def test_rewriting_a_zarr_2_store(tmp_path):
    dataset = make_box_dataset(trajectories=2, times=3, size=4)
    dataset.to_zarr(tmp_path / "v2.zarr", zarr_format=2)
    for suffix in (".zarr", ".nc"):
        out = write_dataset(open_dataset(tmp_path / "v2.zarr").isel(trajectory=slice(0, 1)), tmp_path / f"copy{suffix}")
        xr.testing.assert_allclose(open_dataset(out).load(), dataset.isel(trajectory=slice(0, 1)))


def test_layouts_of_files_as_users_have_them():
    """A float level (recent ERA5) is named by its value (t@850 is t@850.0); CF's time_bnds is not a field; longitudes
    are angles — a global circle rolled to −180…180 without sorting is still a circle, a region across Greenwich
    contiguous — but a coordinate out of order is refused; another unit than the model's is refused where both give
    one."""
    dataset = make_latlon_dataset()
    floats = dataset.assign_coords(level=dataset["level"].astype(np.float64))
    floated = FieldLayout.from_dataset(floats)
    assert floated.channels == ["mean_sea_level_pressure", "temperature@500.0", "temperature@850.0"]  # as saved before
    assert floated.channel_index("temperature@850") == 2 and floated.channel_index("temperature@850.0") == 2
    assert floated.channel_index("temperature@700") is None and floated.channel_index("temperature") is None
    bounds = dataset.assign(time_bnds=(("time", "bnds"), np.zeros((dataset.sizes["time"], 2))))
    assert FieldLayout.from_dataset(bounds).channels == FieldLayout.from_dataset(dataset).channels
    rolled = dataset.assign_coords(longitude=(dataset["longitude"] + 180) % 360 - 180)
    assert FieldLayout.from_dataset(rolled).periodic == (False, True)
    shuffled = dataset.isel(longitude=[0, 2, 1, *range(3, 16)])
    with pytest.raises(LatentdaError, match=r"coordinate 'longitude' is not monotonic \(at index 2: 45 → 22.5\): "
                                            r"sort it first, e.g. dataset.sortby\('longitude'\) in the convention"):
        FieldLayout.from_dataset(shuffled)
    regional = dataset.isel(longitude=[14, 15, 0, 1, 2])  # 315, 337.5, 0, 22.5, 45: across Greenwich, contiguous
    assert FieldLayout.from_dataset(regional).grid[1].values == [315.0, 337.5, 0.0, 22.5, 45.0]
    with pytest.raises(LatentdaError, match="coordinate 'latitude' is not monotonic"):
        FieldLayout.from_dataset(dataset.isel(latitude=[0, 2, 1, 3]))
    layout = FieldLayout.from_dataset(dataset)
    celsius = dataset.assign(temperature=(dataset["temperature"] - 273.15).assign_attrs(units="degC"))
    with pytest.raises(LatentdaError, match=r"variable 'temperature' is in 'degC', the model's in 'K': convert it first"):
        layout.check(celsius)
    layout.check(dataset.assign(temperature=dataset["temperature"].assign_attrs(units="")))  # no unit given: not checked
    projected = dataset.assign(temperature=dataset["temperature"].assign_attrs(grid_mapping="crs"), crs=0)
    layout = FieldLayout.from_dataset(projected)
    output = layout.to_dataset(layout.to_array(projected), projected["time"])
    assert "grid_mapping" not in output["temperature"].attrs and output["temperature"].attrs["units"] == "K"  # no dangling

"""Time axes (latentda.data.times): found under another name, CF-decoded, refused when irregular —
by inspect, train-ae, encode and train-ldm before any work (those cases are in test_bad_inputs.py),
and by reanalyze through the same function."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conftest import make_box_dataset, make_latlon_dataset
from latentda import cli
from latentda.data import FieldLayout, open_dataset, split_segments, standard_time_axis, time_step, write_dataset
from latentda.errors import LatentdaError

HOURS = {"units": "hours since 1940-01-01", "long_name": "time"}


def hours_axis(hours, dim: str = "time_index") -> xr.Dataset:
    """The lat-lon fixture on an integer time axis ``dim`` in hours since 1940-01-01 (undecoded)."""
    dataset = make_latlon_dataset(times=len(hours)).rename(time=dim)
    return dataset.assign_coords({dim: (dim, np.asarray(hours), HOURS)})


def test_regular_axes_give_their_step():
    assert time_step(xr.DataArray(pd.date_range("2020-01-01", periods=5, freq="6h"), dims="time")) == (21600.0, "seconds")
    box = make_box_dataset()
    assert time_step(box["time"]) == (pytest.approx(0.2), "1")
    assert time_step(box["time"].isel(time=[0])) == (1.0, "1")  # one state: no step to check
    assert time_step(box["time"], expected=0.2) == (pytest.approx(0.2), "1")


def test_irregular_axes_name_the_index_the_times_and_the_expected_step():
    decoded = standard_time_axis(hours_axis([0, 7, 14, 21, 29, 36]))
    with pytest.raises(LatentdaError, match=r"^irregular time axis at index 4: 1940-01-01T21:00:00 → 1940-01-02T05:00:00 "
                                            r"is 8 hours, expected 7 hours \(the first step\)"):
        time_step(decoded["time"])
    with pytest.raises(LatentdaError, match=r"irregular time axis at index 2: 0.2 → 0.5 is 0.3, expected 0.2"):
        time_step(xr.DataArray([0.0, 0.2, 0.5], dims="time"))
    with pytest.raises(LatentdaError, match=r"time axis not increasing at index 1 \(3 → 3\)"):
        time_step(xr.DataArray([3, 3, 4], dims="time"))
    apart = "observation times: consecutive times are 6 hours apart, the model's step is 1 hour"
    with pytest.raises(LatentdaError, match=apart):
        time_step(decoded["time"].isel(time=[0, 1]) + np.array([0, -1], "timedelta64[h]"), expected=3600.0,
                  what="observation times")
    with pytest.raises(LatentdaError, match="irregular time axis at index 4"):  # every split is regular first
        split_segments(decoded)


def test_integer_hours_since_are_decoded_and_the_dimension_renamed():
    dataset = standard_time_axis(hours_axis([0, 6, 12, 18]))
    assert "time_index" not in dataset.variables and dataset.sizes["time"] == 4
    assert dataset["time"].values[1] == np.datetime64("1940-01-01T06:00")
    assert time_step(dataset["time"]) == (21600.0, "seconds")
    assert FieldLayout.from_dataset(dataset).channels[0] == "mean_sea_level_pressure"
    # a 1-D coordinate along 'time' with CF units becomes the time coordinate; decode_times=False values are decoded
    along = make_latlon_dataset(times=3).drop_vars("time").assign_coords(valid=("time", [0, 6, 12], HOURS))
    assert standard_time_axis(along)["time"].values[2] == np.datetime64("1940-01-01T12:00")


def test_time_dim_names_the_axis_and_bad_names_are_one_line_errors():
    box = make_box_dataset().rename(time="step")
    assert standard_time_axis(box)["step"].size == 12  # plain numbers: not recognised as time
    assert standard_time_axis(box, "step").sizes["time"] == 12
    with pytest.raises(LatentdaError, match="time dimension 'when' not found"):
        standard_time_axis(box, "when")
    with pytest.raises(LatentdaError, match="already has a 'time' variable"):
        standard_time_axis(box.assign_coords(time=("step", np.arange(12))), "step")
    with pytest.raises(LatentdaError, match="time units 'hours since doomsday' cannot be decoded"):
        standard_time_axis(hours_axis([0, 6]).assign_coords(time_index=("time_index", [0, 6], {"units": "hours since doomsday"})))


def test_inspect_reads_a_renamed_time_axis_end_to_end(tmp_path, capsys):
    path = write_dataset(hours_axis(6 * np.arange(10), dim="valid_time"), tmp_path / "era.nc")
    assert cli.main(["inspect", "--quiet", str(path)]) == 0
    out = capsys.readouterr().out
    assert "'time': 10" in out and "time step 6 hours (regular)" in out and "mean_sea_level_pressure" in out
    assert "times 1940-01-01T00:00:00 … 1940-01-03T06:00:00: date-times" in out  # the span, as dates
    assert "3 (grid ÷4): 4 × 2 × 4, compression ×12; patch_size p_h in {1, 2}, p_w in {1, 2, 4}" in out  # default depth

    box = write_dataset(make_box_dataset().rename(time="step"), tmp_path / "box.zarr")
    assert cli.main(["inspect", "--quiet", str(box)]) == 2
    assert "give the time dimension's name with --time-dim" in capsys.readouterr().err
    assert cli.main(["inspect", "--quiet", str(box), "--time-dim", "step"]) == 0
    out = capsys.readouterr().out
    assert "time step 0.2 (regular)" in out and "times 0 … 2.2: numbers (model time)" in out
    assert open_dataset(box, time_dim="step").sizes["time"] == 12


def test_datasets_given_to_the_api_find_a_renamed_time_axis_as_files_do(tmp_path):
    """pipeline.reanalyze/forecast take in-memory datasets whose time axis is, e.g., ERA5's valid_time
    (marked as time by CF), as the commands read such files: the same draws as with 'time'."""
    from conftest import make_tiny_pipeline
    from latentda.config import parse
    from latentda.observe import ObservationConfig, observations_to_dataset, synthesize

    pipeline, truth = make_tiny_pipeline(tmp_path / "pipeline", times=6)
    pipeline.set_progress_bar_config(disable=True)
    config = parse(ObservationConfig, {"observations": [{"name": "o", "variables": ["u"], "fraction": 0.5, "noise_std": 0.1}]})
    observations = observations_to_dataset(synthesize(pipeline.layout.to_array(truth), pipeline.layout, config, seed=1),
                                           pipeline.layout, truth["time"])
    marked = {"axis": "T", "long_name": "valid time"}
    renamed = observations.rename(time="valid_time").assign_coords(valid_time=lambda d: d["valid_time"].assign_attrs(marked))
    assert "time" not in renamed.dims
    options = {"members": 1, "steps": 2, "seed": 4}
    expected = pipeline.reanalyze(observations, **options)
    np.testing.assert_array_equal(pipeline.reanalyze(renamed, **options)["u"].values, expected["u"].values)
    initial = truth.rename(time="valid_time").assign_coords(valid_time=lambda d: d["valid_time"].assign_attrs(marked))
    np.testing.assert_array_equal(pipeline.forecast(2, initial=initial, **options)["u"].values,
                                  pipeline.forecast(2, initial=truth, **options)["u"].values)

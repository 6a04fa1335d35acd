"""Tabular observations (one row per observation) against the existing point-observation path;
time assignment, the window, errors, CSV/parquet files, the command line; NaN truth in observe."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_box_dataset, make_latlon_dataset, make_tiny_pipeline
from latentda import cli
from latentda.config import parse
from latentda.data import FieldLayout, open_dataset, write_dataset
from latentda.errors import LatentdaError
from latentda.observe import (
    ObservationConfig, ObservationGroup, observations_from_table, observations_to_dataset, open_observations,
    read_observations, synthesize, table_to_dataset,
)

SIX_HOURS = 21600.0


def _point_observations(dataset, variable, coordinates, noise_std=0.1, seed=0):
    """(layout, operator) of ``variable`` observed at ``coordinates`` (grid coordinates) at every
    step through the existing ``points`` sampling, some entries then dropped (NaN)."""
    layout = FieldLayout.from_dataset(dataset)
    config = parse(ObservationConfig, {"observations": [
        {"name": "p", "variables": [variable], "sampling": "points", "coordinates": coordinates, "noise_std": noise_std}]})
    operator = synthesize(layout.to_array(dataset), layout, config, seed=seed)
    dropped = np.random.default_rng(seed).uniform(size=operator.groups[0].values.shape) < 0.3
    dropped[0] = False  # every point keeps a row
    operator.groups[0].values[dropped] = np.nan
    return layout, operator


def _rows(operator, times, coordinates, columns, variable, noise_std):
    """The operator's observed entries as table rows, point by point (so the points appear in order)."""
    values = operator.groups[0].values
    return pd.DataFrame([{"time": times[t], columns[0]: coordinates[p][0], columns[1]: coordinates[p][1],
                          "variable": variable, "value": values[t, p], "noise_std": noise_std}
                         for p in range(values.shape[1]) for t in range(values.shape[0]) if not np.isnan(values[t, p])])


def _assert_same_operator(table_operator, operator, layout, length, rtol=1e-12):
    """Same y, σ and H(x) on random x (``rtol``: 1e-6 through a file, whose values are float32)."""
    y, std = operator.observed()
    y2, std2 = table_operator.observed()
    torch.testing.assert_close(y2, y, rtol=rtol, atol=rtol)
    torch.testing.assert_close(std2, std, rtol=1e-12, atol=0)
    x = torch.randn(3, length, layout.num_channels, *layout.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(table_operator(x), operator(x), rtol=1e-12, atol=1e-12)


def test_table_equals_point_observations_on_a_periodic_box():
    dataset = make_box_dataset(trajectories=1, times=5, size=16).isel(trajectory=0, drop=True)
    coordinates = [[0.3, 6.1], [2.0, 0.05], [5.9, 3.3], [1.1, 1.1]]  # (y, x); x = 6.1 lies between the last and the first column
    layout, operator = _point_observations(dataset, "v", coordinates)
    table = _rows(operator, dataset["time"].values, coordinates, ("y", "x"), "v", 0.1)
    converted = observations_from_table(table, layout, times=dataset["time"].values)
    assert [g.name for g in converted.groups] == ["v"] and converted.groups[0].noise_std == 0.1
    np.testing.assert_array_equal(converted.times, dataset["time"].values)
    _assert_same_operator(converted, operator, layout, 5)
    # inferred window: the rows span every step, at the model's step
    inferred = observations_from_table(table, layout, time_step=0.2)
    np.testing.assert_allclose(inferred.times, dataset["time"].values)
    _assert_same_operator(inferred, operator, layout, 5)


def test_levels_decreasing_latitude_wrap_and_datetimes():
    dataset = make_latlon_dataset(times=4).isel(latitude=slice(None, None, -1))  # latitude from 87.5 down to -87.5
    layout = FieldLayout.from_dataset(dataset)
    assert layout.grid[0].values[0] > layout.grid[0].values[-1] and layout.periodic == (False, True)
    coordinates = [[12.5, 350.0], [-60.2, 3.0], [80.0, 181.7]]  # (latitude, longitude)
    _, operator = _point_observations(dataset, "temperature@850", coordinates, noise_std=0.5)
    times = pd.to_datetime(dataset["time"].values) + pd.Timedelta("2h")  # within the default tolerance of 3 h
    wrapped = [[lat, lon - 360 if lon > 180 else lon] for lat, lon in coordinates]  # -10 is 350 on the circle
    table = _rows(operator, times, wrapped, ("lat", "lon"), "temperature", 0.5).assign(level=850.0)
    converted = observations_from_table(table, layout, times=dataset["time"].values)
    assert [g.name for g in converted.groups] == ["temperature_850"]
    _assert_same_operator(converted, operator, layout, 4)
    channel = table.drop(columns="level").assign(variable="temperature@850")  # the channel named in the variable column
    _assert_same_operator(observations_from_table(channel, layout, times=dataset["time"].values), operator, layout, 4)


def test_per_row_noise_round_trips_through_the_file(tmp_path):
    dataset = make_box_dataset(trajectories=1, times=4, size=8).isel(trajectory=0, drop=True)
    layout = FieldLayout.from_dataset(dataset)
    table = pd.DataFrame({"time": [0.0, 0.2, 0.2, 0.6, 0.6], "y": [1.0, 1.0, 2.5, 1.0, 1.0], "x": [0.5, 0.5, 3.0, 0.5, 0.5],
                          "variable": ["u", "u", "u", "v", "v"], "value": [0.1, 0.2, 0.3, 0.4, 0.5],
                          "noise_std": [0.1, 0.2, 0.3, 0.4, 0.4]})
    operator = observations_from_table(table, layout, time_step=0.2)
    u, v = operator.groups
    assert u.values.shape == (4, 2) and np.ndim(u.noise_std) == 2 and v.noise_std == 0.4
    assert v.values.shape == (4, 2)  # two rows at one position and state: two independent observations
    np.testing.assert_array_equal(operator.observed(representation=False)[1].numpy(), [0.1, 0.2, 0.3, 0.4, 0.4])
    path = write_dataset(observations_to_dataset(operator, layout, dataset["time"]), tmp_path / "obs.nc")
    observations = open_dataset(path)
    assert "u_noise_std" in observations and "noise_std" not in observations["u"].attrs
    again = read_observations(observations, layout)
    torch.testing.assert_close(again.observed()[1], operator.observed()[1], rtol=1e-6, atol=0)
    both = observations.assign(u=observations["u"].assign_attrs(noise_std=0.1))
    with pytest.raises(LatentdaError, match="not both"):
        read_observations(both, layout)
    representation = operator.with_representation_error(np.array([0.3, 0.0]))  # σ_eff² = σ_y² + 0.3² per entry
    np.testing.assert_allclose(representation.observed()[1].numpy()[:3], np.hypot([0.1, 0.2, 0.3], 0.3))


def test_exact_copies_of_rows_are_kept_and_warned_about():
    """Two rows at one position and state with different values are two observations (no warning); a table
    appended to itself keeps every row as an observation (2P points) but warns how many rows are copies."""
    dataset = make_box_dataset(trajectories=1, times=4, size=8).isel(trajectory=0, drop=True)
    layout = FieldLayout.from_dataset(dataset)
    table = pd.DataFrame({"time": [0.0, 0.0, 0.4], "y": [1.0, 1.0, 2.0], "x": [0.5, 0.5, 3.0], "variable": "u",
                          "value": [0.1, 0.2, 0.3], "noise_std": 0.1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert observations_from_table(table, layout, time_step=0.2).groups[0].values.shape == (3, 3)
    with pytest.warns(UserWarning, match=r"^3 observation row\(s\) repeat an earlier row exactly \(the first at position 3\)"):
        doubled = observations_from_table(pd.concat([table, table]), layout, time_step=0.2)
    assert np.count_nonzero(~np.isnan(doubled.groups[0].values)) == 6


def test_noise_per_entry_is_checked_where_observed():
    def group(noise_std):
        values = np.array([[1.0, np.nan], [np.nan, 2.0]])
        return ObservationGroup("g", [0], "identity", "points", values, noise_std, points=np.zeros((2, 2)))

    assert group(np.array([[0.1, np.nan], [np.nan, 0.2]])).observed()[1].tolist() == [0.1, 0.2]  # NaN where unobserved
    assert group(np.array([0.1, 0.2])).observed()[1].tolist() == [0.1, 0.2]  # broadcast over time: σ per point
    with pytest.raises(LatentdaError, match=r"positive at every observed entry \(1 are not\)"):
        group(np.array([[0.1, 0.3], [0.3, 0.0]]))
    with pytest.raises(LatentdaError, match="does not match"):
        group(np.ones(3))


def test_time_assignment_tolerance_and_window():
    dataset = make_latlon_dataset(times=2)
    layout = FieldLayout.from_dataset(dataset)
    base = pd.Timestamp("2020-01-01 00:00")
    offsets = ["0h", "2h", "3h", "4h", "5h59min", "9h", "10h"]

    def table(offsets):
        return pd.DataFrame({"time": [base + pd.Timedelta(o) for o in offsets], "latitude": 10.0, "longitude": 20.0,
                             "variable": "mean_sea_level_pressure", "value": 1e5, "noise_std": 50.0})

    operator = observations_from_table(table(offsets), layout, time_step=SIX_HOURS)
    assert operator.length == 3  # 00, 06, 12 h
    values = operator.groups[0].values  # 0, 2, 3 (a tie: the earlier) | 4, 5:59, 9 (a tie) | 10
    assert (~np.isnan(values)).sum(axis=1).tolist() == [3, 3, 1]
    assert observations_from_table(table(offsets[:-1]), layout, time_step=SIX_HOURS).length == 2  # 9 h: a tie, the earlier
    with pytest.raises(LatentdaError, match=r"5 observation row\(s\) are more than 1 hour .* first: 2020-01-01T02:00:00"):
        observations_from_table(table(offsets), layout, time_step=SIX_HOURS, time_tolerance="1h")
    with pytest.raises(LatentdaError, match="first: 2020-01-01T10:00:00"):  # outside a given window
        observations_from_table(table(offsets), layout, times=dataset["time"].values)
    window = observations_from_table(table(["3h"]), layout, time_step=SIX_HOURS, window_start="2020-01-01T00:00",
                                     window_length=4)
    np.testing.assert_array_equal(window.times, pd.date_range("2020-01-01", periods=4, freq="6h").to_numpy())
    numbers = observations_from_table(table(["0h"]).assign(time=[0.61]), layout, time_step=0.2, window_start=0.2)
    np.testing.assert_allclose(numbers.times, [0.2, 0.4, 0.6])
    with pytest.raises(LatentdaError, match="the table's times are numbers but the window's are datetimes"):
        observations_from_table(table(["0h"]).assign(time=[0.0]), layout, times=dataset["time"].values)
    with pytest.raises(LatentdaError, match="window start 'noon'"):
        observations_from_table(table(["0h"]), layout, time_step=SIX_HOURS, window_start="noon")


@pytest.mark.parametrize("change, message", [
    (lambda t: t.assign(variable="w"), r"unknown variable 'w' in 2 row\(s\) \(model has: mean_sea_level_pressure, temperature\)"),
    (lambda t: t.assign(variable="temperature"), "has levels .* give none"),
    (lambda t: t.assign(variable="temperature", level=[500, 300]), "has no level 300"),
    (lambda t: t.assign(level=[None, 500]), "variable 'mean_sea_level_pressure' has no levels"),
    (lambda t: t.assign(value=[1e5, np.nan]), r"1 row\(s\) with no finite number .* column 'value' \(first: row 1"),
    (lambda t: t.assign(noise_std=[0.0, 1.0]), r"1 row\(s\) with no positive number .* column 'noise_std' \(first: row 0"),
    (lambda t: t.assign(noise_std=[1.0, -2.0]), "no positive number"),
    (lambda t: t.drop(columns="noise_std"), "lacks the column 'noise_std'"),
    (lambda t: t.drop(columns="latitude"), "lacks the column 'latitude' or 'lat'"),
    (lambda t: t.assign(lat=t["latitude"]), "several columns for 'latitude'"),
    (lambda t: t.assign(latitude=[10.0, 89.0]), "outside the grid along 'latitude'"),
    (lambda t: t.assign(time=["2020-01-01", "yesterday"]), "no date-time"),
    (lambda t: t.iloc[:0], "no row"),
])
def test_bad_tables(change, message):
    layout = FieldLayout.from_dataset(make_latlon_dataset(times=2))
    table = pd.DataFrame({"time": ["2020-01-01T00:00", "2020-01-01T06:00"], "latitude": [10.0, -20.0],
                          "longitude": [20.0, 359.0], "variable": "mean_sea_level_pressure", "value": 1e5,
                          "noise_std": 50.0})
    assert observations_from_table(table, layout, time_step=SIX_HOURS).size == 2
    with pytest.raises(LatentdaError, match=message):
        observations_from_table(change(table), layout, time_step=SIX_HOURS)


def test_csv_and_parquet_files_are_told_by_content(tmp_path):
    dataset = make_latlon_dataset(times=3)
    layout = FieldLayout.from_dataset(dataset)
    table = pd.DataFrame({"time": pd.to_datetime(["2020-01-01 00:00", "2020-01-01 06:10", "2020-01-01 12:00"]),
                          "latitude": [10.0, 20.0, 30.0], "longitude": [0.0, 90.0, 355.0],
                          "variable": ["temperature", "temperature", "mean_sea_level_pressure"], "level": [500, 850, None],
                          "value": [280.0, 281.0, 1e5], "noise_std": [0.5, 0.5, 30.0]})
    expected = table_to_dataset(table, layout, time_step=SIX_HOURS)
    csv = tmp_path / "reports.txt"  # told by content: a comma-separated first line
    table.assign(time=table["time"].dt.strftime("%Y-%m-%dT%H:%M")).to_csv(csv, index=False)
    paths = [csv]
    pytest.importorskip("pyarrow")
    parquet = tmp_path / "reports.data"  # told by the magic bytes PAR1
    table.to_parquet(parquet)
    paths.append(parquet)
    for path in paths:
        read = open_observations(path)
        assert isinstance(read, pd.DataFrame), path
        converted = table_to_dataset(read, layout, time_step=SIX_HOURS)
        assert converted.identical(expected), path
    netcdf = write_dataset(expected, tmp_path / "obs.nc")
    assert open_observations(netcdf).identical(open_dataset(netcdf))
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(LatentdaError, match="neither an observation file .* nor a table"):
        open_observations(tmp_path / "junk.bin")


def test_reanalyze_a_csv_table_from_the_command_line(tmp_path, capsys):
    pipeline, truth = make_tiny_pipeline(tmp_path / "pipeline", times=6)
    layout = pipeline.layout
    coordinates = [[0.5, 0.5], [2.0, 5.9], [4.4, 1.0]]
    _, operator = _point_observations(truth, "u", coordinates)
    table = _rows(operator, truth["time"].values + 0.03, coordinates, ("y", "x"), "u", 0.1)  # 0.03 after the states
    csv = tmp_path / "obs.csv"
    table.to_csv(csv, index=False)
    converted = pipeline.observation_operator(pd.read_csv(csv), representation_error=False)  # the API takes a DataFrame
    _assert_same_operator(converted, operator, layout, 6, rtol=1e-6)
    np.testing.assert_allclose(converted.times, truth["time"].values + 0.03)  # the window starts at the earliest row
    run = ["reanalyze", "--pipeline", str(tmp_path / "pipeline"), "--members", "1", "--steps", "2", "--iterations", "1",
           "--quiet", "--observations", str(csv)]
    out = tmp_path / "post.nc"
    assert cli.main(run + ["--window-start", "0", "--out", str(out)]) == 0
    np.testing.assert_allclose(open_dataset(out)["time"].values, truth["time"].values)
    assert cli.main(run + ["--window-start", "-0.2", "--window-length", "8", "--out", str(tmp_path / "long.nc")]) == 0
    np.testing.assert_allclose(open_dataset(tmp_path / "long.nc")["time"].values, -0.2 + 0.2 * np.arange(8))
    observations = write_dataset(observations_to_dataset(operator, layout, truth["time"]), tmp_path / "obs.nc")
    write_dataset(truth, tmp_path / "truth.nc")
    ratios = []
    for given in (csv, observations):  # evaluate places the table on the prediction's times
        capsys.readouterr()
        assert cli.main(["evaluate", "--prediction", str(out), "--truth", str(tmp_path / "truth.nc"),
                         "--observations", str(given)]) == 0
        ratios.append(capsys.readouterr().out.split("observation residual ratio:")[1].split()[0])
    assert ratios[0] == ratios[1]
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    table.assign(variable="w").to_csv(bad, index=False)
    dated = tmp_path / "dated.csv"  # a day apart, for a model whose step is 0.2 (units "1"): not 432 000 states
    table.assign(time=pd.date_range("2020-01-01", periods=len(table), freq="D").astype(str)).to_csv(dated, index=False)
    for arguments, message in [(["--observations", str(bad)], "unknown variable 'w'"),
                               (["--observations", str(dated)], "the table's times are date-times, the model's are numbers"),
                               (["--window-start", "0", "--time-tolerance", "0.01"], "more than 0.01 from every state"),
                               (["--observations", str(observations), "--window-length", "8"], "--window-length: for tabular")]:
        assert cli.main(run + arguments + ["--out", str(tmp_path / "x.nc")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not (tmp_path / "x.nc").exists()


# -------------------------------------------------------------------------------- observe: NaN truth
def test_nan_truth_is_unobserved_and_counted():
    dataset = make_box_dataset(trajectories=1, times=3, size=8).isel(trajectory=0, drop=True)
    layout = FieldLayout.from_dataset(dataset)
    truth = layout.to_array(dataset)
    truth[:, 0, 2, 3] = np.nan  # a masked pixel of u (land)
    truth[1] = np.nan  # a missing step
    d = 2 * np.pi / 8  # the grid spacing: pixel (i, j) is at (i d, j d)
    config = parse(ObservationConfig, {"observations": [
        {"name": "grid", "variables": ["u"]},
        {"name": "coarse", "variables": ["u"], "sampling": "coarsen", "factor": 4},
        {"name": "points", "variables": ["u"], "sampling": "points", "coordinates": [[2 * d, 2 * d], [1.5 * d, 2.5 * d], [5 * d, 5 * d]]},
    ]})
    grid, coarse, points = synthesize(truth, layout, config).groups
    assert np.isnan(grid.values[:, 2, 3]).all() and np.isnan(grid.values[1]).all() and grid.mask.sum() == 2 * 63
    assert np.isnan(coarse.values[[0, 2], 0, 0]).all() and coarse.mask.sum() == 2 * 3  # the block holding (2, 3)
    assert points.mask[[0, 2]].tolist() == [[False, False, True]] * 2  # a NaN bilinear corner, even of zero weight
    assert [g.attrs["masked_by_truth"] for g in (grid, coarse, points)] == [64 + 2, 4 + 2, 3 + 2 * 2]  # step 1 + the mask
    with pytest.raises(LatentdaError, match="nothing observed: the truth is NaN"):
        synthesize(truth * np.nan, layout, config)


def test_observe_cli_reports_the_masked_truth(tmp_path, capsys):
    dataset = make_box_dataset(trajectories=1, times=4, size=8)
    u = dataset["u"].values.copy()
    u[0, :, :2, :] = np.nan  # two masked rows
    truth = write_dataset(dataset.assign(u=(dataset["u"].dims, u, dataset["u"].attrs)), tmp_path / "truth.nc")
    operator = tmp_path / "op.yaml"
    operator.write_text("observations:\n  - {name: o, variables: [u, v], noise_std: 0.1}\n")
    args = ["observe", "--truth", str(truth), "--operator", str(operator), "--quiet"]
    assert cli.main(args + ["--out", str(tmp_path / "obs.nc")]) == 0
    assert "448 observed values in 2 group(s); 64 left unobserved where the truth is NaN (masked)" in capsys.readouterr().out
    observations = open_dataset(tmp_path / "obs.nc")
    assert np.isnan(observations["o_u"].values[:, :2]).all() and not np.isnan(observations["o_u"].values[:, 2:]).any()
    u[0, :, :, :] = np.nan
    empty = write_dataset(dataset.assign(u=(dataset["u"].dims, u, dataset["u"].attrs)), tmp_path / "empty.nc")
    operator.write_text("observations:\n  - {name: o, variables: [u], noise_std: 0.1}\n")
    assert cli.main(["observe", "--truth", str(empty), "--operator", str(operator), "--out", str(tmp_path / "o.nc")]) == 2
    assert "nothing observed: the truth is NaN (masked) at all 256 selected entries" in capsys.readouterr().err
    assert not (tmp_path / "o.nc").exists()


def test_table_to_cycles_memory_grows_with_the_rows_not_states_times_positions():
    """100 states of 100 new positions each: the whole window's dataset holds (100 × 10 000) values and σ;
    read cycle by cycle, the peak is a fraction of one such array, and each cycle has its own 100 points
    with the dataset's values there."""
    import tracemalloc

    from latentda.observe import table_to_cycles

    dataset = make_box_dataset(trajectories=1, times=2, size=16).isel(trajectory=0, drop=True)
    layout = FieldLayout.from_dataset(dataset)
    rng = np.random.default_rng(0)
    states, per = 100, 100
    count = states * per
    table = pd.DataFrame({"time": np.repeat(np.arange(states, dtype=float), per), "y": rng.uniform(0, 15, count),
                          "x": rng.uniform(0, 15, count), "variable": "u", "value": rng.normal(size=count),
                          "noise_std": rng.uniform(0.1, 0.2, count)})
    tracemalloc.start()
    try:
        time, cycles = table_to_cycles(table, layout, time_step=1.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    dense = states * count * 8  # bytes of one (states × positions) float64 array
    assert peak < dense / 3, f"peak {peak / 2**20:.1f} MiB, one dense array {dense / 2**20:.1f} MiB"
    assert time.size == states and all(c.sizes["u_point"] == per for c in cycles)
    whole = table_to_dataset(table.iloc[-3 * per:], layout, time_step=1.0)  # the last 3 states, whole
    last = whole["u"].values[-1]
    np.testing.assert_array_equal(cycles[-1]["u"].values[0], last[~np.isnan(last)])
    np.testing.assert_array_equal(cycles[-1]["u_noise_std"].values[0], whole["u_noise_std"].values[-1][~np.isnan(last)])

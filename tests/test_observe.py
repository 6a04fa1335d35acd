"""Observation operators against direct computations; files round trip; synthetic noise; bad input."""

import numpy as np
import pytest
import torch
import xarray as xr

from conftest import make_box_dataset, make_latlon_dataset
from latentda import cli
from latentda.config import parse
from latentda.data import FieldLayout, open_dataset, write_dataset
from latentda.errors import LatentdaError
from latentda.observe import (
    ObservationConfig, ObservationGroup, ObservationOperator, observations_to_dataset, read_observations, synthesize,
)


def _field(T=3, C=2, H=8, W=8, seed=0):
    return torch.randn(2, T, C, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _group(sampling="grid", transform="identity", channels=(0,), shape=(8, 8), T=3, **kwargs):
    values = np.zeros((T, *shape))
    return ObservationGroup("g", list(channels), transform, sampling, values, 0.1, **kwargs)


def test_observations_reading_the_fixed_mask_are_left_out():
    """An entry that reads a pixel of the model's fixed mask (u has no values on a 3×3 land block; v everywhere)
    is left out — a point on land or with a land corner, a block holding land, a linear row weighing it — and one
    that does not read it (a zero weight: a row's, or a point's exactly on a sea pixel beside land; another channel)
    is kept; nothing left is an error."""
    valid = np.ones((2, 8, 8), dtype=bool)
    valid[0, 1:4, 1:4] = False
    T = 2
    points = ObservationGroup("p", [0], "identity", "points", np.zeros((T, 4)), 0.1,
                              points=np.array([[3.0, 3.0], [0.5, 0.5], [6.2, 6.7], [3.0, 0.0]]))
    blocks = ObservationGroup("b", [0], "identity", "coarsen", np.zeros((T, 2, 2)), 0.1, factor=4)
    matrix = np.zeros((2, 64))
    matrix[0, [3 * 8 + 3, 7 * 8 + 7]] = 0.5  # reads the land pixel (3, 3)
    matrix[1, [0, 1]] = 0.5  # reads (0, 0) and (0, 1) only: the land pixels have weight 0
    rows = ObservationGroup("m", [0], "identity", "linear", np.zeros((T, 2)), 0.1, matrix=matrix)
    other = ObservationGroup("v", [1], "identity", "grid", np.where(np.arange(64).reshape(8, 8) % 5 == 0, 1.0, np.nan)[None]
                             .repeat(T, axis=0), 0.1)
    operator = ObservationOperator([points, blocks, rows, other])
    kept, dropped = operator.off_mask(valid)
    assert dropped == T * (2 + 1 + 1)  # per time: 2 points, the top-left block, the first row
    observed = {group.name: group.mask[0] for group in kept.groups}
    assert observed["p"].tolist() == [False, False, True, True]  # (3, 0) is sea; its land corner (3, 1) has weight 0
    assert observed["b"].tolist() == [[False, True], [True, True]]
    assert observed["m"].tolist() == [False, True]
    np.testing.assert_array_equal(observed["v"], other.mask[0])  # v has values everywhere
    assert kept.size == operator.size - dropped
    field = _field(T=T)
    np.testing.assert_array_equal(kept(field).numpy(), torch.cat([g(field) for g in kept.groups], 1).numpy())
    on_land = ObservationOperator([ObservationGroup("l", [0], "identity", "points", np.zeros((T, 1)), 0.1,
                                                    points=np.array([[2.2, 1.9]]))])
    with pytest.raises(LatentdaError, match=r"all 2 observations read pixels of the model's fixed mask"):
        on_land.off_mask(valid)


def test_longitudes_compare_modulo_360_on_a_regional_grid():
    """On a lat-lon grid that is not a whole circle (no wrap), a longitude is still an angle: −50 is 310 on a grid of
    280…340, 310 is −50 on one of −80…−20, and a point outside either is refused naming the convention."""
    from latentda.observe.files import grid_indices

    def regional(longitudes):
        return FieldLayout.from_dataset(xr.Dataset(
            {"t": (("time", "latitude", "longitude"), np.zeros((1, 4, longitudes.size)))},
            coords={"time": [0.0], "latitude": [40.0, 30.0, 20.0, 10.0], "longitude": longitudes}))

    east, west = regional(np.arange(280.0, 341.0, 10.0)), regional(np.arange(-80.0, -19.0, 10.0))
    assert not east.periodic[1] and not west.periodic[1]
    expected = [[1.0, 3.0], [2.5, 1.5]]  # (30°N, 310°E) and (15°N, 295°E)
    np.testing.assert_allclose(grid_indices([[30.0, 310.0], [15.0, 295.0]], east), expected)
    np.testing.assert_allclose(grid_indices([[30.0, -50.0], [15.0, -65.0]], east), expected)
    np.testing.assert_allclose(grid_indices([[30.0, 310.0], [15.0, 295.0]], west), expected)
    with pytest.raises(LatentdaError, match=r"outside the grid along 'longitude' \(\[280.0, 340.0\] \(longitudes compared modulo 360\)"):
        grid_indices([[30.0, 0.0]], east)
    circle = FieldLayout.from_dataset(make_latlon_dataset().isel(longitude=[15, *range(15)]))  # 337.5, 0, 22.5, …
    assert circle.periodic[1]
    np.testing.assert_allclose(grid_indices([[-87.5, 11.25], [-87.5, 337.5], [-87.5, -11.25]], circle)[:, 1], [1.5, 0, 0.5])
    from latentda.data.layout import unwrap_longitude
    from latentda.observe.files import _grid_coordinate

    np.testing.assert_allclose(unwrap_longitude([0.0, 180.0, 350.0]), [0.0, 180.0, 350.0])  # steps in (−180, 180]
    with pytest.raises(LatentdaError, match="goes round the circle more than once"):
        regional(np.arange(0.0, 361.0, 22.5))
    across = regional(np.array([340.0, 350.0, 0.0, 10.0, 20.0]))  # a region across Greenwich
    np.testing.assert_allclose(_grid_coordinate(np.array([0.5, 2.5]), across.grid[1], longitude=True), [345.0, 5.0])
    np.testing.assert_allclose(grid_indices([[30.0, 5.0], [30.0, -15.0], [30.0, 345.0]], across), [[1, 2.5], [1, 0.5], [1, 0.5]])


def test_grid_mask_selects_observed_pixels():
    group = _group()
    group.values[:] = np.nan
    group.values[1, 2, 3] = group.values[2, 5, 0] = 1.0  # observations at some times only
    x = _field()
    out = group(x)
    torch.testing.assert_close(out, torch.stack([x[:, 1, 0, 2, 3], x[:, 2, 0, 5, 0]], dim=1))


def test_coarsen_is_block_average_and_crops():
    group = _group("coarsen", shape=(2, 3), factor=3)  # 8x8 → crop to 6x6 → 2x2? no: (8//3, 8//3) = (2, 2)
    group.values = np.zeros((3, 2, 2))
    x = _field()
    expected = x[:, :, 0, :6, :6].reshape(2, 3, 2, 3, 2, 3).mean(dim=(3, 5))
    torch.testing.assert_close(group(x), expected.reshape(2, -1))


def test_points_interpolate_bilinearly_and_wrap_periodically():
    points = np.array([[2.0, 3.0], [2.5, 3.0], [7.5, 7.5], [0.25, 7.0]])
    group = _group("points", shape=(4,), points=points, periodic=(True, True))
    x = _field()
    f = x[:, :, 0]
    out = group(x).reshape(2, 3, 4)
    torch.testing.assert_close(out[..., 0], f[..., 2, 3])  # on-grid point: the pixel value
    torch.testing.assert_close(out[..., 1], (f[..., 2, 3] + f[..., 3, 3]) / 2)
    torch.testing.assert_close(out[..., 2], (f[..., 7, 7] + f[..., 0, 7] + f[..., 7, 0] + f[..., 0, 0]) / 4)  # wraps
    torch.testing.assert_close(out[..., 3], 0.75 * f[..., 0, 7] + 0.25 * f[..., 1, 7])
    clamped = _group("points", shape=(1,), points=np.array([[7.0, 7.5]]), periodic=(False, False))
    torch.testing.assert_close(clamped(x).reshape(2, 3), f[..., 7, 7])  # no wrap on a non-periodic axis


def test_speed_saturate_linear_and_combination():
    x = _field()
    speed = _group(transform="speed", channels=(0, 1))
    torch.testing.assert_close(speed(x), torch.sqrt(x[:, :, 0] ** 2 + x[:, :, 1] ** 2 + 1e-12).reshape(2, -1))
    sat = _group(transform="saturate", saturation=0.5)
    torch.testing.assert_close(sat(x), (0.5 * torch.tanh(x[:, :, 0] / 0.5)).reshape(2, -1))
    matrix = np.random.default_rng(0).standard_normal((5, 64))
    linear = _group("linear", channels=(1,), shape=(5,), matrix=matrix)
    torch.testing.assert_close(linear(x), (x[:, :, 1].reshape(2, 3, 64) @ torch.from_numpy(matrix).T).reshape(2, -1))
    linear.name = "linear"
    both = ObservationOperator([speed, linear])
    assert both(x).shape == (2, 3 * 64 + 3 * 5) and both.size == 3 * 64 + 15


def test_operators_are_differentiable():
    x = _field(T=1)[:1]
    group = _group("points", shape=(3,), T=1, points=np.array([[1.2, 3.4], [5.5, 0.1], [7.9, 7.9]]), periodic=(True, False),
                   transform="speed", channels=(0, 1))
    assert torch.autograd.gradcheck(group, (x.requires_grad_(),))


def test_synthesize_write_read_round_trip(tmp_path):
    dataset = make_box_dataset(trajectories=1, times=6, size=16).isel(trajectory=0)
    layout = FieldLayout.from_dataset(dataset)
    truth = layout.to_array(dataset)
    config = parse(ObservationConfig, {"observations": [
        {"name": "sparse", "variables": ["u", "v"], "fraction": 0.3, "noise_std": 0.1},
        {"name": "coarse", "variables": ["u"], "sampling": "coarsen", "factor": 4, "noise_std": 0.2, "every": 2},
        {"name": "stations", "variables": ["v"], "sampling": "points", "points": 7, "noise_std": 0.05},
        {"name": "speed", "variables": ["u", "v"], "transform": "speed", "sampling": "points",
         "coordinates": [[1.0, 2.0], [6.2, 0.3]], "noise_std": 0.1},
    ]})
    operator = synthesize(truth, layout, config, seed=3)
    assert [g.name for g in operator.groups] == ["sparse_u", "sparse_v", "coarse", "stations", "speed"]
    coarse = operator.groups[2]
    assert np.isnan(coarse.values[1]).all() and not np.isnan(coarse.values[0]).any()  # every 2nd step
    path = write_dataset(observations_to_dataset(operator, layout, dataset["time"]), tmp_path / "obs.nc")
    again = read_observations(open_dataset(path), layout)
    y, std = operator.observed()
    y2, std2 = again.observed()
    torch.testing.assert_close(y2, y.float().double())
    x = torch.from_numpy(truth)[None]
    torch.testing.assert_close(again(x), operator(x), rtol=1e-5, atol=1e-6)
    # the noise is what it says: residuals of the truth have unit normalised RMS
    assert 0.85 < float(operator.residual_ratio(x)[0]) < 1.15
    assert operator.size > 200
    # dims are read by name: a file storing the coarse columns first is the same observations
    written = open_dataset(path)
    swapped = read_observations(written.assign(coarse=written["coarse"].transpose("time", "coarse_x", "coarse_y")), layout)
    torch.testing.assert_close(swapped(x), again(x), rtol=0, atol=0)
    torch.testing.assert_close(swapped.observed()[0], y2, rtol=0, atol=0)
    renamed = written.assign(coarse=written["coarse"].rename(coarse_y="rows"))
    with pytest.raises(LatentdaError, match=r"observation 'coarse' \(coarsen\) has dims .*expected \(time, coarse_y, coarse_x\)"):
        read_observations(renamed, layout)


def test_latlon_points_use_coordinates(tmp_path):
    dataset = make_latlon_dataset()
    layout = FieldLayout.from_dataset(dataset)
    config = parse(ObservationConfig, {"observations": [
        {"name": "p", "variables": ["temperature@500"], "sampling": "points", "coordinates": [[12.5, 22.5], [-87.5, 351.0]]}]})
    operator = synthesize(layout.to_array(dataset), layout, config)
    points = operator.groups[0].points
    lat = np.asarray(layout.grid[0].values)
    assert points[0, 1] == pytest.approx(1.0) and points[1, 1] == pytest.approx(351 / 22.5)
    assert points[0, 0] == pytest.approx(np.interp(12.5, lat, np.arange(8)))


def test_bad_observation_files(tmp_path):
    dataset = make_box_dataset(trajectories=1, times=4, size=16).isel(trajectory=0)
    layout = FieldLayout.from_dataset(dataset)
    config = parse(ObservationConfig, {"observations": [{"name": "o", "variables": ["u"], "fraction": 0.5}]})
    observations = observations_to_dataset(synthesize(layout.to_array(dataset), layout, config), layout, dataset["time"])
    with pytest.raises(LatentdaError, match="unknown variable 'w'"):
        read_observations(observations.assign({"o": observations["o"].assign_attrs(latentda_source="w")}), layout)
    with pytest.raises(LatentdaError, match="noise_std must be positive"):
        read_observations(observations.assign({"o": observations["o"].assign_attrs(noise_std=0.0)}), layout)
    with pytest.raises(LatentdaError, match="is in 'm/s'"):
        read_observations(observations.assign({"o": observations["o"].assign_attrs(units="m/s")}), layout)
    with pytest.raises(LatentdaError, match="all NaN"):
        read_observations(observations.assign({"o": observations["o"] * np.nan}), layout)
    with pytest.raises(LatentdaError, match="grid"):
        read_observations(observations.isel(x=slice(0, 8)), layout)
    with pytest.raises(LatentdaError, match=r"fraction: must be in"):
        parse(ObservationConfig, {"observations": [{"name": "o", "variables": ["u"], "fraction": 0}]})


def test_observe_cli(tmp_path, capsys):
    truth = write_dataset(make_box_dataset(trajectories=2, times=5, size=16), tmp_path / "truth.zarr")
    operator = tmp_path / "op.yaml"
    operator.write_text("observations:\n  - {name: o, variables: [u, v], fraction: 0.05, noise_std: 0.1}\n")
    out = tmp_path / "obs.nc"
    args = ["observe", "--truth", str(truth), "--operator", str(operator), "--out", str(out), "--trajectory", "1", "--seed", "4"]
    assert cli.main(args) == 0
    observations = open_dataset(out)
    assert set(observations.data_vars) == {"o_u", "o_v"} and observations.sizes["time"] == 5
    layout = FieldLayout.from_dataset(open_dataset(truth))
    operator_read = read_observations(observations, layout)
    ratios = [float(operator_read.residual_ratio(torch.from_numpy(layout.to_array(open_dataset(truth).isel(trajectory=i)))
                                                   [None].double())[0]) for i in (0, 1)]
    assert 0.6 < ratios[1] < 1.5 and ratios[0] > 5  # observed from trajectory 1, noise σ 0.1
    again = tmp_path / "seed5.nc"
    assert cli.main(["observe", "--truth", str(truth), "--operator", str(operator), "--out", str(again), "--trajectory",
                     "1", "--seed", "5"]) == 0
    masks = [np.isfinite(open_dataset(path)["o_u"].values) for path in (out, again)]
    assert (masks[0] != masks[1]).any()  # the seed draws the observed points
    assert cli.main(args) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    operator.write_text("observations:\n  - {name: o, variables: [q]}\n")
    assert cli.main(args[:-4] + ["--out", str(tmp_path / "o2.nc")]) == 2
    assert "unknown variable 'q'" in capsys.readouterr().err
    assert not (tmp_path / "o2.nc").exists()


def test_duplicate_group_names_are_refused():
    with pytest.raises(LatentdaError, match="used more than once"):
        ObservationOperator([_group(), _group()])

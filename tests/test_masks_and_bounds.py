"""Masks, missing values and bounded variables in the data layer, checked against direct computations."""

import numpy as np
import pytest
import torch

from conftest import make_box_dataset
from latentda.data import FieldLayout
from latentda.data.bounds import Bounds, bounds_by_channel
from latentda.data.statistics import MissingScan, Statistics, check_finite, compute_statistics
from latentda.data.windows import LatentSource, WindowDataset
from latentda.data.splits import Segment
from latentda.errors import LatentdaError
from latentda.training.autoencoder import masked_squared_error


@pytest.mark.parametrize("bounds", [Bounds(lower=0.0, transform="sqrt"), Bounds(lower=1.0, transform="log", offset=0.5),
                                    Bounds(lower=-1.0, upper=2.0), Bounds(lower=0.0, upper=5.0, transform="sqrt")])
def test_bounds_invert_their_transform_stay_inside_and_have_the_right_slope(bounds):
    rng = np.random.default_rng(0)
    low = bounds.lower
    high = bounds.upper if bounds.upper is not None else low + 10
    x = np.concatenate([[low], rng.uniform(low, high, 200)])
    np.testing.assert_allclose(bounds.inverse(bounds.forward(x)), x, rtol=1e-10, atol=1e-10)  # exact round trip
    t = rng.normal(0, 3, 500)
    inverse = bounds.inverse(t)
    assert (inverse >= low).all() and (bounds.upper is None or (inverse <= bounds.upper).all())
    step = 1e-6
    numeric = (bounds.inverse(t + step) - bounds.inverse(t - step)) / (2 * step)
    kinks = np.abs(bounds.forward(np.clip(inverse, low, high)) - t) < 1e-3  # away from the clips' corners
    smooth = np.abs(numeric - bounds.inverse_derivative(t)) < 1e-4
    assert smooth[~kinks | (np.abs(t) > 1e-3)].mean() > 0.98
    torch_t = torch.from_numpy(t)
    np.testing.assert_allclose(bounds.inverse(torch_t).numpy(), inverse)  # numpy and torch agree
    np.testing.assert_allclose(bounds.inverse_derivative(torch_t).numpy(), bounds.inverse_derivative(t))


def test_bad_bounds_are_refused_with_the_variable_named():
    with pytest.raises(LatentdaError, match="unknown variable.*rain"):
        bounds_by_channel(["u", "v"], {"rain": {"lower": 0}})
    with pytest.raises(LatentdaError, match="data.bounds.u.transform.*lower"):
        bounds_by_channel(["u", "v"], {"u": {"upper": 1, "transform": "sqrt"}})
    with pytest.raises(LatentdaError, match="data.bounds.u"):
        bounds_by_channel(["u"], {"u": {"lower": 2, "upper": 1}})
    with pytest.raises(LatentdaError, match="malformed bounds"):
        bounds_by_channel(["u"], {"u": {"minimum": 0}})
    assert bounds_by_channel(["u@500", "u@850", "v"], None, ["u"])[:2] == [Bounds(0.0, None, "sqrt")] * 2


def test_statistics_skip_nan_find_the_fixed_mask_and_name_a_missing_step():
    dataset = make_box_dataset(trajectories=2, times=10, size=8)
    u = dataset["u"].values
    u[:, :, 2:4, 5:7] = np.nan  # a fixed mask: never a value there
    u[1, 6, 0, 0] = np.nan  # one missing value
    dataset["u"] = dataset["u"].copy(data=u)
    layout = FieldLayout.from_dataset(dataset)
    scan = MissingScan(layout.channels)
    statistics = compute_statistics(dataset, layout, progress=False, scan=scan)
    np.testing.assert_allclose(statistics.mean[0], np.nanmean(u.astype(np.float64)), rtol=1e-10)
    np.testing.assert_allclose(statistics.std[0], np.nanstd(u.astype(np.float64)), rtol=1e-10)
    np.testing.assert_allclose(statistics.mean[1], dataset["v"].values.astype(np.float64).mean(), rtol=1e-10)
    expected = np.ones((2, 8, 8), dtype=bool)
    expected[0, 2:4, 5:7] = False
    assert np.array_equal(scan.mask, expected)
    assert scan.missing() == [("trajectory 1, step 6", "u", 1)]
    with pytest.raises(LatentdaError, match="'u' holds NaN at trajectory 1, step 6.*allow_missing"):
        scan.check(allow_missing=False)
    scan.check(allow_missing=True)
    with pytest.raises(LatentdaError, match="NaN"):  # without a scan NaN is refused, as before masks existed
        compute_statistics(dataset, layout, progress=False)


def test_bounded_statistics_standardise_the_transform_and_save_it(tmp_path):
    dataset = make_box_dataset(trajectories=1, times=6, size=8)
    dataset["v"] = np.abs(dataset["v"])  # non-negative
    layout = FieldLayout.from_dataset(dataset)
    transforms = bounds_by_channel(layout.channels, None, ["v"])
    statistics = compute_statistics(dataset, layout, progress=False, transforms=transforms)
    v = dataset["v"].values
    np.testing.assert_allclose(statistics.mean[1], np.sqrt(v.astype(np.float64)).mean(), rtol=1e-10)
    np.testing.assert_allclose(statistics.physical_mean[1], v.astype(np.float64).mean(), rtol=1e-10)
    fields = layout.to_array(dataset, 0)
    np.testing.assert_allclose(statistics.destandardise(statistics.standardise(fields)), fields, rtol=1e-5, atol=1e-5)
    statistics.save(tmp_path / "statistics.json")
    again = Statistics.load(tmp_path / "statistics.json")
    assert again.transforms == statistics.transforms
    np.testing.assert_allclose(again.physical_std, statistics.physical_std)
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    v_ = torch.randn_like(x)
    jvp = torch.func.jvp(statistics.destandardise, (x,), (v_,))[1]
    np.testing.assert_allclose(statistics.tangent(x, v_).numpy(), jvp.numpy(), rtol=1e-9, atol=1e-12)


def test_layout_mask_round_trips_and_outputs_nan_on_it(tmp_path):
    dataset = make_box_dataset(trajectories=1, times=3, size=8)
    layout = FieldLayout.from_dataset(dataset)
    mask = np.random.default_rng(0).uniform(size=(2, 8, 8)) > 0.2
    layout.mask, layout.allow_missing = mask, True
    layout.save(tmp_path / "layout.json")
    again = FieldLayout.load(tmp_path / "layout.json")
    assert np.array_equal(again.mask, mask) and again.allow_missing
    out = again.to_dataset(np.ones((3, 2, 8, 8), np.float32), np.arange(3.0))
    assert np.array_equal(np.isnan(out["u"].values[0]), ~mask[0]) and np.array_equal(np.isnan(out["v"].values[2]), ~mask[1])
    variables = again.mask_variables()
    assert np.array_equal(variables["u_mask"].values, mask[0].astype(np.float32))
    fields = np.broadcast_to(np.where(mask, 1.0, np.nan), (2, 2, 8, 8)).copy()
    row, column = np.argwhere(mask[1])[0]
    fields[1, 1, row, column] = np.nan  # a missing value of v, at the second step
    with pytest.raises(LatentdaError, match="'v' holds NaN values at step 4"):
        check_finite(fields, layout.channels, mask=mask, first_step=3)
    check_finite(np.where(mask, 1.0, np.nan)[None], layout.channels, mask=mask)  # NaN on the mask: fine


def test_masked_loss_ignores_nan_points_exactly():
    target = torch.randn(2, 3, 4, 5)
    target[0, 1, 2, :] = float("nan")
    output = torch.randn(2, 3, 4, 5, requires_grad=True)
    weights = torch.rand(4, 1) + 0.5
    squared, area = masked_squared_error(output, target, weights)
    valid = ~torch.isnan(target)
    expected = ((output - target) ** 2 * weights)[valid.expand_as(output)]
    assert torch.isclose(squared.sum(), expected.double().sum())
    assert torch.isclose(area.sum(), (valid * weights).double().sum())
    squared.sum().backward()
    assert (output.grad[0, 1, 2] == 0).all() and (output.grad[1] != 0).all()


def test_windows_skip_missing_latent_states(tmp_path):
    import xarray as xr

    latent = np.zeros((1, 12, 2, 3, 3), np.float32)
    latent[0, 5] = np.nan
    store = xr.Dataset({"latent": (("trajectory", "time", "channel", "latent_y", "latent_x"), latent)},
                       coords={"trajectory": [0], "time": np.arange(12.0)},
                       attrs={"latentda_missing_states": "[[0, 5]]"})
    store.to_zarr(tmp_path / "latents.zarr")
    source = LatentSource(tmp_path / "latents.zarr")
    windows = WindowDataset(source, [Segment(0, 0, 12)], window=4)
    assert [start for _, start in windows.index] == [0, 1, 6, 7, 8]
    assert all(np.isfinite(windows[i].numpy()).all() for i in range(len(windows)))
    with pytest.raises(LatentdaError, match="no window of 4 steps fits in the valid split.*1 missing state"):
        WindowDataset(source, [Segment(0, 3, 9)], window=4, split="valid")

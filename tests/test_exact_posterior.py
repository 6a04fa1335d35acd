"""The linear-Gaussian system and its exact posterior, against brute force on tiny grids."""

import itertools

import numpy as np
import pytest
import torch
import xarray as xr

from latentda import cli
from latentda.data import FieldLayout, split_segments
from latentda.diffusion.gaussian import GaussianDenoiser
from latentda.errors import LatentdaError
from latentda.observe.operators import ObservationGroup, ObservationOperator
from latentda.posterior.exact import (StationaryDenoiser, exact_posterior, observation_rows,
                                      stationary_law)
from latentda.simulate import GaussianSystem, simulate_gaussian

SYSTEM = GaussianSystem(size=4, variables=2, variance=1.5, cutoff_wavenumber=1.5, spectral_exponent=3.0,
                        correlation_time=2.0, time_exponent=1.0, variable_correlation=0.6)
LENGTH = 3


def _direct_covariance(system: GaussianSystem, lag: int) -> np.ndarray:
    """Cov(x_{t+lag}(c, p), x_t(c', q)) = R_cc' (1/N²) Σ_k a_k^lag s_k² cos(k·(p − q)), summed by hand."""
    n = system.size
    k = np.fft.fftfreq(n, 1 / n)
    lagged = system.autoregression() ** lag * system.mode_variance()
    pixels = list(itertools.product(range(n), range(n)))
    spatial = np.zeros((n * n, n * n))
    for i, (py, px) in enumerate(pixels):
        for j, (qy, qx) in enumerate(pixels):
            phase = 2 * np.pi / n * (k[:, None] * (py - qy) + k[None, :] * (px - qx))
            spatial[i, j] = (lagged * np.cos(phase)).sum() / n**2
    return np.kron(system.variable_covariance(), spatial)


def _operator(rng: np.random.Generator, truth: np.ndarray) -> ObservationOperator:
    """Sparse pixels of u (a different mask each time), 2×2 block means of v at t = 0, 2, three off-grid
    points of u wrapping around the periodic box; values from the truth plus noise."""
    n = SYSTEM.size
    sparse = np.where(rng.uniform(size=(LENGTH, n, n)) < 0.3, 0.0, np.nan)
    coarse = np.zeros((LENGTH, n // 2, n // 2))
    coarse[1] = np.nan
    points = np.array([[0.5, 3.7], [2.25, 1.0], [3.9, 3.9]])
    groups = [
        ObservationGroup("sparse", [0], "identity", "grid", sparse, 0.3),
        ObservationGroup("coarse", [1], "identity", "coarsen", coarse, 0.2, factor=2),
        ObservationGroup("points", [0], "identity", "points", np.zeros((LENGTH, 3)), 0.5, points=points,
                         periodic=(True, True)),
    ]
    clean = [g.sampled(g.transformed(torch.from_numpy(truth)[None]))[0].numpy() for g in groups]
    for group, field in zip(groups, clean):
        observed = group.mask
        group.values[observed] = field[observed] + group.noise_std * rng.standard_normal(observed.sum())
    return ObservationOperator(groups)


@pytest.fixture(scope="module")
def brute_force():
    rng = np.random.default_rng(0)
    truth = SYSTEM.trajectory(LENGTH, rng)
    operator = _operator(rng, truth)
    n = SYSTEM.variables * SYSTEM.size**2
    joint = np.block([[_direct_covariance(SYSTEM, abs(s - t)) for t in range(LENGTH)] for s in range(LENGTH)])
    basis = torch.eye(LENGTH * n, dtype=torch.float64).reshape(LENGTH * n, LENGTH, SYSTEM.variables, SYSTEM.size, SYSTEM.size)
    H = operator(basis).numpy().T  # the whole operator applied to basis trajectories: (M, L·n)
    y, std = (t.numpy() for t in operator.observed())
    innovation = H @ joint @ H.T + np.diag(std**2)
    gain = joint @ H.T @ np.linalg.inv(innovation)
    mean = gain @ y
    covariance = joint - gain @ H @ joint
    return operator, mean, covariance


def test_covariance_matrix_matches_the_spectral_sum():
    for lag in (0, 2):
        np.testing.assert_allclose(SYSTEM.covariance_matrix(lag), _direct_covariance(SYSTEM, lag), atol=1e-12)


def test_exact_posterior_matches_dense_conditioning(brute_force):
    operator, mean, covariance = brute_force
    posterior = exact_posterior(SYSTEM, operator)
    shape = (LENGTH, SYSTEM.variables, SYSTEM.size, SYSTEM.size)
    np.testing.assert_allclose(posterior.mean, mean.reshape(shape), atol=1e-10)
    np.testing.assert_allclose(posterior.variance, np.diag(covariance).reshape(shape), atol=1e-10)
    # variance of each orthonormal Fourier coefficient: diag(F Cov_ss^cc F*) per time and variable
    n = SYSTEM.size**2
    fourier = np.fft.fft2(np.eye(n).reshape(n, SYSTEM.size, SYSTEM.size), norm="ortho").reshape(n, n).T
    blocks = covariance.reshape(LENGTH * SYSTEM.variables, n, LENGTH * SYSTEM.variables, n)
    modes = np.stack([np.diag(fourier @ blocks[i, :, i] @ fourier.conj().T).real for i in range(LENGTH * SYSTEM.variables)])
    np.testing.assert_allclose(posterior.mode_variance, modes.reshape(shape), atol=1e-10)
    prior = stationary_law(SYSTEM, LENGTH)
    assert (posterior.variance < prior.variance + 1e-12).all() and (posterior.variance.mean() < 0.8 * prior.variance.mean())


def test_observation_rows_are_the_operator(brute_force):
    operator = brute_force[0]
    rows, times = observation_rows(operator, SYSTEM.variables, SYSTEM.size)
    x = np.random.default_rng(1).standard_normal((2, LENGTH, SYSTEM.variables, SYSTEM.size, SYSTEM.size))
    direct = operator(torch.from_numpy(x)).numpy()
    via_rows = np.einsum("mcij,bmcij->bm", rows, x[:, times])
    np.testing.assert_allclose(via_rows, direct, atol=1e-12)


def test_exact_samples_have_the_posterior_moments(brute_force):
    operator, mean, covariance = brute_force
    samples = exact_posterior(SYSTEM, operator, mode_variance=False).sample(4000, seed=3).reshape(4000, -1)
    std = np.sqrt(np.diag(covariance))
    assert np.abs(samples.mean(0) - mean).max() < 5 * std.max() / np.sqrt(4000)
    np.testing.assert_allclose(samples.var(0), np.diag(covariance), rtol=0.15)
    pairs = np.cov(samples[:, :40].T)  # cross-covariances too, within Monte-Carlo error
    assert np.abs(pairs - covariance[:40, :40]).max() < 0.15 * covariance.diagonal().max()


def test_nonlinear_operator_is_refused():
    values = np.zeros((LENGTH, SYSTEM.size, SYSTEM.size))
    operator = ObservationOperator([ObservationGroup("speed", [0, 1], "speed", "grid", values, 0.1)])
    with pytest.raises(LatentdaError, match="linear operator"):
        exact_posterior(SYSTEM, operator)


def test_simulator_stationary_variance_and_autocorrelation():
    system = GaussianSystem(size=8, variables=2, variance=2.0, correlation_time=3.0, variable_correlation=-0.4)
    x = next(iter(simulate_gaussian(system, 300, 24, seed=1, batch_size=300, progress=False))).astype(np.float64)
    assert x.shape == (300, 24, 2, 8, 8)
    # the first state is already stationary, every time has the same variance
    assert x[:, 0].var() == pytest.approx(2.0, rel=0.05) and x[:, -1].var() == pytest.approx(2.0, rel=0.05)
    for lag in (1, 4):
        empirical = (x[:, lag:] * x[:, :-lag]).mean() / (x**2).mean()
        assert empirical == pytest.approx(system.pixel_autocorrelation(lag), abs=0.03)
    assert (x[:, :, 0] * x[:, :, 1]).mean() / (x**2).mean() == pytest.approx(-0.4, abs=0.03)
    power = (np.abs(np.fft.fft2(x, norm="ortho")) ** 2).mean(axis=(0, 1, 2))
    assert np.abs(power / system.mode_variance() - 1).mean() < 0.06
    # the trajectory of a given index does not depend on the batching
    again = np.concatenate(list(simulate_gaussian(system, 300, 24, seed=1, batch_size=7, progress=False)))
    np.testing.assert_array_equal(again, x.astype(np.float32))


def test_stationary_denoiser_matches_dense_gaussian_denoiser():
    window = 3
    joint = np.block([[SYSTEM.covariance_matrix(abs(s - t)) for t in range(window)] for s in range(window)])
    dense = GaussianDenoiser(torch.zeros(joint.shape[0], dtype=torch.float64), torch.from_numpy(joint))
    exact = StationaryDenoiser(SYSTEM, window)
    x_t = torch.randn(2, window, SYSTEM.variables, SYSTEM.size, SYSTEM.size, dtype=torch.float64)
    for sigma in (0.05, 1.0, 30.0):
        np.testing.assert_allclose(exact(x_t, sigma).numpy(), dense(x_t, sigma).numpy(), atol=1e-10)
    sigmas = torch.tensor([0.1, 2.0], dtype=torch.float64)
    both = exact(x_t, sigmas)
    np.testing.assert_allclose(both[1].numpy(), exact(x_t[1:], 2.0)[0].numpy(), atol=1e-12)


def test_simulate_gaussian_cli_writes_a_latentda_dataset(tmp_path):
    out = tmp_path / "gaussian.zarr"
    assert cli.main(["simulate", "gaussian", "--out", str(out), "--trajectories", "5", "--steps", "4",
                     "--size", "8", "--correlation-time", "3", "--batch-size", "2", "--quiet"]) == 0
    dataset = xr.open_zarr(out)
    assert dict(dataset.sizes) == {"trajectory": 5, "time": 4, "y": 8, "x": 8}
    assert dataset["u"].dims == ("trajectory", "time", "y", "x") and dataset["u"].dtype == np.float32
    layout = FieldLayout.from_dataset(dataset)
    assert layout.channels == ["u", "v"] and layout.periodic == (True, True)
    system = GaussianSystem.from_attrs(dataset.attrs)
    assert system == GaussianSystem(size=8, correlation_time=3.0)
    expected = np.concatenate(list(simulate_gaussian(system, 5, 4, seed=0, progress=False)))
    np.testing.assert_array_equal(dataset["v"].values, expected[:, :, 1])
    assert [len(v) for v in split_segments(dataset).values()] == [3, 1, 1]
    assert cli.main(["simulate", "gaussian", "--out", str(out), "--trajectories", "5", "--quiet"]) == 2  # exists
    assert cli.main(["simulate", "gaussian", "--out", str(tmp_path / "b.zarr"), "--variables", "3", "--quiet"]) == 2


def _exact_prior_setup(window: int):
    """ExactPrior of a small system, a truth and sparse observations of u (a quarter of the pixels)."""
    from latentda.diffusion.denoiser import make_schedule
    from latentda.diffusion.settings import SamplerSettings
    from latentda.observe.files import ObservationConfig, ObservationSpec, synthesize
    from latentda.posterior.exact import ExactPrior
    from latentda.simulate.gaussian import _dataset

    system = GaussianSystem(size=8, variables=2, cutoff_wavenumber=2.0, correlation_time=4.0)
    length = 6
    truth = system.trajectory(length, np.random.default_rng(1))
    layout = FieldLayout.from_dataset(_dataset(truth[None].astype(np.float32), 0, system, length, {}, True).isel(trajectory=0))
    spec = ObservationSpec("sparse", ["u"], "grid", noise_std=0.3, fraction=0.25)
    operator = synthesize(truth, layout, ObservationConfig([spec]), seed=0)
    sampling = SamplerSettings(sampler="pc", steps=16, tau=0.5, sigma_start=20.0)
    return system, ExactPrior(system, layout, make_schedule(1e-3, 1e3), sampling, window=window), operator


@pytest.mark.parametrize("window", [6, 4])
def test_sampler_with_the_exact_prior_recovers_the_exact_posterior(window):
    """MMPS with the exact denoiser (one window, or blankets of 4 states) against the closed form:
    the ensemble mean within sampling error of the exact mean, the variance within 15 %."""
    from latentda.posterior.reanalysis import PosteriorSettings, posterior_members

    system, prior, operator = _exact_prior_setup(window)
    law = exact_posterior(system, operator, mode_variance=False)
    assert law.variance.mean() < 0.8 * system.variance  # the observations are informative
    members = 128
    settings = PosteriorSettings(iterations=10, batch_members=members)
    ensemble = np.stack([f for _, f, _ in posterior_members(prior, operator, list(range(members)), settings)]).astype(np.float64)
    standardised_error = (ensemble.mean(axis=0) - law.mean) / np.sqrt(law.variance)
    assert np.sqrt((standardised_error**2).mean()) < 1.5 / np.sqrt(members)
    assert 0.85 < ensemble.var(axis=0, ddof=1).sum() / law.variance.sum() < 1.15


def test_sampler_with_the_exact_prior_draws_the_stationary_law():
    from latentda.posterior.reanalysis import PosteriorSettings, member_generator, sample_members

    system, prior, operator = _exact_prior_setup(window=4)
    generators = [member_generator(0, m) for m in range(256)]
    z = sample_members(prior, prior.trajectory_denoiser(), operator.length, generators, PosteriorSettings())
    draws = prior.decode(z).astype(np.float64)
    law = stationary_law(system, operator.length)
    assert np.abs(draws.mean(axis=0)).mean() < 3 * np.sqrt(system.variance / 256)
    assert 0.85 < draws.var(axis=0, ddof=1).mean() / law.variance.mean() < 1.15
    lag1 = (draws[:, 1:] * draws[:, :-1]).mean() / (draws**2).mean()  # the AR(1) memory across blankets
    assert abs(lag1 - system.pixel_autocorrelation(1)) < 0.05


def test_an_aao_forecast_with_the_exact_prior_is_the_exact_posterior():
    """A forecast from observations of the first 4 states, all at once 2 states past them, with the exact
    prior: the ensemble of the last observed state and the leads against the closed-form posterior of the
    6 states given those observations (mean within sampling error, variance within 15 %)."""
    import dataclasses

    from latentda.posterior.forecast import forecast_members
    from latentda.posterior.reanalysis import PosteriorSettings

    system, prior, operator = _exact_prior_setup(window=6)
    observed, members = 4, 128
    first = ObservationOperator([dataclasses.replace(g, values=g.values[:observed]) for g in operator.groups])
    blank = ObservationOperator([dataclasses.replace(g, values=np.concatenate(
        [g.values[:observed], np.full_like(g.values[observed:], np.nan)])) for g in operator.groups])
    law = exact_posterior(system, blank, mode_variance=False)
    mean, variance = law.mean[observed - 1:], law.variance[observed - 1:]
    assert np.sqrt((mean**2 / variance).mean()) > 3 * 1.5 / np.sqrt(members)  # ignoring the observations would show
    run = forecast_members(prior, list(range(members)), 2, PosteriorSettings(iterations=10, batch_members=members),
                           operator=first, mode="aao")
    ensemble = np.stack([fields for _, fields in run]).astype(np.float64)
    standardised_error = (ensemble.mean(axis=0) - mean) / np.sqrt(variance)
    assert np.sqrt((standardised_error**2).mean()) < 1.5 / np.sqrt(members)
    assert 0.85 < ensemble.var(axis=0, ddof=1).sum() / variance.sum() < 1.15

"""Diffusion: samplers recover a Gaussian prior exactly enough; blankets; preconditioning; loss."""

import math

import pytest
import torch

from latentda.diffusion.blankets import BlanketDenoiser, blanket_starts
from latentda.diffusion.denoiser import Denoiser, TrainingNoise, denoising_loss, make_schedule
from latentda.diffusion.gaussian import GaussianDenoiser
from latentda.diffusion.sampling import noise_levels, sample
from latentda.errors import LatentdaError
from latentda.training.loop import BatchRandom


def _gaussian(dim=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    factor = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    covariance = factor @ factor.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)
    mean = torch.randn(dim, generator=generator, dtype=torch.float64)
    return mean, covariance


@pytest.mark.parametrize("method,steps", [("ddpm", 256), ("ddim", 256), ("heun", 64), ("pc", 64)])
def test_samplers_recover_gaussian_prior(method, steps):
    """Each sample holds 32 independent copies of the 4-d Gaussian, so that the pc step size,
    estimated per sample, averages over 128 numbers (as over a real state's thousands)."""
    mean, covariance = _gaussian()
    copies = 32
    denoise = GaussianDenoiser(mean.repeat(copies), torch.block_diag(*[covariance] * copies))
    n = 320 * copies
    x = sample(denoise, (n // copies, 4 * copies), make_schedule(), steps=steps, method=method,
               generator=torch.Generator().manual_seed(1), dtype=torch.float64).reshape(n, 4)
    empirical_mean = x.mean(0)
    empirical_cov = torch.cov(x.T)
    # Monte-Carlo standard errors: std/√n for the mean, ~ √(2/n)·Σ_ii for variances
    stderr = covariance.diagonal().sqrt() / math.sqrt(n)
    assert ((empirical_mean - mean).abs() < 5 * stderr).all(), (empirical_mean, mean)
    # 4 standard errors of each covariance entry, plus 5% of the variance for time discretisation
    diagonal = covariance.diagonal()
    stderr_cov = ((diagonal[:, None] * diagonal[None, :] + covariance**2) / n).sqrt()
    tolerance = 4 * stderr_cov + 0.05 * diagonal.max()
    assert ((empirical_cov - covariance).abs() < tolerance).all(), (empirical_cov, covariance)


def test_noise_levels_span_the_schedule():
    sigmas = noise_levels(make_schedule(), 10)
    assert sigmas[0] == pytest.approx(1e3, rel=1e-5) and sigmas[-1] == pytest.approx(1e-3, rel=1e-5)
    assert (sigmas[1:] < sigmas[:-1]).all() and len(sigmas) == 10


def test_preconditioning_matches_edm_formulas():
    class Constant(torch.nn.Module):
        def forward(self, x, noise_label, context=None):
            self.seen = (x, noise_label)
            return torch.ones_like(x)

    backbone = Constant()
    denoiser = Denoiser(backbone, make_schedule(sigma_data=1.0))
    x_t = torch.randn(3, 5, dtype=torch.float64)
    sigma = torch.tensor([0.01, 1.0, 100.0], dtype=torch.float64)
    out = denoiser(x_t, sigma)
    s = sigma[:, None]
    torch.testing.assert_close(out, x_t / (s**2 + 1) + s / (s**2 + 1).sqrt())
    torch.testing.assert_close(backbone.seen[0], x_t / (s**2 + 1).sqrt())
    torch.testing.assert_close(backbone.seen[1], 0.25 * sigma.log())


def test_loss_is_small_for_the_exact_denoiser():
    """The denoising loss of the exact Gaussian denoiser is its irreducible minimum, below a perturbed one."""
    mean, covariance = _gaussian(dim=3)
    exact = GaussianDenoiser(mean, covariance)

    class Wrap(Denoiser):
        def __init__(self, bias):
            super().__init__(torch.nn.Identity())
            self.bias = bias

        def forward(self, x_t, sigma, context=None):
            return exact(x_t, sigma) + self.bias

    x = torch.distributions.MultivariateNormal(mean, covariance).sample((5000,))
    losses = [denoising_loss(Wrap(b), x, BatchRandom(0, 0, range(len(x)))).item() for b in (0.0, 0.05)]
    assert losses[0] < losses[1]


def _ks_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov–Smirnov statistic: the largest gap between the empirical CDFs."""
    points = torch.cat([a, b]).sort().values
    cdf = lambda s: torch.searchsorted(s.sort().values, points, right=True) / len(s)
    return float((cdf(a) - cdf(b)).abs().max())


@pytest.mark.parametrize("low, high", [(1e-3, 1e3), (1e-2, 1.0)])
def test_training_noise_levels_follow_their_law(low, high):
    """The inverse-transform draws of TrainingNoise against independent samples of the same law:
    log-normal truncated to [σ_min, σ_max] by rejection from N(μ, s²) (also when the range cuts deep
    into the normal, where a clamp would pile mass on the ends), and log-uniform."""
    generator = torch.Generator().manual_seed(0)
    n = 40_000
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    mean, std = -2.0, 2.0
    drawn = TrainingNoise("log-normal", mean, std).sigmas(u, low, high).log()
    normal = mean + std * torch.randn(20 * n, generator=generator, dtype=torch.float64)
    kept = normal[(normal >= math.log(low)) & (normal <= math.log(high))][:n]
    assert len(kept) > n // 4
    assert drawn.min() >= math.log(low) - 1e-12 and drawn.max() <= math.log(high) + 1e-12
    assert _ks_distance(drawn, kept) < 0.015  # ≈ 1.6 / √(n/2) would be the 99.9 % critical value
    assert _ks_distance(drawn, normal[:n]) > 0.05 or (low, high) == (1e-3, 1e3)  # the truncation is real
    uniform = TrainingNoise().sigmas(u, low, high).log()
    reference = math.log(low) + (math.log(high) - math.log(low)) * torch.rand(n, generator=generator, dtype=torch.float64)
    assert _ks_distance(uniform, reference) < 0.015
    assert _ks_distance(drawn, reference) > 0.05  # and differs from the log-uniform one


def test_denoising_loss_draws_its_levels_from_the_training_noise():
    """The σ the denoiser sees in the loss are the training noise law's draws, example by example."""
    seen = []

    class Record(Denoiser):
        def forward(self, x_t, sigma, context=None):
            seen.append(sigma)
            return x_t

    x = torch.zeros(4000, 3)
    levels = TrainingNoise("log-normal", -2.0, 0.5)
    denoising_loss(Record(torch.nn.Identity()), x, BatchRandom(0, 0, range(len(x))), levels=levels)
    u = BatchRandom(0, 0, range(len(x))).rand(dtype=torch.float64)
    torch.testing.assert_close(seen[0].double(), levels.sigmas(u, 1e-3, 1e3), rtol=1e-6, atol=0)
    assert abs(float(seen[0].log().median()) + 2.0) < 0.05
    denoising_loss(Record(torch.nn.Identity()), x, BatchRandom(0, 0, range(len(x))))  # default: log-uniform
    assert abs(float(seen[1].log().mean())) < 0.3 and float(seen[1].max()) > 100


def test_blanket_equals_window_when_length_is_window():
    calls = []

    def window_denoiser(x, sigma):
        calls.append(x.shape)
        return x * 2 + torch.arange(x.shape[1], dtype=x.dtype).reshape(1, -1, 1)

    blanket = BlanketDenoiser(window_denoiser, window=4, overlap=2)
    x = torch.randn(3, 4, 2)
    torch.testing.assert_close(blanket(x, 1.0), window_denoiser(x, 1.0))


def test_blanket_stitching_uses_most_central_window_and_costs_linear():
    window, overlap = 4, 2
    calls = []

    def window_denoiser(x, sigma):  # output tags each state with its position inside the window
        calls.append(x.shape[0])
        return torch.arange(window, dtype=x.dtype).reshape(1, -1, 1).expand(x.shape[0], -1, x.shape[2])

    blanket = BlanketDenoiser(window_denoiser, window=window, overlap=overlap, batch_windows=100)
    x = torch.zeros(2, 10, 1)
    out = blanket(x, torch.tensor(0.5))
    assert blanket_starts(10, 4, 2) == [0, 2, 4, 6]
    # the first and last states sit at the window edges; interior states are central (position 1 or 2)
    assert out[0, :, 0].tolist() == [0, 1, 1, 1, 1, 1, 1, 2, 2, 3] or out[0, :, 0].tolist() == [0, 1, 2, 1, 2, 1, 2, 1, 2, 3]
    assert set(out[0, 1:-1, 0].tolist()) <= {1.0, 2.0}
    counts = []
    for length in (4, 8, 16, 32, 64):
        calls.clear()
        blanket(torch.zeros(1, length, 1), 1.0)
        counts.append(sum(calls))
    assert counts[-1] / counts[-2] < 2.2 and counts[-2] / counts[-3] < 2.3  # linear in L


def test_blanket_of_a_local_denoiser_is_exact():
    """A denoiser acting on each state independently is reproduced exactly for any L."""
    def local(x, sigma):
        return torch.tanh(x) * 3

    blanket = BlanketDenoiser(local, window=5, overlap=3, batch_windows=2)
    x = torch.randn(2, 23, 3)
    torch.testing.assert_close(blanket(x, 1.0), local(x, 1.0))


def test_blanket_errors():
    with pytest.raises(LatentdaError, match="shorter than the window"):
        blanket_starts(3, 4, 1)
    with pytest.raises(LatentdaError, match="overlap"):
        blanket_starts(8, 4, 4)

"""The fast posterior sampler: tangent-pass linearisation, batched members, reduced precision, σ grid."""

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_tiny_pipeline
from latentda.diffusion.denoiser import make_schedule
from latentda.diffusion.gaussian import GaussianDenoiser
from latentda.diffusion.sampling import noise_levels, sample
from latentda.nn.autoencoder import AutoEncoder
from latentda.nn.linearization import NetworkLinearization, tangent_supported
from latentda.observe.operators import ObservationGroup, ObservationOperator
from latentda.posterior import MMPSDenoiser
from latentda.posterior.forecast import forecast_members
from latentda.posterior.guidance import Linearization
from latentda.posterior.reanalysis import LatentOperator, PosteriorSettings, posterior_members


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return make_tiny_pipeline(tmp_path_factory.mktemp("pipeline"))[0]


def sparse_operator(pipeline, length: int, seed: int = 0) -> ObservationOperator:
    generator = torch.Generator().manual_seed(seed)
    H, W = pipeline.layout.shape
    groups = []
    for channel in range(pipeline.layout.num_channels):
        mask = torch.rand(H, W, generator=generator) < 0.3
        values = torch.full((length, H, W), float("nan"), dtype=torch.float64)
        values[:, mask] = torch.randn(length, int(mask.sum()), generator=generator, dtype=torch.float64)
        groups.append(ObservationGroup(f"o{channel}", [channel], "identity", "grid", values.numpy(), 0.1,
                                       periodic=pipeline.layout.periodic))
    return ObservationOperator(groups)


@pytest.mark.parametrize("periodic", [(True, True), (False, True)])
def test_tangent_pass_equals_forward_mode_autograd(periodic):
    torch.manual_seed(0)
    autoencoder = AutoEncoder(in_channels=3, latent_channels=2, hidden_channels=[8, 16], blocks_per_stage=1,
                              sample_size=[12, 8], periodic=periodic)
    for parameter in autoencoder.parameters():  # non-trivial norms and biases
        parameter.data.normal_(0, 0.3)
    z = torch.randn(5, *autoencoder.latent_shape)
    v = torch.randn_like(z)
    linearization = NetworkLinearization(autoencoder, autoencoder.decode, z, key="decode")
    assert linearization.exact and tangent_supported(autoencoder)
    expected_value, expected_tangent = torch.func.jvp(autoencoder.decode, (z,), (v,))
    assert torch.allclose(linearization.value, expected_value, atol=1e-5)
    assert torch.allclose(linearization.tangent(v), expected_tangent, rtol=1e-4, atol=1e-5)
    assert torch.allclose(linearization.tangent(2 * v), 2 * expected_tangent, rtol=1e-4, atol=1e-5)  # linear in v
    # the network is itself again after the tangent passes
    assert torch.allclose(autoencoder.decode(z), expected_value, atol=1e-6)


def test_hidden_functional_nonlinearity_falls_back_to_forward_mode():
    class Hidden(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 4)

        def forward(self, x):
            return torch.tanh(self.linear(x))  # not a module: a tangent pass would miss it

    network = Hidden()
    x, v = torch.randn(3, 4), torch.randn(3, 4)
    linearization = NetworkLinearization(network, network, x)
    assert not linearization.exact  # the numerical check caught it
    assert torch.allclose(linearization.tangent(v), torch.func.jvp(network, (x,), (v,))[1], atol=1e-6)


@pytest.mark.parametrize(("chunk", "per_pass"), [(None, 16), (None, 4), (3, 16)])
def test_decoded_operator_linearisation_is_the_jacobian(pipeline, chunk, per_pass, monkeypatch):
    """A·v and Aᵀ·u of the decoded operator equal the generic double-backward linearisation (the 10
    frames decoded in one pass, or in passes of 4, 4 and 2)."""
    from latentda.posterior import reanalysis

    monkeypatch.setattr(reanalysis, "CPU_PIXELS_PER_PASS", per_pass * int(np.prod(pipeline.layout.shape)))
    operator = sparse_operator(pipeline, 5)
    A = LatentOperator(pipeline, operator, chunk=chunk)
    z = torch.randn(2, 5, *pipeline.latent_shape)
    fast, generic = A.linearize(z), Linearization(lambda x: A(x), z)
    v, u = torch.randn_like(z), torch.randn_like(generic.value)
    assert torch.allclose(fast.value, generic.value, atol=1e-6)
    assert torch.allclose(fast.forward(v), generic.forward(v), rtol=1e-4, atol=1e-5)
    assert torch.allclose(fast.transpose(u), generic.transpose(u), rtol=1e-4, atol=1e-5)


def test_batched_members_equal_members_sampled_alone(pipeline):
    operator = sparse_operator(pipeline, 6)
    alone = {m: f for m, f, _ in posterior_members(pipeline, operator, [0, 1, 2, 3], PosteriorSettings(batch_members=1))}
    batched = {m: f for m, f, _ in posterior_members(pipeline, operator, [0, 1, 2, 3], PosteriorSettings(batch_members=3))}
    assert sorted(batched) == [0, 1, 2, 3]
    for member in alone:
        np.testing.assert_allclose(batched[member], alone[member], rtol=1e-4, atol=1e-4)
    assert np.abs(alone[0] - alone[1]).max() > 1e-2  # members differ from each other


def test_batched_forecast_members_equal_members_forecast_alone(pipeline):
    initial = torch.randn(3, 4, *pipeline.latent_shape)
    runs = {}
    for batch in (1, 3):
        settings = PosteriorSettings(batch_members=batch)
        runs[batch] = dict(forecast_members(pipeline, [0, 1, 2], 5, settings, seed=1, initial=initial))
    for member in range(3):
        np.testing.assert_allclose(runs[3][member], runs[1][member], rtol=1e-4, atol=1e-4)


def _float32_problem():
    generator = torch.Generator().manual_seed(0)
    factor = torch.randn(32, 32, generator=generator)
    covariance = factor @ factor.T / 32 + 0.1 * torch.eye(32)
    A = torch.randn(8, 32, generator=generator)
    return GaussianDenoiser(torch.zeros(32), covariance), A, torch.randn(8, generator=generator)


class _MatmulDenoiser:
    """The Gaussian oracle's E[x | x_t] = Σ(Σ + σ²I)⁻¹ x_t as one float32 matrix product (autocast-able)."""

    def __init__(self, oracle: GaussianDenoiser) -> None:
        self.oracle = oracle

    def __call__(self, x_t, sigma):
        gain = self.oracle.covariance @ torch.linalg.inv(self.oracle.covariance + float(sigma) ** 2 * torch.eye(32))
        return x_t @ gain.T


def test_reduced_precision_guided_step_stays_close_to_float32():
    from latentda.nn.precision import Autocast

    oracle, A, y = _float32_problem()
    x_t = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor(0.5)
    full = MMPSDenoiser(_MatmulDenoiser(oracle), lambda x: x @ A.T, y, 0.1, iterations=8)(x_t, sigma)
    reduced_prior = Autocast(_MatmulDenoiser(oracle), "cpu", torch.bfloat16)
    reduced_operator = Autocast(lambda x: x @ A.T, "cpu", torch.bfloat16)
    reduced = MMPSDenoiser(reduced_prior, reduced_operator, y, 0.1, iterations=8)(x_t, sigma)
    error = ((reduced - full).norm() / full.norm()).item()
    assert 1e-5 < error < 3e-2  # bfloat16 really used, and close


def test_reduced_precision_pipeline_step_close(pipeline):
    from latentda.posterior.reanalysis import guided_denoiser

    operator = sparse_operator(pipeline, 5)
    z = torch.randn(1, 5, *pipeline.latent_shape)
    steps = {p: guided_denoiser(pipeline, operator, PosteriorSettings(precision=p))(z, torch.tensor(0.5))
             for p in ("float32", "bfloat16")}
    assert steps["bfloat16"].dtype == torch.float32
    error = ((steps["bfloat16"] - steps["float32"]).norm() / steps["float32"].norm()).item()
    assert 1e-6 < error < 5e-2


def test_sigma_start_and_churn():
    schedule = make_schedule()
    sigmas = noise_levels(schedule, 8, sigma_start=20.0)
    assert sigmas[0] == pytest.approx(20.0, rel=1e-5) and sigmas[-1] == pytest.approx(1e-3, rel=1e-4)
    with pytest.raises(ValueError, match="sigma_start"):
        noise_levels(schedule, 8, sigma_start=2e3)
    # churned second-order sampling from σ = 20 still recovers a Gaussian prior
    generator = torch.Generator().manual_seed(0)
    covariance = torch.diag(torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))
    denoise = GaussianDenoiser(torch.zeros(3, dtype=torch.float64), covariance)
    x = sample(denoise, (4000, 3), schedule, steps=32, method="heun", sigma_start=20.0, churn=2.0,
               generator=generator, dtype=torch.float64)
    np.testing.assert_allclose(x.var(0).numpy(), [0.5, 1.0, 2.0], rtol=0.1)


@pytest.mark.parametrize("tau", [2.0, 0.5])
def test_langevin_step_keeps_stiff_directions(tau):
    """The predictor-corrector on an exact Gaussian whose few stiff directions (variance 10⁻⁴, as pixels
    pinned by accurate observations) sit among many wide ones (variance 1): the self-normalised step
    τ / mean(s²) is sized for the wide ones, δ/v ≫ 2 on the stiff ones, and without the cap δ ≤ σ²
    their variance came out hundreds of times the truth (sampling.py's docstring)."""
    variances = torch.cat([torch.full((95,), 1.0), torch.full((5,), 1e-4)]).double()
    denoise = GaussianDenoiser(torch.zeros(100, dtype=torch.float64), torch.diag(variances))
    x = sample(denoise, (2000, 100), make_schedule(), steps=8, method="pc", tau=tau, sigma_start=20.0,
               generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ratio = x.var(0) / variances
    assert 0.5 < ratio[:95].mean() < 2.0
    assert 0.3 < ratio[95:].mean() < 3.0, f"stiff directions' variance ratio {ratio[95:].mean():.3g}"

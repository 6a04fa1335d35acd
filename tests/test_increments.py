"""Increment coordinates (latentda.diffusion.increments): the map and its tangent, operators read
through it, and the posterior samplers of a prior in increment coordinates against closed forms —
the exact Gaussian prior written in u coordinates must give the same laws as in z̃ coordinates."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from latentda.data.statistics import Statistics
from latentda.diffusion.gaussian import GaussianDenoiser
from latentda.diffusion.increments import Increments
from latentda.errors import LatentdaError
from latentda.posterior.guidance import Linearization, MMPSDenoiser
from latentda.posterior.prior import IncrementOperator, with_history
from latentda.posterior.reanalysis import PosteriorSettings

# The filters below sample with Heun's ODE steps: the test prior's default (pc, 16 steps) is 10 % too
# wide on the window law itself in z̃ coordinates and 25 % in u; with heun 32 both are within 2.5 %.
HEUN = {"sampler": "heun", "steps": 32}
INCREMENTS = Increments(Statistics(["a", "b"], np.array([0.1, -0.2]), np.array([0.3, 0.05])))


def test_increment_coordinates_invert_and_their_tangent_is_the_jacobian():
    torch.manual_seed(0)
    z = torch.randn(3, 5, 2, 4, 4, dtype=torch.float64)
    u = INCREMENTS.to_increments(z)
    np.testing.assert_allclose(INCREMENTS.to_latents(u).numpy(), z.numpy(), atol=1e-12)
    np.testing.assert_allclose(u[:, 0].numpy(), z[:, 0].numpy())  # the first state stays absolute
    step = (z[:, 3, 1] - z[:, 2, 1] + 0.2) / 0.05
    np.testing.assert_allclose(u[:, 3, 1].numpy(), step.numpy(), atol=1e-9)
    # a history (the first n states alone) has the increments the whole window has there
    np.testing.assert_allclose(INCREMENTS.to_increments(z[:, :2]).numpy(), u[:, :2].numpy())
    v, w = torch.randn_like(u), torch.randn_like(u)
    jvp = torch.autograd.functional.jvp(INCREMENTS.to_latents, (u,), (v,))[1]
    np.testing.assert_allclose(INCREMENTS.tangent(v).numpy(), jvp.numpy(), atol=1e-12)
    assert float((INCREMENTS.tangent(v) * w).sum()) == pytest.approx(float((v * INCREMENTS.tangent_transpose(w)).sum()), rel=1e-12)


class _OwnLinearization:
    """A nonlinear operator of latent windows with its own linearisation (as the decoder's)."""

    def __call__(self, z):
        return torch.tanh(z[:, 2:4]).reshape(z.shape[0], -1)

    def linearize(self, anchor):
        self.anchor = anchor
        return Linearization(self, anchor)


@pytest.mark.parametrize("operator", [_OwnLinearization(), lambda z: (z[:, 1:3] ** 2).reshape(z.shape[0], -1)])
def test_increment_operator_linearises_the_composed_operator(operator):
    torch.manual_seed(1)
    u = torch.randn(2, 5, 2, 3, 3, dtype=torch.float64)
    composed = IncrementOperator(operator, INCREMENTS)
    linear = composed.linearize(u)
    exact = lambda x: operator(INCREMENTS.to_latents(x))  # noqa: E731
    np.testing.assert_allclose(linear.value.numpy(), exact(u).numpy(), atol=1e-12)
    v = torch.randn_like(u)
    np.testing.assert_allclose(linear.forward(v).numpy(), torch.autograd.functional.jvp(exact, (u,), (v,))[1].numpy(), atol=1e-10)
    w = torch.randn_like(linear.value)
    np.testing.assert_allclose(linear.transpose(w).numpy(), torch.autograd.functional.vjp(exact, u, w)[1].numpy(), atol=1e-10)
    if isinstance(operator, _OwnLinearization):  # linearised at the latents of the anchor
        np.testing.assert_allclose(operator.anchor.numpy(), INCREMENTS.to_latents(u).numpy(), atol=1e-12)


def _window_law(system, window: int, increments: Increments) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a window of the stationary law (unit variance) in increment coordinates:
    u = T z̃ + c, with z̃ ~ N(0, Σ)."""
    unit = replace(system, variance=1.0)
    lagged = [unit.covariance_matrix(d) for d in range(window)]
    joint = np.block([[lagged[i - j] if i >= j else lagged[j - i].T for j in range(window)] for i in range(window)])
    n = joint.shape[0] // window
    scale, shift = float(increments.statistics.std[0]), float(increments.statistics.mean[0])
    T = np.zeros_like(joint)
    T[:n, :n] = np.eye(n)
    for k in range(1, window):
        T[k * n:(k + 1) * n, k * n:(k + 1) * n] = np.eye(n) / scale
        T[k * n:(k + 1) * n, (k - 1) * n:k * n] = -np.eye(n) / scale
    mean = np.concatenate([np.zeros(n)] + [np.full(n, -shift / scale)] * (window - 1))
    return mean, T @ joint @ T.T


def _increment_prior(prior, shift: float = 0.05):
    """The exact prior of ``prior`` (an :class:`ExactPrior`) in increment coordinates: dense Gaussian
    denoisers of u (windows of K states only), with increments of the law's own scale and a shift."""
    system, window = prior.system, prior.window
    unit = replace(system, variance=1.0)
    scale = float(np.sqrt(np.mean(np.diag(2 * (unit.covariance_matrix(0) - unit.covariance_matrix(1))))))
    increments = Increments(Statistics(list(system.channels), np.full(system.variables, shift), np.full(system.variables, scale)))
    mean, covariance = _window_law(system, window, increments)
    shape = (window, *prior.latent_shape)
    dense = GaussianDenoiser(torch.from_numpy(mean), torch.from_numpy(covariance), shape)

    class IncrementPrior(type(prior)):
        def trajectory_denoiser(self, overlap=None, times=None, split_blankets=False):
            return dense

        def history_denoiser(self, known, times=None):
            given = self.increments.to_increments(known.double())
            n, g = known.shape[1], given[0].numel()
            gain = covariance[g:, :g] @ np.linalg.inv(covariance[:g, :g])
            free = GaussianDenoiser(torch.zeros(covariance.shape[0] - g, dtype=torch.float64),
                                    torch.from_numpy(covariance[g:, g:] - gain @ covariance[g:, :g].T))
            centre = torch.from_numpy(mean[g:]) + (given.reshape(given.shape[0], -1) - torch.from_numpy(mean[:g])) @ torch.from_numpy(gain).T

            def denoise(x, sigma):  # E[u_free | u_free,t, u_1:n = given]: the conditional law's denoiser
                x = with_history(given, x.double())
                rest = x[:, n:].reshape(x.shape[0], -1) - centre
                out = centre + free(rest, sigma)
                return torch.cat([x[:, :n], out.reshape(x[:, n:].shape)], dim=1).float()

            return denoise

    wrapped = IncrementPrior.__new__(IncrementPrior)
    wrapped.__dict__.update(prior.__dict__)
    wrapped.increments = increments
    return wrapped


def test_mmps_through_increment_coordinates_is_the_exact_posterior():
    """MMPS on u with the operator read through L, y = H z̃ + ε: the guided mean is E[u | u_t, y] of
    the Gaussian law (closed form) when the solver converges — the composition's transpose is exact."""
    from test_filter import _slow_linear_gaussian

    system, prior, *_ = _slow_linear_gaussian(window=3)
    inc_prior = _increment_prior(prior)
    mean, covariance = _window_law(system, 3, inc_prior.increments)
    n = system.size**2
    H = np.zeros((5, 3 * n))
    H[np.arange(5), [2, 17, 20, 33, 47]] = 1.0  # pixels of the three states
    noise = 0.2
    y = torch.tensor([0.3, -0.5, 1.0, 0.2, -0.1], dtype=torch.float64)
    operator = IncrementOperator(lambda z: z.reshape(z.shape[0], -1) @ torch.from_numpy(H).T, inc_prior.increments)
    dense = inc_prior.trajectory_denoiser()
    guided = MMPSDenoiser(lambda x, s: dense(x.double(), s), operator, y, noise, iterations=5)
    torch.manual_seed(2)
    u_t = torch.from_numpy(mean).reshape(1, 3, 1, 4, 4) + 0.8 * torch.randn(1, 3, 1, 4, 4, dtype=torch.float64)
    sigma = 0.8
    # closed form: u ~ N(m, Σ), u_t = u + σ ε, y = H L⁻¹... in u: y = H (T⁻¹ (u − c)) = G u + g
    L = torch.eye(3 * n, dtype=torch.float64)
    columns = [inc_prior.increments.tangent(L[i].reshape(1, 3, 1, 4, 4)).reshape(-1) for i in range(3 * n)]
    G = H @ torch.stack(columns, dim=1).numpy()
    offset = H @ inc_prior.increments.to_latents(torch.zeros(1, 3, 1, 4, 4, dtype=torch.float64)).reshape(-1).numpy()
    S = covariance
    A = np.vstack([np.eye(3 * n), G])
    R = np.block([[sigma**2 * np.eye(3 * n), np.zeros((3 * n, 5))], [np.zeros((5, 3 * n)), noise**2 * np.eye(5)]])
    data = np.concatenate([u_t.reshape(-1).numpy(), y.numpy() - offset])
    expected = mean + S @ A.T @ np.linalg.solve(A @ S @ A.T + R, data - A @ mean)
    np.testing.assert_allclose(guided(u_t, torch.tensor(sigma)).reshape(-1).numpy(), expected, atol=1e-6)


def test_known_filter_of_a_prior_in_increment_coordinates_follows_the_closed_form():
    """The exact prior written in increment coordinates runs the filter to the same law as in z̃
    coordinates (tests/test_filter.py): known conditioning, the history given as increments and the
    new states' observations read through L."""
    from latentda.posterior.filtering import filter_members
    from test_filter import _assert_ensemble_follows, _scheme_closed_form, _slow_linear_gaussian

    noise, members = 0.3, 64
    system, prior, operators, rows, values = _slow_linear_gaussian(window=4, noise=noise)
    inc_prior = _increment_prior(prior)
    exact = _scheme_closed_form(system, rows, values, noise, 1e-4, window=4, lag=2, context=1)
    out = list(filter_members(inc_prior, operators, list(range(members)), PosteriorSettings(iterations=40, batch_members=members, **HEUN),
                              seed=0, conditioning="known", lag=2, context=1))
    _assert_ensemble_follows(out, exact, members)


def test_mmps_filter_of_a_prior_in_increment_coordinates_follows_the_closed_form():
    """As above with mmps conditioning: the history's latent identity read through L, slack σ_c."""
    from latentda.posterior.filtering import filter_members
    from test_filter import _assert_ensemble_follows, _scheme_closed_form, _slow_linear_gaussian

    noise, members, slack = 0.3, 64, 0.05
    system, prior, operators, rows, values = _slow_linear_gaussian(window=2, cycles=3, noise=noise)
    inc_prior = _increment_prior(prior)
    law = _scheme_closed_form(system, rows, values, noise, slack, window=2, lag=1, context=1)
    settings = PosteriorSettings(iterations=24, batch_members=members, **HEUN)
    out = list(filter_members(inc_prior, operators, list(range(members)), settings, seed=0, condition_noise=slack, lag=1))
    _assert_ensemble_follows(out, law, members)
    with pytest.raises(LatentdaError, match="increment coordinates"):
        filter_members(inc_prior, operators, [0], settings, conditioning="inpaint")


def test_known_forecast_of_a_prior_in_increment_coordinates_is_the_closed_form():
    """Two steps ahead from a clean history, in windows of 3 in increment coordinates: the AR(1) law
    N(A^ℓ x, C₀ − A^ℓ C₀ A^ℓᵀ), as in z̃ coordinates (tests/test_known_frames.py)."""
    from test_known_frames import _exact_prior, known_forecast_follows_the_closed_form

    system, truth, prior = _exact_prior(window=3)
    known_forecast_follows_the_closed_form(_increment_prior(prior), system, truth)


def test_a_prior_in_increment_coordinates_samples_one_window_at_a_time():
    from latentda.posterior.reanalysis import sample_members
    from test_known_frames import _exact_prior

    _, _, prior = _exact_prior(window=3)
    inc_prior = _increment_prior(prior)
    with pytest.raises(LatentdaError, match="one window of 3 states at a time, not 5"):
        sample_members(inc_prior, inc_prior.trajectory_denoiser(), 5, [torch.Generator()], PosteriorSettings())


def test_command_line_with_a_prior_in_increment_coordinates(tmp_path, capsys):
    """A pipeline folder with denoiser/increment_statistics.json samples in increment coordinates: the
    filter runs (one window per cycle), a reanalysis longer than the window is refused with a one-line
    error and leaves no output, and so are the filter's inpaint conditioning and a forecast from more
    observed states than the window (checked before any work)."""
    from conftest import make_observed_pipeline
    from latentda import cli
    from latentda.pipeline import LatentDAPipeline

    _, _, _, observations = make_observed_pipeline(tmp_path, times=6)
    folder = tmp_path / "pipeline"
    channels = LatentDAPipeline.from_pretrained(folder).latent_statistics.channels
    Statistics(list(channels), np.zeros(len(channels)), np.full(len(channels), 0.2)).save(folder / "denoiser" / "increment_statistics.json")
    assert LatentDAPipeline.from_pretrained(folder).increments is not None
    base = ["--pipeline", str(folder), "--observations", str(observations), "--members", "1", "--steps", "2", "--quiet"]
    assert cli.main(["filter", *base, "--iterations", "1", "--out", str(tmp_path / "filter.zarr")]) == 0
    assert (tmp_path / "filter.zarr").exists()
    capsys.readouterr()
    assert cli.main(["reanalyze", *base, "--out", str(tmp_path / "post.zarr")]) != 0
    error = capsys.readouterr().err.strip()
    assert "increment coordinates" in error and len(error.splitlines()) == 1
    assert not list(tmp_path.glob("post.zarr*"))
    assert cli.main(["filter", *base, "--conditioning", "inpaint", "--out", str(tmp_path / "inpaint.zarr")]) != 0
    assert "inpaint" in capsys.readouterr().err and not list(tmp_path.glob("inpaint.zarr*"))
    assert cli.main(["forecast", *base, "--lead", "2", "--out", str(tmp_path / "forecast.zarr")]) != 0  # 6 states > K
    assert "increment coordinates" in capsys.readouterr().err and not list(tmp_path.glob("forecast.zarr*"))

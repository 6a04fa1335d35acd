"""Known frames: a prior that is also the conditional of a window given clean leading states
(latentda.diffusion.denoiser, "Known frames"): the denoiser's contract, the exact Gaussian conditional
against dense linear algebra, forecasts of the exact prior against the closed form, training a tiny
prior with known frames, and clear errors where a prior lacks them."""

import numpy as np
import pytest
import torch

from latentda.diffusion.denoiser import Denoiser, KnownFrames, TrainingNoise, denoising_loss, make_schedule
from latentda.diffusion.gaussian import GaussianDenoiser
from latentda.errors import LatentdaError
from latentda.nn.transformer import TrajectoryTransformer
from latentda.posterior.exact import KnownHistoryDenoiser
from latentda.posterior.reanalysis import PosteriorSettings
from latentda.simulate import GaussianSystem

SYSTEM = GaussianSystem(size=4, variables=2, variance=1.5, cutoff_wavenumber=1.5, spectral_exponent=3.0,
                        correlation_time=2.0, variable_correlation=0.6)


class _Probe(torch.nn.Module):
    """A backbone that records its input and answers a constant."""

    def forward(self, x, label, context=None, known=None):
        self.seen, self.known = x.detach().clone(), known
        return torch.full_like(x, 7.0)


def test_denoiser_returns_known_states_and_sees_them_unscaled():
    probe = _Probe()
    denoiser = Denoiser(probe, make_schedule())
    x_t = torch.randn(2, 4, 1, 2, 2)
    known = torch.tensor([[True, True, False, False], [True, False, False, False]])
    sigma = torch.tensor([100.0, 0.5])
    out = denoiser(x_t, sigma, known=known)
    given = known[:, :, None, None, None]
    assert torch.equal(torch.where(given, out, 0), torch.where(given, x_t, 0))  # returned as they are
    c_in = 1 / torch.sqrt(sigma**2 + 1)
    expected_input = torch.where(given, x_t, c_in[:, None, None, None, None] * x_t)
    torch.testing.assert_close(probe.seen, expected_input)  # the given states unscaled, the others × c_in
    plain = denoiser(x_t, sigma)
    torch.testing.assert_close(torch.where(given, 0, out), torch.where(given, 0, plain))


class _Draws:
    """rand/randn like training.loop.BatchRandom, from one generator."""

    def __init__(self, batch, seed=0):
        self.batch, self.generator = batch, torch.Generator().manual_seed(seed)

    def rand(self, *shape, dtype=torch.float32):
        return torch.rand((self.batch, *shape), generator=self.generator, dtype=dtype)

    def randn(self, *shape, dtype=torch.float32):
        return torch.randn((self.batch, *shape), generator=self.generator, dtype=dtype)


def test_known_frames_draw_prefixes_and_the_loss_ignores_them():
    known = KnownFrames(0.5).draw(_Draws(4000), window=5)
    counts = known.sum(1)
    assert torch.equal(known, torch.arange(5)[None] < counts[:, None])  # prefixes
    assert abs((counts == 0).float().mean().item() - 0.5) < 0.03  # the prior's share
    for n in range(1, 5):  # uniform over 1..K − 1 among the conditioned
        assert abs((counts == n).float().mean().item() - 0.125) < 0.02
    assert counts.max() == 4
    with pytest.raises(ValueError, match="known_probability"):
        KnownFrames(0.0)

    class Zero(torch.nn.Module):  # F = 0: D = c_skip x_t on the free states
        def forward(self, x, label, context=None, known=None):
            return torch.zeros_like(x)

    x = torch.randn(8, 4, 1, 2, 2)
    denoiser = Denoiser(Zero(), make_schedule())
    loss = denoising_loss(denoiser, x, _Draws(8, seed=1), known_frames=KnownFrames(1.0))
    assert torch.isfinite(loss) and loss > 0
    draws = _Draws(8, seed=1)  # the same draws: the given states count zero
    sigma = TrainingNoise().sigmas(draws.rand(dtype=torch.float64), 1e-3, 1e3).float()  # the loss's order of draws
    noise = draws.randn(4, 1, 2, 2)
    given = KnownFrames(1.0).draw(draws, 4)[:, :, None, None, None]
    x_t = torch.where(given, x, x + sigma[:, None, None, None, None] * noise)
    c_skip = 1 / (sigma**2 + 1)
    denoised = torch.where(given, x, c_skip[:, None, None, None, None] * x_t)
    weight = (1 / sigma**2 + 1)[:, None, None, None, None]
    free = (~given).float().expand_as(x)
    torch.testing.assert_close(loss, (weight * (denoised - x) ** 2 * free).sum() / x.numel())
    halves = [denoising_loss(denoiser, x[i : i + 4], _Rows(_Draws(8, seed=1), slice(i, i + 4)), known_frames=KnownFrames(1.0))
              for i in (0, 4)]
    torch.testing.assert_close(loss, (halves[0] + halves[1]) / 2)  # the same however the batch is split


def test_history_noise_puts_the_given_states_off_by_one_offset_per_window():
    """KnownFrames(noise=σ_h): every given state of a window moves by the same e ~ N(0, σ_h²), the free
    states not at all; in increment coordinates u_1 moves by e, the first free increment by −e/s and
    no other; the loss trains on the offset window; σ_h = 0 draws nothing."""
    from latentda.data.statistics import Statistics
    from latentda.diffusion.increments import Increments

    B, K = 4000, 5
    x = torch.randn(B, K, 2, 1, 1)
    known = KnownFrames(1.0).draw(_Draws(B), K)
    given = known[:, :, None, None, None]
    out = KnownFrames(1.0, noise=0.3).offset(x, known, _Draws(B, seed=2))
    delta = out - x
    assert torch.equal(torch.where(given, 0, delta), torch.zeros_like(x))  # free states untouched
    first = delta[:, :1]
    torch.testing.assert_close(torch.where(given, delta - first, 0), torch.zeros_like(x))  # one offset per window
    assert abs(first.std().item() - 0.3) < 0.01 and abs(first.mean().item()) < 0.01
    assert abs(np.corrcoef(first[:, 0, 0].flatten(), first[:, 0, 1].flatten())[0, 1]) < 0.05  # independent elements

    increments = Increments(Statistics(["a", "b"], mean=[0.1, -0.2], std=[0.05, 0.2]))
    u = torch.randn(B, K, 2, 1, 1)
    moved = KnownFrames(1.0, noise=0.3).offset(u, known, _Draws(B, seed=2), increments)
    e = first  # the same draws
    n = known.sum(1)
    s = torch.tensor([0.05, 0.2])[None, :, None, None]
    for k in range(K):
        expected = u[:, k].clone()
        expected += torch.where((k == 0) & (n > 0), 1.0, 0.0)[:, None, None, None] * e[:, 0]
        expected -= torch.where((k == n) & (k > 0), 1.0, 0.0)[:, None, None, None] * e[:, 0] / s
        torch.testing.assert_close(moved[:, k], expected, atol=2e-5, rtol=1e-5)

    class Mean(torch.nn.Module):  # F = the window's mean state: the free states' output reads the given ones
        def forward(self, x, label, context=None, known=None):
            return x.mean(1, keepdim=True).expand_as(x)

    denoiser, x = Denoiser(Mean(), make_schedule()), torch.randn(8, 4, 1, 2, 2)
    loss = denoising_loss(denoiser, x, _Draws(8, seed=1), known_frames=KnownFrames(1.0, noise=0.5))
    draws = _Draws(8, seed=1)  # by hand, in the loss's order of draws
    sigma = TrainingNoise().sigmas(draws.rand(dtype=torch.float64), 1e-3, 1e3).float()[:, None, None, None, None]
    noise = draws.randn(4, 1, 2, 2)
    known = KnownFrames(1.0).draw(draws, 4)
    off = x + 0.5 * known.float()[:, :, None, None, None] * draws.randn(1, 2, 2)[:, None]
    given = known[:, :, None, None, None]
    x_t = torch.where(given, off, off + sigma * noise)
    seen = torch.where(given, x_t, x_t / torch.sqrt(sigma**2 + 1)).mean(1, keepdim=True)
    denoised = torch.where(given, off, x_t / (sigma**2 + 1) + sigma / torch.sqrt(sigma**2 + 1) * seen)
    expected = ((1 / sigma**2 + 1) * (denoised - off) ** 2 * (~given).float()).sum() / x.numel()
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, denoising_loss(denoiser, x, _Draws(8, seed=1), known_frames=KnownFrames(1.0)))

    draws = _Draws(4, seed=3)
    state = draws.generator.get_state()
    assert torch.equal(KnownFrames(1.0).offset(x[:4], known[:4], draws), x[:4])
    assert torch.equal(draws.generator.get_state(), state)  # nothing drawn: runs without noise train as before
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="history_noise"):
            KnownFrames(0.5, noise=bad)


class _Rows:
    """The draws of some rows of a batch (as one process's share of it)."""

    def __init__(self, draws, rows):
        self.draws, self.rows = draws, rows

    def rand(self, *shape, dtype=torch.float32):
        return self.draws.rand(*shape, dtype=dtype)[self.rows]

    def randn(self, *shape, dtype=torch.float32):
        return self.draws.randn(*shape, dtype=dtype)[self.rows]


def test_a_known_frames_network_without_flags_is_the_network_with_none_given():
    """Unconditional calls (reanalyses, a filter's first cycle) see the flags as training did: all
    false, the embedding's bias included."""
    network = TrajectoryTransformer(in_channels=1, window=4, sample_size=(2, 2), patch_size=(1, 1, 1), hidden_size=12,
                                    depth=1, num_heads=2, known_frames=True)
    torch.manual_seed(0)
    for parameter in network.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    x = torch.randn(2, 4, 1, 2, 2)
    none = torch.zeros(2, 4, dtype=torch.bool)
    torch.testing.assert_close(network(x, 0.1), network(x, 0.1, known=none))
    assert not torch.allclose(network(x, 0.1, known=none), network(x, 0.1, known=torch.ones(2, 4, dtype=torch.bool)))


def test_known_history_denoiser_is_the_dense_gaussian_conditional():
    """E[x_f | x_f + σε, x_g = h] of the stationary law, per Fourier mode, against the dense Gaussian
    conditional N(Σ_fg Σ_gg⁻¹ h, Σ_ff − Σ_fg Σ_gg⁻¹ Σ_gf) of the whole window."""
    window, given = 4, 2
    joint = np.block([[SYSTEM.covariance_matrix(s - t) if s >= t else SYSTEM.covariance_matrix(t - s).T
                       for t in range(window)] for s in range(window)])
    d = SYSTEM.variables * SYSTEM.size**2
    g, f = slice(0, given * d), slice(given * d, None)
    exact = KnownHistoryDenoiser(SYSTEM, window, given)
    x_t = torch.randn(2, window, SYSTEM.variables, SYSTEM.size, SYSTEM.size, dtype=torch.float64)
    for sigma in (0.05, 1.0, 30.0):
        out = exact(x_t, sigma)
        assert torch.equal(out[:, :given], x_t[:, :given])
        for b in range(2):
            h = x_t[b, :given].reshape(-1).numpy()
            mean = joint[f, g] @ np.linalg.solve(joint[g, g], h)
            covariance = joint[f, f] - joint[f, g] @ np.linalg.solve(joint[g, g], joint[g, f])
            dense = GaussianDenoiser(torch.from_numpy(mean), torch.from_numpy(covariance))
            np.testing.assert_allclose(out[b, given:].reshape(-1).numpy(),
                                       dense(x_t[b : b + 1, given:], sigma).reshape(-1).numpy(), atol=1e-9)
    both = exact(x_t, torch.tensor([0.1, 2.0], dtype=torch.float64))  # one level per window
    np.testing.assert_allclose(both[1].numpy(), exact(x_t[1:], 2.0)[0].numpy(), atol=1e-12)
    with pytest.raises(LatentdaError, match="known states"):
        KnownHistoryDenoiser(SYSTEM, window, window)


def _exact_prior(window):
    from latentda.data import FieldLayout
    from latentda.diffusion.settings import SamplerSettings
    from latentda.posterior.exact import ExactPrior
    from latentda.simulate.gaussian import _dataset

    system = GaussianSystem(size=4, variables=1, cutoff_wavenumber=1.5, correlation_time=3.0)
    truth = system.trajectory(6, np.random.default_rng(1))
    layout = FieldLayout.from_dataset(_dataset(truth[None].astype(np.float32), 0, system, 6, {}, True).isel(trajectory=0))
    sampling = SamplerSettings(sampler="pc", steps=16, tau=0.5, sigma_start=20.0)
    return system, truth, ExactPrior(system, layout, make_schedule(1e-3, 1e3), sampling, window=window)


def known_forecast_follows_the_closed_form(prior, system, truth, members: int = 96) -> np.ndarray:
    """Forecast ``prior`` two steps from the clean history truth[:2] (conditioning known) and check the
    ensemble against x_{t+ℓ} | x_t ~ N(A^ℓ x_t, C₀ − A^ℓ C₀ A^ℓᵀ) (mean within sampling error, variance
    within 20 %); returns the fields (members, lead + 1, C, N, N)."""
    from latentda.posterior.forecast import forecast_members

    history = torch.from_numpy(truth[:2] / np.sqrt(system.variance)).float()[None]  # standardised latents
    run = forecast_members(prior, list(range(members)), 2, PosteriorSettings(batch_members=members), seed=0,
                           initial=history, conditioning="known", context=2)
    fields = np.stack([f for _, f in run])
    C0, C1 = system.covariance_matrix(0), system.covariance_matrix(1)
    A = C1 @ np.linalg.inv(C0)
    step, x = np.eye(len(A)), truth[1].reshape(-1)
    for lead in (1, 2):
        step = A @ step
        mean, covariance = step @ x, C0 - step @ C0 @ step.T
        ensemble = fields[:, lead].reshape(members, -1).astype(np.float64)
        z = (ensemble.mean(0) - mean) / np.sqrt(np.diag(covariance) / members)
        assert np.sqrt((z**2).mean()) < 1.6
        assert 0.8 < ensemble.var(0, ddof=1).sum() / np.trace(covariance) < 1.2
    return fields


def test_known_conditioning_forecast_of_the_exact_prior_is_the_closed_form():
    """The AR(1) system forecast two steps from a clean history with the exact prior's known-frame
    conditional follows the closed form — the windows roll exactly, with no slack."""
    system, truth, prior = _exact_prior(window=3)
    fields = known_forecast_follows_the_closed_form(prior, system, truth)
    np.testing.assert_array_equal(fields[:, 0], np.broadcast_to(truth[1].astype(np.float32), fields[:, 0].shape))


def test_known_conditioning_needs_a_prior_trained_with_known_frames(tmp_path):
    from conftest import make_tiny_pipeline
    from latentda.posterior.filtering import filter_members
    from latentda.posterior.forecast import forecast_members

    pipeline, _ = make_tiny_pipeline(tmp_path / "pipeline")
    assert not pipeline.known_frames
    initial = torch.zeros(1, 3, *pipeline.latent_shape)
    with pytest.raises(LatentdaError, match="known frames"):
        forecast_members(pipeline, [0], 1, PosteriorSettings(), initial=initial, conditioning="known")
    with pytest.raises(LatentdaError, match="known frames"):
        filter_members(pipeline, [None], [0], PosteriorSettings(), conditioning="known")
    with pytest.raises(LatentdaError, match="known frames"):
        pipeline.history_denoiser(initial)
    backbone = TrajectoryTransformer(in_channels=1, window=4, sample_size=(2, 2), patch_size=(1, 1, 1), hidden_size=12,
                                     depth=1, num_heads=2)
    with pytest.raises(ValueError, match="known_frames=False"):
        backbone(torch.zeros(1, 4, 1, 2, 2), 0.0, known=torch.zeros(1, 4, dtype=torch.bool))


def test_filter_window_times_follow_the_known_layout():
    """History first: with one history state in a window of 4, the new state sits at position 1, so the
    window's times (given ending at the new state) are moved on by 2 steps, and the new state keeps its time."""
    from latentda.posterior.filtering import FilterSettings, _window_sample
    from latentda.posterior.reanalysis import member_generator

    _, _, prior = _exact_prior(window=4)
    seen = []
    history_denoiser = prior.history_denoiser
    prior.history_denoiser = lambda known, times=None: seen.append(times) or history_denoiser(known, times)
    history = torch.zeros(1, 1, *prior.latent_shape)
    new = _window_sample(prior, history, None, FilterSettings("known", lag=1), PosteriorSettings(steps=2),
                         [member_generator(0, 0)], np.arange(4.0) + 10)
    assert new.shape == (1, 1, *prior.latent_shape)
    np.testing.assert_array_equal(seen[0], np.arange(4.0) + 12)
    assert seen[0][1] == 13  # the new state's time, the last of the times given


def test_conditional_denoising_tool_known_and_mmps_agree_on_the_exact_prior():
    """tools/conditional_denoising.py on the exact Gaussian prior: its own conditional and MMPS with a vanishing
    slack and a converged solve are the same Gaussian conditional at every level; the error grows with σ."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("conditional_denoising",
                                                  Path(__file__).parents[1] / "tools" / "conditional_denoising.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    system, _, prior = _exact_prior(window=3)
    windows = torch.from_numpy(np.stack([system.trajectory(3, np.random.default_rng(i)) for i in range(6)])
                               / np.sqrt(system.variance)).float()
    known = tool.conditional_errors(prior, "known", windows, 2, (0.1, 3.0), 1e-3, 40, batch=3)
    mmps = tool.conditional_errors(prior, "mmps", windows, 2, (0.1, 3.0), 1e-3, 40, batch=3)
    for sigma in known:
        np.testing.assert_allclose(known[sigma], mmps[sigma], rtol=2e-2)
    assert known["sigma=3"][0] > 3 * known["sigma=0.1"][0]

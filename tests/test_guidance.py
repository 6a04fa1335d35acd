"""MMPS against the closed-form Gaussian posterior; solvers; DPS; the guided sampler's moments."""

import math

import pytest
import torch

from latentda.diffusion.denoiser import make_schedule
from latentda.diffusion.gaussian import GaussianDenoiser
from latentda.diffusion.sampling import sample
from latentda.errors import LatentdaError
from latentda.posterior import DPSDenoiser, MMPSDenoiser, conjugate_gradient, gmres


def _problem(dim=6, observed=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    factor = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    covariance = factor @ factor.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)
    mean = torch.randn(dim, generator=g, dtype=torch.float64)
    A = torch.randn(observed, dim, generator=g, dtype=torch.float64)
    noise_std = 0.1 + 0.2 * torch.rand(observed, generator=g, dtype=torch.float64)
    y = torch.randn(observed, generator=g, dtype=torch.float64)
    return mean, covariance, A, noise_std, y


def _closed_form(mean, covariance, A, noise_std, y, x_t, sigma):
    """E[x | x_t, y] = m + V Aᵀ (A V Aᵀ + Σ_y)⁻¹ (y − A m) (DESIGN.md)."""
    eye = torch.eye(len(mean), dtype=torch.float64)
    gain = covariance @ torch.linalg.inv(covariance + sigma**2 * eye)
    m = mean + (x_t - mean) @ gain.T
    V = covariance - gain @ covariance
    S = A @ V @ A.T + torch.diag(noise_std**2)
    return m + (y - m @ A.T) @ torch.linalg.solve(S, A @ V).clone()


@pytest.mark.parametrize("solver", ["cg", "gmres"])
@pytest.mark.parametrize("sigma", [0.05, 1.0, 20.0])
def test_mmps_with_M_iterations_is_the_exact_posterior_mean(solver, sigma):
    mean, covariance, A, noise_std, y = _problem()
    denoise = GaussianDenoiser(mean, covariance)
    guided = MMPSDenoiser(denoise, lambda x: x @ A.T, y, noise_std, iterations=len(y), solver=solver)
    x_t = mean + sigma * torch.randn(4, len(mean), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = _closed_form(mean, covariance, A, noise_std, y, x_t, sigma)
    got = guided(x_t, torch.tensor(sigma, dtype=torch.float64))
    assert (got - expected).abs().max() < 1e-8


def test_fewer_iterations_are_not_exact_and_more_converge():
    mean, covariance, A, noise_std, y = _problem(dim=8, observed=5)
    denoise = GaussianDenoiser(mean, covariance)
    x_t = mean.expand(2, -1) + 0.3
    expected = _closed_form(mean, covariance, A, noise_std, y, x_t, 0.5)
    errors = [(MMPSDenoiser(denoise, lambda x: x @ A.T, y, noise_std, iterations=k)(x_t, torch.tensor(0.5, dtype=torch.float64))
               - expected).abs().max().item() for k in (1, 3, 5)]
    assert errors[0] > 1e-4 and errors[2] < 1e-8


def test_solvers_solve_spd_and_general_systems():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(3, 7, 7, generator=g, dtype=torch.float64)
    spd = B @ B.transpose(1, 2) + 7 * torch.eye(7, dtype=torch.float64)
    b = torch.randn(3, 7, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(spd, b)
    matvec = lambda v: torch.einsum("bij,bj->bi", spd, v)  # noqa: E731
    assert (conjugate_gradient(matvec, b, 7) - exact).abs().max() < 1e-9
    general = B + 7 * torch.eye(7, dtype=torch.float64)
    exact = torch.linalg.solve(general, b)
    assert (gmres(lambda v: torch.einsum("bij,bj->bi", general, v), b, 7) - exact).abs().max() < 1e-9


@pytest.mark.parametrize("iterations", [2, 7])
def test_solvers_lift_their_solution(iterations):
    """With ``lifted`` the solvers also return L u for the linear map L whose products the matvec returns:
    the same u as without, and L u equal to L applied to it, converged (7) or not (2); L maps to another shape."""
    g = torch.Generator().manual_seed(1)
    B = torch.randn(3, 7, 7, generator=g, dtype=torch.float64)
    spd = B @ B.transpose(1, 2) + 7 * torch.eye(7, dtype=torch.float64)
    general = B + 7 * torch.eye(7, dtype=torch.float64)
    lift = torch.randn(3, 2, 5, 7, generator=g, dtype=torch.float64)  # L: (7,) → (2, 5), per batch row
    b = torch.randn(3, 7, generator=g, dtype=torch.float64)
    def shift(value):
        return {"shift": torch.full((7,), value, dtype=torch.float64)}

    # CG given s: C = M − s I positive semi-definite (7: B Bᵀ, or not symmetric), or not (7.5: negative along B Bᵀ's
    # smallest directions, dropped)
    for solver, matrix, options in ((conjugate_gradient, spd, {}), (gmres, general, {}), (conjugate_gradient, spd, shift(7.0)),
                                    (conjugate_gradient, general, shift(7.0)), (conjugate_gradient, spd, shift(7.5))):
        plain = solver(lambda v: torch.einsum("bij,bj->bi", matrix, v), b, iterations, **options)
        u, lu = solver(lambda v: (torch.einsum("bij,bj->bi", matrix, v), torch.einsum("bcij,bj->bci", lift, v)),
                       b, iterations, lifted=True, **options)
        assert (u - plain).abs().max() < 1e-12
        assert (lu - torch.einsum("bcij,bj->bci", lift, u)).abs().max() < 1e-10


def test_cg_shift_keeps_cg_where_the_prior_part_is_a_covariance():
    """M = diag(s) + C with C positive definite, s not a multiple of I, C symmetric or not (a skew part
    added): CG given s returns plain CG's iterate at every iteration count — past n too, the iterations
    after convergence left out — and u = 0 for a zero right-hand side."""
    g = torch.Generator().manual_seed(4)
    factor = torch.randn(7, 7, generator=g, dtype=torch.float64)
    skew = torch.randn(7, 7, generator=g, dtype=torch.float64)
    s = 0.05 + torch.rand(7, generator=g, dtype=torch.float64)
    b = torch.randn(3, 7, generator=g, dtype=torch.float64)
    b[1] = 0
    symmetric = torch.diag(s) + factor @ factor.T / 7
    for M in (symmetric, symmetric + 0.1 * (skew - skew.T)):
        matvec = lambda v, M=M: v @ M.T  # noqa: E731
        for k in (1, 2, 4, 7, 9):
            got = conjugate_gradient(matvec, b, k, shift=s)
            assert torch.isfinite(got).all() and (got[1] == 0).all()
            assert (got - conjugate_gradient(matvec, b, k)).abs().max() < 1e-9
        if M is symmetric:
            assert (got - torch.linalg.solve(M, b.T).T).abs().max() < 1e-9


def test_cg_shift_drops_the_directions_where_the_prior_part_is_not_a_covariance():
    """C symmetric with two negative eigenvalues (M = σ_y² I + C still positive definite), the right-hand side
    spread over every direction: plain CG's n-th iterate is M⁻¹ b, which divides by M's small eigenvalues
    along them (past the noise alone's bound ‖b‖ / min s); CG given s returns P₊ (diag(s) + C⁺)⁻¹ b (C⁺: C's
    negative eigenvalues set to 0; P₊: the projector on C's positive eigenvectors), within that bound, for a
    scalar s and for one that is not. Fewer iterations: no part along the negative directions beyond the
    noise's bound either."""
    g = torch.Generator().manual_seed(5)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    c = torch.tensor([4.0, 2.0, 1.0, 0.5, -0.08, -0.085], dtype=torch.float64)
    C = Q @ torch.diag(c) @ Q.T
    positive = Q[:, :4] @ Q[:, :4].T
    b = torch.randn(4, 6, generator=g, dtype=torch.float64)
    for s in (torch.full((6,), 0.09, dtype=torch.float64), 0.09 + 0.01 * torch.rand(6, generator=g, dtype=torch.float64)):
        M = torch.diag(s) + C
        assert torch.linalg.eigvalsh(M).min() > 0
        bound = b.norm(dim=-1) / s.min()
        plain = conjugate_gradient(lambda v: v @ M.T, b, 6)
        assert (plain - torch.linalg.solve(M, b.T).T).abs().max() < 1e-8 and (plain.norm(dim=-1) > bound).all()
        got = conjugate_gradient(lambda v: v @ M.T, b, 6, shift=s)
        clipped = torch.diag(s) + Q @ torch.diag(c.clamp_min(0)) @ Q.T
        assert (got - torch.linalg.solve(clipped, b.T).T @ positive).abs().max() < 1e-8
        assert (got.norm(dim=-1) <= bound).all()
        for k in range(1, 7):
            along = conjugate_gradient(lambda v: v @ M.T, b, k, shift=s) @ Q[:, 4:]
            assert (along.norm(dim=-1) <= bound).all()


def test_mmps_never_pushes_away_from_the_observations_along_a_negative_learned_variance():
    """A learned-like denoiser whose Jacobian has a direction q of negative variance (σ² qᵀJq = −0.07 against
    σ_y² = 0.09; the exact mean, only the Jacobian wrong) and observations off the mean along q: the plain solve
    divides by 0.09 − 0.07 and its correction σ² Jᵀ u points the other way, pushing the mean away from y along q
    (by 3.5 times the residual); MMPS's CG, given Σ_y, drops that direction and leaves the mean unguided there."""
    mean, covariance, _, _, _ = _problem(dim=6)
    A = torch.eye(6, dtype=torch.float64)
    noise_std = torch.full((6,), 0.3, dtype=torch.float64)
    sigma = 1.0
    exact = GaussianDenoiser(mean, covariance)
    J = covariance @ torch.linalg.inv(covariance + sigma**2 * torch.eye(6, dtype=torch.float64))
    q = torch.linalg.eigh(covariance).eigenvectors[:, 0]  # the narrowest direction
    wrong = J - ((q @ J @ q) + 0.07) * torch.outer(q, q)  # qᵀ wrong q = −0.07, the others J's

    def learned(x_t, s):  # the exact mean, with the Jacobian ``wrong``
        return exact(x_t, s) + (x_t - x_t.detach()) @ (wrong - J).T

    x_t = mean + sigma * torch.randn(3, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    x_hat = exact(x_t, sigma)
    y = x_hat[0] + 2.0 * q  # off the first row's mean along q alone
    residual = (y - x_hat @ A.T) @ q
    u = conjugate_gradient(lambda v: noise_std**2 * v + sigma**2 * v @ A @ wrong @ A.T, y - x_hat @ A.T, 6)
    plain = x_hat + sigma**2 * u @ A @ wrong  # the same guided mean without the shift
    assert ((plain - x_hat)[0] @ q) * residual[0] < -3 * residual[0] ** 2
    guided = MMPSDenoiser(learned, lambda x: x @ A.T, y, noise_std, iterations=6)(x_t, torch.tensor(sigma, dtype=torch.float64))
    assert ((guided - x_hat)[0] @ q) * residual[0] >= 0
    assert (guided[0] - x_hat[0]).abs().max() < 1e-12  # stopped at the first direction: unguided
    exact_guided = MMPSDenoiser(exact, lambda x: x @ A.T, y, noise_std, iterations=6)(x_t, torch.tensor(sigma, dtype=torch.float64))
    assert ((exact_guided - x_hat)[0] @ q) * residual[0] > 0  # the exact denoiser pulls toward y


def test_mmps_is_the_kalman_update_with_the_learned_covariance_clipped():
    """The learned-like Jacobian above (variance −0.07 along q, the exact one elsewhere), observations off
    the mean in every direction: MMPS with n CG iterations is the Kalman update
    x̂ + V⁺ (V⁺ + Σ_y)⁻¹ (y − x̂) with V⁺ = σ² J clipped to its positive part — no correction along q, the
    exact posterior's correction in the other directions; plain CG's solve pushes the mean away from y along q."""
    mean, covariance, _, _, _ = _problem(dim=6)
    eye = torch.eye(6, dtype=torch.float64)
    noise_std = torch.full((6,), 0.3, dtype=torch.float64)
    sigma = 1.0
    exact = GaussianDenoiser(mean, covariance)
    J = covariance @ torch.linalg.inv(covariance + sigma**2 * eye)
    q = torch.linalg.eigh(covariance).eigenvectors[:, 0]
    wrong = J - ((q @ J @ q) + 0.07) * torch.outer(q, q)

    def learned(x_t, s):
        return exact(x_t, s) + (x_t - x_t.detach()) @ (wrong - J).T

    g = torch.Generator().manual_seed(7)
    x_t = mean + sigma * torch.randn(3, 6, generator=g, dtype=torch.float64)
    x_hat = exact(x_t, sigma)
    y = x_hat[0] + torch.randn(6, generator=g, dtype=torch.float64)
    values, vectors = torch.linalg.eigh(sigma**2 * wrong)
    clipped_covariance = vectors @ torch.diag(values.clamp_min(0)) @ vectors.T
    gain = clipped_covariance @ torch.linalg.inv(clipped_covariance + 0.09 * eye)
    expected = x_hat + (y - x_hat) @ gain.T
    got = MMPSDenoiser(learned, lambda x: x, y, noise_std, iterations=6)(x_t, torch.tensor(sigma, dtype=torch.float64))
    assert (got - expected).abs().max() < 1e-9
    assert ((got - x_hat) @ q).abs().max() < 1e-9
    assert ((got - x_hat).norm(dim=-1) > 0.1).all()


def test_dps_matches_its_formula_and_mmps_differs():
    mean, covariance, A, noise_std, y = _problem()
    denoise = GaussianDenoiser(mean, covariance)
    x_t = mean.expand(1, -1) + 0.2
    sigma = 0.7
    eye = torch.eye(len(mean), dtype=torch.float64)
    J = covariance @ torch.linalg.inv(covariance + sigma**2 * eye)
    m = denoise(x_t, sigma)
    expected = m + sigma**2 * ((y - m @ A.T) / noise_std**2) @ A @ J
    got = DPSDenoiser(denoise, lambda x: x @ A.T, y, noise_std)(x_t, torch.tensor(sigma, dtype=torch.float64))
    assert (got - expected).abs().max() < 1e-10
    mmps = MMPSDenoiser(denoise, lambda x: x @ A.T, y, noise_std, iterations=3)(x_t, torch.tensor(sigma, dtype=torch.float64))
    assert (mmps - got).abs().max() > 1e-3


def test_guided_sampler_matches_closed_form_posterior():
    """A full MMPS sampler run: posterior mean and covariance within Monte-Carlo error.

    Each sample holds 32 independent copies of the 4-d problem (one block-diagonal Gaussian), so
    that the pc sampler's step size, estimated per sample, averages over 128 numbers as it does
    over a real state's thousands; CG is exact in 2 iterations (2 distinct eigenvalues)."""
    mean, covariance, A, noise_std, y = _problem(dim=4, observed=2)
    copies = 32
    prior = GaussianDenoiser(mean.repeat(copies), torch.block_diag(*[covariance] * copies))
    blocks = torch.block_diag(*[A] * copies)
    guided = MMPSDenoiser(prior, lambda x: x @ blocks.T, y.repeat(copies), noise_std.repeat(copies), iterations=2)
    n = 250
    x = sample(guided, (n, 4 * copies), make_schedule(), steps=64, method="pc", dtype=torch.float64,
               generator=torch.Generator().manual_seed(2)).reshape(n * copies, 4)
    n = n * copies
    S = A @ covariance @ A.T + torch.diag(noise_std**2)
    gain = covariance @ A.T @ torch.linalg.inv(S)
    post_mean = mean + gain @ (y - A @ mean)
    post_cov = covariance - gain @ A @ covariance
    diagonal = post_cov.diagonal()
    assert ((x.mean(0) - post_mean).abs() < 5 * (diagonal / n).sqrt() + 0.02 * diagonal.sqrt()).all()
    stderr = ((diagonal[:, None] * diagonal[None, :] + post_cov**2) / n).sqrt()
    assert ((torch.cov(x.T) - post_cov).abs() < 5 * stderr + 0.08 * diagonal.max()).all(), (torch.cov(x.T), post_cov)


def test_bad_observations():
    mean, covariance, A, noise_std, y = _problem()
    denoise = GaussianDenoiser(mean, covariance)
    with pytest.raises(ValueError, match="positive"):
        MMPSDenoiser(denoise, lambda x: x @ A.T, y, torch.zeros_like(noise_std))
    with pytest.raises(ValueError, match="NaN"):
        MMPSDenoiser(denoise, lambda x: x @ A.T, y * math.nan, noise_std)
    with pytest.raises(ValueError, match="unknown solver"):
        MMPSDenoiser(denoise, lambda x: x @ A.T, y, noise_std, solver="lu")


@pytest.mark.parametrize("sigma", [0.05, 1.0, 20.0])
def test_inflated_denoiser_is_the_denoiser_of_the_widened_gaussian(sigma):
    """D(x, σ/τ) is, for z ~ N(m, Σ), the denoiser of N(m, τ²Σ) (mean kept, covariance τ²Σ), and
    MMPS over it is the closed-form posterior under that prior; the law of two points ±1 (denoiser
    tanh(x/σ²)) keeps its support: its inflated denoiser still ends on ±1 as σ → 0."""
    from latentda.posterior.prior import InflatedDenoiser

    tau = 1.7
    mean, covariance, A, noise_std, y = _problem()
    x_t = torch.randn(4, len(mean), generator=torch.Generator().manual_seed(1), dtype=torch.float64) * (1 + sigma)
    inflated = InflatedDenoiser(GaussianDenoiser(mean, covariance), tau)
    wide = GaussianDenoiser(mean, tau**2 * covariance)
    level = torch.tensor(sigma, dtype=torch.float64)
    assert torch.allclose(inflated(x_t, level), wide(x_t, level), atol=1e-10)
    assert not torch.allclose(inflated(x_t, level), GaussianDenoiser(mean, covariance)(x_t, level))
    guided = MMPSDenoiser(inflated, lambda x: x @ A.T, y, noise_std, iterations=len(y))
    expected = _closed_form(mean, tau**2 * covariance, A, noise_std, y, x_t, sigma)
    assert (guided(x_t, level) - expected).abs().max() < 1e-8
    two_point = InflatedDenoiser(lambda x, s: torch.tanh(x / s**2), tau)
    assert torch.allclose(two_point(x_t, level), torch.tanh(tau**2 * x_t / sigma**2), atol=1e-12)
    assert torch.allclose(two_point(x_t, torch.tensor(1e-3)).abs(), torch.ones_like(x_t))

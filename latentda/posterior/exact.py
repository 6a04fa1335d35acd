r"""The exact posterior of the linear-Gaussian system under linear observations: ground truth.

For the system of :mod:`latentda.simulate.gaussian` (zero mean, :math:`\hat x = F x` orthonormal
2-D DFT per variable, mode variances :math:`s_k^2`, AR(1) coefficients :math:`a_k`, variable
covariance :math:`R`) a window :math:`x = x_{1:L}` is Gaussian, :math:`x \sim \mathcal{N}(0,
\Sigma)`, with blocks :math:`\Sigma_{st} = R \otimes F^* \operatorname{diag}(a^{|s-t|} s^2) F`:
every product with :math:`\Sigma` is a few FFTs. Observations :math:`y = H x + \varepsilon`,
:math:`\varepsilon \sim \mathcal{N}(0, \operatorname{diag}(\sigma_y^2))`, with a linear
:math:`H` whose row :math:`m` reads one time :math:`t_m` (masks, points, coarse-graining and
linear samplings of :mod:`latentda.observe.operators` with the identity transform) give the
Gaussian posterior

.. math::

    \mathbb{E}[x \mid y] = \Sigma H^\top S^{-1} y, \qquad
    \operatorname{Cov}[x \mid y] = \Sigma - \Sigma H^\top S^{-1} H \Sigma, \qquad
    S = H \Sigma H^\top + \operatorname{diag}(\sigma_y^2).

With :math:`\hat h_m = F h_m` and :math:`G_s = (\Sigma H^\top)_{s\cdot}`, whose column :math:`m`
is :math:`F^{-1}[R \otimes a^{|s - t_m|} s^2 \hat h_m]`, the matrix :math:`S_{mm'} = \sum_k
\overline{\hat h_m(k)}\, \hat G_{t_m}(k, m')` + noise costs :math:`O(M^2 C N^2)` and one Cholesky
factor :math:`S = LL^\top` (:math:`M` observations, dense: a few thousand). Then, per time s,

- mean :math:`G_s S^{-1} y`;
- marginal variances :math:`\operatorname{diag}\Sigma_{ss} - \sum_m (L^{-1} G_s^\top)_{m\cdot}^2`;
- Fourier-mode variances :math:`\mathbb{E}|\hat x_s(k) - \hat m_s(k)|^2 = R_{cc} s_k^2 -
  \sum_m |(L^{-1} \hat G_s^\top)_{mk}|^2` (sum over a band for band-wise comparisons; their sum
  over k equals the sum of the marginal variances, Parseval);
- exact samples by pathwise conditioning (Matheron's rule): with a prior trajectory
  :math:`x^0` (the simulator) and :math:`\varepsilon^0 \sim \mathcal{N}(0, \operatorname{diag}
  \sigma_y^2)`, :math:`x^0 + \Sigma H^\top S^{-1}(y - H x^0 - \varepsilon^0)` is a posterior draw.

The stationary law (the prior of any window) is :func:`stationary_law`. :class:`StationaryDenoiser`
is the exact denoiser :math:`\mathbb{E}[x \mid x + \sigma\epsilon]` of a window of K states: per
Fourier mode the window covariance is :math:`T_k \otimes R` with the Toeplitz :math:`(T_k)_{st} =
a_k^{|s-t|} s_k^2`, diagonalised once, so a call costs two FFTs and :math:`O(N^2 K^2 C)`.

:class:`ExactPrior` wraps it as a :class:`latentda.posterior.prior.PriorModel` (the identity
autoencoder, standardisation by the exact stationary moments), so that the posterior samplers run
on the exact prior exactly as on a trained one: what remains is the sampler's and the guidance's
own error (``tools/bench_exact.py``, error source (a)).

Written by hand: no library conditions a stationary spectral Gaussian process on arbitrary linear
observations through an FFT-applied covariance.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from latentda.data.layout import FieldLayout
from latentda.data.statistics import Statistics
from latentda.diffusion.settings import SamplerSettings
from latentda.diffusion.blankets import BlanketDenoiser
from latentda.diffusion.settings import resolve_overlap
from latentda.errors import LatentdaError
from latentda.nn.autoencoder import AutoEncoder
from latentda.observe.operators import ObservationOperator
from latentda.simulate.gaussian import GaussianSystem
from latentda.posterior.prior import with_history

__all__ = [
    "GaussianTrajectoryLaw",
    "observation_rows",
    "stationary_law",
    "condition_on_observations",
    "exact_posterior",
    "StationaryDenoiser",
    "KnownHistoryDenoiser",
    "ExactPrior",
]

# S is dense M × M float64: 16384 observations are 2 GiB.
MAXIMUM_OBSERVATIONS = 16384


@dataclass
class GaussianTrajectoryLaw:
    """A Gaussian law over windows (L, C, N, N): its mean, marginal and Fourier-mode variances."""

    mean: np.ndarray
    variance: np.ndarray
    mode_variance: np.ndarray | None
    draw: Callable[[int, np.random.Generator], np.ndarray]

    def sample(self, members: int, seed: int | np.random.Generator = 0) -> np.ndarray:
        """``members`` exact draws, (members, L, C, N, N) float64."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        return self.draw(members, rng)


def _fft(fields: np.ndarray) -> np.ndarray:
    return np.fft.fft2(fields, norm="ortho")


def _ifft(fields: np.ndarray) -> np.ndarray:
    return np.fft.ifft2(fields, norm="ortho").real


def _mix_variables(system: GaussianSystem, fields: np.ndarray) -> np.ndarray:
    """R applied along the variable axis of (…, C, N, N)."""
    return np.einsum("cd,...dij->...cij", system.variable_covariance(), fields)


def _prior_draws(system: GaussianSystem, length: int, members: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([system.trajectory(length, rng) for _ in range(members)])


def stationary_law(system: GaussianSystem, length: int) -> GaussianTrajectoryLaw:
    """The law of any window of ``length`` consecutive states (the prior)."""
    shape = (length, system.variables, system.size, system.size)
    scale = np.diag(system.variable_covariance())[:, None, None]
    return GaussianTrajectoryLaw(
        mean=np.zeros(shape),
        variance=np.broadcast_to(scale * system.variance, shape).copy(),
        mode_variance=np.broadcast_to(scale * system.mode_variance(), shape).copy(),
        draw=lambda members, rng: _prior_draws(system, length, members, rng),
    )


def observation_rows(operator: ObservationOperator, variables: int, size: int,
                     chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The matrix of a linear operator: rows (M, C, N, N) and the time index of each row (M,).

    Each group is applied to the basis fields of one time step (``chunk`` at a time), so the
    rows are exact whatever the sampling; the order is that of ``operator(x)``.
    """
    n = variables * size * size
    rows, times = [], []
    for group in operator.groups:
        if group.transform != "identity":
            raise LatentdaError(f"observation '{group.name}': the exact posterior needs a linear operator, "
                                f"not the '{group.transform}' transform")
        if max(group.channels) >= variables:
            raise LatentdaError(f"observation '{group.name}' reads channel {max(group.channels)} of a "
                                f"{variables}-variable system")
        responses = []
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            basis = torch.zeros(stop - start, n, dtype=torch.float64)
            basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            basis = basis.reshape(stop - start, 1, variables, size, size)
            with torch.no_grad():
                responses.append(group.sampled(group.transformed(basis)).reshape(stop - start, -1).numpy())
        matrix = np.concatenate(responses)  # (n, samples per time)
        observed = np.nonzero(group.mask)
        sample_index = np.ravel_multi_index(observed[1:], group.mask.shape[1:])
        rows.append(matrix[:, sample_index].T.reshape(-1, variables, size, size))
        times.append(observed[0])
    return np.concatenate(rows), np.concatenate(times).astype(np.int64)


def _lagged_covariance_columns(system: GaussianSystem, rows_fourier: np.ndarray, times: np.ndarray,
                               time: int) -> np.ndarray:
    """F (Σ Hᵀ)_{time, m} for every observation m: (M, C, N, N) complex."""
    lags, which = np.unique(np.abs(time - times), return_inverse=True)
    lagged = system.lagged_mode_covariance(lags)[which][:, None]  # (M, 1, N, N)
    return _mix_variables(system, lagged * rows_fourier)


def _apply_covariance_to_adjoint(system: GaussianSystem, rows_fourier: np.ndarray, times: np.ndarray,
                                 weights: np.ndarray, length: int) -> np.ndarray:
    """Σ Hᵀ w for weights (B, M): (B, L, C, N, N)."""
    adjoint = np.zeros((weights.shape[0], length, *rows_fourier.shape[1:]), dtype=complex)
    for t in np.unique(times):
        at = times == t
        adjoint[:, t] = np.einsum("bm,mcij->bcij", weights[:, at], rows_fourier[at])
    out = np.zeros_like(adjoint)
    for s in range(length):
        lagged = system.lagged_mode_covariance(s - np.arange(length))  # (L, N, N)
        out[:, s] = _mix_variables(system, np.einsum("tij,btcij->bcij", lagged, adjoint))
    return _ifft(out)


def _apply_rows(rows: np.ndarray, times: np.ndarray, trajectories: np.ndarray) -> np.ndarray:
    """H x for trajectories (B, L, C, N, N): (B, M)."""
    out = np.empty((trajectories.shape[0], rows.shape[0]))
    for t in np.unique(times):
        at = times == t
        out[:, at] = np.einsum("mcij,bcij->bm", rows[at], trajectories[:, t])
    return out


def condition_on_observations(system: GaussianSystem, rows: np.ndarray, times: np.ndarray, values: np.ndarray,
                              noise_std: np.ndarray, length: int, mode_variance: bool = True) -> GaussianTrajectoryLaw:
    """p(x_{1:L} | y) for y_m = ⟨rows[m], x_{times[m]}⟩ + N(0, noise_std[m]²)."""
    rows = np.asarray(rows, dtype=np.float64)
    times = np.asarray(times, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    noise_std = np.broadcast_to(np.asarray(noise_std, dtype=np.float64), values.shape)
    M = rows.shape[0]
    shape = (system.variables, system.size, system.size)
    if rows.shape[1:] != shape or times.shape != (M,) or values.shape != (M,):
        raise LatentdaError(f"observation rows {rows.shape}, times {times.shape}, values {values.shape} do not "
                            f"match {M} observations of states {shape}")
    if M == 0 or M > MAXIMUM_OBSERVATIONS:
        raise LatentdaError(f"the exact posterior handles 1 to {MAXIMUM_OBSERVATIONS} observations, got {M}")
    if times.min() < 0 or times.max() >= length:
        raise LatentdaError(f"observation times must be in [0, {length})")
    if not (np.isfinite(values).all() and (noise_std > 0).all()):
        raise LatentdaError("observation values must be finite and noise std positive")
    rows_fourier = _fft(rows)

    innovation = np.empty((M, M))
    for s in np.unique(times):
        at = times == s
        columns = _lagged_covariance_columns(system, rows_fourier, times, int(s))
        innovation[at] = (rows_fourier[at].reshape(int(at.sum()), -1).conj() @ columns.reshape(M, -1).T).real
    innovation = (innovation + innovation.T) / 2 + np.diag(noise_std**2)
    cholesky = scipy.linalg.cholesky(innovation, lower=True)
    weights = scipy.linalg.cho_solve((cholesky, True), values)

    prior = stationary_law(system, length)
    mean = np.empty(prior.mean.shape)
    variance = prior.variance.copy()
    modes = prior.mode_variance.copy() if mode_variance else None
    for s in range(length):
        columns_fourier = _lagged_covariance_columns(system, rows_fourier, times, s)
        columns = _ifft(columns_fourier)
        mean[s] = np.einsum("m,mcij->cij", weights, columns)
        whitened = scipy.linalg.solve_triangular(cholesky, columns.reshape(M, -1), lower=True)
        variance[s] -= (whitened**2).sum(axis=0).reshape(shape)
        if modes is not None:
            flat = columns_fourier.reshape(M, -1)
            both = scipy.linalg.solve_triangular(cholesky, np.concatenate([flat.real, flat.imag], axis=1), lower=True)
            modes[s] -= (both**2).reshape(M, 2, -1).sum(axis=(0, 1)).reshape(shape)

    def draw(members: int, rng: np.random.Generator) -> np.ndarray:
        prior_draws = _prior_draws(system, length, members, rng)
        noise = noise_std * rng.standard_normal((members, M))
        residual = values - _apply_rows(rows, times, prior_draws) - noise
        correction = scipy.linalg.cho_solve((cholesky, True), residual.T).T
        return prior_draws + _apply_covariance_to_adjoint(system, rows_fourier, times, correction, length)

    return GaussianTrajectoryLaw(mean=mean, variance=np.maximum(variance, 0.0), mode_variance=modes, draw=draw)


def exact_posterior(system: GaussianSystem, operator: ObservationOperator,
                    mode_variance: bool = True) -> GaussianTrajectoryLaw:
    """p(x_{1:L} | y) for an :class:`ObservationOperator` with values (fields in physical units,
    channels in the system's order ``u``, ``v``); L is the operator's number of time steps."""
    rows, times = observation_rows(operator, system.variables, system.size)
    values, noise_std = (tensor.numpy() for tensor in operator.observed())
    return condition_on_observations(system, rows, times, values, noise_std, operator.length, mode_variance)


class StationaryDenoiser:
    """E[x | x_t] for windows x (…, K, C, N, N) of the stationary law, x_t = x + σ ε.

    Per Fourier mode k the window covariance T_k ⊗ R = (Q_k ⊗ U) diag(λ_k ⊗ d) (Q_k ⊗ U)ᵀ, so
    E[x̂(k) | x̂_t(k)] = (Q_k ⊗ U) diag(λd / (λd + σ²)) (Q_k ⊗ U)ᵀ x̂_t(k). Differentiable (torch),
    so V[x | x_t] = σ² ∂E[x | x_t]/∂x_t is reachable by autograd, as guidance needs.
    """

    def __init__(self, system: GaussianSystem, window: int) -> None:
        self.system = system
        self.window = window
        lags = np.abs(np.arange(window)[:, None] - np.arange(window)[None, :])
        toeplitz = np.moveaxis(system.lagged_mode_covariance(lags), (0, 1), (-2, -1))  # (N, N, K, K)
        time_eigenvalues, time_vectors = np.linalg.eigh(toeplitz)
        variable_eigenvalues, variable_vectors = np.linalg.eigh(system.variable_covariance())
        self.time_vectors = torch.from_numpy(time_vectors)  # (N, N, K, K)
        self.variable_vectors = torch.from_numpy(variable_vectors)  # (C, C)
        # (N, N, K, C) eigenvalues of T_k ⊗ R
        self.eigenvalues = torch.from_numpy(np.clip(time_eigenvalues, 0, None)[..., :, None] * variable_eigenvalues)

    def __call__(self, x_t: Tensor, sigma: Tensor | float) -> Tensor:
        dtype = x_t.dtype
        x = x_t.to(torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        coefficients = torch.fft.fft2(x, norm="ortho")  # (…, K, C, N, N)
        coefficients = torch.movedim(coefficients, (-2, -1), (-4, -3))  # (…, N, N, K, C)
        time_vectors = self.time_vectors.to(x.device).to(coefficients.dtype)
        variable_vectors = self.variable_vectors.to(x.device).to(coefficients.dtype)
        rotated = torch.einsum("...ijtc,ijts,cd->...ijsd", coefficients, time_vectors, variable_vectors)
        eigenvalues = self.eigenvalues.to(x.device)
        if sigma.numel() > 1:  # one level per leading batch element
            sigma = sigma.reshape(-1, *([1] * (rotated.ndim - 1)))
        shrunk = rotated * (eigenvalues / (eigenvalues + sigma**2))
        back = torch.einsum("...ijsd,ijts,cd->...ijtc", shrunk, time_vectors, variable_vectors)
        back = torch.movedim(back, (-4, -3), (-2, -1))
        return torch.fft.ifft2(back, norm="ortho").real.to(dtype)


class KnownHistoryDenoiser:
    """E[x | x_t, x_{1:n} = h] for windows x (…, K, C, N, N) of the stationary law whose first n
    states are given: x_t's first n states are taken as h, the others are x + σ ε.

    Per Fourier mode the window covariance T_k ⊗ R splits into the given (g) and free (f) states:
    x̂_f(k) | ĥ ~ N((M_k ⊗ I) ĥ(k), C_k ⊗ R) with M_k = T_fg T_gg⁻¹ and C_k = T_ff − T_fg T_gg⁻¹ T_gf,
    and the free states are denoised as in :class:`StationaryDenoiser` about that mean with C_k's
    eigenvectors: the exact conditional denoiser a prior trained with known frames learns
    (:mod:`latentda.diffusion.denoiser`, "Known frames")."""

    def __init__(self, system: GaussianSystem, window: int, given: int) -> None:
        if not 1 <= given < window:
            raise LatentdaError(f"{given} known states: a window of {window} takes 1 to {window - 1}")
        self.given = given
        lags = np.abs(np.arange(window)[:, None] - np.arange(window)[None, :])
        toeplitz = np.moveaxis(system.lagged_mode_covariance(lags), (0, 1), (-2, -1))  # (N, N, K, K)
        tgg, tgf = toeplitz[..., :given, :given], toeplitz[..., :given, given:]
        tfg, tff = toeplitz[..., given:, :given], toeplitz[..., given:, given:]
        gain = np.swapaxes(np.linalg.solve(tgg, tgf), -2, -1)  # M = T_fg T_gg⁻¹ (T_gg symmetric)
        conditional = tff - gain @ tgf
        time_eigenvalues, time_vectors = np.linalg.eigh((conditional + np.swapaxes(conditional, -2, -1)) / 2)
        variable_eigenvalues, variable_vectors = np.linalg.eigh(system.variable_covariance())
        self.gain = torch.from_numpy(gain)  # (N, N, K − n, n)
        self.time_vectors = torch.from_numpy(time_vectors)
        self.variable_vectors = torch.from_numpy(variable_vectors)
        self.eigenvalues = torch.from_numpy(np.clip(time_eigenvalues, 0, None)[..., :, None] * variable_eigenvalues)

    def __call__(self, x_t: Tensor, sigma: Tensor | float) -> Tensor:
        dtype, n = x_t.dtype, self.given
        x = x_t.to(torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        coefficients = torch.movedim(torch.fft.fft2(x, norm="ortho"), (-2, -1), (-4, -3))  # (…, N, N, K, C)
        known, free = coefficients[..., :n, :], coefficients[..., n:, :]
        mean = torch.einsum("ijfg,...ijgc->...ijfc", self.gain.to(x.device).to(coefficients.dtype), known)
        time_vectors = self.time_vectors.to(x.device).to(coefficients.dtype)
        variable_vectors = self.variable_vectors.to(x.device).to(coefficients.dtype)
        rotated = torch.einsum("...ijtc,ijts,cd->...ijsd", free - mean, time_vectors, variable_vectors)
        eigenvalues = self.eigenvalues.to(x.device)
        if sigma.numel() > 1:
            sigma = sigma.reshape(-1, *([1] * (rotated.ndim - 1)))
        shrunk = rotated * (eigenvalues / (eigenvalues + sigma**2))
        back = mean + torch.einsum("...ijsd,ijts,cd->...ijtc", shrunk, time_vectors, variable_vectors)
        back = torch.movedim(back, (-4, -3), (-2, -1))
        return torch.cat([x_t[..., :n, :, :, :], torch.fft.ifft2(back, norm="ortho").real.to(dtype)], dim=-4)


class ExactPrior:
    r"""The system's exact prior as a :class:`~latentda.posterior.prior.PriorModel`.

    The fields are standardised by the exact stationary moments (mean 0, std :math:`\sqrt{v}`, v =
    ``system.variance``), the autoencoder is the identity and the latent statistics are (0, 1), so
    the "latents" are :math:`\tilde z = x / \sqrt v`, a window of which is the stationary law of
    the system rescaled to unit variance. The trajectory denoiser is :class:`StationaryDenoiser`
    over windows of ``window`` states composed over overlapping blankets exactly as a trained
    prior's (:class:`latentda.diffusion.blankets.BlanketDenoiser`); with ``window`` ≥ the
    trajectory length it is the exact denoiser of the whole trajectory. ``scheduler`` (σ range) and
    ``sampling`` (sampler defaults) are given, e.g. those of a trained pipeline, so that both are
    sampled the same way.
    """

    def __init__(self, system: GaussianSystem, layout: FieldLayout, scheduler, sampling: SamplerSettings, window: int,
                 overlap: int | None = None) -> None:
        if layout.channels != system.channels or tuple(layout.shape) != (system.size, system.size):
            raise LatentdaError(f"the layout ({layout.channels} on {tuple(layout.shape)}) is not the system's "
                                f"({system.channels} on {system.size}×{system.size})")
        self.system = system
        self.layout = layout
        self.scheduler = scheduler
        self.sampling = sampling
        self.time_step, self.time_units = float(system.dt), "1"
        self.progress = False
        self._window = int(window)
        self._overlap = resolve_overlap(self._window, overlap)
        channels = system.variables
        self.autoencoder = AutoEncoder(in_channels=channels, latent_channels=channels, hidden_channels=[],
                                       sample_size=(system.size, system.size), periodic=(True, True)).eval()
        self.statistics = Statistics(system.channels, np.zeros(channels), np.full(channels, np.sqrt(system.variance)))
        self.latent_statistics = Statistics(system.channels, np.zeros(channels), np.ones(channels))
        self._denoiser = StationaryDenoiser(replace(system, variance=1.0), self._window)

    @property
    def window(self) -> int:
        return self._window

    @property
    def overlap(self) -> int:
        return self._overlap

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.autoencoder.latent_shape)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def calendar(self) -> bool:
        return False

    def trajectory_denoiser(self, overlap: int | None = None, times=None, split_blankets: bool = False):
        if split_blankets:
            raise LatentdaError("the exact prior runs in one process (split_blankets is not supported)")
        return BlanketDenoiser(self._denoiser, self._window, self._overlap if overlap is None else overlap)

    @property
    def known_frames(self) -> bool:
        return True

    def history_denoiser(self, known: Tensor, times=None):
        """The exact window denoiser given its first n states ``known`` (:class:`KnownHistoryDenoiser`)."""
        n = known.shape[1]
        exact = KnownHistoryDenoiser(replace(self.system, variance=1.0), self._window, n)

        def denoise(x, sigma):
            return exact(with_history(known, x), sigma)

        return denoise

    def decode(self, z: Tensor, batch_size: int = 64) -> np.ndarray:
        """Standardised (…, T, C, N, N) → physical fields, float32 numpy."""
        return self.statistics.destandardise(z.detach().double().cpu()).float().numpy()

    def lead_times(self, count: int) -> np.ndarray:
        return np.arange(count) * self.system.dt

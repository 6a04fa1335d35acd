"""Ensemble scores against a truth (WeatherBench2 names), per channel and time.

With members X_1..X_m, truth y and area weights w (mean 1; ones off lat-lon grids), for each
channel c and time t, ⟨·⟩ being the area-weighted spatial mean:

- ``rmse``: √⟨(X̄ − y)²⟩, the error of the ensemble mean;
- ``spread``: √⟨s²⟩ with s² the unbiased ensemble variance;
- ``spread_skill_ratio``: √((m+1)/m) · spread / rmse, which is 1 in expectation for an ensemble
  drawn from the same distribution as the truth (the factor corrects for finite m);
- ``crps``: the fair ensemble CRPS ⟨(1/m) Σ_i |X_i − y| − 1/(2m(m−1)) Σ_{i,j} |X_i − X_j|⟩, using
  Σ_{i,j} |X_i − X_j| = 2 Σ_k (2k − m + 1) X_(k) over the sorted members (k = 0..m−1);
- ``energy_spectrum``: the power of a field by wavenumber — isotropic (radial bins of |k|) on a
  doubly periodic box, zonal (along the periodic axis, averaged over the other) otherwise.
- ``lag_autocorrelation``: correlation between states k steps apart, a check of the dynamics.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ensemble_scores", "fair_crps", "energy_spectrum", "lag_autocorrelation"]


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (values * weights).mean(axis=(-2, -1))


def fair_crps(ensemble: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-pixel fair CRPS of ``ensemble`` (m, ...) against ``truth`` (...)."""
    m = ensemble.shape[0]
    skill = np.abs(ensemble - truth[None]).mean(axis=0)
    if m == 1:
        return skill
    ordered = np.sort(ensemble, axis=0)
    coefficients = (2 * np.arange(m) - m + 1).reshape(-1, *([1] * (ensemble.ndim - 1)))
    pairwise = 2 * (coefficients * ordered).sum(axis=0)
    return skill - pairwise / (2 * m * (m - 1))


def ensemble_scores(ensemble: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Scores of ``ensemble`` (m, T, C, H, W) against ``truth`` (T, C, H, W), each of shape (T, C)."""
    ensemble = np.asarray(ensemble, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    weights = np.ones((truth.shape[-2], 1)) if weights is None else np.asarray(weights, dtype=np.float64)
    m = ensemble.shape[0]
    mean = ensemble.mean(axis=0)
    rmse = np.sqrt(_weighted_mean((mean - truth) ** 2, weights))
    scores = {"rmse": rmse, "crps": _weighted_mean(fair_crps(ensemble, truth), weights)}
    if m > 1:
        spread = np.sqrt(_weighted_mean(ensemble.var(axis=0, ddof=1), weights))
        scores["spread"] = spread
        scores["spread_skill_ratio"] = np.sqrt((m + 1) / m) * spread / np.maximum(rmse, 1e-300)
    return scores


def energy_spectrum(fields: np.ndarray, periodic: tuple[bool, bool] = (True, True)) -> tuple[np.ndarray, np.ndarray]:
    """(wavenumbers, power) of fields (..., H, W), averaged over the leading axes."""
    fields = np.asarray(fields, dtype=np.float64)
    H, W = fields.shape[-2:]
    if periodic[0] and periodic[1]:
        power = np.abs(np.fft.fft2(fields)) ** 2 / (H * W) ** 2
        ky = np.fft.fftfreq(H, 1 / H)[:, None]
        kx = np.fft.fftfreq(W, 1 / W)[None, :]
        radius = np.rint(np.sqrt(kx**2 + ky**2)).astype(int)
        kmax = min(H, W) // 2
        flat = power.reshape(-1, H * W).mean(axis=0)
        spectrum = np.bincount(radius.ravel(), weights=flat, minlength=kmax + 1)[: kmax + 1]
        return np.arange(1, kmax + 1), spectrum[1:]
    axis = -1 if periodic[1] or not periodic[0] else -2
    n = fields.shape[axis]
    power = np.abs(np.fft.rfft(fields, axis=axis)) ** 2 / n**2
    power = np.moveaxis(power, axis, -1).reshape(-1, power.shape[axis]).mean(axis=0)
    power[1:] *= 2  # positive and negative frequencies
    return np.arange(1, power.size), power[1:]


def lag_autocorrelation(trajectories: np.ndarray, lag: int = 1) -> np.ndarray:
    """Correlation per channel between states ``lag`` apart, over trajectories (N, T, C, H, W)."""
    a = trajectories[:, :-lag].astype(np.float64)
    b = trajectories[:, lag:].astype(np.float64)
    axes = (0, 1, 3, 4)
    a = a - a.mean(axis=axes, keepdims=True)
    b = b - b.mean(axis=axes, keepdims=True)
    return (a * b).mean(axis=axes) / np.sqrt((a**2).mean(axis=axes) * (b**2).mean(axis=axes))

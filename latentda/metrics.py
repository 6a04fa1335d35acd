"""Ensemble scores against a truth (WeatherBench2 names), per channel and time.

With members X_1..X_m, truth y and area weights w (mean 1; ones off lat-lon grids), for each
channel c and time t, ⟨·⟩ being the area-weighted spatial mean over the valid points (those where
the truth and every member are finite: masked or missing points, NaN, are left out; NaN when none is):

- ``rmse``: √⟨(X̄ − y)²⟩, the error of the ensemble mean;
- ``spread``: √⟨s²⟩ with s² the unbiased ensemble variance;
- ``spread_skill_ratio``: √((m+1)/m) · spread / rmse (the factor corrects for finite m: for an
  ensemble drawn from the same distribution as the truth (m+1)/m · E[spread²] = E[rmse²]); ∞ where
  rmse is 0 and the spread is not, NaN where both are. Its square's numerator and denominator have
  the expectations that agree; the ratio of one time's roots is biased above 1 when few points are
  scored (Jensen), so an average over times is :func:`pooled_spread_skill_ratio`;
- ``crps``: the fair ensemble CRPS ⟨(1/m) Σ_i |X_i − y| − 1/(2m(m−1)) Σ_{i,j} |X_i − X_j|⟩, using
  Σ_{i,j} |X_i − X_j| = 2 Σ_k (2k − m + 1) X_(k) over the sorted members (k = 0..m−1);
- ``pole_rmse`` (lat-lon grids whose first/last row is within one grid step of ±90°, see
  ``FieldLayout.pole_rows``): √(mean of (X̄ − y)² over the pole rows, without weights), which the
  area weights (even floored) make nearly invisible in ``rmse``;
- ``energy_spectrum``: the power of a field by wavenumber — isotropic (radial bins of |k|) on a
  doubly periodic box, zonal (along the periodic axis, averaged over the other) otherwise.
- ``lag_autocorrelation``: correlation between states k steps apart, a check of the dynamics.

Against observations (no truth: real data), per set of M observations y_j of error std σ_j, with the
members' predicted observations h_ij = H(X_i)_j, their mean h̄_j and unbiased variance s_j², d_j = y_j − h̄_j
(:func:`observation_space_scores`; Candille et al. 2007, "Verification of an ensemble prediction system
against observations", QJRMS 133):

- ``bias``: mean d (observation minus ensemble mean); ``rmse``: √mean d²; ``spread``: √mean s²;
  ``noise_std``: √mean σ²;
- ``spread_skill_ratio``: √(mean((m+1)/m s² + σ²) / mean d²): for members and truth exchangeable and
  y = H(truth) + ε, E[d²] = (m+1)/m E[s²] + σ² (Saetra et al. 2004), so 1 when calibrated — the
  observation error is part of the expected distance, and an ensemble of the right spread scored
  without it would read under-dispersed;
- ``crps``: :func:`dressed_crps`, the fair CRPS of the ensemble dressed with the observation error
  (the predictive law of y is (1/m) Σ_i N(h_i, σ²)), in closed form.

Calibration (is the truth a draw from the ensemble's distribution?):

- ``truth_ranks``: the rank r ∈ {0..m} of the truth among the m members (members below it; ties
  broken at random). For an ensemble exchangeable with the truth r is uniform on {0..m}.
- ``rank_histogram`` counts r (pooled over whatever axes are given: space and time per variable);
  ``rank_flatness`` tests it with Pearson's χ² = Σ_r (O_r − E)²/E, E = n/(m+1), m degrees of
  freedom, p-value from the χ² law, and the flatness δ = χ²/m (Candille & Talagrand 2005;
  ≈ 1 when flat). The p-value assumes independent ranks: neighbouring pixels and times are
  correlated, so on fields a small p means "detectably non-flat", δ says by how much. A U shape
  (too many extreme ranks) is an under-dispersed ensemble, a dome an over-dispersed one, a slope a
  bias.
- ``interval_coverage``: how often the truth falls in the central prediction interval of level
  p, x̄ ± t_{m−1,(1+p)/2} · s · √(1 + 1/m) (ensemble mean x̄, unbiased std s, Student-t quantile):
  for members and truth exchangeable and Gaussian its coverage is exactly p for any m ≥ 2, and it
  falls below p for an under-dispersed ensemble without saturating. (Intervals between ensemble
  quantiles cannot do this with few members: the range of m = 4 members covers only 60 %, and
  rank-based intervals credit a truth outside the ensemble with part of the outer slot.) Equivalently
  the truth's predictive PIT u = T_{m−1}((y − x̄)/(s√(1 + 1/m))) lies in [(1 − p)/2, (1 + p)/2];
  ``coverage_curve`` gives the pooled coverage for several p (the reliability diagram).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ensemble_scores",
    "pooled_spread_skill_ratio",
    "fair_crps",
    "pole_rmse",
    "energy_spectrum",
    "spectrum_sums",
    "lag_autocorrelation",
    "truth_ranks",
    "rank_histogram",
    "rank_flatness",
    "predictive_pit",
    "interval_coverage",
    "coverage_curve",
    "coverage_sums",
    "dressed_crps",
    "observation_space_scores",
    "pooled_observation_scores",
]


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ w v / Σ w over the finite entries of ``values`` (…, H, W): masked or missing points (NaN)
    are left out; NaN where no entry is finite."""
    valid = np.isfinite(values)
    area = valid * np.broadcast_to(weights, values.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.where(valid, values, 0.0) * area).sum(axis=(-2, -1)) / area.sum(axis=(-2, -1))


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


def _absolute_mean(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """E|μ + s Z| for Z ~ N(0, 1): μ (2Φ(μ/s) − 1) + 2 s φ(μ/s) (|μ| where s = 0)."""
    from scipy.special import ndtr

    with np.errstate(divide="ignore", invalid="ignore"):
        z = mean / std
        value = mean * (2 * ndtr(z) - 1) + 2 * std * np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)
    return np.where(std > 0, value, np.abs(mean))


def dressed_crps(ensemble: np.ndarray, observed: np.ndarray, noise_std: np.ndarray | float) -> np.ndarray:
    """Per-entry fair CRPS of ``ensemble`` (m, ...) dressed with Gaussian noise of std ``noise_std`` (the
    predictive law of an observation y = H(x) + ε: each member h_i a N(h_i, σ²)) against ``observed`` (...).
    With A(μ, s) = E|μ + sZ| (closed form, :func:`_absolute_mean`) and CRPS(F, y) = E|Y − y| − ½ E|Y − Y'|
    (Y, Y' independent draws of F; Grimit et al. 2006, QJRMS 132, for the Gaussian mixture):

        (1/m) Σ_i A(y − h_i, σ) − 1/(2m(m−1)) Σ_{i≠j} A(h_i − h_j, √2 σ),

    the pairs of distinct members as in :func:`fair_crps` (to which it reduces at σ = 0): an unbiased
    estimate of the dressed score of the law the members are drawn from. One member: the CRPS of
    N(h_1, σ²) itself, A(y − h_1, σ) − A(0, √2 σ)/2."""
    ensemble = np.asarray(ensemble, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    std = np.broadcast_to(np.asarray(noise_std, dtype=np.float64), observed.shape)
    m = ensemble.shape[0]
    skill = _absolute_mean(observed[None] - ensemble, std[None]).mean(axis=0)
    if m == 1:
        return skill - 0.5 * _absolute_mean(np.zeros_like(observed), np.sqrt(2) * std)
    pairs = sum(_absolute_mean(ensemble[i] - ensemble[i + 1:], np.sqrt(2) * std[None]).sum(axis=0) for i in range(m - 1))
    return skill - pairs / (m * (m - 1))  # Σ_{i<j} counts each pair once: 2 Σ_{i<j} / (2 m (m − 1))


def observation_space_scores(predicted: np.ndarray, observed: np.ndarray, noise_std: np.ndarray | float) -> dict[str, float]:
    """Scores of the members' predicted observations ``predicted`` (m, M) against M observations ``observed``
    (M,) of error std ``noise_std`` (module docstring: ``count``, ``bias``, ``rmse``, ``noise_std``, ``crps``,
    and with two members or more ``spread`` and ``spread_skill_ratio``). Entries with a NaN (an unobserved
    or masked point) are left out; with none left every score is NaN and ``count`` 0."""
    predicted = np.asarray(predicted, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    std = np.broadcast_to(np.asarray(noise_std, dtype=np.float64), observed.shape)
    valid = np.isfinite(observed) & np.isfinite(predicted).all(axis=0) & np.isfinite(std)
    predicted, observed, std = predicted[:, valid], observed[valid], std[valid]
    m, count = predicted.shape[0], int(valid.sum())
    scores = {"count": count}
    if count == 0:
        return {**scores, **{name: float("nan") for name in ("bias", "rmse", "noise_std", "crps")},
                **({"spread": float("nan"), "spread_skill_ratio": float("nan")} if m > 1 else {})}
    distance = observed - predicted.mean(axis=0)
    scores.update(bias=float(distance.mean()), rmse=float(np.mean(distance**2)) ** 0.5,
                  noise_std=float(np.mean(std**2)) ** 0.5, crps=float(dressed_crps(predicted, observed, std).mean()))
    if m > 1:
        scores["spread"] = float(predicted.var(axis=0, ddof=1).mean()) ** 0.5
        scores["spread_skill_ratio"] = _spread_skill_with_noise(scores, m)
    return scores


def _spread_skill_with_noise(scores: dict[str, float], members: int) -> float:
    """√(((m+1)/m spread² + noise_std²) / rmse²) of observation-space ``scores`` (module docstring)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sqrt(((members + 1) / members * scores["spread"] ** 2 + scores["noise_std"] ** 2)
                             / np.float64(scores["rmse"] ** 2)))


def pooled_observation_scores(per_set: list[dict], members: int) -> dict:
    """:func:`observation_space_scores` of the union of several sets of observations (e.g. the times of a
    window) from each set's scores (each a mean over its ``count`` observations): the means over every
    observation — of the squares for ``rmse``, ``spread`` and ``noise_std`` —, ``count`` 0 alone when there is none."""
    counts = np.array([scores["count"] for scores in per_set], dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return {"count": 0}

    def mean(name: str, power: int = 1) -> float:
        values = np.array([scores[name] for scores in per_set], dtype=np.float64)
        return float(np.nansum(counts * values**power) / total)  # a set without observations: NaN, weight 0

    pooled = {"count": int(total), "bias": mean("bias"), "rmse": mean("rmse", 2) ** 0.5,
              "noise_std": mean("noise_std", 2) ** 0.5, "crps": mean("crps")}
    if members > 1:
        pooled["spread"] = mean("spread", 2) ** 0.5
        pooled["spread_skill_ratio"] = _spread_skill_with_noise(pooled, members)
    return pooled


CURVE_LEVELS = np.linspace(0.1, 0.9, 9)  # the central intervals of coverage_curve
CURVE_LEVELS.setflags(write=False)  # returned by coverage_curve: a caller's edit would change every later curve
SCORE_BLOCK_BYTES = 64 * 2**20  # float64 ensemble values scored at once (ensemble_scores)


def ensemble_scores(ensemble: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Scores of ``ensemble`` (m, T, C, H, W) against ``truth`` (T, C, H, W), each of shape (T, C).

    Every score is one number per (time, channel), so times are scored in blocks of at most
    :data:`SCORE_BLOCK_BYTES` of float64 ensemble values: the float64 copy, the sort of the fair CRPS and
    their temporaries are a block's, not the whole ensemble's (about 11× its float32 size at once before)."""
    ensemble, truth = np.asarray(ensemble), np.asarray(truth)
    per_time = 8 * ensemble.shape[0] * int(np.prod(ensemble.shape[2:]))
    block = max(1, SCORE_BLOCK_BYTES // max(per_time, 1))
    if ensemble.shape[1] <= block:
        return _ensemble_scores(ensemble, truth, weights)
    parts = [_ensemble_scores(ensemble[:, t : t + block], truth[t : t + block], weights)
             for t in range(0, ensemble.shape[1], block)]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _ensemble_scores(ensemble: np.ndarray, truth: np.ndarray, weights: np.ndarray | None) -> dict[str, np.ndarray]:
    ensemble = np.asarray(ensemble, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    weights = np.ones((truth.shape[-2], 1)) if weights is None else np.asarray(weights, dtype=np.float64)
    m = ensemble.shape[0]
    valid = np.isfinite(truth) & np.isfinite(ensemble).all(axis=0)  # every score over the same points
    truth = np.where(valid, truth, np.nan)
    mean = ensemble.mean(axis=0)
    rmse = np.sqrt(_weighted_mean((mean - truth) ** 2, weights))
    scores = {"rmse": rmse, "crps": _weighted_mean(fair_crps(ensemble, truth), weights)}
    if m > 1:
        spread = np.sqrt(_weighted_mean(np.where(valid, ensemble.var(axis=0, ddof=1), np.nan), weights))
        scores["spread"] = spread
        with np.errstate(divide="ignore", invalid="ignore"):  # rmse 0: ∞ (or NaN with no spread either)
            scores["spread_skill_ratio"] = np.sqrt((m + 1) / m) * spread / rmse
    return scores


def pooled_spread_skill_ratio(spread: np.ndarray, rmse: np.ndarray, members: int, axis: int = 0) -> np.ndarray:
    """√((m+1)/m) · √(mean spread²) / √(mean rmse²) over ``axis`` (times; NaN entries left out): the
    spread-skill ratio of several times, 1 in expectation for a calibrated ensemble whatever the
    number of points per time (the mean of per-time ratios is not: each is a ratio of roots)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((members + 1) / members * np.nanmean(spread**2, axis=axis) / np.nanmean(rmse**2, axis=axis))


def pole_rmse(ensemble: np.ndarray, truth: np.ndarray, rows: list[int]) -> np.ndarray:
    """Unweighted RMSE (T, C) of the ensemble mean of ``ensemble`` (m, T, C, H, W) against ``truth``
    (T, C, H, W) over the grid ``rows`` (the pole rows) and all columns."""
    mean = np.asarray(ensemble, dtype=np.float64).mean(axis=0)[..., rows, :]
    squared = (mean - np.asarray(truth, dtype=np.float64)[..., rows, :]) ** 2
    return np.sqrt(_weighted_mean(squared, np.ones((len(rows), 1))))


def energy_spectrum(fields: np.ndarray, periodic: tuple[bool, bool] = (True, True)) -> tuple[np.ndarray, np.ndarray]:
    """(wavenumbers, power) of fields (..., H, W), averaged over the leading axes. Masked or missing
    points (NaN) are set to the mean of their field's valid points (the spectrum of a masked field
    is then approximate); a field with no valid point is left out.

    Periodic in both axes: the isotropic spectrum, |F(k)|²/(HW)² summed over shells of
    |k| = √((k_y n/H)² + (k_x n/W)²) rounded half up, k = 1 … n/2, in cycles per n = max(H, W) cells
    (per domain on a square grid; square cells assumed), so a wavelength counts alike along either axis
    and the longest wave of the longer axis is k = 1 (the modes beyond n/2, the corners, are left out).
    Otherwise the 1-D spectrum along the periodic axis (x when neither is), one-sided."""
    k, sums, count = spectrum_sums(fields, periodic)
    with np.errstate(invalid="ignore", divide="ignore"):
        return k, sums / count


def spectrum_sums(fields: np.ndarray, periodic: tuple[bool, bool] = (True, True)) -> tuple[np.ndarray, np.ndarray, int]:
    """(wavenumbers, summed power, count): :func:`energy_spectrum` is summed power / count, so the
    spectrum of fields given in parts is the sum of the parts' sums over the sum of their counts."""
    fields = np.asarray(fields, dtype=np.float64)
    if np.isnan(fields).any():
        flat = fields.reshape(-1, *fields.shape[-2:])
        flat = flat[~np.isnan(flat).all(axis=(1, 2))]
        with np.errstate(invalid="ignore"):
            fill = np.nanmean(flat, axis=(1, 2), keepdims=True)
        fields = np.where(np.isnan(flat), fill, flat)
    H, W = fields.shape[-2:]
    if periodic[0] and periodic[1]:
        power = np.abs(np.fft.fft2(fields)) ** 2 / (H * W) ** 2
        n = max(H, W)
        ky = np.fft.fftfreq(H, 1 / H)[:, None] * (n / H)  # cycles per n cells
        kx = np.fft.fftfreq(W, 1 / W)[None, :] * (n / W)
        radius = np.floor(np.sqrt(kx**2 + ky**2) + 0.5).astype(int)  # half up: rint's half-to-even would alternate bins
        kmax = n // 2
        flat = power.reshape(-1, H * W)
        spectrum = np.bincount(radius.ravel(), weights=flat.sum(axis=0), minlength=kmax + 1)[: kmax + 1]
        return np.arange(1, kmax + 1), spectrum[1:], len(flat)
    axis = -1 if periodic[1] or not periodic[0] else -2
    n = fields.shape[axis]
    power = np.abs(np.fft.rfft(fields, axis=axis)) ** 2 / n**2
    power = np.moveaxis(power, axis, -1).reshape(-1, power.shape[axis])
    rows, power = len(power), power.sum(axis=0)
    power[1 : (n + 1) // 2] *= 2  # positive and negative frequencies (the Nyquist bin of an even n has no twin)
    return np.arange(1, power.size), power[1:], rows


def lag_autocorrelation(trajectories: np.ndarray, lag: int = 1) -> np.ndarray:
    """Correlation per channel between states ``lag`` apart, over trajectories (N, T, C, H, W)."""
    a = trajectories[:, :-lag].astype(np.float64)
    b = trajectories[:, lag:].astype(np.float64)
    axes = (0, 1, 3, 4)
    a = a - a.mean(axis=axes, keepdims=True)
    b = b - b.mean(axis=axes, keepdims=True)
    return (a * b).mean(axis=axes) / np.sqrt((a**2).mean(axis=axes) * (b**2).mean(axis=axes))


def truth_ranks(ensemble: np.ndarray, truth: np.ndarray, seed: int = 0, rng: np.random.Generator | None = None) -> np.ndarray:
    """Rank in {0..m} of ``truth`` (...) among ``ensemble`` (m, ...), ties broken at random (one uniform
    draw per entry of ``truth``, from ``rng``, else from ``seed``); NaN entries (of the truth or any member)
    get rank −1. Blocks of a truth given one after another with one ``rng`` draw what the whole would."""
    ensemble = np.asarray(ensemble, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    below = (ensemble < truth[None]).sum(axis=0)
    ties = (ensemble == truth[None]).sum(axis=0)
    rng = np.random.default_rng(seed) if rng is None else rng
    ranks = below + np.floor(rng.uniform(size=truth.shape) * (ties + 1)).astype(np.int64)
    invalid = np.isnan(truth) | np.isnan(ensemble).any(axis=0)
    return np.where(invalid, -1, ranks)


def rank_histogram(ensemble: np.ndarray, truth: np.ndarray, seed: int = 0, rng: np.random.Generator | None = None) -> np.ndarray:
    """Counts (m+1,) of the truth's rank, pooled over all entries of ``truth`` (NaN skipped; ties as
    :func:`truth_ranks`)."""
    ranks = truth_ranks(ensemble, truth, seed, rng)
    return np.bincount(ranks[ranks >= 0].ravel(), minlength=ensemble.shape[0] + 1)


def rank_flatness(counts: np.ndarray) -> dict[str, float]:
    """χ² flatness test of a rank histogram: ``chi2``, ``dof`` (= m), ``p_value``, ``flatness`` (χ²/m)."""
    from scipy.stats import chi2 as chi2_law

    counts = np.asarray(counts, dtype=np.float64)
    expected = counts.sum() / counts.size
    statistic = float(((counts - expected) ** 2).sum() / expected) if expected > 0 else float("nan")
    dof = counts.size - 1
    return {"chi2": statistic, "dof": dof, "p_value": float(chi2_law.sf(statistic, dof)),
            "flatness": statistic / dof if dof > 0 else float("nan")}


def predictive_pit(ensemble: np.ndarray, truth: np.ndarray, seed: int = 0, rng: np.random.Generator | None = None) -> np.ndarray:
    """PIT of the truth (...) under the Student-t predictive law of the ensemble (m, ...), m ≥ 2.

    Members all equal make the law a point mass: a truth off it has PIT 0 or 1, a truth on it (a dry
    pixel forecast dry) the randomised PIT U(0, 1) of a law with an atom (Czado, Gneiting and Held
    2009), drawn with ``seed`` — so a calibrated ensemble of a zero-inflated variable still covers its
    central intervals at their level. A missing truth (NaN) stays NaN. Given ``rng``, one uniform per
    entry is drawn from it whether or not any is used: blocks of a truth given one after another with
    one ``rng`` get the PIT of the whole."""
    from scipy.stats import t as student

    ensemble = np.asarray(ensemble, dtype=np.float64)
    m = ensemble.shape[0]
    if m < 2:
        raise ValueError("interval coverage needs at least two members")
    scale = ensemble.std(axis=0, ddof=1) * np.sqrt(1 + 1 / m)
    error = np.asarray(truth, dtype=np.float64) - ensemble.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        standardised = np.where(scale == 0, np.sign(error) * np.inf, error / scale)
    pit = student.cdf(standardised, m - 1)
    atom = (scale == 0) & (error == 0)
    if rng is not None:
        pit = np.where(atom, rng.uniform(size=pit.shape), pit)
    elif atom.any():
        pit = np.where(atom, np.random.default_rng(seed).uniform(size=pit.shape), pit)
    return pit


def interval_coverage(ensemble: np.ndarray, truth: np.ndarray, level: float, weights: np.ndarray | None = None,
                      pit: np.ndarray | None = None) -> np.ndarray:
    """Coverage of the central ``level`` prediction interval, ensemble (m, T, C, H, W) and truth
    (T, C, H, W) → (T, C), averaged over space with the area ``weights`` (NaN entries skipped);
    ``pit``: :func:`predictive_pit` of them when computed already (one draw for its ties)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    pit = predictive_pit(ensemble, truth) if pit is None else pit
    valid = ~np.isnan(pit)
    covered = valid & (np.abs(np.where(valid, pit, 0.5) - 0.5) <= level / 2)
    weights = np.ones((truth.shape[-2], 1)) if weights is None else np.asarray(weights, dtype=np.float64)
    area = valid * np.broadcast_to(weights, pit.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (covered * area).sum(axis=(-2, -1)) / area.sum(axis=(-2, -1))


def coverage_curve(ensemble: np.ndarray, truth: np.ndarray, levels: np.ndarray | None = None,
                   weights: np.ndarray | None = None, pit: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(levels, coverage) of the central prediction intervals, pooled over all entries of ``truth``
    (..., H, W), each weighted by its row's area ``weights`` (H, 1) when given (as :func:`interval_coverage`;
    ``pit`` as there)."""
    levels = CURVE_LEVELS if levels is None else np.asarray(levels, dtype=np.float64)
    pit = predictive_pit(ensemble, truth) if pit is None else pit
    covered, total = coverage_sums(pit, levels, weights)
    return levels, covered / total


def coverage_sums(pit: np.ndarray, levels: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """The sums of :func:`coverage_curve` over the PITs ``pit`` (..., H, W) (NaN: left out): per level the area
    within its central interval, and the whole area. Sums of several parts give the coverage of their union."""
    area = np.ones_like(pit) if weights is None else np.broadcast_to(np.asarray(weights, dtype=np.float64), pit.shape)
    valid = ~np.isnan(pit)
    pit, area = pit[valid], area[valid]
    return np.array([float((area * (np.abs(pit - 0.5) <= p / 2)).sum()) for p in levels]), float(area.sum())

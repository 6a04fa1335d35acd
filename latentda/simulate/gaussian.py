r"""Built-in data with a known posterior: a linear-Gaussian dynamical system on a periodic box.

The state :math:`x_t \in \mathbb{R}^{C \times N \times N}` (C = 1 or 2 variables ``u``, ``v``) lives
on the :math:`2\pi`-periodic square, cell centres :math:`(i + 1/2)\, 2\pi / N`. Let
:math:`\hat x = F x` be its orthonormal 2-D discrete Fourier transform per variable
(``numpy.fft.fft2(x, norm="ortho")``, unitary) and :math:`k = (k_y, k_x)` the integer wavenumbers.
Every Fourier mode is an independent AR(1) process,

.. math::

    \hat x_{t+1}(k) = a_k\, \hat x_t(k) + \sqrt{1 - a_k^2}\; s_k\, \hat\xi_t(k),
    \qquad \xi_t \sim \mathcal{N}(0, R \otimes I),\quad \hat\xi_t = F \xi_t,

with white noise :math:`\xi_t` whose variables are correlated by :math:`R = \begin{pmatrix} 1 &
\rho \\ \rho & 1\end{pmatrix}` (``variable_correlation``). Because :math:`a_k` and :math:`s_k`
depend on :math:`|k|` only, the map is real (it is a convolution in pixel space), and pairing each
mode with its conjugate :math:`-k` this is the same as an independent AR(1) for every *real*
Fourier mode (cosine and sine). The two spectral laws are

.. math::

    s_k^2 = c\,\bigl(1 + |k|^2 / k_0^2\bigr)^{-\alpha/2}, \qquad
    a_k = \exp(-\Delta t / \tau_k), \quad \tau_k = \tau_0\, \bigl(1 + |k|^2/k_0^2\bigr)^{-\beta/2},

with ``cutoff_wavenumber`` :math:`k_0`, ``spectral_exponent`` :math:`\alpha` (the isotropic energy
spectrum falls as :math:`k^{1-\alpha}` beyond :math:`k_0`), ``correlation_time`` :math:`\tau_0` of
the largest scales and ``time_exponent`` :math:`\beta` (small scales decorrelate faster), and
:math:`c` chosen so that the pixel variance :math:`\frac{1}{N^2}\sum_k s_k^2` equals ``variance``.

Consequences (all exact; :mod:`latentda.posterior.exact` builds the posterior on them):

- the stationary law is the Gaussian random field :math:`x \sim \mathcal{N}(0, R \otimes F^*
  \operatorname{diag}(s^2) F)`: :math:`\mathbb{E}[\hat x(k)\overline{\hat x(k')}] = s_k^2
  \delta_{kk'}` per variable, and trajectories start in it (no spin-up is needed);
- the lagged covariance is :math:`\operatorname{Cov}(x_s, x_t) = R \otimes F^*
  \operatorname{diag}(a^{|s-t|} s^2) F`, so the autocorrelation of a pixel at lag :math:`\ell`
  is :math:`\sum_k a_k^\ell s_k^2 / \sum_k s_k^2`;
- any linear observation of a window :math:`x_{1:L}` with Gaussian noise has a Gaussian
  posterior, computable in closed form.

Trajectory ``i`` is drawn from ``numpy.random.default_rng([seed, i])``: it does not depend on the
batch size or on which other trajectories are simulated.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from latentda.errors import LatentdaError, check_integer

__all__ = ["GaussianSystem", "simulate_gaussian", "write_gaussian_zarr"]

DOMAIN_LENGTH = 2.0 * math.pi
VARIABLE_NAMES = ("u", "v")
# Attribute written into the dataset so that the system (and its exact posterior) can be rebuilt.
SYSTEM_ATTRIBUTE = "linear_gaussian"


@dataclass(frozen=True)
class GaussianSystem:
    """The linear-Gaussian system of the module docstring (all parameters, validated)."""

    size: int = 32
    variables: int = 2
    variance: float = 1.0
    cutoff_wavenumber: float = 4.0
    spectral_exponent: float = 4.0
    correlation_time: float = 5.0
    time_exponent: float = 1.0
    variable_correlation: float = 0.5
    dt: float = 1.0

    def __post_init__(self) -> None:
        for name in ("size", "variables"):
            check_integer(name, getattr(self, name))
        if self.size < 2:
            raise LatentdaError(f"size must be at least 2, got {self.size}")
        if self.variables not in (1, 2):
            raise LatentdaError(f"variables must be 1 or 2, got {self.variables}")
        for name in ("variance", "cutoff_wavenumber", "correlation_time", "dt"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float, np.number)) and math.isfinite(value) and value > 0):
                raise LatentdaError(f"{name} must be a positive finite number, got {value!r}")
        for name in ("spectral_exponent", "time_exponent"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float, np.number)) and math.isfinite(value) and value >= 0):
                raise LatentdaError(f"{name} must be a non-negative finite number, got {value!r}")
        if not -1 < self.variable_correlation < 1:
            raise LatentdaError(f"variable_correlation must be in (-1, 1), got {self.variable_correlation}")

    # ------------------------------------------------------------------ spectral description
    @property
    def channels(self) -> list[str]:
        return list(VARIABLE_NAMES[: self.variables])

    def wavenumber_magnitude(self) -> np.ndarray:
        """|k| on the (N, N) grid of ``numpy.fft.fft2`` (integer wavenumbers of the 2π box)."""
        k = np.fft.fftfreq(self.size, 1.0 / self.size)
        return np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)

    def _shape_factor(self) -> np.ndarray:
        return 1.0 + (self.wavenumber_magnitude() / self.cutoff_wavenumber) ** 2

    def mode_variance(self) -> np.ndarray:
        """s_k² (N, N): stationary variance of each orthonormal Fourier coefficient (per variable)."""
        power = self._shape_factor() ** (-self.spectral_exponent / 2)
        return power * (self.variance / power.mean())

    def correlation_times(self) -> np.ndarray:
        """τ_k (N, N)."""
        return self.correlation_time * self._shape_factor() ** (-self.time_exponent / 2)

    def autoregression(self) -> np.ndarray:
        """a_k = exp(−Δt/τ_k) (N, N)."""
        return np.exp(-self.dt / self.correlation_times())

    def lagged_mode_covariance(self, lag: int | np.ndarray) -> np.ndarray:
        """a_k^|lag| s_k² (…, N, N): E[x̂_s(k) conj(x̂_t(k))] per variable for |s − t| = lag."""
        lag = np.abs(np.asarray(lag))[..., None, None]
        return self.autoregression() ** lag * self.mode_variance()

    def variable_covariance(self) -> np.ndarray:
        """R (C, C): correlation between the variables at the same mode."""
        rho = self.variable_correlation
        return np.array([[1.0, rho], [rho, 1.0]])[: self.variables, : self.variables]

    def pixel_autocorrelation(self, lag: int) -> float:
        """Correlation of a pixel with itself ``lag`` steps later."""
        return float(self.lagged_mode_covariance(lag).sum() / self.mode_variance().sum())

    def covariance_matrix(self, lag: int = 0) -> np.ndarray:
        """Dense Cov(x_{t+lag}, x_t) (C·N², C·N²) in pixel order (variable, y, x); small grids only."""
        n = self.size
        basis = np.eye(n * n).reshape(n * n, n, n)
        spatial = np.fft.ifft2(self.lagged_mode_covariance(lag) * np.fft.fft2(basis, norm="ortho"), norm="ortho").real
        return np.kron(self.variable_covariance(), spatial.reshape(n * n, n * n).T)

    # ------------------------------------------------------------------ simulation
    def _filter(self, fields_: np.ndarray, gain: np.ndarray) -> np.ndarray:
        """Multiply each Fourier mode of real fields (…, N, N) by a real, even ``gain``."""
        return np.fft.ifft2(gain * np.fft.fft2(fields_, norm="ortho"), norm="ortho").real

    def _correlated_noise(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """White noise (…, C, N, N) with variable covariance R."""
        noise = rng.standard_normal((*shape, self.variables, self.size, self.size))
        if self.variables == 2:
            rho = self.variable_correlation
            noise[..., 1, :, :] = rho * noise[..., 0, :, :] + math.sqrt(1 - rho * rho) * noise[..., 1, :, :]
        return noise

    def trajectory(self, steps: int, rng: np.random.Generator) -> np.ndarray:
        """One trajectory (steps, C, N, N) float64, its first state drawn from the stationary law."""
        noise = self._correlated_noise(rng, (steps,))
        std = np.sqrt(self.mode_variance())
        a = self.autoregression()
        innovation = self._filter(noise, np.sqrt(1 - a * a) * std)
        states = np.empty_like(noise)
        states[0] = self._filter(noise[0], std)
        for t in range(1, steps):
            states[t] = self._filter(states[t - 1], a) + innovation[t]
        return states

    def to_attrs(self) -> dict[str, Any]:
        return {"system": SYSTEM_ATTRIBUTE, **asdict(self)}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "GaussianSystem":
        """The system that wrote a dataset (its global attributes), e.g. ``xr.open_zarr(p).attrs``."""
        if attrs.get("system") != SYSTEM_ATTRIBUTE:
            raise LatentdaError("the dataset was not written by latentda's linear-Gaussian simulator")
        values = {}
        for spec in fields(cls):
            value = attrs[spec.name]
            values[spec.name] = int(value) if spec.name in ("size", "variables") else float(value)
        return cls(**values)


def trajectory_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def simulate_gaussian(
    system: GaussianSystem,
    trajectories: int,
    steps: int,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
    first: int = 0,
) -> Iterator[np.ndarray]:
    """Trajectories ``first``, ``first`` + 1, … of ``system`` in batches: float32 arrays (b, steps, C, N, N),
    b ≤ batch_size."""
    trajectories = check_integer("trajectories", trajectories, 1)
    steps = check_integer("steps", steps, 1)
    seed = check_integer("seed", seed, 0)
    batch_size = check_integer("batch_size", batch_size, 1)
    return _batches(system, trajectories, steps, seed, batch_size, progress, first)


def _batches(system: GaussianSystem, trajectories: int, steps: int, seed: int, batch_size: int,
             progress: bool, first: int = 0) -> Iterator[np.ndarray]:
    from tqdm.auto import tqdm

    with tqdm(total=trajectories, initial=first, unit="traj", desc="linear Gaussian", disable=not progress,
              dynamic_ncols=True) as bar:
        for start in range(first, trajectories, batch_size):
            stop = min(start + batch_size, trajectories)
            batch = np.stack([system.trajectory(steps, trajectory_rng(seed, i)) for i in range(start, stop)])
            bar.update(stop - start)
            yield batch.astype(np.float32)


def _dataset(batch: np.ndarray, start: int, system: GaussianSystem, steps: int, attrs: dict, first: bool) -> Any:
    import xarray as xr

    dims = ("trajectory", "time", "y", "x")
    variables = {
        name: (dims, batch[:, :, c], {"long_name": f"linear Gaussian field, variable {c + 1}", "units": "1"})
        for c, name in enumerate(system.channels)
    }
    coords: dict[str, Any] = {
        "trajectory": ("trajectory", np.arange(start, start + batch.shape[0], dtype=np.int64),
                       {"long_name": "trajectory index"})
    }
    if first:  # appended batches carry only what grows along `trajectory`
        centres = (np.arange(system.size) + 0.5) * DOMAIN_LENGTH / system.size
        axis_attrs = {"units": "1", "periodic": 1, "period": DOMAIN_LENGTH}
        coords["time"] = ("time", np.arange(steps) * system.dt, {"long_name": "model time", "units": "1"})
        coords["y"] = ("y", centres, {**axis_attrs, "axis": "Y", "long_name": "y"})
        coords["x"] = ("x", centres, {**axis_attrs, "axis": "X", "long_name": "x"})
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def _attrs(system: GaussianSystem, trajectories: int, steps: int, seed: int) -> dict[str, Any]:
    from latentda import __version__

    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {
        "Conventions": "CF-1.10",
        "title": "Linear-Gaussian dynamical system on a periodic box (exact posterior known)",
        "source": "latentda.simulate.gaussian: every Fourier mode an independent AR(1)",
        "history": f"{now}: latentda {__version__} latentda.simulate.write_gaussian_zarr("
                   f"{system!r}, trajectories={trajectories}, steps={steps}, seed={seed})",
        "comment": "x_{t+1}(k) = a_k x_t(k) + sqrt(1 - a_k^2) s_k xi_t(k) per orthonormal Fourier mode k; "
                   "s_k^2 = c (1 + |k|^2/k0^2)^(-alpha/2), a_k = exp(-dt/tau_k), "
                   "tau_k = tau0 (1 + |k|^2/k0^2)^(-beta/2); variables correlated by rho",
        "seed": seed,
        "domain_length": DOMAIN_LENGTH,
        **system.to_attrs(),
    }


def write_gaussian_zarr(
    out: str | os.PathLike[str],
    trajectories: int,
    steps: int,
    system: GaussianSystem | None = None,
    seed: int = 0,
    batch_size: int = 32,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
) -> Path:
    """Simulate ``system`` and stream it to a CF-style zarr store laid out like the Kolmogorov one.

    Data variables ``u`` (and ``v``) float32 with dims ``(trajectory, time, y, x)``, one time step
    per chunk; ``time`` = k·dt; ``y``, ``x`` cell centres in ``[0, 2π)`` with ``periodic: 1``;
    the system's parameters in the global attributes (:meth:`GaussianSystem.from_attrs`). Splits
    follow :func:`latentda.data.split_segments` (the last trajectories are held out). Written to
    ``<out>.partial`` renamed to ``out`` once complete; ``resume`` finishes an interrupted run
    (:mod:`latentda.simulate.store`).
    """
    from latentda.simulate.store import check_store_path, write_trajectory_batches

    system = system or GaussianSystem()
    simulate_gaussian(system, trajectories, steps, seed, batch_size, progress)  # the arguments checked now
    out = check_store_path(out, overwrite)
    attrs = _attrs(system, trajectories, steps, seed)
    settings = {**system.to_attrs(), "simulator": "gaussian", "trajectories": trajectories, "steps": steps, "seed": seed}
    return write_trajectory_batches(out, lambda first: simulate_gaussian(system, trajectories, steps, seed, batch_size,
                                                                         progress, first),
                                    lambda batch, start: _dataset(batch, start, system, steps, attrs, first=start == 0),
                                    list(system.channels), (system.size, system.size), trajectories, settings,
                                    overwrite, resume)

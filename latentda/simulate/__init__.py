"""Built-in simulated data.

- :mod:`latentda.simulate.kolmogorov`: 2-D Kolmogorov flow with jax-cfd (the ``sim`` extra),
  streamed to a CF-style zarr store.
- :mod:`latentda.simulate.gaussian`: a linear-Gaussian system on a periodic box (every Fourier mode
  an AR(1)), whose posterior is known exactly (:mod:`latentda.posterior.exact`); numpy only.
- :mod:`latentda.simulate.example`: a small lat-lon file with a land mask, a gap, a missing step and
  a non-negative variable, to try the real-data path (docs/own-data.md).
"""

from latentda.simulate.example import EXAMPLE_STEP_HOURS, latlon_example
from latentda.simulate.gaussian import GaussianSystem, simulate_gaussian, write_gaussian_zarr
from latentda.simulate.kolmogorov import simulate_kolmogorov, write_kolmogorov_zarr

__all__ = ["simulate_kolmogorov", "write_kolmogorov_zarr", "GaussianSystem", "simulate_gaussian", "write_gaussian_zarr",
           "latlon_example", "EXAMPLE_STEP_HOURS"]

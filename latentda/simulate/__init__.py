"""Built-in simulated data.

- :mod:`latentda.simulate.kolmogorov`: 2-D Kolmogorov flow with jax-cfd (the ``sim`` extra),
  streamed to a CF-style zarr store.
"""

from latentda.simulate.kolmogorov import simulate_kolmogorov, write_kolmogorov_zarr

__all__ = ["simulate_kolmogorov", "write_kolmogorov_zarr"]

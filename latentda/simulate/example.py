"""A small synthetic stand-in for a real reanalysis file, to try (and test) the real-data path.

:func:`latlon_example` builds what real files look like, with every difficulty of
docs/own-data.md in it: a latitude-longitude grid (17 × 32, latitude 90 → −90 including both pole
rows), an integer time coordinate ``time_index`` in "hours since 2000-01-01" (6-hourly) with one
state absent (a 12 h gap), one step where every value is missing (NaN), and three variables:

- ``t2m`` (K): 270 + 25 cos φ + 3 sin φ sin(2π t/20) + 4 cos φ cos(λ − 0.3 t);
- ``sst`` (K): 285 + 10 cos φ + 2 cos φ cos(2λ + 0.2 t), NaN over a fixed "land" box
  (20° < φ < 65°, 90° ≤ λ ≤ 180°);
- ``tp`` (mm): max(0, 3 cos φ sin(λ − 0.4 t) − 1), precipitation-like: non-negative, mostly 0.

The fields are smooth and constant along the pole rows (one point of the sphere each), so a small
autoencoder learns them in seconds.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["latlon_example", "EXAMPLE_STEP_HOURS"]

EXAMPLE_STEP_HOURS = 6


def latlon_example(times: int = 56, gap_at: int | None = 20, missing_step: int | None = 33) -> xr.Dataset:
    """The example dataset (module docstring): ``times`` 6-hourly states, the one at ``gap_at``
    dropped from the time axis, every value at ``missing_step`` NaN (None: no gap, no missing step)."""
    latitude = np.linspace(90, -90, 17)
    longitude = np.arange(32) * 11.25
    t = np.arange(times, dtype=np.float64)[:, None, None]
    phi, lam = np.meshgrid(np.deg2rad(latitude), np.deg2rad(longitude), indexing="ij")
    t2m = 270 + 25 * np.cos(phi) + 3 * np.sin(phi) * np.sin(2 * np.pi * t / 20) + 4 * np.cos(phi) * np.cos(lam - 0.3 * t)
    sst = 285 + 10 * np.cos(phi) + 2 * np.cos(phi) * np.cos(2 * lam + 0.2 * t)
    land = (latitude[:, None] > 20) & (latitude[:, None] < 65) & (longitude[None, :] >= 90) & (longitude[None, :] <= 180)
    sst = np.where(land, np.nan, sst)
    tp = np.maximum(0.0, 3 * np.cos(phi) * np.sin(lam - 0.4 * t) - 1.0)
    data_vars = {}
    for name, values, units, long_name in (("t2m", t2m, "K", "2 metre temperature"),
                                           ("sst", sst, "K", "sea surface temperature"),
                                           ("tp", tp, "mm", "total precipitation")):
        values = values.astype(np.float32)
        if missing_step is not None:
            values[missing_step] = np.nan
        data_vars[name] = (("time_index", "latitude", "longitude"), values, {"units": units, "long_name": long_name})
    hours = EXAMPLE_STEP_HOURS * np.arange(times)
    dataset = xr.Dataset(
        data_vars,
        coords={"time_index": ("time_index", hours.astype(np.int64), {"units": "hours since 2000-01-01 00:00:00"}),
                "latitude": ("latitude", latitude, {"units": "degrees_north"}),
                "longitude": ("longitude", longitude, {"units": "degrees_east"})},
        attrs={"title": "latentda lat-lon example (synthetic)", "history": "latentda.simulate.latlon_example"},
    )
    return dataset if gap_at is None else dataset.drop_isel(time_index=gap_at)

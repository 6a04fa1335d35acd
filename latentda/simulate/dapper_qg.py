r"""Built-in data from DAPPER's quasi-geostrophic model (``dapper.mods.QG``, Sakov & Oke 2008).

The model is DAPPER's own, unchanged: Sakov's 1.5-layer QG model (Fortran, built with f2py by
``tools/build_dapper_qg.sh`` / ``make dapper``) for the streamfunction ψ on the 129 × 129 grid of the
unit square, with ψ = ∇ψ = ∇²ψ = 0 on the boundary (a closed, **non-periodic** box), a double-gyre
wind forcing, biharmonic friction 2·10⁻¹², F = 1600, R = 10⁻⁵, RK4 with an internal dt of 1.25.
States are taken every ``dtout`` = 5 time units by ``model.step`` of ``dapper.mods.QG.sakov2008``:
the interval between observations of DAPPER's QG benchmark, so that one latentda time step is one
analysis cycle of it (``HMM.tseq.dko`` = 1, see :mod:`latentda.integrations.dapper`).

Initial states: DAPPER's QG sample file (``QG_samples.npz`` in ``dapper.mods.rc.dirs.samples``: 400
states of one free run from rest, after 700 steps of spin-up, one every 10 steps; DAPPER writes it on
the first ``import dapper.mods.QG``). Trajectory ``i`` uses ``np.random.default_rng([seed, i])`` to pick
a sample state ``a`` and two others ``b``, ``c``, starts from ``ψ_a + perturbation · (ψ_b − ψ_c)`` (a
smooth perturbation that keeps the boundary conditions) and runs ``spinup`` steps before recording, so
that trajectories sharing a sample state — and the benchmark's truth, which starts exactly from a sample
state — separate (the error doubling time is 25–50 time units, 5–10 steps). Trajectory ``i`` is
therefore the same whatever ``batch_size`` and the other trajectories.

Layout (as the Kolmogorov writer's, :mod:`latentda.simulate.kolmogorov`): variable ``psi`` float32,
dims ``(trajectory, time, y, x)``, one time step per chunk; ``time`` the model time
``(spinup + k) · dtout`` from the sample state; ``y``, ``x`` the grid points ``j / 128`` in [0, 1]
(``periodic: 0``); the row-major ``psi[y, x]`` flattened in C order is DAPPER's state vector (DAPPER
flattens the Fortran array ``X[ix, iy]`` in Fortran order), so :class:`~latentda.integrations.dapper.LatentDA`
needs no ``state_index``.

Cost: 0.024 s per step and trajectory on one core (Fortran, serial; measured on a 2-core AMD EPYC VM),
e.g. 128 trajectories × (32 + 64) steps in 5.4 minutes. ``workers`` > 1 simulates that many trajectories at
once in separate processes (DAPPER's model is serial); since trajectory ``i`` depends only on ``(seed, i)``
the states are the same, bit for bit, whatever ``workers`` and ``batch_size``.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from latentda.errors import LatentdaError, check_integer

__all__ = ["available", "simulate_dapper_qg", "write_dapper_qg_zarr", "GRID_POINTS"]

GRID_POINTS = 129  # dapper/mods/QG/f90/parameters.f90: NX1 * 2**(MREFIN - 1) + 1 with NX1 = 2, MREFIN = 7

_NOT_BUILT = ("DAPPER's QG model needs its Fortran module: run `make dapper` (tools/build_dapper_qg.sh: gfortran + "
              "f2py into the venv's dapper package)")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DAPPER prints a live-plotting notice on stdout at import."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _import_qg() -> tuple[Any, Any]:
    """(the sakov2008 module, the QG sample array); :class:`LatentdaError` when DAPPER or its Fortran
    module is missing."""
    try:
        with _quiet():
            import dapper  # noqa: F401
    except ImportError as error:
        raise LatentdaError("the QG simulator needs DAPPER: pip install 'latentda[dapper]' (dapper==1.7.1)") from error
    try:
        with _quiet():
            from dapper.mods.QG import sample_filename
            from dapper.mods.QG.f90.py_mod import interface_mod  # noqa: F401
            from dapper.mods.QG import sakov2008
    except ImportError as error:
        raise LatentdaError(_NOT_BUILT) from error
    sample = np.load(sample_filename)["sample"]
    return sakov2008, sample


def available() -> bool:
    """Whether DAPPER and its built QG module can be imported."""
    try:
        _import_qg()
    except LatentdaError:
        return False
    return True


def _check(trajectories, steps, spinup, seed, batch_size, perturbation, workers=1) -> dict:
    perturbation = float(perturbation)
    if not np.isfinite(perturbation) or perturbation < 0:
        raise LatentdaError(f"perturbation must be a finite number >= 0, got {perturbation}")
    return dict(trajectories=check_integer("trajectories", trajectories, 1), steps=check_integer("steps", steps, 1),
                spinup=check_integer("spinup", spinup, 0), seed=check_integer("seed", seed, 0),
                batch_size=check_integer("batch_size", batch_size, 1), perturbation=perturbation,
                workers=check_integer("workers", workers, 1))


def _trajectory(sakov2008, sample: np.ndarray, index: int, steps: int, spinup: int, seed: int,
                perturbation: float) -> np.ndarray:
    rng = np.random.default_rng([seed, index])
    a, b, c = rng.choice(len(sample), size=3, replace=False)
    x = sample[a] + perturbation * (sample[b] - sample[c])
    model, dt = sakov2008.model, float(sakov2008.model.prms["dtout"])
    out = np.empty((steps, GRID_POINTS, GRID_POINTS), dtype=np.float32)
    for k in range(spinup + steps):
        if k >= spinup:
            out[k - spinup] = x.reshape(GRID_POINTS, GRID_POINTS)  # DAPPER's `square`: [y, x]
        if k < spinup + steps - 1:
            x = model.step_1(x, float(k * dt), dt)
    if not np.isfinite(out).all():
        raise LatentdaError(f"the QG simulation of trajectory {index} blew up (non-finite values)")
    return out


def simulate_dapper_qg(trajectories: int, steps: int, spinup: int = 64, seed: int = 0, batch_size: int = 8,
                       perturbation: float = 0.1, progress: bool = True, workers: int = 1) -> Iterator[np.ndarray]:
    """QG trajectories in batches: float32 arrays ``(b, steps, 129, 129)`` (ψ[y, x]), ``b <= batch_size``,
    trajectories in index order (module docstring), simulated ``workers`` at a time in separate processes.
    Checks its arguments and DAPPER at call time."""
    setup = _check(trajectories, steps, spinup, seed, batch_size, perturbation, workers)
    sakov2008, sample = _import_qg()
    return _batches(sakov2008, sample, setup, progress)


@functools.lru_cache(maxsize=1)
def _worker_qg() -> tuple[Any, Any]:
    return _import_qg()


def _simulate_one(index: int, setup: dict) -> np.ndarray:
    """Trajectory ``index``, in a worker process (which loads DAPPER's model and samples once)."""
    sakov2008, sample = _worker_qg()
    return _trajectory(sakov2008, sample, index, setup["steps"], setup["spinup"], setup["seed"], setup["perturbation"])


@contextlib.contextmanager
def _trajectories_in_order(sakov2008, sample, setup: dict, first: int = 0) -> Iterator[Iterator[np.ndarray]]:
    """Trajectories ``first``, ``first`` + 1, … in order: here, or from ``setup["workers"]`` spawned processes."""
    indices = range(first, setup["trajectories"])
    if setup["workers"] == 1 or not indices:  # (none left: a resumed run killed just before its rename)
        yield (_trajectory(sakov2008, sample, index, setup["steps"], setup["spinup"], setup["seed"],
                           setup["perturbation"]) for index in indices)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the parent may hold torch's thread pools
    with ProcessPoolExecutor(min(setup["workers"], len(indices)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool.map(functools.partial(_simulate_one, setup=setup), indices)


def _batches(sakov2008, sample, setup: dict, progress: bool, first: int = 0) -> Iterator[np.ndarray]:
    from tqdm.auto import tqdm

    with tqdm(total=setup["trajectories"], initial=first, unit="traj", desc="DAPPER QG", disable=not progress,
              dynamic_ncols=True) as bar, _trajectories_in_order(sakov2008, sample, setup, first) as trajectories:
        batch = []
        for trajectory in trajectories:
            batch.append(trajectory)
            bar.update(1)
            if len(batch) == setup["batch_size"]:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)


def _dapper_version() -> str:
    try:
        from importlib.metadata import version

        return version("dapper")
    except Exception:  # noqa: BLE001 - metadata only
        return "unknown"


def _attrs(sakov2008, setup: dict) -> dict[str, Any]:
    from latentda import __version__

    prms = sakov2008.model.prms
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    call = ", ".join(f"{key}={value}" for key, value in setup.items())
    return {
        "Conventions": "CF-1.10",
        "title": "Quasi-geostrophic flow (DAPPER's QG model, Sakov & Oke 2008), closed square box",
        "source": f"DAPPER {_dapper_version()} dapper.mods.QG.sakov2008 model.step (Sakov's Fortran QG, f2py), "
                  f"one state every dtout = {prms['dtout']}",
        "history": f"{now}: latentda {__version__} latentda.simulate.write_dapper_qg_zarr({call})",
        "references": "Sakov & Oke 2008, A deterministic formulation of the ensemble Kalman filter: an alternative "
                      "to ensemble square root filters, Tellus A 60; DAPPER (Raanes et al.), dapper.mods.QG",
        "comment": "1.5-layer QG streamfunction on the unit square, psi = grad psi = lap psi = 0 on the boundary; "
                   "initial states from DAPPER's QG sample file, perturbed by perturbation * (psi_b - psi_c) and "
                   "spun up for `spinup` steps; one time step = one analysis cycle of dapper.mods.QG.sakov2008",
        "dtout": float(prms["dtout"]),
        "dt": float(prms["dtout"]),
        "inner_dt": float(prms["dt"]),
        "scheme": str(prms["scheme"]).strip("'"),
        "rkh2": float(prms["RKH2"]),
        "froude": float(prms["F"]),
        "rossby": float(prms["R"]),
        "spinup": setup["spinup"],
        "seed": setup["seed"],
        "perturbation": setup["perturbation"],
        "grid_points": GRID_POINTS,
        "domain_length": 1.0,
    }


def _dataset(batch: np.ndarray, start: int, setup: dict, dt: float, attrs: dict, first: bool) -> Any:
    import xarray as xr

    variables = {"psi": (("trajectory", "time", "y", "x"), batch,
                         {"long_name": "streamfunction", "units": "1",
                          "comment": "psi = 0 on the boundary (the first and last rows and columns)"})}
    coords: dict[str, Any] = {
        "trajectory": ("trajectory", np.arange(start, start + batch.shape[0], dtype=np.int64),
                       {"long_name": "trajectory index"})
    }
    if first:  # appended batches carry only what grows along `trajectory`
        points = np.arange(GRID_POINTS) / (GRID_POINTS - 1)
        axis_attrs = {"units": "1", "periodic": 0}
        coords["time"] = ("time", (setup["spinup"] + np.arange(setup["steps"])) * dt,
                          {"long_name": "model time", "units": "1"})
        coords["y"] = ("y", points, {**axis_attrs, "axis": "Y", "long_name": "y"})
        coords["x"] = ("x", points, {**axis_attrs, "axis": "X", "long_name": "x"})
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def write_dapper_qg_zarr(out: str | os.PathLike[str], trajectories: int, steps: int, spinup: int = 64, seed: int = 0,
                         batch_size: int = 8, perturbation: float = 0.1, overwrite: bool = False,
                         progress: bool = True, workers: int = 1, resume: bool = False) -> Path:
    """Simulate DAPPER's QG model and stream it to a CF-style zarr store (module docstring for the
    layout), batch by batch into ``<out>.partial`` renamed to ``out`` once complete (``resume``
    finishes an interrupted run: :mod:`latentda.simulate.store`), zarr format 2 with consolidated metadata, as
    :func:`latentda.simulate.kolmogorov.write_kolmogorov_zarr`."""
    from latentda.simulate.store import check_store_path, write_trajectory_batches

    setup = _check(trajectories, steps, spinup, seed, batch_size, perturbation, workers)
    out = check_store_path(out, overwrite)
    sakov2008, sample = _import_qg()
    import xarray  # noqa: F401 - fail before simulating if the data stack is broken

    dt = float(sakov2008.model.prms["dtout"])
    attrs = _attrs(sakov2008, setup)
    settings = {"simulator": "dapper-qg", **{k: v for k, v in setup.items() if k not in ("batch_size", "workers")}}
    return write_trajectory_batches(out, lambda first: _batches(sakov2008, sample, setup, progress, first),
                                    lambda batch, start: _dataset(batch, start, setup, dt, attrs, first=start == 0),
                                    ["psi"], (GRID_POINTS, GRID_POINTS), setup["trajectories"], settings, overwrite,
                                    resume, libraries=("dapper", "numpy", "scipy"))

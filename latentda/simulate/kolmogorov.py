r"""Built-in data: two-dimensional Kolmogorov flow simulated with jax-cfd.

The flow is the one of Score-based Data Assimilation (Rozet & Louppe 2023, arXiv:2306.10574,
``experiments/kolmogorov/utils.py``): the incompressible Navier–Stokes equations on the
:math:`2\pi`-periodic square :math:`[0, 2\pi)^2`, with density 1,

.. math::

    \partial_t \mathbf{u} + (\mathbf{u} \cdot \nabla) \mathbf{u}
        = -\nabla p + \frac{1}{Re} \nabla^2 \mathbf{u} + \sin(4 y)\, \hat{\mathbf{x}}
          - 0.1\, \mathbf{u},
    \qquad \nabla \cdot \mathbf{u} = 0,

where :math:`\mathbf{u} = (u, v)` is the velocity (:math:`u` along :math:`x`, :math:`v` along
:math:`y`), :math:`Re = 1000` the Reynolds number, :math:`\sin(4y)\,\hat{\mathbf{x}}` the
Kolmogorov forcing (amplitude 1, wavenumber 4) and :math:`-0.1\,\mathbf{u}` a linear drag that
removes the energy the inverse cascade of 2-D turbulence piles up at the largest scales. The
forced laminar solution :math:`u = \sin(4y) / (16/Re + 0.1) \approx 8.6 \sin(4y)`, :math:`v = 0`
is unstable at this Reynolds number; the flow settles into a turbulent state with a mean kinetic
energy :math:`\langle |\mathbf{u}|^2 / 2 \rangle` near 0.8, twenty times below the laminar one.

Numerics (all from jax-cfd, Kochkov et al. 2021): a staggered (MAC) finite-volume grid,
``cfd.equations.semi_implicit_navier_stokes`` (explicit advection and forcing, implicit
diffusion, pressure projection by FFT) with the inner time step
``cfd.equations.stable_time_step(max_velocity=5, max_courant_number=0.5, viscosity=1/Re)``,
repeated (``cfd.funcutils.repeated``) so that one state is output every ``dt`` = 0.2 time units.
Initial conditions are ``cfd.initial_conditions.filtered_velocity_field(key, grid,
maximum_velocity=3, peak_wavenumber=4)``; the first ``spinup`` outputs (64 = 12.8 time units by
default) are discarded so that recorded states are on the turbulent attractor.

Two resolutions:

- **direct** (default, ``size=64, coarsen=1``): the solver runs on the 64 × 64 output grid,
  batched over trajectories (``jnp.vectorize`` + ``jax.jit``; 21 inner steps per output).
  Measured on 2 shared CPU cores (``tools/bench_simulate.py``): 0.22–0.4 s per trajectory of
  128 states (7–13 s per batch of 32), plus 1–3 s of compilation per batch shape.
- **SDA** (``size=256, coarsen=4``): the solver runs at 256 × 256 and each output is the 4 × 4
  block average, as in SDA (82 inner steps per output). 11–15 s per trajectory of 128 states,
  40–60 times dearer: 16 times more cells and a 4 times shorter stable inner step.

Both are turbulent Kolmogorov flow with the same forcing, drag and Reynolds number, but not the
same data. The 64² run resolves fewer scales: the small-scale dissipation is stronger (partly
numerical at this grid spacing), so its energy spectrum falls off
faster than that of the block-averaged 256² run, which approximates the true flow better
(measured: about half the energy at wavenumbers 8–24, mean kinetic energy ≈ 0.8 against ≈ 1.0,
similar vorticity extremes ±20). Models trained on one kind should be evaluated on the same kind.

Grid and layout: jax-cfd indexes arrays ``[x, y]``; this module transposes them to ``[y, x]``
(CF/WeatherBench2 order). ``u`` lives on the x-faces and ``v`` on the y-faces of the cells (the
solver's staggered grid): relative to the cell centres ``(i + 1/2) * 2π / size``, ``u`` is offset
by half a solver cell along ``x`` and ``v`` along ``y`` (an eighth of an output cell after 4 × 4
averaging). The stored values are the solver's own, not interpolated to the centres, as in SDA.

Each trajectory's random key is ``fold_in(PRNGKey(seed), index)``, so trajectory ``i`` is the same
(bitwise, on a given machine and jax version) whatever the batch size and whichever other
trajectories are simulated with it. Because XLA compiles a batch of one trajectory differently
(rounding-level differences that chaos amplifies), a lone trajectory is simulated twice: with
``trajectories=1`` or ``batch_size=1`` the cost per trajectory doubles.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import math
import os
import time
import warnings
from collections.abc import Iterator
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from latentda.simulate.store import check_store_path, write_trajectory_batches
from latentda.errors import LatentdaError, check_integer, check_positive

__all__ = ["simulate_kolmogorov", "write_kolmogorov_zarr"]

DOMAIN_LENGTH = 2.0 * math.pi
FORCING_AMPLITUDE = 1.0
FORCING_WAVENUMBER = 4.0
DRAG = 0.1
# The inner time step is chosen for this velocity bound, not the flow's current maximum, so
# that every output step runs the same fixed number of inner steps (one compiled function).
CFL_MAX_VELOCITY = 5.0
CFL_MAX_COURANT = 0.5
INITIAL_MAX_VELOCITY = 3.0
INITIAL_PEAK_WAVENUMBER = 4.0
# Below 16 cells the forcing wave (wavenumber 4) has fewer than 4 cells per wavelength.
MINIMUM_SIZE = 16

_MISSING_EXTRA = "the Kolmogorov simulator needs the 'sim' extra: pip install 'latentda[sim]'"

# Aliases jax-cfd 0.2.1 calls (`jax.tree_map`, ...) that jax 0.6 removed from the top level.
_REMOVED_JAX_TREE_ALIASES = (
    "tree_map",
    "tree_leaves",
    "tree_flatten",
    "tree_unflatten",
    "tree_structure",
    "tree_transpose",
    "tree_reduce",
    "tree_all",
)


def _restore_removed_jax_tree_aliases(jax_module: Any = None) -> tuple[str, ...]:
    """Compatibility shim: give ``jax`` back the ``jax.tree_*`` aliases jax-cfd 0.2.1 calls.

    jax 0.6 removed ``jax.tree_map``, ``jax.tree_leaves``, ``jax.tree_flatten``, ... (deprecated
    since 0.4.25 in favour of ``jax.tree_util``). The ``sim`` extra pins ``jax<0.6``; this shim
    keeps the simulator working with a newer jax by setting each missing alias to its
    ``jax.tree_util`` function. Aliases that still exist (even deprecated) are left alone. Call
    it before importing ``jax_cfd``.

    Returns:
        The names that were added (empty with jax < 0.6).
    """
    if jax_module is None:
        import jax as jax_module
    import jax.tree_util

    restored = []
    for name in _REMOVED_JAX_TREE_ALIASES:
        # Probing a deprecated alias would emit its DeprecationWarning.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            present = hasattr(jax_module, name)
        if not present and hasattr(jax.tree_util, name):
            setattr(jax_module, name, getattr(jax.tree_util, name))
            restored.append(name)
    return tuple(restored)


def _import_jax_cfd() -> tuple[Any, Any, Any]:
    """Import jax, jax.numpy and jax_cfd.base lazily (the ``sim`` extra is optional)."""
    try:
        import jax
        import jax.numpy as jnp

        _restore_removed_jax_tree_aliases(jax)
        import jax_cfd.base as cfd
    except ImportError as error:
        raise LatentdaError(_MISSING_EXTRA) from error
    return jax, jnp, cfd


def _jax_cfd_version() -> str:
    try:
        from importlib.metadata import version

        return version("jax-cfd")
    except Exception:  # noqa: BLE001 - the version is metadata only
        import jax_cfd

        return str(getattr(jax_cfd, "__version__", "unknown"))


@contextlib.contextmanager
def _quiet_jax_cfd_deprecations() -> Iterator[None]:
    """Hide the DeprecationWarnings jax-cfd 0.2.1 triggers (jax.tree_map & co.) while tracing."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"jax_cfd(\.|$)")
        yield


@dataclass(frozen=True)
class _Solver:
    """Compiled pieces of one configuration; batched over any leading axes."""

    initial_state: Callable[[Any], Any]  # keys (..., 2) uint32 -> states (..., 2, size, size)
    step: Callable[[Any], Any]  # states -> states one output interval `dt` later
    observe: Callable[[Any], Any]  # states -> (..., 2, size // coarsen, size // coarsen), [y, x]
    inner_steps: int
    inner_dt: float


@functools.lru_cache(maxsize=8)
def _build_solver(size: int, coarsen: int, dt: float, reynolds: float) -> _Solver:
    """Build (and cache, so the jit cache is reused across calls) the solver of one setup."""
    jax, jnp, cfd = _import_jax_cfd()
    viscosity = 1.0 / reynolds
    grid = cfd.grids.Grid(
        shape=(size, size), domain=((0.0, DOMAIN_LENGTH), (0.0, DOMAIN_LENGTH))
    )
    boundary = cfd.boundaries.periodic_boundary_conditions(2)
    forcing = cfd.forcings.simple_turbulence_forcing(
        grid=grid,
        constant_magnitude=FORCING_AMPLITUDE,
        constant_wavenumber=FORCING_WAVENUMBER,
        linear_coefficient=-DRAG,
        forcing_type="kolmogorov",
    )
    stable_dt = cfd.equations.stable_time_step(
        max_velocity=CFL_MAX_VELOCITY,
        max_courant_number=CFL_MAX_COURANT,
        viscosity=viscosity,
        grid=grid,
    )
    inner_steps = max(1, math.ceil(dt / stable_dt))
    inner_dt = dt / inner_steps
    advance = cfd.funcutils.repeated(
        cfd.equations.semi_implicit_navier_stokes(
            grid=grid, forcing=forcing, dt=inner_dt, density=1.0, viscosity=viscosity
        ),
        steps=inner_steps,
    )

    def initial_state(key: Any) -> Any:
        u, v = cfd.initial_conditions.filtered_velocity_field(
            key,
            grid=grid,
            maximum_velocity=INITIAL_MAX_VELOCITY,
            peak_wavenumber=INITIAL_PEAK_WAVENUMBER,
        )
        return jnp.stack((u.data, v.data))

    def step(state: Any) -> Any:
        velocity = cfd.initial_conditions.wrap_variables(
            var=tuple(state), grid=grid, bcs=(boundary, boundary)
        )
        u, v = advance(velocity)
        return jnp.stack((u.data, v.data))

    def observe(state: Any) -> Any:
        *batch, channels, nx, ny = state.shape
        blocks = state.reshape(*batch, channels, nx // coarsen, coarsen, ny // coarsen, coarsen)
        coarse = blocks.mean(axis=(-3, -1)) if coarsen > 1 else state
        return jnp.swapaxes(coarse, -1, -2).astype(jnp.float32)  # [x, y] -> [y, x]

    return _Solver(
        initial_state=jax.jit(jnp.vectorize(initial_state, signature="(k)->(c,h,w)")),
        step=jax.jit(jnp.vectorize(step, signature="(c,h,w)->(c,h,w)")),
        observe=jax.jit(observe),
        inner_steps=inner_steps,
        inner_dt=inner_dt,
    )


def _trajectory_keys(seed: int, start: int, stop: int) -> Any:
    """One key per trajectory index: independent of how trajectories are batched."""
    jax, jnp, _ = _import_jax_cfd()
    base = jax.random.PRNGKey(seed)
    indices = jnp.arange(start, stop, dtype=jnp.uint32)
    return jax.vmap(lambda index: jax.random.fold_in(base, index))(indices)


@dataclass(frozen=True)
class _Setup:
    trajectories: int
    steps: int
    size: int
    coarsen: int
    dt: float
    spinup: int
    reynolds: float
    seed: int
    batch_size: int


def _validate(trajectories: Any, steps: Any, size: Any = 64, coarsen: Any = 1, dt: Any = 0.2, spinup: Any = 64,
              reynolds: Any = 1000.0, seed: Any = 0, batch_size: Any = 32) -> _Setup:
    """The checked settings of a simulation: the one place of the defaults of the options of
    :func:`simulate_kolmogorov` and :func:`write_kolmogorov_zarr`."""
    size = check_integer("size", size, MINIMUM_SIZE)
    coarsen = check_integer("coarsen", coarsen, 1)
    if size % coarsen:
        raise LatentdaError(f"size ({size}) must be divisible by coarsen ({coarsen})")
    return _Setup(
        trajectories=check_integer("trajectories", trajectories, 1, 2**32 - 1),
        steps=check_integer("steps", steps, 1),
        size=size,
        coarsen=coarsen,
        dt=check_positive("dt", dt),
        spinup=check_integer("spinup", spinup, 0),
        reynolds=check_positive("reynolds", reynolds),
        seed=check_integer("seed", seed, 0, 2**32 - 1),
        batch_size=check_integer("batch_size", batch_size, 1),
    )


def simulate_kolmogorov(trajectories: int, steps: int, progress: bool = True, first: int = 0,
                        **options: Any) -> Iterator[np.ndarray]:
    """Simulate Kolmogorov flow trajectories, yielding them in batches.

    Arguments are checked at call time (a :class:`~latentda.errors.LatentdaError` names the bad
    value); the simulation runs lazily as the iterator is consumed, one batch in memory at a time.

    Args:
        trajectories: number of trajectories, indexed 0 .. trajectories - 1.
        steps: number of recorded states per trajectory.
        progress: show a tqdm progress bar over trajectories.
        first: the first trajectory yielded (the others from there on: a resumed run).
        options: the simulation options (keywords), with their defaults:
        size: solver grid cells per side (64).
        coarsen: block-average factor applied to each output (``size`` must be divisible by it) (1).
        dt: model time between recorded states (0.2).
        spinup: number of output intervals simulated and discarded before the first recorded
            state (0 records the initial condition). Recorded state ``k`` is at model time
            ``(spinup + k) * dt`` (64).
        reynolds: Reynolds number (viscosity ``1 / reynolds``) (1000).
        seed: base random seed; trajectory ``i`` uses ``fold_in(PRNGKey(seed), i)`` (0).
        batch_size: trajectories simulated together (vectorised); does not change the results.
            Use 2 or more: a batch of one trajectory is computed as two (see module docstring) (32).

    Yields:
        float32 arrays of shape ``(b, steps, 2, size // coarsen, size // coarsen)``: trajectories
        in index order, channels ``(u, v)``, spatial axes ``(y, x)``; ``b <= batch_size``.
    """
    setup = _validate(trajectories, steps, **options)
    _import_jax_cfd()  # fail now, not on first iteration, when the extra is missing
    return _simulate_batches(setup, progress, first)


def _simulate_batches(setup: _Setup, progress: bool, first: int = 0) -> Iterator[np.ndarray]:
    from tqdm.auto import tqdm

    solver = _build_solver(setup.size, setup.coarsen, setup.dt, setup.reynolds)
    outer_steps = setup.spinup + setup.steps - 1
    with tqdm(
        total=setup.trajectories,
        initial=first,
        unit="traj",
        desc="Kolmogorov flow",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        last_refresh = time.monotonic()
        for start in range(first, setup.trajectories, setup.batch_size):
            stop = min(start + setup.batch_size, setup.trajectories)
            keys = _trajectory_keys(setup.seed, start, stop)
            if stop - start == 1:
                # XLA compiles a batch of one differently from larger batches (rounding-level
                # differences, which the chaotic flow amplifies to O(1) within tens of time
                # units); every batch of two or more gives bitwise the same trajectories, so a
                # lone trajectory is run twice and one copy kept.
                keys = keys[np.array([0, 0])]
            with _quiet_jax_cfd_deprecations():
                state = solver.initial_state(keys)
                recorded = []
                for outer in range(outer_steps + 1):
                    if outer >= setup.spinup:
                        recorded.append(np.asarray(solver.observe(state))[: stop - start])
                    if outer < outer_steps:
                        state = solver.step(state)
                    # A 256² batch takes minutes: show where it is without flooding the terminal.
                    if progress and time.monotonic() - last_refresh > 1.0:
                        bar.set_postfix_str(f"step {outer + 1}/{outer_steps + 1}")
                        last_refresh = time.monotonic()
            batch = np.stack(recorded, axis=1)
            if not np.isfinite(batch).all():
                raise LatentdaError(
                    f"the Kolmogorov simulation blew up (non-finite values) in trajectories "
                    f"{start}..{stop - 1} with size={setup.size}, reynolds={setup.reynolds}: "
                    f"use a larger size or a smaller reynolds"
                )
            bar.update(stop - start)
            yield batch


def _cell_centres(cells: int) -> np.ndarray:
    spacing = DOMAIN_LENGTH / cells
    return (np.arange(cells) + 0.5) * spacing


def _dataset_attrs(setup: _Setup, solver_inner_steps: int, solver_inner_dt: float) -> dict:
    from latentda import __version__

    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    call = (
        f"write_kolmogorov_zarr(trajectories={setup.trajectories}, steps={setup.steps}, "
        f"size={setup.size}, coarsen={setup.coarsen}, dt={setup.dt}, spinup={setup.spinup}, "
        f"reynolds={setup.reynolds}, seed={setup.seed})"
    )
    return {
        "Conventions": "CF-1.10",
        "title": "Two-dimensional Kolmogorov flow (incompressible Navier-Stokes, periodic box)",
        "source": (
            f"jax-cfd {_jax_cfd_version()}: semi-implicit Navier-Stokes on a staggered "
            f"{setup.size}x{setup.size} grid"
            + (f", {setup.coarsen}x{setup.coarsen} block-averaged" if setup.coarsen > 1 else "")
        ),
        "history": f"{now}: latentda {__version__} latentda.simulate.{call}",
        "references": (
            "Rozet & Louppe 2023, Score-based data assimilation, arXiv:2306.10574; "
            "Kochkov et al. 2021, Machine learning-accelerated computational fluid dynamics"
        ),
        "comment": (
            "du/dt + (u.grad)u = -grad p + nu lap u + sin(4y) x_hat - 0.1 u, div u = 0 on "
            "[0, 2pi)^2; u on x-faces and v on y-faces of the solver grid (staggered)"
        ),
        "reynolds": setup.reynolds,
        "viscosity": 1.0 / setup.reynolds,
        "forcing_amplitude": FORCING_AMPLITUDE,
        "forcing_wavenumber": FORCING_WAVENUMBER,
        "drag": DRAG,
        "dt": setup.dt,
        "inner_dt": solver_inner_dt,
        "inner_steps": solver_inner_steps,
        "spinup": setup.spinup,
        "solver_size": setup.size,
        "coarsen": setup.coarsen,
        "seed": setup.seed,
        "initial_maximum_velocity": INITIAL_MAX_VELOCITY,
        "initial_peak_wavenumber": INITIAL_PEAK_WAVENUMBER,
        "domain_length": DOMAIN_LENGTH,
    }


def _batch_dataset(
    batch: np.ndarray, start: int, setup: _Setup, attrs: dict, with_fixed_coords: bool
) -> Any:
    import xarray as xr

    cells = setup.size // setup.coarsen
    dims = ("trajectory", "time", "y", "x")
    offset = f"half a solver cell (pi/{setup.size})"
    variables = {
        "u": (
            dims,
            batch[:, :, 0],
            {
                "long_name": "velocity along x",
                "units": "1",
                "comment": f"on the x-faces of the staggered solver grid: {offset} along x "
                "past the x coordinate",
            },
        ),
        "v": (
            dims,
            batch[:, :, 1],
            {
                "long_name": "velocity along y",
                "units": "1",
                "comment": f"on the y-faces of the staggered solver grid: {offset} along y "
                "past the y coordinate",
            },
        ),
    }
    coords: dict[str, Any] = {
        "trajectory": (
            "trajectory",
            np.arange(start, start + batch.shape[0], dtype=np.int64),
            {"long_name": "trajectory index"},
        )
    }
    if with_fixed_coords:
        # Appends carry only what grows along `trajectory`; these are written once.
        axis_attrs = {"units": "1", "periodic": 1, "period": DOMAIN_LENGTH}
        coords["time"] = (
            "time",
            (setup.spinup + np.arange(setup.steps)) * setup.dt,
            {"long_name": "model time", "units": "1"},
        )
        coords["y"] = ("y", _cell_centres(cells), {**axis_attrs, "axis": "Y", "long_name": "y"})
        coords["x"] = ("x", _cell_centres(cells), {**axis_attrs, "axis": "X", "long_name": "x"})
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def write_kolmogorov_zarr(out: str | os.PathLike[str], trajectories: int, steps: int, overwrite: bool = False,
                          progress: bool = True, resume: bool = False, **options: Any) -> Path:
    """Simulate Kolmogorov flow and stream it to a CF-style zarr store.

    Layout: data variables ``u`` and ``v`` (float32, dims ``(trajectory, time, y, x)``, chunks
    ``(1, 1, H, W)``: one time step per chunk), coordinates ``trajectory`` (int), ``time`` (model
    time ``(spinup + k) * dt``), ``y`` and ``x`` (cell centres in ``[0, 2π)``, ``periodic: 1``),
    global attributes with the conventions, provenance and simulation parameters.

    Batches are appended as they are simulated, into ``<out>.partial`` renamed to ``out`` only once
    complete; an interrupted run keeps its finished trajectories there and ``resume=True`` finishes
    it (:mod:`latentda.simulate.store`). The store is written in zarr format 2 (readable by
    zarr-python 2 and 3) with consolidated metadata. One chunk per time step means many small
    files: at 64² writing costs about as much as simulating (≈ 0.5 ms per chunk on 2 cores).

    Args:
        out: path of the store to create.
        overwrite: replace ``out`` if it exists (otherwise an existing ``out`` is an error).
        others: as in :func:`simulate_kolmogorov`.

    Returns:
        The path of the written store.
    """
    setup = _validate(trajectories, steps, **options)
    out = check_store_path(out, overwrite)
    _import_jax_cfd()
    import xarray  # noqa: F401 - fail before simulating if the data stack is broken

    solver = _build_solver(setup.size, setup.coarsen, setup.dt, setup.reynolds)
    attrs = _dataset_attrs(setup, solver.inner_steps, solver.inner_dt)
    cells = setup.size // setup.coarsen
    settings = {"simulator": "kolmogorov", **{k: v for k, v in dataclasses.asdict(setup).items() if k != "batch_size"}}
    return write_trajectory_batches(
        out, lambda first: simulate_kolmogorov(trajectories, steps, progress=progress, first=first, **options),
        lambda batch, start: _batch_dataset(batch, start, setup, attrs, with_fixed_coords=start == 0),
        ["u", "v"], (cells, cells), setup.trajectories, settings, overwrite, resume, libraries=("jax", "jaxlib", "jax-cfd", "numpy"))

"""Benchmark the built-in Kolmogorov flow simulator: direct 64² run against SDA's 256² → 64.

Measures, in one run, the seconds per trajectory of ``--steps`` recorded states (after
``--spinup`` discarded ones) for

- the direct run (solver at ``--size``, batched over ``--batch`` trajectories), cold (including
  jit compilation) and warm (compiled functions reused);
- the same direct run with the coarse run's batch size (a like-for-like comparison);
- the SDA-style run (solver at ``--fine-size``, outputs block-averaged by ``--coarsen``) on
  ``--coarse-trajectories`` trajectories, cold and warm;
- optionally (``--write``) the whole ``write_kolmogorov_zarr`` at the direct setting, to show
  what the one-chunk-per-time-step store adds to the simulation.

and prints the cost ratio. "Cold" runs start from empty jit caches; "compile" is the
ahead-of-time compilation of the three solver functions for the batch shape. Timings on a
shared machine vary with its load (printed). Run as ``python tools/bench_simulate.py`` (needs
the ``sim`` extra).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from latentda.simulate import kolmogorov
from latentda.cli import ScriptHelpFormatter


def run(trajectories: int, steps: int, size: int, coarsen: int, spinup: int, batch: int) -> float:
    """Seconds to simulate and collect all trajectories (the arrays are materialised)."""
    start = time.perf_counter()
    total = 0
    for array in kolmogorov.simulate_kolmogorov(
        trajectories,
        steps,
        size=size,
        coarsen=coarsen,
        spinup=spinup,
        seed=0,
        batch_size=batch,
        progress=False,
    ):
        assert np.isfinite(array).all()
        total += array.shape[0]
    assert total == trajectories
    return time.perf_counter() - start


def compile_time(size: int, coarsen: int, batch: int) -> float:
    """Seconds to compile the solver's three functions for one batch shape (from scratch).

    Measured ahead of time rather than as cold − warm, which the load of a shared machine
    makes unreliable.
    """
    import jax

    kolmogorov._build_solver.cache_clear()
    jax.clear_caches()
    solver = kolmogorov._build_solver(size, coarsen, 0.2, 1000.0)
    keys = kolmogorov._trajectory_keys(0, 0, max(batch, 2))  # a lone trajectory runs as two
    state = jax.ShapeDtypeStruct((keys.shape[0], 2, size, size), np.float32)
    start = time.perf_counter()
    with kolmogorov._quiet_jax_cfd_deprecations():
        solver.initial_state.lower(keys).compile()
        solver.step.lower(state).compile()
        solver.observe.lower(state).compile()
    return time.perf_counter() - start


def cold_and_warm(
    label: str, trajectories: int, steps: int, size: int, coarsen: int, spinup: int, batch: int
) -> dict:
    import jax

    compile_seconds = compile_time(size, coarsen, batch)
    kolmogorov._build_solver.cache_clear()
    jax.clear_caches()
    cold = run(trajectories, steps, size, coarsen, spinup, batch)
    warm = run(trajectories, steps, size, coarsen, spinup, batch)
    solver = kolmogorov._build_solver(size, coarsen, 0.2, 1000.0)
    result = dict(
        label=label,
        trajectories=trajectories,
        batch=batch,
        inner_steps=solver.inner_steps,
        cold=cold,
        warm=warm,
        compile=compile_seconds,
        per_trajectory_cold=cold / trajectories,
        per_trajectory_warm=warm / trajectories,
    )
    print(
        f"{label:<34} traj={trajectories:<3} batch={batch:<3} inner={solver.inner_steps:<3} "
        f"cold {cold:7.2f} s  warm {warm:7.2f} s  compile {compile_seconds:5.2f} s  "
        f"per trajectory: warm {result['per_trajectory_warm']:7.3f} s, "
        f"cold {result['per_trajectory_cold']:7.3f} s",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--steps", type=int, default=128, help="recorded states per trajectory (0.2 time units apart)")
    parser.add_argument("--spinup", type=int, default=0, help="discarded states before them (0: pure cost)")
    parser.add_argument("--size", type=int, default=64, help="direct solver grid size (points per side)")
    parser.add_argument("--batch", type=int, default=32, help="direct run: trajectories, simulated in one batch")
    parser.add_argument("--fine-size", type=int, default=256, help="SDA solver grid size (points per side)")
    parser.add_argument("--coarsen", type=int, default=4, help="SDA block-average factor of the outputs")
    parser.add_argument(
        "--coarse-trajectories", type=int, default=2, help="trajectories (and batch) at SDA size"
    )
    parser.add_argument("--write", action="store_true", help="also time write_kolmogorov_zarr")
    args = parser.parse_args()

    import jax

    print(
        f"jax {jax.__version__}, jax-cfd {kolmogorov._jax_cfd_version()}, "
        f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), "
        f"{jax.devices()[0].platform}; {args.steps} states per "
        f"trajectory after {args.spinup} spin-up states",
        flush=True,
    )
    direct = cold_and_warm(
        f"direct {args.size}² batched", args.batch, args.steps, args.size, 1, args.spinup,
        args.batch,
    )
    direct_small = cold_and_warm(
        f"direct {args.size}² batch {args.coarse_trajectories}",
        args.coarse_trajectories, args.steps, args.size, 1, args.spinup,
        args.coarse_trajectories,
    )
    coarse = cold_and_warm(
        f"SDA {args.fine_size}² → {args.fine_size // args.coarsen}²",
        args.coarse_trajectories, args.steps, args.fine_size, args.coarsen, args.spinup,
        args.coarse_trajectories,
    )
    coarse_cost = coarse["per_trajectory_warm"]
    print(
        f"ratio SDA / direct per trajectory (warm): "
        f"{coarse_cost / direct['per_trajectory_warm']:.0f}× against batch {args.batch}, "
        f"{coarse_cost / direct_small['per_trajectory_warm']:.0f}× at equal batch "
        f"{args.coarse_trajectories}"
    )
    if args.write:
        with tempfile.TemporaryDirectory() as directory:
            start = time.perf_counter()
            kolmogorov.write_kolmogorov_zarr(
                Path(directory) / "bench.zarr", args.batch, args.steps, size=args.size,
                spinup=args.spinup, batch_size=args.batch, progress=False,
            )
            seconds = time.perf_counter() - start
        print(
            f"write_kolmogorov_zarr direct {args.size}², {args.batch} trajectories (warm): "
            f"{seconds:.2f} s = {seconds / args.batch:.3f} s per trajectory "
            f"(simulation alone {direct['per_trajectory_warm']:.3f} s)"
        )


if __name__ == "__main__":
    main()

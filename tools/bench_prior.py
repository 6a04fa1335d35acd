r"""Unconditional trajectories of the prior against held-out data: statistics side by side.

    python tools/bench_prior.py --pipeline runs/ldm-kolmogorov/pipeline --data data/kolmogorov.zarr \
        --members 8 --length 32 --out docs/figures/prior.png --json docs/benchmarks/prior.json

Prints per-channel mean and std, lag-1 (and lag-4) autocorrelation and kinetic energy of sampled
trajectories and of held-out (test split) trajectories of the same length, and plots energy
spectra and one sampled trajectory next to a true one.
"""

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from latentda.data import FieldLayout, open_dataset, split_segments  # noqa: E402
from latentda.metrics import energy_spectrum, lag_autocorrelation  # noqa: E402
from latentda.pipeline import LatentDAPipeline  # noqa: E402
from latentda.cli import ScriptHelpFormatter


def describe(trajectories: np.ndarray, channels: list[str]) -> dict:
    out = {}
    for c, name in enumerate(channels):
        values = trajectories[:, :, c]
        out[name] = {"mean": float(values.mean()), "std": float(values.std())}
    for lag in (1, 4):
        for c, value in enumerate(lag_autocorrelation(trajectories, lag)):
            out[channels[c]][f"lag{lag}_autocorrelation"] = float(value)
    out["kinetic_energy"] = float(0.5 * (trajectories**2).sum(axis=2).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="pipeline folder (or Hub repo id)")
    parser.add_argument("--data", required=True, help="dataset (zarr or netCDF); its test split's trajectories are compared")
    parser.add_argument("--members", type=int, default=8,
                        help="sampled trajectories, and held-out (test split) trajectories compared (at most as many)")
    parser.add_argument("--length", type=int, default=32, help="states per trajectory, sampled and held-out")
    parser.add_argument("--steps", type=int, help="diffusion steps (default: the pipeline's)")
    parser.add_argument("--sampler", help="sampler: ddpm, ddim, heun, pc or heun-pc (default: the pipeline's)")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/prior.png"),
                        help="figure to write (PNG); the default overwrites the committed docs figure")
    parser.add_argument("--json", help="also write the statistics to this JSON file")
    args = parser.parse_args()
    dataset = open_dataset(args.data)
    test = split_segments(dataset)["test"][: args.members]
    available = min((segment.length for segment in test), default=0)
    if args.length > available:
        parser.error(f"--length {args.length} needs {args.length} states per held-out trajectory; {args.data} has {available}")
    pipeline = LatentDAPipeline.from_pretrained(args.pipeline)
    layout = FieldLayout.from_dataset(dataset)
    truth = np.stack([layout.to_array(dataset, s.trajectory, slice(s.start, s.start + args.length)) for s in test])
    start = time.perf_counter()
    samples = pipeline.sample(args.length, args.members, steps=args.steps, method=args.sampler, seed=0)
    seconds = time.perf_counter() - start
    sampled = np.stack([layout.to_array(samples.isel(realization=m)) for m in range(args.members)])
    stats = {"samples": describe(sampled, layout.channels), "held_out": describe(truth, layout.channels),
             "seconds_per_trajectory": seconds / args.members}
    print(f"{'':28s}{'samples':>12s}{'held-out':>12s}")
    for channel in layout.channels:
        for key in stats["samples"][channel]:
            print(f"{channel + ' ' + key:28s}{stats['samples'][channel][key]:12.3f}{stats['held_out'][channel][key]:12.3f}")
    print(f"{'kinetic energy':28s}{stats['samples']['kinetic_energy']:12.3f}{stats['held_out']['kinetic_energy']:12.3f}")
    print(f"sampling: {seconds / args.members:.1f} s per trajectory of {args.length} states")

    figure = plt.figure(figsize=(12, 6), constrained_layout=True)
    grid = figure.add_gridspec(2, 5)
    axis = figure.add_subplot(grid[:, :2])
    for c, channel in enumerate(layout.channels):
        k, power_s = energy_spectrum(sampled[:, :, c], layout.periodic)
        _, power_t = energy_spectrum(truth[:, :, c], layout.periodic)
        line, = axis.loglog(k, power_t, label=f"{channel} held-out")
        axis.loglog(k, power_s, "--", color=line.get_color(), label=f"{channel} samples")
    axis.set_xlabel("wavenumber")
    axis.set_ylabel("power")
    axis.legend()
    axis.set_title("energy spectra")
    times = np.linspace(0, args.length - 1, 3).round().astype(int)
    limit = np.abs(truth[0, :, 0]).max()
    for row, (label, data) in enumerate([("held-out", truth[0]), ("sample", sampled[0])]):
        for column, t in enumerate(times):
            ax = figure.add_subplot(grid[row, 2 + column])
            ax.imshow(data[t, 0], cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower")
            ax.set_title(f"{label} {layout.channels[0]}, t = {t}")
            ax.set_xticks([])
            ax.set_yticks([])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()

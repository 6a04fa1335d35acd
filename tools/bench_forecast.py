r"""Forecast skill against lead time on held-out Kolmogorov trajectories, with baselines and cost.

    python tools/bench_forecast.py --pipeline runs/ldm-kolmogorov/pipeline --data data/kolmogorov.zarr \
        --trajectories 2 --members 4 --lead 32 --json docs/benchmarks/forecast.json --figure docs/figures/forecast.png

Forecasts start at state ``--window`` − 1 of each held-out trajectory:
(i) from the perfect initial state (the true states of the conditioning context, encoded),
    with MMPS (the default: σ_c = 0.05, 3 CG iterations) and with inpainting conditioning;
(ii) from a reanalysis of 5% of the pixels (σ = 0.1) over the ``--window`` states up to the start
     (autoregressive, and all at once);
(iii) persistence (the true initial state repeated) and climatology (random training states).
Prints RMSE, CRPS and spread-skill by lead (averaged over channels and trajectories), the kinetic
energy of the forecasts against the data's range, and the cost per forecast state as the lead grows.
"""

import argparse
import json
import time

import numpy as np
import torch

from latentda.config import parse
from latentda.data import FieldLayout, open_dataset, split_segments
from latentda.metrics import ensemble_scores
from latentda.observe import ObservationConfig, synthesize
from latentda.pipeline import LatentDAPipeline
from latentda.posterior.forecast import default_context, forecast_members
from latentda.posterior.reanalysis import PosteriorSettings
from latentda.cli import ScriptHelpFormatter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="pipeline folder (or Hub repo id)")
    parser.add_argument("--data", required=True, help="dataset (zarr or netCDF); its test split's trajectories are used")
    parser.add_argument("--trajectories", type=int, default=2, help="held-out (test split) trajectories")
    parser.add_argument("--members", type=int, default=4, help="ensemble members per forecast")
    parser.add_argument("--lead", type=int, default=32, help="forecast length, in states (steps of the data's time step)")
    parser.add_argument("--window", type=int, default=16,
                        help="states observed up to the start (reanalysis); the forecasts start at state --window − 1, "
                             "so every held-out trajectory needs --window + --lead states")
    parser.add_argument("--steps", type=int, default=16, help="diffusion steps per forecast window")
    parser.add_argument("--sampler", default="ddpm", help="sampler: ddpm, ddim, heun, pc or heun-pc")
    parser.add_argument("--json", help="also write the scores by lead to this JSON file")
    parser.add_argument("--figure", help="also plot RMSE, CRPS and spread-skill by lead to this PNG")
    args = parser.parse_args()
    dataset = open_dataset(args.data)
    splits = split_segments(dataset)
    held_out = splits["test"][: args.trajectories]
    needed, available = args.window + args.lead, min((segment.length for segment in held_out), default=0)
    if needed > available:
        parser.error(f"--window {args.window} and --lead {args.lead} need {needed} states per held-out trajectory; "
                     f"{args.data} has {available}")
    pipeline = LatentDAPipeline.from_pretrained(args.pipeline)
    pipeline.set_progress_bar_config(disable=True)
    context = default_context(pipeline)
    if args.window < context:
        parser.error(f"--window {args.window}: the forecasts from the perfect initial state are conditioned on the "
                     f"{context} states up to the start; give at least {context}")
    if needed < pipeline.window:
        parser.error(f"--window {args.window} and --lead {args.lead}: the all-at-once reanalysis needs --window + --lead "
                     f"≥ the prior's window of {pipeline.window} states")
    layout = FieldLayout.from_dataset(dataset)
    rng = np.random.default_rng(0)
    train = splits["train"]
    climate = np.stack([layout.to_array(dataset, train[i].trajectory, slice(t, t + 1))[0]
                        for i, t in zip(rng.integers(len(train), size=512), rng.integers(train[0].length, size=512))])
    energy_range = [float(np.percentile(0.5 * (climate**2).sum(1).mean((1, 2)), q)) for q in (1, 99)]
    settings = PosteriorSettings(steps=args.steps, sampler=args.sampler)  # 3 CG iterations
    config = parse(ObservationConfig, {"observations": [{"name": "o", "variables": ["u", "v"], "fraction": 0.05, "noise_std": 0.1}]})
    start = args.window - 1
    methods = ["perfect init, MMPS", "perfect init, inpaint", "reanalysis, autoregressive", "reanalysis, all at once",
               "persistence", "climatology"]
    scores = {m: [] for m in methods}
    energies = {m: [] for m in methods}
    cost = {}
    for k, segment in enumerate(held_out):
        truth = layout.to_array(dataset, segment.trajectory, slice(segment.start, segment.start + needed))
        target = truth[start:]
        initial = pipeline.encode(truth[start - context + 1 : start + 1])[None]
        operator = synthesize(truth[: args.window], layout, config, seed=k)
        for method in methods:
            began = time.perf_counter()
            if method.startswith("perfect"):
                conditioning = "mmps" if "MMPS" in method else "inpaint"
                run = forecast_members(pipeline, list(range(args.members)), args.lead, settings, seed=k, initial=initial,
                                       conditioning=conditioning)
                ensemble = np.stack([f for _, f in run])
            elif method.startswith("reanalysis"):
                mode = "aao" if "all at once" in method else "autoregressive"
                run = forecast_members(pipeline, list(range(args.members)), args.lead, settings, seed=k, operator=operator, mode=mode)
                ensemble = np.stack([f for _, f in run])
            elif method == "persistence":
                ensemble = np.repeat(target[None, :1], args.lead + 1, axis=1)
            else:
                ensemble = climate[rng.integers(len(climate), size=(args.members, args.lead + 1))]
            seconds = time.perf_counter() - began
            if method == "perfect init, MMPS":
                cost.setdefault("seconds_per_member", []).append(seconds / args.members)
            s = ensemble_scores(ensemble, target, layout.area_weights())
            scores[method].append({name: value.mean(axis=1) for name, value in s.items()})
            energies[method].append(0.5 * (ensemble**2).sum(2).mean((0, 2, 3)))
            print(f"trajectory {segment.trajectory} {method:28s} rmse@1 {s['rmse'][1].mean():.3f} "
                  f"rmse@{args.lead} {s['rmse'][-1].mean():.3f} ({seconds:.0f} s)", flush=True)
    summary = {}
    leads = list(range(args.lead + 1))
    for method in methods:
        summary[method] = {name: np.mean([r[name] for r in scores[method]], axis=0).tolist()
                           for name in scores[method][0]}
        summary[method]["energy"] = np.mean(energies[method], axis=0).tolist()
    shown = [1, 2, 4, 8, 16, 32, 64]
    shown = [lead for lead in shown if lead <= args.lead]
    print("\nRMSE by lead (steps of 0.2 time units):")
    print(f"{'method':30s}" + "".join(f"{lead:>8d}" for lead in shown))
    for method in methods:
        print(f"{method:30s}" + "".join(f"{summary[method]['rmse'][lead]:8.3f}" for lead in shown))
    print("\nCRPS by lead:")
    for method in methods:
        print(f"{method:30s}" + "".join(f"{summary[method]['crps'][lead]:8.3f}" for lead in shown))
    print("\nspread-skill by lead:")
    for method in methods:
        if "spread_skill_ratio" in summary[method]:
            print(f"{method:30s}" + "".join(f"{summary[method]['spread_skill_ratio'][lead]:8.2f}" for lead in shown))
    print(f"\nkinetic energy of the data (1st-99th percentile): {energy_range[0]:.2f}-{energy_range[1]:.2f}")
    for method in methods[:4]:
        e = summary[method]["energy"]
        print(f"{method:30s} energy min {min(e):.2f} max {max(e):.2f}")
    # cost per forecast state as the lead grows: time windows of the autoregressive loop directly
    per_state = {}
    for lead in (pipeline.window, 2 * pipeline.window, 4 * pipeline.window):
        began = time.perf_counter()
        list(forecast_members(pipeline, [0], lead, settings, seed=0, initial=initial))
        per_state[lead] = (time.perf_counter() - began) / lead
    base = per_state[pipeline.window]
    print("\ncost per forecast state: " + ", ".join(f"lead {lead}: {s:.2f} s ({s / base:.2f}×)" for lead, s in per_state.items()))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "summary": summary, "energy_range": energy_range,
                       "seconds_per_state": per_state}, handle, indent=1)
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 3, figsize=(14, 3.8), constrained_layout=True)
        for index, method in enumerate(methods):
            for axis, name in zip(axes, ("rmse", "crps", "spread_skill_ratio")):
                if name in summary[method]:  # one colour per method in every panel
                    axis.plot(leads, summary[method][name], label=method, color=f"C{index}")
        for axis, name in zip(axes, ("RMSE", "CRPS", "spread-skill ratio")):
            axis.set_title(name)
            axis.set_xlabel("lead (steps of 0.2)")
        axes[2].axhline(1, color="k", lw=0.8, ls="--")
        axes[0].legend(fontsize=7)
        figure.savefig(args.figure, dpi=100)


if __name__ == "__main__":
    main()

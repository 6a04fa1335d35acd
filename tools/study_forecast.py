r"""Per-lead study of the forecast settings: conditioning, its noise, sampler and steps.

    python tools/study_forecast.py --pipeline pretrained/kolmogorov --data data/kolmogorov.zarr \
        --trajectories 8 --members 4 --lead 8 --grid inpaint:ddpm:16 mmps0.05:pc:32

Each grid entry is CONDITIONING[NOISE][xITERATIONS]:SAMPLER:STEPS (e.g. ``mmps0.05x3:pc:32`` = MMPS
latent-identity conditioning with σ_c = 0.05 and 3 CG iterations, predictor-corrector sampler, 32
steps). Forecasts start from the perfect
initial state (the true states of the conditioning context, encoded) at state ``--start`` of
held-out trajectories. Prints RMSE and spread-skill at leads 1, 2, 4, 8 next to persistence, and the
seconds per forecast state of each entry, so the setting can be chosen by measurement.
"""

import argparse
import re
import time

import numpy as np

from latentda.data import FieldLayout, open_dataset, split_segments
from latentda.metrics import ensemble_scores
from latentda.pipeline import LatentDAPipeline
from latentda.posterior.forecast import default_context, forecast_members
from latentda.posterior.reanalysis import PosteriorSettings
from latentda.cli import ScriptHelpFormatter

ENTRY = re.compile(r"^(inpaint|mmps)([0-9.e-]*)(?:x(\d+))?:(\w+):(\d+)$")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="pipeline folder (or Hub repo id)")
    parser.add_argument("--data", required=True, help="dataset (zarr or netCDF); its test split's trajectories are used")
    parser.add_argument("--trajectories", type=int, default=8, help="held-out (test split) trajectories")
    parser.add_argument("--members", type=int, default=4, help="ensemble members per forecast")
    parser.add_argument("--lead", type=int, default=8, help="forecast length, in states (steps of the data's time step)")
    parser.add_argument("--start", type=int, default=15,
                        help="index of the state forecasts start from; every held-out trajectory needs "
                             "--start + --lead + 1 states, and --start ≥ the forecast context − 1")
    parser.add_argument("--grid", nargs="+", default=["inpaint:ddpm:16", "mmps0.01:ddpm:16"],
                        help="settings compared, each CONDITIONING[NOISE][xITERATIONS]:SAMPLER:STEPS with CONDITIONING "
                             "inpaint or mmps, NOISE the MMPS σ_c (default 0.01), ITERATIONS its CG iterations "
                             "(default 1), SAMPLER ddpm, ddim, heun, pc or heun-pc and STEPS the diffusion steps")
    args = parser.parse_args()
    entries = []
    for text in args.grid:
        match = ENTRY.match(text)
        if match is None:
            parser.error(f"grid entry '{text}' is not CONDITIONING[NOISE][xITERATIONS]:SAMPLER:STEPS")
        conditioning, noise, iterations, sampler, steps = match.groups()
        try:
            noise = float(noise or 0.01)
        except ValueError:
            parser.error(f"grid entry '{text}': NOISE '{noise}' is not a number")
        entries.append((text, conditioning, noise, int(iterations or 1), sampler, int(steps)))
    dataset = open_dataset(args.data)
    held_out = split_segments(dataset)["test"][: args.trajectories]
    needed, available = args.start + args.lead + 1, min((segment.length for segment in held_out), default=0)
    if needed > available:
        parser.error(f"--start {args.start} and --lead {args.lead} need {needed} states per held-out trajectory; "
                     f"{args.data} has {available}")
    pipeline = LatentDAPipeline.from_pretrained(args.pipeline)
    pipeline.set_progress_bar_config(disable=True)
    layout = FieldLayout.from_dataset(dataset)
    context = default_context(pipeline)
    if args.start < context - 1:
        parser.error(f"--start {args.start}: the forecasts are conditioned on the {context} states up to the start; "
                     f"give at least {context - 1}")
    scores = {name: [] for name, *_ in entries}
    scores["persistence"] = []
    seconds = {name: 0.0 for name, *_ in entries}
    for k, segment in enumerate(held_out):
        truth = layout.to_array(dataset, segment.trajectory, slice(segment.start, segment.start + needed))
        target = truth[args.start :]
        initial = pipeline.encode(truth[args.start - context + 1 : args.start + 1])[None]
        for name, conditioning, noise, iterations, sampler, steps in entries:
            began = time.perf_counter()
            noise_option = {"condition_noise": noise} if conditioning == "mmps" else {}  # σ_c is mmps' only
            run = forecast_members(pipeline, list(range(args.members)), args.lead,
                                   PosteriorSettings(steps=steps, sampler=sampler, iterations=iterations), seed=k, initial=initial,
                                   conditioning=conditioning, **noise_option)
            ensemble = np.stack([fields for _, fields in run])
            seconds[name] += time.perf_counter() - began
            scores[name].append(ensemble_scores(ensemble, target, layout.area_weights()))
        persistence = np.repeat(target[None, :1], args.lead + 1, axis=1)
        scores["persistence"].append(ensemble_scores(persistence, target, layout.area_weights()))
    leads = [lead for lead in (1, 2, 4, 8, 16) if lead <= args.lead]
    print(f"{args.trajectories} held-out trajectories × {args.members} members, start {args.start}")
    print(f"{'entry':22s}" + "".join(f"  rmse@{lead:<3d}" for lead in leads) + "".join(f"  ssr@{lead:<4d}" for lead in leads)
          + "   s/state")
    for name, runs in scores.items():
        rmse = np.mean([r["rmse"].mean(axis=1) for r in runs], axis=0)
        line = f"{name:22s}" + "".join(f"{rmse[lead]:10.3f}" for lead in leads)
        if "spread_skill_ratio" in runs[0] and name != "persistence":
            ssr = np.mean([r["spread_skill_ratio"].mean(axis=1) for r in runs], axis=0)
            line += "".join(f"{ssr[lead]:10.2f}" for lead in leads)
            line += f"{seconds[name] / (args.trajectories * args.members * args.lead):10.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()

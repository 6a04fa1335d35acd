r"""Which sampler settings calibrate the posterior with the fewest denoiser calls?

    latentda simulate kolmogorov --out study.zarr --trajectories 4 --steps 16 --seed 7
    python tools/study_sampler.py --pipeline pretrained/kolmogorov --truth study.zarr --trajectories 3 \
        --members 6 --configs pc:16:1000 pc:8:1000 ddpm:8:20 ... [--json docs/benchmarks/sampler.json]

Each config is ``SAMPLER:STEPS:SIGMA_START[:TAU[:CORRECTIONS[:CHURN]]]``; what it leaves out is
the pipeline's default (``pipeline_config.json``: τ = 2 for the shipped one — give ``:0.1`` for the
previous default). For every config and held-out
trajectory (new simulations, never seen in training), the observations (``--setting``: sparse 5 %
or coarse 8×, σ_y = 0.1, seed 100 + k) are reanalysed with MMPS (the settings' CG iterations) and scored against the truth:
RMSE of the ensemble mean, fair CRPS, spread-skill ratio (ensemble spread over RMSE, with the
(m + 1)/m finite-ensemble correction of ``latentda.metrics``), the same over the observed pixels alone
(sparse observations), observation residual ratio, denoiser calls and seconds per member.
``--prior-inflation`` samples every config with that τ_prior (``PosteriorSettings.prior_inflation``).
"""

import argparse
import json
import time

import numpy as np

from latentda.config import parse
from latentda.data import FieldLayout, open_dataset
from latentda.errors import LatentdaError
from latentda.observe import ObservationConfig, synthesize
from latentda.pipeline import LatentDAPipeline
from latentda.posterior.reanalysis import PosteriorSettings, posterior_members
from latentda.cli import ScriptHelpFormatter

from bench_posterior import SETTINGS, summarise



def denoiser_calls(sampler: str, steps: int, corrections: int) -> int:
    """Guided denoiser evaluations per member (the final denoising at σ_min included)."""
    per_step = {"ddpm": 1, "ddim": 1, "heun": 2, "pc": 1 + corrections, "heun-pc": 2 + corrections}[sampler]
    return (steps - 1) * per_step + 1


def parse_config(text: str) -> dict:
    """The sampler settings of ``SAMPLER:STEPS:SIGMA_START[:TAU[:CORRECTIONS[:CHURN]]]`` (None where left
    out); ValueError with a one-line reason when the text has too few or too many fields or a field is
    not a number (the values themselves are checked by PosteriorSettings)."""
    parts = text.split(":")
    if not 3 <= len(parts) <= 6:
        raise ValueError(f"has {len(parts)} fields, expected 3 to 6")
    try:
        sampler, steps, start = parts[0], int(parts[1]), float(parts[2])
        tau = float(parts[3]) if len(parts) > 3 else None
        corrections = int(parts[4]) if len(parts) > 4 else None
        churn = float(parts[5]) if len(parts) > 5 else None
    except ValueError:
        raise ValueError("STEPS and CORRECTIONS must be integers, SIGMA_START, TAU and CHURN numbers") from None
    return {"sampler": sampler, "steps": steps, "sigma_start": start, "tau": tau, "corrections": corrections,
            "churn": churn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="pipeline folder (or Hub repo id)")
    parser.add_argument("--truth", required=True, help="held-out trajectories (latentda simulate with a new seed)")
    parser.add_argument("--trajectories", type=int, default=3, help="trajectories of --truth reanalysed (its first ones)")
    parser.add_argument("--members", type=int, default=6, help="ensemble members per trajectory and config")
    parser.add_argument("--length", type=int, default=16, help="states reanalysed per trajectory (its first ones; L)")
    parser.add_argument("--iterations", type=int, default=3, help="MMPS CG iterations")
    parser.add_argument("--configs", nargs="+", required=True,
                        help="sampler settings compared, each SAMPLER:STEPS:SIGMA_START[:TAU[:CORRECTIONS[:CHURN]]] "
                             "(what is left out: the pipeline's default)")
    parser.add_argument("--setting", choices=list(SETTINGS), default="sparse 5%",
                        help="observations (as bench_posterior): 5 %% of the pixels of u and v, or their 8×8 block means")
    parser.add_argument("--prior-inflation", type=float, help="τ_prior of every config (default: none)")
    parser.add_argument("--json", help="also write the mean scores to this JSON file")
    args = parser.parse_args()
    configs = {}
    for text in args.configs:
        try:
            configs[text] = parse_config(text)
        except ValueError as error:
            parser.error(f"config '{text}': {error}")
    dataset = open_dataset(args.truth)
    trajectories, states = dataset.sizes.get("trajectory", 1), dataset.sizes.get("time", 0)
    if args.trajectories > trajectories:
        parser.error(f"--trajectories {args.trajectories}: {args.truth} has {trajectories}")
    if args.length > states:
        parser.error(f"--length {args.length} needs {args.length} states per trajectory; {args.truth} has {states}")
    pipeline = LatentDAPipeline.from_pretrained(args.pipeline)
    pipeline.set_progress_bar_config(disable=True)
    if args.length < pipeline.window:
        parser.error(f"--length {args.length}: the reanalysis needs at least the prior's window of {pipeline.window} states")
    all_settings = {}
    for text, config in configs.items():
        try:
            all_settings[text] = PosteriorSettings(iterations=args.iterations, prior_inflation=args.prior_inflation,
                                                   **config)
            all_settings[text].sampling(pipeline)
        except LatentdaError as error:
            parser.error(f"config '{text}': {error}")
    layout = FieldLayout.from_dataset(dataset)
    weights = layout.area_weights()
    observation_config = parse(ObservationConfig, SETTINGS[args.setting])
    results = {}
    for text, settings in all_settings.items():
        sampling = settings.sampling(pipeline)
        calls = denoiser_calls(sampling.sampler, sampling.steps, sampling.corrections)
        rows = []
        for k in range(args.trajectories):
            truth = layout.to_array(dataset, k, slice(0, args.length))
            operator = synthesize(truth, layout, observation_config, seed=100 + k)
            start = time.perf_counter()
            members = posterior_members(pipeline, operator, list(range(args.members)), settings, seed=k)
            ensemble = np.stack([fields for _, fields, _ in members])
            seconds = (time.perf_counter() - start) / args.members
            rows.append(summarise(ensemble, truth, operator, weights) | {"seconds_per_member": seconds})
            print(f"{text:18s} trajectory {k}: " + ", ".join(f"{n} {v:.3f}" for n, v in rows[-1].items()), flush=True)
        results[text] = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]} | {"calls_per_member": calls}
    print("\n| config (sampler:steps:σ_start[:τ[:corrections[:churn]]]) | calls/member | RMSE | CRPS | spread-skill | "
          "spread-skill, observed pixels | residual ratio | s/member |\n|---|---|---|---|---|---|---|---|")
    for text, r in results.items():
        observed = f"{r['spread_skill_observed']:.2f}" if "spread_skill_observed" in r else ""
        print(f"| {text} | {r['calls_per_member']} | {r['rmse']:.3f} | {r['crps']:.3f} | {r['spread_skill_ratio']:.2f} | "
              f"{observed} | {r['residual_ratio']:.2f} | {r['seconds_per_member']:.1f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()

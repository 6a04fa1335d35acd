r"""Posterior quality on held-out Kolmogorov trajectories: MMPS (1 and 3 iterations), DPS and baselines.

    python tools/bench_posterior.py --pipeline runs/ldm-kolmogorov/pipeline --data data/kolmogorov.zarr \
        --trajectories 2 --members 8 --length 16 --steps 32 --json docs/benchmarks/posterior.json

Two observation settings, σ_y = 0.1: (a) 5% of the pixels of u and v; (b) u and v block-averaged over
8×8 pixels. Columns: MMPS (n = 1, 3), DPS, a climatological ensemble (random training states) and a
Gaussian posterior fitted to the training data (PCA covariance of rank ``--rank`` plus isotropic
residual: optimal interpolation, sampled exactly per state with Matheron's rule). Reports RMSE of the
ensemble mean, fair CRPS, spread-skill ratio (all in the data's units, averaged over channels, times
and trajectories), the observation residual ratio and the wall time per member.
"""

import argparse
import dataclasses
import json
import re
import time

import numpy as np
import torch

from latentda.config import parse
from latentda.data import FieldLayout, open_dataset, split_segments
from latentda.metrics import ensemble_scores
from latentda.observe import ObservationConfig, ObservationOperator, synthesize
from latentda.pipeline import LatentDAPipeline
from latentda.posterior.reanalysis import PosteriorSettings, posterior_members
from latentda.cli import ScriptHelpFormatter

SETTINGS = {
    "sparse 5%": {"observations": [{"name": "o", "variables": ["u", "v"], "fraction": 0.05, "noise_std": 0.1}]},
    "coarse 8x": {"observations": [{"name": "o", "variables": ["u", "v"], "sampling": "coarsen", "factor": 8, "noise_std": 0.1}]},
}


def frame_operator(operator: ObservationOperator, t: int) -> ObservationOperator:
    return ObservationOperator([dataclasses.replace(g, values=g.values[t : t + 1]) for g in operator.groups])


class GaussianBaseline:
    """x ~ N(μ, U Λ Uᵀ + s² I) per state, fitted to training states; exact linear-Gaussian posterior."""

    def __init__(self, frames: np.ndarray, rank: int) -> None:
        flat = frames.reshape(len(frames), -1).astype(np.float64)
        self.shape = frames.shape[1:]
        self.mean = flat.mean(0)
        centred = flat - self.mean
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        variances = singular**2 / (len(flat) - 1)
        self.basis = vt[:rank].T  # (D, r)
        self.eigen = variances[:rank]
        self.residual = variances[rank:].sum() / flat.shape[1]

    def cov_times(self, matrix: np.ndarray) -> np.ndarray:  # C @ matrix
        return self.basis @ (self.eigen[:, None] * (self.basis.T @ matrix)) + self.residual * matrix

    def prior_samples(self, n: int, rng) -> np.ndarray:
        a = rng.standard_normal((n, len(self.eigen))) * np.sqrt(self.eigen)
        return self.mean + a @ self.basis.T + np.sqrt(self.residual) * rng.standard_normal((n, self.mean.size))

    def posterior(self, H: np.ndarray, y: np.ndarray, noise: np.ndarray, n: int, rng) -> np.ndarray:
        CHt = self.cov_times(H.T)
        S = H @ CHt + np.diag(noise**2)
        prior = self.prior_samples(n, rng)
        perturbed = y[None] - prior @ H.T - noise * rng.standard_normal((n, len(y)))
        return (prior + np.linalg.solve(S, perturbed.T).T @ CHt.T).reshape(n, *self.shape)


def operator_matrix(operator: ObservationOperator, shape) -> np.ndarray:
    """The Jacobian of a linear single-state operator, (M, C·H·W)."""
    x = torch.zeros(1, 1, *shape, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: operator(v)[0], x, vectorize=True)
    return jacobian.reshape(jacobian.shape[0], -1).numpy()


def observed_pixels(operator: ObservationOperator, channels: int, shape) -> np.ndarray:
    """(L, C, H, W): True where a grid group observes the field (nowhere for block means)."""
    mask = np.zeros((operator.length, channels, *shape), dtype=bool)
    for group in operator.groups:
        if group.sampling == "grid":
            for channel in group.channels:
                mask[:, channel] |= np.isfinite(group.values)
    return mask


def summarise(ensemble: np.ndarray, truth: np.ndarray, operator: ObservationOperator, weights) -> dict:
    """Scores of an ensemble (N, L, C, H, W) against its truth: ``latentda.metrics.ensemble_scores``
    averaged, the observation residual ratio, and for observations of grid pixels the spread-skill
    ratio over the observed pixels alone (``spread_skill_observed``: where accurate observations pin
    the field, which the pooled ratio can hide)."""
    scores = ensemble_scores(ensemble, truth, weights)
    ratio = operator.residual_ratio(torch.from_numpy(ensemble).double()).mean().item()
    summary = {name: float(np.nanmean(value)) for name, value in scores.items()} | {"residual_ratio": ratio}
    observed = observed_pixels(operator, ensemble.shape[2], ensemble.shape[3:])
    if observed.any():
        members = len(ensemble)
        spread = ensemble.var(axis=0, ddof=1)[observed].mean()
        error = ((ensemble.mean(axis=0) - truth) ** 2)[observed].mean()
        summary["spread_skill_observed"] = float(np.sqrt((members + 1) / members * spread / error))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="pipeline folder (or Hub repo id)")
    parser.add_argument("--data", required=True,
                        help="dataset (zarr or netCDF); its test split is reanalysed, its train split fits the baselines")
    parser.add_argument("--trajectories", type=int, default=2, help="held-out (test split) trajectories")
    parser.add_argument("--members", type=int, default=8, help="ensemble members per trajectory and method")
    parser.add_argument("--length", type=int, default=16,
                        help="states reanalysed per held-out trajectory (its first ones; L)")
    parser.add_argument("--steps", type=int, default=32, help="diffusion steps (MMPS, DPS)")
    parser.add_argument("--sampler", default=None,
                        help="sampler: ddpm, ddim, heun, pc or heun-pc (default: the pipeline's)")
    parser.add_argument("--rank", type=int, default=256, help="PCA rank of the Gaussian OI baseline's covariance")
    parser.add_argument("--train-states", type=int, default=4000,
                        help="random training states for the climatology and Gaussian OI baselines (at most all)")
    parser.add_argument("--methods", nargs="+", default=["MMPS n=1", "MMPS n=3", "DPS", "climatology", "Gaussian OI"],
                        help="methods compared: 'MMPS n=N' (N CG iterations), DPS, climatology, 'Gaussian OI'")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                        help="observation settings: 5 %% of the pixels of u and v, or their 8×8 block means")
    parser.add_argument("--json", help="also write the mean scores to this JSON file")
    args = parser.parse_args()
    for method in args.methods:
        if not (re.fullmatch(r"(MMPS|DPS)( n=\d+)?", method) or method in ("climatology", "Gaussian OI")):
            parser.error(f"--methods: unknown method '{method}' (MMPS n=N, DPS, climatology or Gaussian OI)")
    dataset = open_dataset(args.data)
    splits = split_segments(dataset)
    held_out = splits["test"][: args.trajectories]
    available = min((segment.length for segment in held_out), default=0)
    if args.length > available:
        parser.error(f"--length {args.length} needs {args.length} states per held-out trajectory; {args.data} has {available}")
    rng = np.random.default_rng(0)
    pipeline = LatentDAPipeline.from_pretrained(args.pipeline)
    pipeline.set_progress_bar_config(disable=True)
    if args.length < pipeline.window and any(method.startswith(("MMPS", "DPS")) for method in args.methods):
        parser.error(f"--length {args.length}: MMPS and DPS reanalyse at least the prior's window of {pipeline.window} states")
    layout = FieldLayout.from_dataset(dataset)
    weights = layout.area_weights()
    train = splits["train"]
    picks = rng.choice(len(train) * train[0].length, size=min(args.train_states, len(train) * train[0].length), replace=False)
    frames = np.stack([layout.to_array(dataset, train[i // train[0].length].trajectory,
                                       slice(i % train[0].length, i % train[0].length + 1))[0] for i in picks])
    gaussian = GaussianBaseline(frames, args.rank) if "Gaussian OI" in args.methods else None
    results = {}
    for setting in args.settings:
        config = parse(ObservationConfig, SETTINGS[setting])
        rows = {m: [] for m in args.methods}
        for k, segment in enumerate(held_out):
            truth = layout.to_array(dataset, segment.trajectory, slice(segment.start, segment.start + args.length))
            operator = synthesize(truth, layout, config, seed=100 + k)
            for method in args.methods:
                start = time.perf_counter()
                if method.startswith(("MMPS", "DPS")):
                    settings = PosteriorSettings(guidance="dps" if method == "DPS" else "mmps",
                                                 iterations=int(method.split("=")[1]) if "=" in method else 1,
                                                 steps=args.steps, sampler=args.sampler)
                    ensemble = np.stack([f for _, f, _ in posterior_members(pipeline, operator, list(range(args.members)), settings, seed=k)])
                elif method == "climatology":
                    ensemble = frames[rng.integers(len(frames), size=(args.members, args.length))]
                else:
                    ensemble = np.zeros((args.members, args.length, *truth.shape[1:]))
                    for t in range(args.length):
                        single = frame_operator(operator, t)
                        y, noise = single.observed()
                        H = operator_matrix(single, truth.shape[1:])
                        ensemble[:, t] = gaussian.posterior(H, y.numpy(), noise.numpy(), args.members, rng)
                seconds = (time.perf_counter() - start) / args.members
                rows[method].append(summarise(ensemble, truth, operator, weights) | {"seconds_per_member": seconds})
                print(f"[{setting}] trajectory {segment.trajectory} {method:12s} " + ", ".join(f"{k} {v:.3f}" for k, v in rows[method][-1].items()), flush=True)
        results[setting] = {m: {key: float(np.mean([r[key] for r in rs])) for key in rs[0]} for m, rs in rows.items()}
    print("\n| setting | method | RMSE | CRPS | spread-skill | residual ratio | s/member |\n|---|---|---|---|---|---|---|")
    for setting, methods in results.items():
        for method, r in methods.items():
            print(f"| {setting} | {method} | {r['rmse']:.3f} | {r['crps']:.3f} | {r.get('spread_skill_ratio', float('nan')):.2f} | "
                  f"{r['residual_ratio']:.2f} | {r['seconds_per_member']:.1f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()

r"""Is the posterior right? latentda's ensembles against the exact posterior of a linear-Gaussian system.

    tools/train_gaussian.sh          # data/gaussian.zarr and the two trained priors (about 1 h on 2 cores)
    python tools/bench_exact.py --data data/gaussian.zarr --full runs/ldm-gaussian/pipeline \
        --pixel runs/ldm-gaussian-pixel/pipeline --windows 4 --length 16 --members 32 \
        --json docs/benchmarks/exact.json

Held-out windows: ``--windows`` new trajectories of the data's system (``GaussianSystem.from_attrs``,
seeds never used in training) of ``--length`` states, observed in two settings (sparse 5 % of the
pixels, the same ones at every step; 4×4 block means), noise std ``--noise`` (the field's std is 1).
For each, the exact posterior p(x_{1:L} | y) (:func:`latentda.posterior.exact.exact_posterior`) and
the ensembles of ``--members`` members of

- ``exact-samples``: exact posterior draws (Matheron's rule): the finite-ensemble floor of every score;
- ``(a) exact prior``: the exact denoiser of K-state windows (:class:`ExactPrior`) composed over
  blankets like the trained priors, the same sampler and MMPS guidance: the sampler's own error;
  ``(a0)`` the same with one exact window over the whole trajectory (no blanket approximation);
- ``(b) pixel prior``: a prior trained on the fields through the identity autoencoder: + the learned
  prior's error;
- ``(c) full system``: autoencoder + latent prior: + what the autoencoder adds.

Scores, pooled over windows, states and pixels (m, v: exact posterior mean and variance):

- ``mean error``: RMS of (ensemble mean − m)/√v, and ``bias`` = √max(0, that² − r/N), the same with
  the ensemble mean's own sampling variance r v/N removed (r: variance ratio, N: members);
- ``variance ratio`` r: Σ ensemble variance / Σ v (unbiased, over all pixels), also per Fourier band
  of |k| (mode variances of the deviations from the ensemble mean over the exact mode variances),
  per state of the window, and over the observed pixels alone (``observed``; sparse observations:
  where accurate observations pin the field, the stiffest directions of the posterior, which a
  pooled ratio hides);
- ``coverage 50/90``: the exact posterior probability of each pixel's central 50 % / 90 % ensemble
  interval (empirical quantiles), averaged — ideal 0.5 / 0.9 up to the finite-ensemble floor;
- the same for the prior: unconditional samples of each prior against the stationary law.

Sampler settings are each pipeline's defaults (``pipeline_config.json``), the exact prior takes the
full system's; ``--steps``/``--tau``/``--sigma-start`` override them for all, ``--iterations`` and
``--solver`` set MMPS's solver (default 3 iterations of CG).
"""

import argparse
import dataclasses
import json
import time

import numpy as np
import scipy.special
import torch

from latentda.data import FieldLayout, open_dataset
from latentda.diffusion.settings import SamplerSettings
from latentda.observe import ObservationConfig, synthesize
from latentda.observe.files import ObservationSpec
from latentda.pipeline import LatentDAPipeline
from latentda.posterior.exact import ExactPrior, GaussianTrajectoryLaw, exact_posterior, stationary_law
from latentda.posterior.reanalysis import PosteriorSettings, member_generator, posterior_members, sample_members
from latentda.posterior.solvers import SOLVERS
from latentda.simulate.gaussian import GaussianSystem
from latentda.cli import ScriptHelpFormatter

from bench_posterior import observed_pixels

HELD_OUT_SEED = 424242  # trajectories of this seed are never in a training set (the CLI's default seed is 0)
BANDS = (0, 1, 2, 4, 8, 16, np.inf)


def settings_specs(noise: float) -> dict[str, ObservationSpec]:
    return {
        "sparse 5%": ObservationSpec("sparse", ["u"], "grid", noise_std=noise, fraction=0.05),
        "coarse 4x": ObservationSpec("coarse", ["u"], "coarsen", noise_std=noise, factor=4),
    }


def band_of(system: GaussianSystem) -> np.ndarray:
    return np.digitize(system.wavenumber_magnitude(), BANDS[1:-1])  # (N, N) band index per mode


def mode_variance(deviations: np.ndarray) -> np.ndarray:
    """Unbiased variance of each orthonormal Fourier coefficient: deviations (N_members, L, C, N, N)."""
    coefficients = np.fft.fft2(deviations, norm="ortho")
    return (np.abs(coefficients) ** 2).sum(axis=0) / (len(deviations) - 1)


def scores(ensemble: np.ndarray, law: GaussianTrajectoryLaw, system: GaussianSystem,
           observed: np.ndarray | None = None) -> dict:
    """Sufficient sums of one window's ensemble (N, L, C, n, n) against an exact Gaussian law
    (``observed``: the pixels observed, :func:`observed_pixels`)."""
    members = len(ensemble)
    mean = ensemble.mean(axis=0)
    deviations = ensemble - mean
    variance = (deviations**2).sum(axis=0) / (members - 1)
    std = np.sqrt(law.variance)
    coverage = {}
    for level in (0.5, 0.9):
        low, high = np.quantile(ensemble, [(1 - level) / 2, (1 + level) / 2], axis=0)
        inside = scipy.special.ndtr((high - law.mean) / std) - scipy.special.ndtr((low - law.mean) / std)
        coverage[level] = float(inside.mean())
    bands = band_of(system)
    modes = mode_variance(deviations)
    return {
        "members": members,
        "squared_mean_error": float((((mean - law.mean) / std) ** 2).mean()),
        "variance": float(variance.sum()), "exact_variance": float(law.variance.sum()),
        "variance_by_time": variance.sum(axis=(1, 2, 3)), "exact_by_time": law.variance.sum(axis=(1, 2, 3)),
        "variance_by_band": np.bincount(bands.ravel(), modes.sum(axis=(0, 1)).ravel(), len(BANDS) - 1),
        "exact_by_band": np.bincount(bands.ravel(), law.mode_variance.sum(axis=(0, 1)).ravel(), len(BANDS) - 1),
        "coverage_50": coverage[0.5], "coverage_90": coverage[0.9],
        "variance_observed": float(variance[observed].sum()) if observed is not None else 0.0,
        "exact_variance_observed": float(law.variance[observed].sum()) if observed is not None else 0.0,
    }


def pooled(windows: list[dict]) -> dict:
    """The scores of the module docstring from the per-window sums."""
    members = windows[0]["members"]
    total = lambda key: sum(w[key] for w in windows)  # noqa: E731
    ratio = total("variance") / total("exact_variance")
    squared = float(np.mean([w["squared_mean_error"] for w in windows]))
    by_band = total("variance_by_band") / np.maximum(total("exact_by_band"), 1e-300)
    return {
        "mean_error": squared**0.5,
        "bias": max(0.0, squared - ratio / members) ** 0.5,
        "variance_ratio": ratio,
        "variance_ratio_observed": (total("variance_observed") / total("exact_variance_observed")
                                    if total("exact_variance_observed") > 0 else None),
        "variance_ratio_by_time": (total("variance_by_time") / total("exact_by_time")).round(3).tolist(),
        "variance_ratio_by_band": {f"{lo:g}-{hi:g}": round(float(r), 3) for lo, hi, r in zip(BANDS[:-1], BANDS[1:], by_band)},
        "coverage_50": float(np.mean([w["coverage_50"] for w in windows])),
        "coverage_90": float(np.mean([w["coverage_90"] for w in windows])),
    }


def unconditional(prior, length: int, members: int, settings: PosteriorSettings, seed: int) -> np.ndarray:
    """``members`` prior trajectories in physical units (N, L, C, n, n)."""
    generators = [member_generator(seed, m) for m in range(members)]
    denoise = prior.trajectory_denoiser()
    batch = settings.batch_size(prior.device, through_decoder=False)
    parts = [sample_members(prior, denoise, length, generators[i : i + batch], settings)
             for i in range(0, members, batch)]
    return prior.decode(torch.cat(parts)).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--data", required=True, help="a dataset written by `latentda simulate gaussian`")
    parser.add_argument("--full", help="the full system's pipeline (c)")
    parser.add_argument("--pixel", help="the pixel-space prior's pipeline, identity autoencoder (b)")
    parser.add_argument("--windows", type=int, default=4, help="held-out trajectories (new seeds), each reanalysed")
    parser.add_argument("--length", type=int, default=16, help="states per held-out trajectory (L)")
    parser.add_argument("--members", type=int, default=32, help="ensemble members per trajectory and prior")
    parser.add_argument("--noise", type=float, default=0.3, help="observation noise std, in units of the field's std (1)")
    parser.add_argument("--settings", nargs="+", default=["sparse 5%", "coarse 4x"], choices=["sparse 5%", "coarse 4x"],
                        help="observation settings: 5 %% of the pixels of u, or 4×4 block means of u")
    parser.add_argument("--iterations", type=int, default=3, help="MMPS solver iterations (the CLI's default)")
    parser.add_argument("--solver", choices=list(SOLVERS), default="cg", help="MMPS linear solver (the CLI's default)")
    parser.add_argument("--steps", type=int, help="diffusion steps for every prior (default: each pipeline's)")
    parser.add_argument("--tau", type=float, help="Langevin step factor τ of the pc samplers (default: each pipeline's)")
    parser.add_argument("--sigma-start", type=float, help="noise level σ_0 sampling starts from (default: each pipeline's)")
    parser.add_argument("--no-prior", action="store_true", help="skip the unconditional (prior) comparison")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    dataset = open_dataset(args.data)
    system = GaussianSystem.from_attrs(dataset.attrs)
    layout = FieldLayout.from_dataset(dataset)
    settings = PosteriorSettings(iterations=args.iterations, solver=args.solver, steps=args.steps, tau=args.tau, sigma_start=args.sigma_start)
    priors = {}
    trained = {"(b) pixel prior": args.pixel, "(c) full system": args.full}
    pipelines = {name: LatentDAPipeline.from_pretrained(path) for name, path in trained.items() if path}
    for pipeline in pipelines.values():
        pipeline.set_progress_bar_config(disable=True)
    reference = next(iter(pipelines.values()), None)
    if reference is None:
        from latentda.diffusion.denoiser import make_schedule

        scheduler, sampler_defaults, window = make_schedule(1e-3, 1e3), SamplerSettings(), 8
    else:
        scheduler, sampler_defaults, window = reference.scheduler, reference.sampling, reference.window
    priors["(a0) exact, one window"] = ExactPrior(system, layout, scheduler, sampler_defaults, window=args.length)
    priors["(a) exact prior"] = ExactPrior(system, layout, scheduler, sampler_defaults, window=window,
                                           overlap=reference.overlap if reference else None)
    priors.update(pipelines)
    names = ["exact samples", *priors]
    print(f"system {system}\n{args.windows} held-out windows of {args.length} states, {args.members} members, "
          f"observation noise {args.noise}; sampler {settings.sampling(next(iter(priors.values())))}")

    truths = [system.trajectory(args.length, np.random.default_rng([HELD_OUT_SEED, w])) for w in range(args.windows)]
    results: dict = {"system": system.to_attrs(), "windows": args.windows, "length": args.length,
                     "members": args.members, "noise": args.noise, "iterations": args.iterations, "solver": args.solver,
                     "sampler": dataclasses.asdict(settings.sampling(next(iter(priors.values())))),
                     "posterior": {}, "prior": {}}
    specs = settings_specs(args.noise)
    for setting in args.settings:
        per_prior: dict[str, list] = {name: [] for name in names}
        seconds = {name: 0.0 for name in names}
        for w, truth in enumerate(truths):
            operator = synthesize(truth, layout, ObservationConfig([specs[setting]]), seed=w)
            law = exact_posterior(system, operator)
            observed = observed_pixels(operator, layout.num_channels, layout.shape)
            started = time.perf_counter()
            per_prior["exact samples"].append(scores(law.sample(args.members, seed=w), law, system, observed))
            seconds["exact samples"] += time.perf_counter() - started
            for name, prior in priors.items():
                started = time.perf_counter()
                ensemble = np.stack([fields for _, fields, _ in
                                     posterior_members(prior, operator, list(range(args.members)), settings, seed=w)])
                seconds[name] += time.perf_counter() - started
                per_prior[name].append(scores(ensemble.astype(np.float64), law, system, observed))
        results["posterior"][setting] = {name: {**pooled(per_prior[name]), "seconds_per_member":
                                                seconds[name] / (args.windows * args.members)} for name in names}
        report(f"posterior, {setting}", results["posterior"][setting])
    if not args.no_prior:
        law = stationary_law(system, args.length)
        draws = {"exact samples": [law.sample(args.members, seed=w) for w in range(args.windows)]}
        for name, prior in priors.items():
            draws[name] = [unconditional(prior, args.length, args.members, settings, seed=w) for w in range(args.windows)]
        results["prior"] = {name: pooled([scores(d, law, system) for d in draws[name]]) for name in names}
        report("prior (unconditional samples vs the stationary law)", results["prior"])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
        print(f"wrote {args.json}")


def report(title: str, rows: dict) -> None:
    print(f"\n{title}\n| ensemble | mean error (bias) | variance ratio | observed pixels | coverage 50 % | coverage 90 % | "
          f"ratio by |k| band {' / '.join(next(iter(rows.values()))['variance_ratio_by_band'])} |\n|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        bands = " / ".join(f"{r:.2f}" for r in row["variance_ratio_by_band"].values())
        observed = row.get("variance_ratio_observed")
        print(f"| {name} | {row['mean_error']:.3f} ({row['bias']:.3f}) | {row['variance_ratio']:.3f} | "
              f"{'' if observed is None else f'{observed:.3f}'} | {row['coverage_50']:.3f} | {row['coverage_90']:.3f} | {bands} |")


if __name__ == "__main__":
    main()

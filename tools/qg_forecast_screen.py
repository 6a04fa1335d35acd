"""The learned prior's one-cycle forecast from the true past on DAPPER's QG, screened: sampler settings against a
saved run, paired member by member, and ensembles of several priors against one.

    python tools/qg_forecast_screen.py --pipelines runs/ldm-qg-w288/pipeline runs/ldm-qg-12k/pipeline \\
        --cycles-from docs/benchmarks/dapper-qg/forecast-skill-24-ship-w288.json \\
        --save runs/bench-qg/screen-w288-12k.npz --json docs/benchmarks/dapper-qg/prior-ensemble-w288-12k.json
    python tools/qg_forecast_screen.py --pipelines runs/ldm-qg-w288/pipeline --settings '{"iterations": 4}' \\
        --cycles-from docs/benchmarks/dapper-qg/forecast-skill-24-ship-w288.json --every 4 \\
        --against runs/bench-qg/screen-w288-12k.npz

The forecast is :func:`latentda.integrations.dapper.forecast_skill`'s one cycle ahead (context 12, σ_c 0.05 by
default), on the QG twin experiment T = 500 under seed 3000 (``tools/bench_dapper_qg.py``'s truth), ``--members``
members per prior — prior p draws members p·M … p·M + M − 1, so no two priors share a random stream, and a rerun with
other ``--settings`` draws the same streams (common random numbers) — at the cycles of ``--cycles-from`` (a
``--forecast-skill`` JSON of the bench), every ``--every``-th, or ``--cycles`` evenly spaced after the burn-in.
Scores by DAPPER's definitions (rmse of the ensemble mean, spread = root of the grid-mean variance), averaged over
the cycles, for each prior; and

- ``--against NPZ`` (a ``--save`` of an earlier run): the first prior's rmse minus that run's first prior's on the
  cycles both have (mean ± its standard error over the cycles) — e.g. solver iterations, paired;
- per prior, the rmse of means of 1, M/2 and M members (rmse² ≈ b² + v/n: b, the error all members share), the
  median member rmse and the worst member's per cycle (a blown-up sample shows there);
- with two or more priors, the mixture at one prior's size: M/2 members of each of the first two priors (every
  choice of halves) against the first prior's M, every member of every prior together, and the correlation over
  the grid of the ensemble-mean errors of M/2-member halves across the two priors beside that of the two halves of
  one prior (errors the priors share cannot be averaged away by mixing them; latentda's filter members never
  interact, so a mixture's filter is the priors' filters side by side).

Needs DAPPER's Fortran QG module (``make dapper``); steps the QG model while simulating the truth (~20 s): run one QG
experiment at a time per installation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def _forecasts(pipeline, HMM, xx, cycles, members: list[int], settings, context: int, condition_noise: float,
               conditioning: str = "mmps") -> np.ndarray:
    """(cycles, members, Nx): the prior's one-cycle forecasts from the true past, as forecast_skill draws them."""
    from latentda.integrations.dapper import true_past_forecast

    return np.stack([true_past_forecast(pipeline, HMM, xx, ko, 1, members, settings, context, condition_noise, seed=ko,
                                        conditioning=conditioning)[:, 0] for ko in cycles])


def _scores(ensemble: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cycle: rmse of the ensemble mean and spread (root of the grid-mean variance, ddof 1)."""
    return (np.sqrt(((ensemble.mean(1) - truth) ** 2).mean(1)), np.sqrt(ensemble.var(1, ddof=1).mean(1)))


def _error_correlation(a: np.ndarray, b: np.ndarray, truth: np.ndarray) -> float:
    """Mean over the cycles of the grid correlation of the ensemble-mean errors of a and b."""
    return float(np.mean([np.corrcoef(x, y)[0, 1] for x, y in zip(a.mean(1) - truth, b.mean(1) - truth)]))


def _paired(difference: np.ndarray) -> dict:
    """Mean of per-cycle differences, its standard error over the cycles (None for one cycle), cycles below 0."""
    error = float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else None
    return {"mean": float(difference.mean()), "standard_error": error, "lower_on": int((difference < 0).sum()),
            "cycles": int(len(difference))}


def _subsets(size: int, count: int, limit: int = 200) -> list[tuple[int, ...]]:
    """Every ``count``-subset of range(size), or ``limit`` of them drawn with a fixed seed when there are more."""
    every = list(itertools.combinations(range(size), count))
    if len(every) <= limit:
        return every
    rng = np.random.default_rng(0)
    return [every[i] for i in sorted(rng.choice(len(every), limit, replace=False))]


def _prior_row(path: str, ensemble: np.ndarray, truth: np.ndarray) -> dict:
    """One prior's scores: rmse and spread of its M-member mean; the rmse of means of 1 and M/2 members (averaged
    over subsets: rmse² ≈ b² + v/n extrapolates to n → ∞); the error correlation of its two halves' means; each
    member's rmse per cycle (a blown-up sample shows here)."""
    M = ensemble.shape[1]
    rmse, spread = _scores(ensemble, truth)
    by_size = {n: float(np.mean([_scores(ensemble[:, list(i)], truth)[0].mean() if n > 1 else
                                 np.sqrt(((ensemble[:, i[0]] - truth) ** 2).mean(1)).mean() for i in _subsets(M, n)]))
               for n in sorted({1, M // 2})}
    member = np.sqrt(((ensemble - truth[:, None]) ** 2).mean(2))  # (cycles, members)
    return {"pipeline": path, "rmse": float(rmse.mean()), "spread": float(spread.mean()),
            "rmse_by_members": {**{str(n): v for n, v in by_size.items()}, str(M): float(rmse.mean())},
            "half_error_correlation": _error_correlation(ensemble[:, : M // 2], ensemble[:, M // 2 :], truth),
            "member_rmse_median": float(np.median(member)), "worst_member_rmse": [float(v) for v in member.max(1)]}


def _mixture(first: np.ndarray, second: np.ndarray, truth: np.ndarray) -> dict:
    """M/2 members of each prior (every choice of halves, at most 200 pairs) against the first prior's M; the error
    correlation of half-means across the priors, the size of ``_prior_row``'s half correlation."""
    M = first.shape[1]
    halves = _subsets(M, M // 2, limit=15)
    pairs = [(i, j) for i in halves for j in halves]
    mixed = [_scores(np.concatenate([first[:, list(i)], second[:, list(j)]], 1), truth) for i, j in pairs]
    rmse, spread = np.mean([m[0] for m in mixed], 0), np.mean([m[1] for m in mixed], 0)
    across = float(np.mean([_error_correlation(first[:, list(i)], second[:, list(j)], truth) for i, j in pairs]))
    return {"rmse": float(rmse.mean()), "spread": float(spread.mean()), "against_first": _paired(rmse - _scores(first, truth)[0]),
            "half_error_correlation_across": across}


def summary(paths: list[str], ensembles: list[np.ndarray], truth: np.ndarray, cycles: list[int], settings: dict | None,
            context: int, condition_noise: float, truth_sha256: str, earlier: dict | None = None) -> dict:
    """The scores (module docstring) of ``ensembles`` (cycles, M, Nx), one per prior; ``earlier``: a ``--save``
    (cycles, truth, prior0) to pair the first prior with."""
    result = {"truth_sha256": truth_sha256, "cycles": [int(c) for c in cycles], "members": int(ensembles[0].shape[1]),
              "context": context, "condition_noise": condition_noise, "settings": settings or {},
              "priors": [_prior_row(path, ensemble, truth) for path, ensemble in zip(paths, ensembles)]}
    if earlier is not None:
        before = [int(c) for c in earlier["cycles"]]
        mine = [i for i, c in enumerate(cycles) if c in before]
        rows = [before.index(cycles[i]) for i in mine]
        if not mine:
            raise SystemExit("the --against run has none of these cycles")
        if not np.array_equal(earlier["truth"][rows], truth[mine]):
            raise SystemExit("the --against run was made on another truth")
        if earlier["prior0"].shape[1] != ensembles[0].shape[1]:
            raise SystemExit(f"the --against run has {earlier['prior0'].shape[1]} members, this one {ensembles[0].shape[1]}")
        difference = _scores(ensembles[0][mine], truth[mine])[0] - _scores(earlier["prior0"][rows], truth[mine])[0]
        result["against"] = {"settings": json.loads(str(earlier.get("settings", "{}"))),
                             "pipeline": str(earlier.get("pipeline0", "")), **_paired(difference)}
    if len(ensembles) > 1:
        result["mixture_same_size"] = _mixture(ensembles[0], ensembles[1], truth)
        together = _scores(np.concatenate(ensembles, 1), truth)
        result["all_members"] = {"members": int(sum(e.shape[1] for e in ensembles)), "rmse": float(together[0].mean()),
                                 "spread": float(together[1].mean())}
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipelines", nargs="+", required=True, help="one prior, or several of one autoencoder")
    parser.add_argument("--members", type=int, default=4, help="members per prior (even, ≥ 2; default 4)")
    parser.add_argument("--settings", type=json.loads, default=None, help="PosteriorSettings fields as JSON")
    parser.add_argument("--cycles", type=int, default=24, help="cycles after the burn-in, evenly spaced (default 24)")
    parser.add_argument("--cycles-from", help="take the cycles of this --forecast-skill JSON of the bench instead")
    parser.add_argument("--every", type=int, default=1, help="keep every n-th of those cycles")
    parser.add_argument("--context", type=int, default=12,
                        help="true states before each forecast that condition it (default 12)")
    parser.add_argument("--condition-noise", type=float, default=0.05,
                        help="σ_c of the mmps conditioning on those states, standardised latent units (default 0.05)")
    parser.add_argument("--conditioning", nargs="+", default=["mmps"], choices=["mmps", "known"],
                        help="how each prior follows the true past: one for all, or one per --pipelines (known: priors "
                             "trained with known frames)")
    parser.add_argument("--save", help="save the truth, the settings and every prior's members here (.npz)")
    parser.add_argument("--against", help="a --save of an earlier run: the first prior's rmse paired against its")
    parser.add_argument("--json", help="write the scores here")
    args = parser.parse_args(argv)
    if args.members < 2 or args.members % 2 or args.every < 1:
        parser.error("--members must be even and ≥ 2, --every ≥ 1")

    import bench_dapper_qg as bench
    from dapper.tools.seeding import set_seed

    from latentda import LatentDAPipeline
    from latentda.integrations.dapper import _posterior_settings, evenly_spaced
    from latentda.posterior.forecast_settings import DEFAULT_CONDITION_NOISE

    settings = _posterior_settings(args.settings)
    HMM = bench._hmm(500.0, 250.0, 1)
    kko = np.asarray(HMM.tseq.kko)
    set_seed(3000)
    xx, _ = HMM.simulate()
    if args.cycles_from:
        experiment = json.loads(Path(args.cycles_from).read_text())["experiment"]
        if experiment.get("truth_sha256", bench._digest(xx)) != bench._digest(xx):
            parser.error(f"{args.cycles_from} was run on another truth (not T = 500 under seed 3000)")
        cycles = experiment["forecast_skill"]["cycles"]
    else:
        valid = [ko for ko in range(len(kko) - 1) if HMM.tseq.masko[ko] and ko >= args.context - 1]
        cycles = evenly_spaced(valid, args.cycles)
    cycles = [int(c) for c in cycles[:: args.every]]
    truth = np.stack([xx[kko[ko + 1]] for ko in cycles])
    M = args.members
    if min(cycles) - args.context + 1 < 0:
        parser.error(f"cycle {min(cycles)} has fewer than --context {args.context} true states before it")
    conditionings = args.conditioning * len(args.pipelines) if len(args.conditioning) == 1 else args.conditioning
    if len(conditionings) != len(args.pipelines):
        parser.error("give one --conditioning, or one per --pipelines")
    ensembles, walls = [], []
    for p, path in enumerate(args.pipelines):
        start = time.perf_counter()
        ensembles.append(_forecasts(LatentDAPipeline.from_pretrained(path), HMM, xx, cycles,
                                    list(range(p * M, (p + 1) * M)), settings, args.context,
                                    args.condition_noise if conditionings[p] == "mmps" else DEFAULT_CONDITION_NOISE,  # mmps' only
                                    conditionings[p]))
        walls.append(round(time.perf_counter() - start, 1))
        print(f"{path}: {walls[-1]} s", flush=True)
    if args.save:
        np.savez(args.save, cycles=np.array(cycles), truth=truth, settings=json.dumps(args.settings or {}),
                 **{f"prior{p}": e for p, e in enumerate(ensembles)}, **{f"pipeline{p}": path for p, path in enumerate(args.pipelines)})
    earlier = dict(np.load(args.against)) if args.against else None
    result = summary(args.pipelines, ensembles, truth, cycles, args.settings, args.context, args.condition_noise,
                     bench._digest(xx), earlier)
    for row, wall, conditioning in zip(result["priors"], walls, conditionings):
        row["wall_s"] = wall
        row["conditioning"] = conditioning
    for row in result["priors"]:
        print(f"{row['pipeline']}: rmse {row['rmse']:.4f}, spread {row['spread']:.4f}, rmse by members "
              f"{row['rmse_by_members']}, worst member {max(row['worst_member_rmse']):.3f}, error correlation of its "
              f"two halves {row['half_error_correlation']:.3f}")
    if "against" in result:
        a = result["against"]
        error = "" if a["standard_error"] is None else f" ± {a['standard_error']:.4f}"
        print(f"against {args.against}: {a['mean']:+.4f}{error} (lower on {a['lower_on']}/{a['cycles']} cycles)")
    if "mixture_same_size" in result:
        mixture, together = result["mixture_same_size"], result["all_members"]
        paired = mixture["against_first"]
        print(f"mixture, {M // 2} + {M // 2} members: rmse {mixture['rmse']:.4f} ({paired['mean']:+.4f} against the first "
              f"prior's {M}, lower on {paired['lower_on']}/{len(cycles)} cycles), spread {mixture['spread']:.4f}; error "
              f"correlation of half-means across the priors {mixture['half_error_correlation_across']:.3f}")
        print(f"all {together['members']} members: rmse {together['rmse']:.4f}, spread {together['spread']:.4f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        bench._write(Path(args.json), result)
    return result


if __name__ == "__main__":
    main()

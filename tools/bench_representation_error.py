r"""The representation error on and off: residual ratio, RMSE and spread-skill of the same reanalysis.

    python tools/bench_representation_error.py --members 4 --json docs/benchmarks/representation.json

Two cases, each reanalysed twice with the same seed (``representation_error`` on, then off):

- ``kolmogorov``: the shipped pipeline (``--pipeline``, default pretrained/kolmogorov) on a held-out
  trajectory (``simulate kolmogorov --seed 2026``, as ``make demo``), 16 states, observed as in
  ``configs/observe/sparse.yaml`` (the demo's 5 % of the pixels); needs the ``sim`` extra;
  ``kolmogorov-precise`` the same with a noise std of 0.005, far below the decoder's error (r s ≈
  0.025 × the field's std): where the representation error decides the fit;
- ``example``: ``latentda.simulate.latlon_example()`` (lat-lon, poles, land mask, a missing step,
  precipitation ≥ 0), its gap filled, a small pipeline trained here through the CLI
  (``--ae-steps``, ``--ldm-steps``) and 8 states observed at 40 random points (t2m, sst) and in
  4×4 blocks (tp).

Printed per case and setting: the residual ratio √mean((y − H(x))²/σ_y²) (against σ_y either way,
so it can reach 1 only if the decoder can fit the data), the ensemble-mean RMSE and the spread-skill
ratio averaged over variables, and the wall time.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from latentda import cli
from latentda.data import FieldLayout, open_dataset, write_dataset
from latentda.evaluation import NOT_CHANNELS, evaluate
from latentda.observe import ObservationConfig, observations_to_dataset, synthesize
from latentda.config import parse
from latentda.pipeline import LatentDAPipeline
from latentda.cli import ScriptHelpFormatter


def observe(truth, layout: FieldLayout, entries: list[dict], seed: int):
    operator = synthesize(layout.to_array(truth), layout, parse(ObservationConfig, {"observations": entries}), seed=seed)
    return observations_to_dataset(operator, layout, truth["time"])


def scores(pipeline: LatentDAPipeline, observations, truth, members: int, on: bool) -> dict:
    start = time.perf_counter()
    ensemble = pipeline.reanalyze(observations, members=members, seed=0, representation_error=on)
    seconds = time.perf_counter() - start
    _, summary = evaluate(ensemble, truth, observations)
    channels = [c for c in summary if c not in NOT_CHANNELS]
    return {"residual_ratio": summary["observation_residual_ratio"]["mean"],
            "rmse": float(np.mean([summary[c]["rmse"] for c in channels])),
            "spread_skill": float(np.mean([summary[c]["spread_skill_ratio"] for c in channels])),
            "seconds": round(seconds, 1)}


def kolmogorov_case(args, folder: Path, noise: float | None = None):
    from latentda.simulate import write_kolmogorov_zarr

    path = write_kolmogorov_zarr(folder / "truth.zarr", trajectories=1, steps=16, seed=2026, progress=False)
    truth = open_dataset(path).isel(trajectory=0, drop=True)
    pipeline = LatentDAPipeline.from_pretrained(args.pipeline)
    entries = yaml.safe_load(Path("configs/observe/sparse.yaml").read_text())["observations"]
    if noise is not None:
        entries = [{**entry, "noise_std": noise} for entry in entries]
    return pipeline, observe(truth, pipeline.layout, entries, seed=1), truth


def example_case(args, folder: Path):
    from latentda.simulate import EXAMPLE_STEP_HOURS, latlon_example

    raw = latlon_example()
    hours = raw["time_index"].values
    regular = raw.reindex(time_index=np.arange(hours[0], hours[-1] + 1, EXAMPLE_STEP_HOURS))
    regular["time_index"].attrs = raw["time_index"].attrs
    data = write_dataset(regular, folder / "example.nc")
    (folder / "ae.yaml").write_text(yaml.safe_dump({
        "data": {"path": str(data), "splits": [0.7, 0.15, 0.15], "allow_missing": True, "non_negative": ["tp"]},
        "output": str(folder / "ae"), "valid_samples": 16,
        "model": {"latent_channels": 6, "hidden_channels": [16, 32], "blocks_per_stage": 1},
        "training": {"steps": args.ae_steps, "batch_size": 8, "learning_rate": 0.003, "warmup_steps": 20,
                     "ema_decay": 0.9, "checkpoint_every": args.ae_steps, "validate_every": args.ae_steps}}))
    (folder / "ldm.yaml").write_text(yaml.safe_dump({
        "output": str(folder / "ldm"), "splits": [0.7, 0.15, 0.15], "valid_windows": 2,
        "model": {"window": 4, "hidden_size": 64, "depth": 2, "num_heads": 4, "patch_size": [1, 3, 4]},
        "diffusion": {"sampler": "pc", "steps": 8, "sigma_start": 20.0},
        "training": {"steps": args.ldm_steps, "batch_size": 8, "learning_rate": 0.001, "warmup_steps": 20,
                     "checkpoint_every": args.ldm_steps, "validate_every": args.ldm_steps}}))
    for argv in (["train-ae", "--config", str(folder / "ae.yaml"), "--quiet"],
                 ["encode", "--autoencoder", str(folder / "ae" / "autoencoder"), "--data", str(data),
                  "--out", str(folder / "latents.zarr"), "--quiet"],
                 ["train-ldm", "--config", str(folder / "ldm.yaml"), "--latents", str(folder / "latents.zarr"), "--quiet"]):
        if cli.main(argv) != 0:
            raise SystemExit(f"{argv[0]} failed")
    pipeline = LatentDAPipeline.from_pretrained(folder / "ldm" / "pipeline")
    truth = open_dataset(data).isel(time=slice(40, 48))
    entries = [{"name": "stations", "variables": ["t2m", "sst"], "sampling": "points", "points": 40, "noise_std": 0.5},
               {"name": "rain", "variables": ["tp"], "sampling": "coarsen", "factor": 4, "noise_std": 0.2}]
    return pipeline, observe(truth, pipeline.layout, entries, seed=1), truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--pipeline", default="pretrained/kolmogorov",
                        help="pipeline folder (or Hub repo id) of the kolmogorov cases")
    parser.add_argument("--members", type=int, default=4, help="ensemble members of every reanalysis")
    cases = {"kolmogorov": kolmogorov_case, "kolmogorov-precise": lambda a, f: kolmogorov_case(a, f, noise=0.005),
             "example": example_case}
    parser.add_argument("--cases", nargs="+", default=list(cases), choices=list(cases), help="cases to run (see above)")
    parser.add_argument("--ae-steps", type=int, default=600, help="autoencoder training steps (case example)")
    parser.add_argument("--ldm-steps", type=int, default=600, help="latent prior training steps (case example)")
    parser.add_argument("--json", type=Path, help="also write the scores to this JSON file")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as temporary:
        for case in args.cases:
            folder = Path(temporary) / case
            folder.mkdir()
            pipeline, observations, truth = cases[case](args, folder)
            pipeline.set_progress_bar_config(disable=True)
            error = dict(zip(pipeline.layout.channels, pipeline.representation_error.round(4).tolist()))
            results[case] = {"representation_error": error}
            for on in (True, False):
                results[case]["on" if on else "off"] = row = scores(pipeline, observations, truth, args.members, on)
                print(f"{case:<11} representation error {'on ' if on else 'off'}: residual ratio {row['residual_ratio']:.3f}, "
                      f"RMSE {row['rmse']:.4g}, spread-skill {row['spread_skill']:.2f} ({row['seconds']} s; r = {error})")
    if args.json:
        args.json.write_text(json.dumps({"members": args.members, **results}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

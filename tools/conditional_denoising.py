"""How well a prior follows a history, one denoising step at a time: on train-ldm's held-out windows, the error of
the window's last K − n states given its first n clean, at fixed noise levels, per position after the history.

    python tools/conditional_denoising.py --latents data/qg-latents.zarr --given 12 \\
        --pipelines runs/ldm-qg-known/pipeline:known pretrained/qg:mmps --json OUT.json

``PIPELINE:known``: the prior's own conditional (a prior trained with known frames, ``history_denoiser``);
``PIPELINE:mmps``: its window denoiser guided by MMPS on the first n states (the latent identity with noise
``--condition-noise``, ``--iterations`` CG iterations), as forecasts and filters condition it. At level σ every
state is z + σ ε (the same ε for every prior); the score is the mean squared error E‖D − z‖² per element of each
free state (standardised latents, so 1 is the latents' variance). At high σ the denoiser's answer is the
conditional mean of the free states given the history; at σ → 0 every method returns the free states themselves.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from latentda.data import LatentSource, WindowDataset, split_segments
from latentda.pipeline import LatentDAPipeline
from latentda.posterior.guidance import MMPSDenoiser
from latentda.cli import ScriptHelpFormatter


def held_out_windows(latents: str, window: int, count: int, splits=(0.8, 0.1, 0.1)) -> list[np.ndarray]:
    """``count`` windows of the validation split, picked as train-ldm picks its validation windows."""
    source = LatentSource(latents)
    segments = split_segments(source.dataset, splits)
    valid = WindowDataset(source, segments["valid"] or segments["train"], window=window, stride=window, with_context=False,
                          split="valid" if segments["valid"] else "train")
    picks = np.linspace(0, len(valid) - 1, num=min(count, len(valid))).round().astype(int)
    return [valid[int(i)] for i in picks]


def conditional_errors(pipeline, method: str, windows: torch.Tensor, given: int, sigmas, condition_noise: float,
                       iterations: int, batch: int = 8, seed: int = 0) -> dict:
    """{σ: [mse of free state 1, 2, …]} for standardised ``windows`` (B, K, c, h, w)."""
    noise = torch.randn(windows.shape, generator=torch.Generator().manual_seed(seed))
    errors = {}
    for sigma in sigmas:
        x_t, level, outs = windows + sigma * noise, torch.tensor(float(sigma)), []
        for start in range(0, len(windows), batch):
            rows = windows[start : start + batch]
            if method == "known":
                with torch.no_grad():
                    outs.append(pipeline.history_denoiser(rows[:, :given])(x_t[start : start + batch], level))
            else:
                guided = MMPSDenoiser(pipeline.trajectory_denoiser(), lambda z: z[:, :given].reshape(z.shape[0], -1),
                                      rows[:, :given].reshape(len(rows), -1).double(), condition_noise, iterations=iterations)
                outs.append(guided(x_t[start : start + batch], level).detach())
        out = torch.cat(outs)
        errors[f"sigma={sigma:g}"] = [float(e) for e in ((out - windows)[:, given:] ** 2).mean(dim=(0, 2, 3, 4))]
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--latents", required=True, help="latents zarr (train-ldm's input) of the pipelines' autoencoder")
    parser.add_argument("--pipelines", nargs="+", required=True,
                        help="PIPELINE:known (the prior's own conditional) or PIPELINE:mmps (MMPS on the history)")
    parser.add_argument("--given", type=int, default=12, help="history states given clean (n)")
    parser.add_argument("--windows", type=int, default=32, help="validation windows scored (as train-ldm picks them)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 1.0, 10.0],
                        help="noise levels σ, in units of the standardised latents")
    parser.add_argument("--condition-noise", type=float, default=0.05, help="MMPS: noise std of the history's latents")
    parser.add_argument("--iterations", type=int, default=3, help="MMPS: CG iterations")
    parser.add_argument("--json", help="write the errors here")
    args = parser.parse_args()
    result = {"given": args.given, "windows": args.windows, "condition_noise": args.condition_noise,
              "iterations": args.iterations, "priors": []}
    for spec in args.pipelines:
        path, _, method = spec.rpartition(":")
        if method not in ("known", "mmps"):
            parser.error(f"{spec}: give PIPELINE:known or PIPELINE:mmps")
        pipeline = LatentDAPipeline.from_pretrained(path)
        if pipeline.increments is not None:  # its denoisers read increment coordinates
            parser.error(f"{path}: a prior in increment coordinates (model.increments); this tool measures z̃ denoisers")
        if not 1 <= args.given < pipeline.window:
            parser.error(f"--given must be in [1, {pipeline.window - 1}]")
        windows = torch.stack([torch.as_tensor(pipeline.latent_statistics.standardise(w)).float()
                               for w in held_out_windows(args.latents, pipeline.window, args.windows)])
        errors = conditional_errors(pipeline, method, windows, args.given, args.sigmas, args.condition_noise, args.iterations)
        result["priors"].append({"pipeline": path, "method": method, "free_state_mse": errors})
        for sigma, values in errors.items():
            print(f"{path} {method} {sigma}: {' '.join(f'{v:.4f}' for v in values)}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

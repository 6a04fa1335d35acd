"""Validation denoising error of several pipelines on the same latent windows.

    python tools/compare_priors.py --latents data/latents.zarr --pipelines old/pipeline pretrained/kolmogorov

Each pipeline standardises the windows (K states, stride K, ``--windows`` of them spread over the
validation split) with its own latent statistics and is scored by ``validation_error`` of
:mod:`latentda.training.diffusion` (the metric train-ldm logs): mean squared error per element at
σ = 0.01, 0.1, 1, 10 with a fixed noise draw, so the numbers compare priors trained on other data or
for other lengths. The latents must come from the pipelines' (shared) autoencoder.
"""

import argparse

import numpy as np
import torch

from latentda.data import split_segments
from latentda.data.windows import LatentSource, WindowDataset
from latentda.pipeline import LatentDAPipeline
from latentda.training.diffusion import validation_error
from latentda.cli import ScriptHelpFormatter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--latents", required=True, help="latents zarr (train-ldm's input) of the pipelines' shared autoencoder")
    parser.add_argument("--pipelines", nargs="+", required=True, help="pipeline folders (or Hub repo ids) to compare")
    parser.add_argument("--windows", type=int, default=64,
                        help="validation windows (K states, stride K) scored, spread evenly over the split")
    args = parser.parse_args()
    source = LatentSource(args.latents)
    valid = split_segments(source.dataset)["valid"]
    for path in args.pipelines:
        pipeline = LatentDAPipeline.from_pretrained(path)
        if pipeline.increments is not None:  # its denoiser reads increment coordinates: errors not comparable
            parser.error(f"{path}: a prior in increment coordinates (model.increments); this tool compares z̃ denoisers")
        windows = WindowDataset(source, valid, window=pipeline.window, stride=pipeline.window)
        picks = np.linspace(0, len(windows) - 1, num=min(args.windows, len(windows))).round().astype(int)
        batch = torch.stack([pipeline.standardise_latents(windows[int(i)]) for i in picks])
        with torch.no_grad():
            errors = validation_error(pipeline.denoiser, batch)
        print(f"{path}: " + ", ".join(f"{name} {value:.3g}" for name, value in errors.items()))


if __name__ == "__main__":
    main()

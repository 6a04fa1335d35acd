r"""How much a decoder tolerates errors of its latents: reconstruction RMSE under latent perturbations.

    python tools/bench_latent_noise.py --data data/kolmogorov-128.zarr \
        --autoencoders pretrained/kolmogorov/autoencoder runs/frontier/8x-narrow-noise/autoencoder --levels 0 0.1 0.2 0.5

The prior samples standardised latents z̃ = (z − μ_c)/s_c, so its errors are of the order of a
fraction of each latent channel's std s_c. For every autoencoder and level a, the test frames x
(test split, evenly spaced, standardised units) are encoded, perturbed and decoded,
x̂ = D(E(x) + a s_c ε) with ε ~ N(0, I) (seed 0), and scored by the RMSE of x̂ − x per variable
(area-weighted). a = 0 is the plain reconstruction error; s_c is measured on the same frames.
Training with noisy latents (``latent_noise`` in the autoencoder config) should flatten the growth
with a; docs/compression.md has the results.
"""

import argparse
from pathlib import Path

import torch

from latentda.components import load_autoencoder
from latentda.data import FieldSource, WindowDataset, open_dataset, split_segments
from latentda.training.autoencoder import evenly_spaced_frames, reconstruction_rmse
from latentda.cli import ScriptHelpFormatter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="dataset (zarr or netCDF) the autoencoders were trained on")
    parser.add_argument("--autoencoders", required=True, nargs="+", type=Path, help="autoencoder folders to compare")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.5],
                        help="perturbation levels a: noise std in units of each latent channel's std")
    parser.add_argument("--frames", type=int, default=512, help="evenly spaced test-split frames")
    args = parser.parse_args()
    dataset = open_dataset(args.data)
    print(f"{'autoencoder':48s} latent std (per channel)          " + "".join(f"  RMSE a={a:<5g}" for a in args.levels))
    for folder in args.autoencoders:
        model, layout, statistics = load_autoencoder(folder)
        model.eval()
        frames = WindowDataset(FieldSource(args.data, layout, statistics), split_segments(dataset)["test"], window=1)
        batch = evenly_spaced_frames(frames, args.frames)
        weights = torch.from_numpy(layout.area_weights())
        with torch.no_grad():
            std = model.encode(batch).std(dim=(0, 2, 3))
            scores = []
            for level in args.levels:
                generator, scale = torch.Generator().manual_seed(0), level * std[:, None, None]

                def perturbed(x):  # D(E(x) + a s_c ε), a fresh ε per batch
                    return model(x, scale * torch.randn(len(x), *model.latent_shape, generator=generator))

                scores.append(float(reconstruction_rmse(perturbed, batch, weights).mean()))
        print(f"{str(folder):48s} {' '.join(f'{s:.3f}' for s in std.tolist()):32s}"
              + "".join(f"  {score:11.4f}" for score in scores))


if __name__ == "__main__":
    main()

r"""Figure of an autoencoder's reconstructions: truth / reconstruction / error for each variable.

    python tools/ae_figure.py --autoencoder runs/ae-kolmogorov/autoencoder --data data/kolmogorov.zarr \
        --trajectory 120 --time 10 --out docs/figures/ae_reconstruction.png

Also prints the reconstruction RMSE per channel (standardised units) over the test split.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from latentda.components import load_autoencoder  # noqa: E402
from latentda.data import FieldSource, WindowDataset, open_dataset, split_segments  # noqa: E402
from latentda.training.autoencoder import evenly_spaced_frames, reconstruction_rmse  # noqa: E402
from latentda.cli import ScriptHelpFormatter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--autoencoder", required=True, type=Path, help="autoencoder folder (e.g. PIPELINE/autoencoder)")
    parser.add_argument("--data", required=True, type=Path, help="dataset (zarr or netCDF) the autoencoder was trained on")
    parser.add_argument("--trajectory", type=int, default=None,
                        help="index of the trajectory to show (default: the first of the test split)")
    parser.add_argument("--time", type=int, default=0, help="index of the state shown in that trajectory")
    parser.add_argument("--samples", type=int, default=256, help="evenly spaced test-split frames for the RMSE")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/ae_reconstruction.png"),
                        help="figure to write (PNG); the default overwrites the committed docs figure")
    args = parser.parse_args()

    model, layout, statistics = load_autoencoder(args.autoencoder)
    dataset = open_dataset(args.data)
    test = split_segments(dataset)["test"]
    frames = WindowDataset(FieldSource(args.data, layout, statistics), test, window=1)
    batch = evenly_spaced_frames(frames, args.samples)
    with torch.no_grad():
        rmse = reconstruction_rmse(model, batch, torch.from_numpy(layout.area_weights()))
    print(f"compression factor {model.compression_factor:.1f}, latent shape {tuple(model.latent_shape)}")
    print("test reconstruction RMSE (standardised): " + ", ".join(f"{c} {v:.4f}" for c, v in zip(layout.channels, rmse.tolist())))

    trajectory = test[0].trajectory if args.trajectory is None else args.trajectory
    truth = layout.to_array(dataset, trajectory, slice(args.time, args.time + 1))
    with torch.no_grad():
        recon = model(torch.from_numpy(statistics.standardise(truth)))
    recon = statistics.destandardise(recon.double().numpy())
    channels = layout.channels
    figure, axes = plt.subplots(len(channels), 3, figsize=(9, 3 * len(channels)), constrained_layout=True, squeeze=False)
    for c, name in enumerate(channels):
        limit = np.abs(truth[0, c]).max()
        for column, (title, image, cmap, lim) in enumerate([
            ("truth", truth[0, c], "RdBu_r", limit), ("reconstruction", recon[0, c], "RdBu_r", limit),
            ("error", recon[0, c] - truth[0, c], "PuOr_r", limit / 10),
        ]):
            shown = axes[c, column].imshow(image, cmap=cmap, vmin=-lim, vmax=lim, origin="lower")
            axes[c, column].set_title(f"{name}: {title}")
            axes[c, column].set_xticks([])
            axes[c, column].set_yticks([])
            figure.colorbar(shown, ax=axes[c, column], shrink=0.8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

r"""Compression–fidelity–cost frontier of autoencoders, against a PCA baseline of the same latent size.

    python tools/bench_compression.py --data data/kolmogorov.zarr \
        --autoencoders pretrained/kolmogorov/autoencoder runs/frontier/*/autoencoder \
        --pca-cache runs/frontier/pca.npz --json docs/benchmarks/compression.json \
        --figure docs/figures/compression-frontier.png

(``--reuse JSON`` takes the rows of folders an earlier run measured; docs/compression.md has the
results.) For each autoencoder folder (the name shown is its run folder's name, ``shipped`` for one inside
``pretrained/``):

* compression factor C·H·W / (c·h·w) and latent shape;
* reconstruction RMSE per variable on the TEST split (standardised units, area-weighted as in
  training: :func:`latentda.training.autoencoder.reconstruction_rmse`), on every test frame unless
  ``--test-frames`` is given;
* spectrum error: mean over wavenumbers k = 1 … N/2 of |log10 P_rec(k) / P_true(k)|, with P the
  isotropic kinetic-energy spectrum (sum over variables of :func:`latentda.metrics.energy_spectrum`
  of the physical fields, averaged over the test frames), and the same mean over the upper half
  of the wavenumbers (k > N/4, where compression loses energy first);
* decoder and encoder GFLOP per frame (``torch.utils.flop_counter``: exact whatever the load);
* cost of one MMPS guided step (n = ``--iterations`` solver iterations, 5 % of the pixels observed,
  L = 2K states), counted as :mod:`tools/bench_cost.py` does, with the shipped prior's transformer
  (random weights: FLOPs do not depend on them) adapted to the latent shape — same width, depth and
  window, patch size chosen so that every frame is 16 tokens (1×4×4 on 16×16 latents, 1×2×2 on
  8×8) — so the denoiser's cost is the same for every point to within its patch projections and
  the differences are the decoder's. Reported in GFLOP per state, as a ratio to an unguided step
  and as the decoder's share of the guided step; wall times (median of ``--repeats``) beside them.

PCA baseline: the standardised training frames (train split, every frame), flattened, centred on
their mean, and their exact SVD (float64 Gram matrix, ``numpy.linalg.eigh``); with k components
the reconstruction is μ + V_k V_kᵀ (x − μ), scored on the same test frames in the same way, for
k = each autoencoder's latent size and ``--pca-sizes``. Its "decoder" costs 2·k·C·H·W FLOP.

Prints a table and, with ``--json`` / ``--figure``, writes the figures and a plot of compression
against test RMSE (colour = decoder GFLOP per frame, PCA as a line) next to the spectra ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from latentda.components import load_autoencoder
from latentda.data import Statistics, open_dataset, split_segments
from latentda.metrics import energy_spectrum
from latentda.training.autoencoder import reconstruction_rmse
from latentda.cli import ScriptHelpFormatter

_bench_cost_spec = importlib.util.spec_from_file_location("bench_cost", Path(__file__).with_name("bench_cost.py"))
bench_cost = importlib.util.module_from_spec(_bench_cost_spec)
_bench_cost_spec.loader.exec_module(bench_cost)  # flops() and sparse_operator(), shared with the cost benchmark


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    """float32 FLOP/s of a size² matmul with the current thread count."""
    a = torch.randn(size, size)
    return 2 * size**3 / bench_cost.seconds(lambda: a @ a, repeats)


def read_frames(dataset, layout, statistics: Statistics, segments, every: int = 1) -> np.ndarray:
    """Standardised frames (N, C, H, W) float32 of the given segments (whole trajectories at once)."""
    out = []
    for segment in segments:
        fields = layout.to_array(dataset, segment.trajectory, slice(segment.start, segment.stop))[::every]
        out.append(np.asarray(statistics.standardise(fields.astype(np.float32)), dtype=np.float32))
    return np.concatenate(out)


def kinetic_spectrum(fields: np.ndarray, periodic) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic spectrum summed over the variables of physical fields (N, C, H, W)."""
    total = None
    for c in range(fields.shape[1]):
        k, power = energy_spectrum(fields[:, c], tuple(periodic))
        total = power if total is None else total + power
    return k, total


def spectrum_errors(k: np.ndarray, reconstructed: np.ndarray, truth: np.ndarray) -> dict:
    log_ratio = np.log10(reconstructed / truth)
    high = k > k.max() / 2
    return {"spectrum_error": float(np.abs(log_ratio).mean()), "spectrum_error_high_k": float(np.abs(log_ratio[high]).mean()),
            "spectrum_ratio": (10**log_ratio).tolist()}


def display_name(folder: Path) -> str:
    if "pretrained" in folder.resolve().parts:
        return "shipped"
    return folder.parent.name if folder.name == "autoencoder" else folder.name


def random_pipeline(autoencoder, layout, statistics, reference: Path):
    """A pipeline around ``autoencoder`` with the reference prior's transformer (random weights),
    adapted to the latent shape: 16 tokens per frame."""
    from diffusers import EDMEulerScheduler

    from latentda.nn import TrajectoryTransformer
    from latentda.pipeline import LatentDAPipeline

    c, h, w = autoencoder.latent_shape
    config = {k: v for k, v in json.loads((reference / "denoiser" / "config.json").read_text()).items() if not k.startswith("_")}
    config.update(in_channels=c, sample_size=[h, w], patch_size=[1, max(h // 4, 1), max(w // 4, 1)])
    torch.manual_seed(0)
    backbone = TrajectoryTransformer(**config)
    latent_statistics = Statistics([f"latent{i}" for i in range(c)], np.zeros(c), np.ones(c))
    scheduler = EDMEulerScheduler.from_pretrained(reference / "scheduler")
    settings = json.loads((reference / "pipeline_config.json").read_text())
    return LatentDAPipeline(autoencoder, layout, statistics, backbone, latent_statistics, scheduler, settings)


def guided_step_cost(pipeline, iterations: int, repeats: int) -> dict:
    """FLOPs (and wall time) per state of one unguided and one MMPS step at L = 2K, and the primitives."""
    from latentda.posterior.guidance import MMPSDenoiser
    from latentda.posterior.reanalysis import LatentOperator

    K = pipeline.window
    L = 2 * K
    blanket = pipeline.trajectory_denoiser()
    operator = bench_cost.sparse_operator(pipeline, L)
    y, noise_std = operator.observed()
    A = LatentOperator(pipeline, operator)
    torch.manual_seed(0)
    z = torch.randn(1, L, *pipeline.latent_shape)
    sigma = torch.tensor(1.0)

    def unguided():
        with torch.no_grad():
            blanket(z, sigma)

    guided = MMPSDenoiser(blanket, A, y, noise_std, iterations=iterations)
    f_unguided = bench_cost.flops(unguided)
    f_guided = bench_cost.flops(lambda: guided(z, sigma))
    anchor = z.clone().requires_grad_()

    def decoder_forward():
        with torch.no_grad():
            A(anchor)

    f_decoder = bench_cost.flops(decoder_forward)
    predicted = A(anchor)
    f_decoder_vjp = bench_cost.flops(lambda: torch.autograd.grad(predicted, anchor, torch.ones_like(predicted), retain_graph=True))
    tangent = A.linearize(z)
    v = torch.randn_like(z)
    f_tangent = bench_cost.flops(lambda: tangent.forward(v))
    decoder_part = f_decoder + iterations * f_tangent + (iterations + 1) * f_decoder_vjp
    out = {"L": L, "iterations": iterations,
           "unguided_gflop_per_state": f_unguided / L / 1e9, "mmps_gflop_per_state": f_guided / L / 1e9,
           "mmps_over_unguided_flops": f_guided / f_unguided, "decoder_share_of_mmps": decoder_part / f_guided}
    if repeats > 0:
        t_unguided = bench_cost.seconds(unguided, repeats)
        t_guided = bench_cost.seconds(lambda: guided(z, sigma), repeats)
        out.update(unguided_ms_per_state=t_unguided / L * 1e3, mmps_ms_per_state=t_guided / L * 1e3,
                   mmps_over_unguided_wall=t_guided / t_unguided)
    return out


def network_flops(module_fn, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module_fn(x)
    return counter.get_total_flops()


def evaluate_autoencoder(folder: Path, test: np.ndarray, weights: torch.Tensor, true_spectrum, periodic,
                         reference: Path, iterations: int, repeats: int) -> dict:
    model, layout, statistics = load_autoencoder(folder)
    frames = torch.from_numpy(test)
    with torch.no_grad():
        rmse = reconstruction_rmse(model, frames, weights).numpy()
        recon = torch.cat([model(frames[i : i + 64]) for i in range(0, len(frames), 64)]).double().numpy()
    k, power = kinetic_spectrum(statistics.destandardise(recon), periodic)
    c, h, w = model.latent_shape
    row = {
        "name": display_name(folder), "folder": str(folder), "kind": "autoencoder",
        "latent_shape": [c, h, w], "latent_size": c * h * w, "compression_factor": model.compression_factor,
        "hidden_channels": list(model.config.hidden_channels), "blocks_per_stage": model.config.blocks_per_stage,
        "parameters": sum(p.numel() for p in model.parameters()),
        "rmse": dict(zip(layout.channels, rmse.tolist())), "rmse_mean": float(rmse.mean()),
        **spectrum_errors(k, power, true_spectrum),
        "decoder_gflop_per_frame": network_flops(model.decode, torch.zeros(1, c, h, w)) / 1e9,
        "encoder_gflop_per_frame": network_flops(model.encode, frames[:1]) / 1e9,
    }
    metrics_file = folder.parent / "metrics.json"
    training = folder / "training_metrics.json"
    for candidate in (metrics_file, training):
        if candidate.is_file():
            metrics = json.loads(candidate.read_text())
            row["training_steps"] = metrics.get("steps")
            row["training_frames_per_second"] = metrics.get("train_samples_per_second")
            break
    row["mmps"] = guided_step_cost(random_pipeline(model, layout, statistics, reference), iterations, repeats)
    return row


def pca_basis(train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, eigenvalues descending, components (D, N)) of the flattened training frames, through
    the N×N Gram matrix in float64 (N = number of frames < D)."""
    X = train.reshape(len(train), -1).astype(np.float64)
    mean = X.mean(axis=0)
    X -= mean
    gram = X @ X.T
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0, None), vectors[:, order]
    keep = values > values[0] * 1e-12
    components = X.T @ (vectors[:, keep] / np.sqrt(values[keep]))  # right singular vectors, (D, r)
    return mean, values[keep], components


def evaluate_pca(size: int, mean, components, test: np.ndarray, weights: torch.Tensor, true_spectrum, periodic,
                 statistics: Statistics, channels) -> dict:
    V = components[:, :size]
    X = test.reshape(len(test), -1).astype(np.float64) - mean
    recon = (X @ V) @ V.T + mean
    recon = recon.reshape(test.shape)
    error = (recon - test) ** 2 * weights.double().numpy()
    rmse = np.sqrt(error.mean(axis=(2, 3)).mean(axis=0))
    k, power = kinetic_spectrum(statistics.destandardise(recon), periodic)
    D = test[0].size
    return {"name": f"PCA {size}", "kind": "pca", "latent_size": size, "compression_factor": D / size,
            "rmse": dict(zip(channels, rmse.tolist())), "rmse_mean": float(rmse.mean()),
            **spectrum_errors(k, power, true_spectrum), "decoder_gflop_per_frame": 2 * size * D / 1e9}


def figure(rows: list[dict], pca: list[dict], k: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    pca = sorted(pca, key=lambda r: r["compression_factor"])
    left.plot([r["compression_factor"] for r in pca], [r["rmse_mean"] for r in pca], "k--o", ms=3, label="PCA (same latent size)")
    gflop = [r["decoder_gflop_per_frame"] for r in rows]
    # points of equal compression are spread sideways (by up to ±15 %) so that none hides another
    shift = {}
    for r in sorted(rows, key=lambda r: r["decoder_gflop_per_frame"]):
        shift.setdefault(round(r["compression_factor"]), []).append(r["name"])
    x = []
    for r in rows:
        same = shift[round(r["compression_factor"])]
        x.append(r["compression_factor"] * 2 ** (0.2 * (same.index(r["name"]) - (len(same) - 1) / 2) / max(len(same) - 1, 1)))
    shown = left.scatter(x, [r["rmse_mean"] for r in rows], c=gflop,
                         s=[60 + 40 * math.log2(max(r["parameters"], 1) / 1e5) for r in rows],
                         cmap="viridis", norm=LogNorm(min(gflop) / 1.5, max(gflop) * 1.5), edgecolors="k", zorder=3)
    for xi, r in zip(x, rows):
        same = shift[round(r["compression_factor"])]
        j = same.index(r["name"])
        left.annotate(r["name"], (xi, r["rmse_mean"]), textcoords="offset points", fontsize=7,
                      xytext=(-12, -14 - 11 * j) if len(same) > 2 else (0, 10), ha="right" if len(same) > 2 else "center",
                      arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"} if len(same) > 2 else None)
    left.axhline(0.1, color="tab:red", lw=0.8, ls=":", label="target RMSE 0.1")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    ticks = sorted({2 ** round(math.log2(r["compression_factor"])) for r in rows + pca})
    left.set_xticks(ticks, [str(t) for t in ticks])
    left.set_xlabel("compression factor C·H·W / (c·h·w)")
    left.set_ylabel("test reconstruction RMSE (standardised, mean of u, v)")
    left.set_title("fidelity vs compression (colour: decoder GFLOP/frame; size: parameters)")
    fig.colorbar(shown, ax=left, label="decoder GFLOP per frame")
    left.legend(loc="lower right", fontsize=8)
    # one line per autoencoder: 10 colours, then the same colours dashed, dash-dotted, dotted, so that no two
    # of up to 40 runs look alike (the default cycle repeats its 10 colours)
    styles = ["-", "--", "-.", ":"]
    for i, r in enumerate(rows):
        right.plot(k, r["spectrum_ratio"], color=f"C{i % 10}", ls=styles[i // 10 % len(styles)],
                   label=f"{r['name']} (×{r['compression_factor']:.0f})")
    for r in pca:
        if round(r["compression_factor"]) == 32:
            right.plot(k, r["spectrum_ratio"], "k--", label="PCA ×32")
    right.axhline(1.0, color="grey", lw=0.8)
    right.set_yscale("log")
    right.set_xlabel("wavenumber k")
    right.set_ylabel("P_reconstructed(k) / P_true(k)")
    right.set_title("kinetic-energy spectrum ratio, test split")
    right.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="dataset (zarr or netCDF) the autoencoders were trained on")
    parser.add_argument("--autoencoders", required=True, nargs="+", type=Path,
                        help="autoencoder folders; the first one's statistics standardise the frames of the PCA")
    parser.add_argument("--reference", type=Path, default=Path("pretrained/kolmogorov"),
                        help="pipeline folder whose prior architecture is used for the MMPS step cost")
    parser.add_argument("--splits", type=float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VALID", "TEST"),
                        help="fractions of the train, validation and test splits (as in training)")
    parser.add_argument("--test-frames", type=int, default=None, help="evenly spaced test frames (default: all)")
    parser.add_argument("--pca-sizes", type=int, nargs="*", default=[64, 128, 256, 512, 1024, 2048, 4096],
                        help="PCA latent sizes (numbers of components) scored besides the autoencoders' latent sizes")
    parser.add_argument("--pca-every", type=int, default=1, help="use every n-th training frame for the PCA")
    parser.add_argument("--pca-cache", type=Path, help="read the PCA basis from this .npz if it exists, else write it there "
                        "(it depends on the data, the splits, --pca-every and the first folder's statistics only)")
    parser.add_argument("--reuse", type=Path, help="JSON of an earlier run: take the rows of folders it measured from it")
    parser.add_argument("--iterations", type=int, default=1, help="MMPS solver iterations")
    parser.add_argument("--repeats", type=int, default=3, help="wall-time repeats (0: FLOPs only)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every measurement")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--figure", type=Path, help="also draw the frontier and spectrum ratios to this PNG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    rate = matmul_rate()
    print(f"float32 2048² matmul on {args.threads} thread(s): {rate / 1e9:.1f} GFLOP/s")
    _, layout, statistics = load_autoencoder(args.autoencoders[0])
    dataset = open_dataset(args.data)
    splits = split_segments(dataset, tuple(args.splits))
    test = read_frames(dataset, layout, statistics, splits["test"])
    if args.test_frames is not None and args.test_frames < len(test):
        test = test[np.linspace(0, len(test) - 1, args.test_frames).round().astype(int)]
    weights = torch.from_numpy(layout.area_weights())
    periodic = layout.periodic
    k, true_spectrum = kinetic_spectrum(statistics.destandardise(test.astype(np.float64)), periodic)
    print(f"test split: {len(splits['test'])} trajectories, {len(test)} frames")

    rows = []
    reused = {r["folder"]: r for r in json.loads(args.reuse.read_text())["autoencoders"]} if args.reuse else {}
    for folder in args.autoencoders:
        if str(folder) in reused:  # measured by an earlier run of this script (same data and options)
            rows.append(reused[str(folder)])
            print(f"  {rows[-1]['name']}: reused from {args.reuse}")
            continue
        _, _, own = load_autoencoder(folder)
        if not (np.allclose(own.mean, statistics.mean) and np.allclose(own.std, statistics.std)):
            print(f"note: {folder} has other statistics than {args.autoencoders[0]} (scored with its own)")
        row = evaluate_autoencoder(folder, read_frames(dataset, layout, own, splits["test"]) if own is not statistics else test,
                                   weights, true_spectrum, periodic, args.reference, args.iterations, args.repeats)
        rows.append(row)
        print(f"  {row['name']}: ×{row['compression_factor']:.0f}, RMSE {row['rmse_mean']:.4f}, "
              f"decoder {row['decoder_gflop_per_frame']:.3f} GFLOP ({time.perf_counter() - started:.0f} s)")

    t0 = time.perf_counter()
    train_frames = sum(len(range(s.start, s.stop, args.pca_every)) for s in splits["train"])
    if args.pca_cache is not None and args.pca_cache.is_file():
        cached = np.load(args.pca_cache)
        mean, values, components = cached["mean"], cached["values"], cached["components"].astype(np.float64)
        print(f"PCA basis read from {args.pca_cache}")
    else:
        train = read_frames(dataset, layout, statistics, splits["train"], args.pca_every)
        mean, values, components = pca_basis(train)
        del train
        print(f"PCA on {train_frames} training frames of {test[0].size} numbers: {time.perf_counter() - t0:.0f} s")
        if args.pca_cache is not None:
            args.pca_cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(args.pca_cache, mean=mean, values=values, components=components.astype(np.float32))
    sizes = sorted({s for s in args.pca_sizes + [r["latent_size"] for r in rows] if s <= components.shape[1]})
    pca = [evaluate_pca(s, mean, components, test, weights, true_spectrum, periodic, statistics, layout.channels) for s in sizes]
    explained = np.cumsum(values) / values.sum()
    for r in pca:
        r["explained_variance"] = float(explained[r["latent_size"] - 1])
    by_size = {r["latent_size"]: r for r in pca}
    for row in rows:
        same = by_size.get(row["latent_size"], {})  # absent only when the PCA has fewer components (few frames)
        row["pca_rmse_mean"] = same.get("rmse_mean", float("nan"))
        row["pca_spectrum_error"] = same.get("spectrum_error", float("nan"))

    channels = layout.channels
    header = ("| point | latents | ×comp | params | " + " | ".join(f"RMSE {c}" for c in channels)
              + " | RMSE PCA same size | spectrum err (all / high k) | decoder GFLOP/frame | MMPS n="
              f"{args.iterations} GFLOP/state | MMPS / unguided (FLOPs) | decoder share | MMPS ms/state |")
    print("\n" + header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in sorted(rows, key=lambda r: (r["compression_factor"], r["decoder_gflop_per_frame"])):
        m = r["mmps"]
        print(f"| {r['name']} | {'×'.join(map(str, r['latent_shape']))} | {r['compression_factor']:.0f} | "
              f"{r['parameters'] / 1e6:.2f} M | " + " | ".join(f"{r['rmse'][c]:.4f}" for c in channels)
              + f" | {r['pca_rmse_mean']:.4f} | {r['spectrum_error']:.3f} / {r['spectrum_error_high_k']:.3f} | "
              f"{r['decoder_gflop_per_frame']:.3f} | {m['mmps_gflop_per_state']:.2f} | {m['mmps_over_unguided_flops']:.2f}× | "
              f"{m['decoder_share_of_mmps']:.0%} | {m.get('mmps_ms_per_state', float('nan')):.0f} |")
    print("\n| PCA k | ×comp | " + " | ".join(f"RMSE {c}" for c in channels) + " | spectrum err (all / high k) | explained variance | decoder GFLOP/frame |")
    print("|---|---|" + "---|" * len(channels) + "---|---|---|")
    for r in pca:
        print(f"| {r['latent_size']} | {r['compression_factor']:.0f} | " + " | ".join(f"{r['rmse'][c]:.4f}" for c in channels)
              + f" | {r['spectrum_error']:.3f} / {r['spectrum_error_high_k']:.3f} | {r['explained_variance']:.4f} | "
              f"{r['decoder_gflop_per_frame']:.4f} |")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {"data": str(args.data), "test_frames": len(test), "train_frames_pca": train_frames,
                  "matmul_gflops_per_second": rate / 1e9, "threads": args.threads, "wavenumbers": k.tolist(),
                  "autoencoders": rows, "pca": pca}
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    if args.figure:
        figure(rows, pca, k, args.figure)


if __name__ == "__main__":
    main()

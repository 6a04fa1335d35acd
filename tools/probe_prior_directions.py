r"""The learned prior along the data's widest directions, against a Gaussian of the data's window covariance.

    python tools/probe_prior_directions.py --pipeline runs/ldm-gaussian/pipeline --latents data/gaussian-latents.zarr

Standardised latents are unit-variance per element, not along every direction: a window of K correlated states has
coherent directions (a field's mean over the window, the slowest large scales) of variance λ far above 1. This tool
asks whether the prior is right along them. From the training split's windows of K states (every start, at most
``--max-windows``), the leading principal directions e of their covariance Σ (``torch.pca_lowrank``, variance λ);
then, on held-out windows x (the test split, or validation when there is none; stride K) at each noise level σ:

- **Jacobian**: eᵀJe, J = ∂D(x + σε, σ)/∂x_t of the learned denoiser (one JVP), against the Gaussian value
  λ/(λ + σ²) — what MMPS's covariance σ²J holds along e;
- **error**: mean (eᵀ(D(x + σε, σ) − x))² against the Gaussian optimum λσ²/(λ + σ²), and the error per element
  against Σ_i λ_i σ²/(λ_i + σ²) / dim over all of Σ's eigenvalues (computed up to 2²⁶ window values, else n/a);
- **samples** (``--members`` > 0): the variance along e of unconditional windows drawn with the pipeline's sampler
  (``--steps`` / ``--sigma-start`` override it) over λ — a start at σ₀² below λ draws the first x too narrow along e
  (:mod:`latentda.diffusion.sampling`).

A Gaussian of the windows' covariance is the reference, exact only for Gaussian latents (the exactness benchmark's
system is Gaussian in pixels and nearly so in latents: docs/exactness.md, "What the excess is not"). Priors in
increment coordinates or conditioned on the calendar are refused (their denoiser needs other inputs).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from latentda.cli import ScriptHelpFormatter
from latentda.data import split_segments
from latentda.data.windows import LatentSource, WindowDataset
from latentda.pipeline import LatentDAPipeline
from latentda.posterior.reanalysis import PosteriorSettings, member_generator, sample_members


SPECTRUM_VALUES = 1 << 26  # windows × values up to which every eigenvalue is computed (an exact SVD of that matrix)


def principal_directions(windows: torch.Tensor, count: int, seed: int = 0
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(λ (count,), e (count, D) orthonormal rows, every eigenvalue of the sample covariance the data span — None
    beyond :data:`SPECTRUM_VALUES`) of windows (N, D) in float64: the leading principal directions by a randomised
    SVD of the centred windows."""
    torch.manual_seed(seed)
    centred = windows - windows.mean(0)
    _, singular, vectors = torch.pca_lowrank(centred, q=min(count + 10, *centred.shape), center=False, niter=6)
    scale = 1.0 / (len(windows) - 1)
    spectrum = torch.linalg.svdvals(centred) ** 2 * scale if centred.numel() <= SPECTRUM_VALUES else None
    return singular[:count] ** 2 * scale, vectors[:, :count].T.contiguous(), spectrum


def directional_scores(denoise, held: torch.Tensor, directions: torch.Tensor, sigma: float, seed: int = 0) -> dict:
    """Along each direction e (rows of ``directions``, flattened like ``held``'s windows): the learned Jacobian eᵀJe
    and the denoising error (eᵀ(D − x))², both averaged over the held-out windows, and the error per element."""
    generator = torch.Generator().manual_seed(seed)
    x_t = held + sigma * torch.randn(held.shape, generator=generator, dtype=held.dtype)
    level = torch.full((len(held),), sigma, dtype=held.dtype)
    with torch.no_grad():
        denoised = denoise(x_t, level)
    error = (denoised - held).flatten(1)
    jacobian = []
    for e in directions:
        tangent = e.reshape(1, *held.shape[1:]).expand_as(held).contiguous()
        _, jv = torch.func.jvp(lambda y: denoise(y, level), (x_t,), (tangent,))
        jacobian.append(float((jv.detach().flatten(1) @ e).mean()))
    return {"jacobian": np.array(jacobian), "error": ((error @ directions.T) ** 2).mean(0).numpy(),
            "error_per_element": float((error**2).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="a pipeline folder (or Hub repo id)")
    parser.add_argument("--latents", required=True, help="the latents zarr it was trained on (train-ldm's input)")
    parser.add_argument("--directions", type=int, default=6, help="leading principal directions probed (default 6)")
    parser.add_argument("--max-windows", type=int, default=20000, help="training windows read for the covariance")
    parser.add_argument("--held-out", type=int, default=128, help="held-out windows the denoiser is probed on")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[20.0, 5.0, 1.0, 0.3], help="noise levels probed")
    parser.add_argument("--members", type=int, default=128, help="unconditional windows drawn (0: none)")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the pipeline's)")
    parser.add_argument("--sigma-start", type=float, help="level sampling starts from (default: the pipeline's)")
    args = parser.parse_args()

    pipeline = LatentDAPipeline.from_pretrained(args.pipeline)
    pipeline.set_progress_bar_config(disable=True)
    if pipeline.increments is not None or pipeline.calendar:
        parser.error(f"{args.pipeline}: a prior in increment coordinates or conditioned on the calendar: not probed here")
    source = LatentSource(args.latents)
    splits = split_segments(source.dataset)
    K = pipeline.window
    train = WindowDataset(source, splits["train"], window=K)
    picks = np.linspace(0, len(train) - 1, num=min(args.max_windows, len(train))).round().astype(int)
    windows = torch.stack([pipeline.standardise_latents(train[int(i)]) for i in np.unique(picks)]).double()
    variances, directions, spectrum = principal_directions(windows.flatten(1), args.directions)
    held_split = splits["test"] or splits["valid"]
    held_windows = WindowDataset(source, held_split, window=K, stride=K)
    picks = np.unique(np.linspace(0, len(held_windows) - 1, num=min(args.held_out, len(held_windows))).round().astype(int))
    held = torch.stack([pipeline.standardise_latents(held_windows[int(i)]) for i in picks]).float()
    directions32 = directions.float()
    print(f"{len(windows)} training windows of K = {K} ({windows[0].numel()} values each), {len(held)} held-out; "
          f"the covariance's total variance {float(windows.flatten(1).var(0).sum()):.1f}, leading λ "
          + ", ".join(f"{float(v):.3g}" for v in variances))
    lam = variances.numpy()
    print("\n| σ | learned / Gaussian Jacobian eᵀJe along e_1 … | learned / optimal error along e_1 … | error per element |\n|---|---|---|---|")
    for sigma in args.sigmas:
        scores = directional_scores(pipeline.denoiser, held, directions32, sigma)
        gaussian_j = lam / (lam + sigma**2)
        gaussian_e = lam * sigma**2 / (lam + sigma**2)
        optimal = ("n/a (too many values for every eigenvalue)" if spectrum is None
                   else f"{float((spectrum * sigma**2 / (spectrum + sigma**2)).sum()) / windows[0].numel():.4f}")
        print(f"| {sigma:g} | " + ", ".join(f"{a:.3f} / {b:.3f}" for a, b in zip(scores["jacobian"], gaussian_j))
              + " | " + ", ".join(f"{a:.3g} / {b:.3g}" for a, b in zip(scores["error"], gaussian_e))
              + f" | {scores['error_per_element']:.4f} / {optimal} |")
    if args.members:
        settings = PosteriorSettings(steps=args.steps, sigma_start=args.sigma_start)
        generators = [member_generator(0, m) for m in range(args.members)]
        with torch.no_grad():
            drawn = sample_members(pipeline, settings.prior_denoiser(pipeline, window_only=True), K, generators, settings)
        along = drawn.double().flatten(1) @ directions.T
        print(f"\nunconditional windows ({args.members}, {settings.sampling(pipeline)}): variance along e_1 … over λ "
              + ", ".join(f"{r:.2f}" for r in (along.var(0).numpy() / lam))
              + f"; per element {float(drawn.double().flatten(1).var(0).mean()):.3f} (the data's: "
              f"{float(windows.flatten(1).var(0).mean()):.3f})")


if __name__ == "__main__":
    main()

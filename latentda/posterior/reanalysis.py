"""Reanalysis: posterior trajectories p(x_{1:L} | y_{1:L}) through the decoder.

The observation operator acts on physical fields, so in latent space it is

    A(z̃_{1:L}) = H(μ_x + s_x · D(μ_z + s_z · z̃_t)  for t = 1..L),

the pixel-space operator H composed with the decoder D and both destandardisations. The guided
denoiser (MMPS or DPS, :mod:`latentda.posterior.guidance`) wraps the trajectory denoiser stitched
from blankets, so the cost of a guided step grows linearly with L. Each member is an independent
sampler run from its own seed (seed, member), so members can be computed in any order, on any
process, and an interrupted run resumes member by member with identical results. With
``split_blankets`` several processes run the same member in lockstep instead, each evaluating its
share of the blanket windows (:mod:`latentda.diffusion.distributed`), for long trajectories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import numpy as np
import torch
from torch import Tensor

from latentda.config import check_types, require
from latentda.observe.operators import ObservationOperator
from latentda.nn.linearization import NetworkLinearization
from latentda.nn.precision import PRECISIONS, Autocast, autocast, resolve_precision
from latentda.posterior.guidance import DPSDenoiser, Linearization, MMPSDenoiser
from latentda.posterior.prior import (InflatedDenoiser, PriorModel, check_window_length, resolve_sampling, window_latents,
                                     window_operator)
from latentda.diffusion.sampling import sample
from latentda.diffusion.settings import SAMPLER_FIELDS, SamplerSettings
from latentda.posterior.solvers import SOLVERS

__all__ = ["PosteriorSettings", "LatentOperator", "guided_denoiser", "posterior_members", "member_generator",
           "sample_members", "default_batch_members"]


@dataclass
class PosteriorSettings:
    """How to sample the posterior (defaults: MMPS with 3 CG iterations, the pipeline's sampler).

    ``sampler``, ``steps``, ``corrections``, ``tau``, ``sigma_start``, ``churn`` and ``overlap`` are
    the fields of :class:`latentda.diffusion.settings.SamplerSettings`; None takes the pipeline's
    (``pipeline_config.json``), and :meth:`sampling` resolves them against a prior.

    ``iterations``: the MMPS solve's fixed count. With a learned denoiser a small count regularises the solve
    rather than approximating a better answer: on QG, 8 CG iterations blew the members up and 8 GMRES iterations
    were 12 % worse than 3 CG, the best measured with 4 (docs/qg-benchmark.md, "Solver iterations: a regularisation")."""

    guidance: Literal["mmps", "dps"] = "mmps"
    iterations: int = 3
    solver: str = "cg"
    sampler: str | None = None
    steps: int | None = None
    corrections: int | None = None
    tau: float | None = None
    sigma_start: float | None = None
    churn: float | None = None
    overlap: int | None = None
    dps_scale: float = 1.0
    decode_chunk: int | None = None
    batch_members: int | None = None  # members sampled together (default: default_batch_members(device))
    precision: str | None = None  # dtype of the networks' passes (latentda.nn.precision; None: auto per device)
    split_blankets: bool = False  # share each trajectory's blanket windows over torch.distributed processes
    representation_error: bool = True  # add the autoencoder's reconstruction error to the observation noise
    prior_inflation: float | None = None  # τ: the prior's denoiser at σ/τ, its spread widened by τ (InflatedDenoiser; None: 1)

    def validate(self, prior: PriorModel | None = None) -> None:
        """Check every field; with ``prior``, the sampler settings as resolved against it (its σ range
        and window), so that a bad value fails before any work, not inside the sampler."""
        # e.g. iterations "3" or representation_error "no": an error here, not a surprise later (the sampler's
        # fields by SamplerSettings' own rules, below)
        check_types(self, skip=SAMPLER_FIELDS)
        require(self.guidance in ("mmps", "dps"), "guidance", "must be mmps or dps")
        require(self.dps_scale >= 0, "dps_scale", f"must be non-negative, got {self.dps_scale!r}")
        require(self.iterations >= 1, "iterations", "must be at least 1")
        require(self.solver in SOLVERS, "solver", f"must be one of {', '.join(SOLVERS)}")
        require(self.decode_chunk is None or self.decode_chunk >= 1, "decode_chunk", "must be at least 1")
        require(self.batch_members is None or self.batch_members >= 1, "batch_members", "must be at least 1")
        require(self.precision is None or self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")
        require(self.prior_inflation is None or (isinstance(self.prior_inflation, (int, float))
                                                 and not isinstance(self.prior_inflation, bool)
                                                 and math.isfinite(self.prior_inflation) and self.prior_inflation > 0),
                "prior_inflation", f"must be a positive number (or null: 1), got {self.prior_inflation!r}")
        if prior is None:  # the overrides given, by the same rules (the library defaults they replace are valid)
            overrides = self.sampler_overrides()
            SamplerSettings().with_overrides(**overrides).check_applies(overrides)
        else:
            self.sampling(prior)

    def sampler_overrides(self) -> dict:
        """The :class:`SamplerSettings` fields of these settings (None: the prior's)."""
        return {name: getattr(self, name) for name in SAMPLER_FIELDS}

    def sampling(self, prior: PriorModel) -> SamplerSettings:
        """The prior's sampler settings (``pipeline_config.json``) with these settings' overrides,
        checked against the prior (:func:`latentda.posterior.prior.resolve_sampling`)."""
        return resolve_sampling(prior, **self.sampler_overrides())

    def batch_size(self, device, through_decoder: bool = True) -> int:
        return self.batch_members or default_batch_members(device, through_decoder)

    def compute_dtype(self, device) -> torch.dtype:
        return resolve_precision(self.precision, device)

    def prior_denoiser(self, prior: PriorModel, times=None, window_only: bool = False,
                       known: Tensor | None = None) -> Callable[[Tensor, Tensor], Tensor]:
        """The prior's denoiser as these settings sample it: the trajectory denoiser (blankets
        ``overlap`` apart; with ``window_only`` one window of K states; with ``known`` (B, n, …) the
        window given its first n states, ``prior.history_denoiser``) under the compute dtype,
        inflated by ``prior_inflation`` when given (:class:`InflatedDenoiser`)."""
        if known is not None:
            blankets = prior.history_denoiser(known, times=times)
        elif window_only:
            blankets = prior.trajectory_denoiser(times=times)
        else:
            blankets = prior.trajectory_denoiser(self.sampling(prior).overlap, times=times, split_blankets=self.split_blankets)
        denoise = Autocast(blankets, prior.device, self.compute_dtype(prior.device))
        if self.prior_inflation is None or self.prior_inflation == 1:
            return denoise
        return InflatedDenoiser(denoise, self.prior_inflation)


def default_batch_members(device, through_decoder: bool = True) -> int:
    """Members sampled in one batch by default: 8 on a GPU (throughput). On a CPU 1 when every
    step goes through the decoder (reanalyses: larger batches were slower per member,
    ``tools/bench_batch.py``: ×0.99 at 2, ×0.55 at 4 on 2 cores, the decoder's activations
    outgrowing the caches) and 8 when only the latent denoiser runs (forecasts from an initial
    state: 4 members in one batch ×1.7 faster than one at a time)."""
    return 8 if torch.device(device).type == "cuda" or not through_decoder else 1


class LatentOperator:
    """A(z̃): standardised latent trajectories (B, L, c, h, w) → observed values (B, M).

    A = H ∘ G with the frame-wise physical decoder G(z̃) = f⁻¹(μ_x + s_x ⊙ D(μ_z + s_z ⊙ z̃)) (f⁻¹ the
    inverse transform of bounded variables, the identity otherwise, :mod:`latentda.data.bounds`) and
    the pixel-space operator H. Linearised at ẑ (:meth:`linearize`):

        A v = J_H (f⁻¹′ ⊙ s_x ⊙ J_D (s_z ⊙ v)),   Aᵀ u = J_Gᵀ (J_Hᵀ u),

    J_D v by one tangent pass through the decoder (:class:`latentda.nn.linearization.NetworkLinearization`,
    about one decoder forward per product), J_Gᵀ· by a backward through the graph of the one decoder
    forward at ẑ, and J_H / J_Hᵀ by :class:`latentda.posterior.guidance.Linearization` (H is cheap).
    With ``chunk``, memory-lean: no decoder graph is held for more than ``chunk`` frames at once,
    and every product recomputes the decoder chunk by chunk (one more decoder forward per product).
    Without it, the graphs of all frames are held, each built for at most :data:`CPU_PIXELS_PER_PASS`
    output pixels' worth of frames at a time on a CPU (a decoder pass whose activations outgrow the
    caches is slower per frame: one guided step of 64 states of 73 × 144 took 2.99 s in one pass,
    1.63 s in passes of 24 frames, linear in the length again: docs/benchmarks.md), all frames at
    once on a GPU.
    """

    def __init__(self, prior: PriorModel, operator: ObservationOperator, chunk: int | None = None,
                 compute_dtype: torch.dtype = torch.float32) -> None:
        if chunk is not None and chunk < 1:
            raise ValueError(f"decoder chunk must be at least 1, got {chunk}")
        self.autoencoder = prior.autoencoder
        self.latent_statistics, self.statistics = prior.latent_statistics, prior.statistics
        self.operator = operator
        self.chunk = chunk
        self.device, self.compute_dtype = prior.device, compute_dtype  # the decoder's passes run in compute_dtype

    def decode(self, frames: Tensor) -> Tensor:
        """Standardised latent frames (N, c, h, w) → physical fields (N, C, H, W), differentiable."""
        with autocast(self.device, self.compute_dtype):
            fields = self.autoencoder.decode(self.latent_statistics.destandardise(frames))
        return self.statistics.destandardise(fields.to(frames.dtype))

    def decoder_linearization(self, frames: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """(G(frames), v ↦ J_G v); G(frames) carries its graph when ``frames`` requires grad."""
        latents = self.latent_statistics.destandardise(frames)
        with autocast(self.device, self.compute_dtype):
            decoder = NetworkLinearization(self.autoencoder, self.autoencoder.decode, latents, key="decode")
        fields = self.statistics.destandardise(decoder.value.to(frames.dtype))

        anchor = decoder.value.detach()

        def tangent(v: Tensor) -> Tensor:
            with autocast(self.device, self.compute_dtype):
                out = decoder.tangent(self.latent_statistics.scale(v))
            return self.statistics.tangent(anchor.to(v.dtype), out.to(v.dtype))

        return fields, tangent

    def _chunks(self, count: int) -> list[slice]:
        size = self.chunk or count
        return [slice(i, i + size) for i in range(0, count, size)]

    def __call__(self, z: Tensor) -> Tensor:
        frames = z.reshape(-1, *z.shape[2:])
        x = torch.cat([self.decode(frames[part]) for part in self._chunks(len(frames))])
        return self.operator(x.reshape(*z.shape[:2], *x.shape[1:]))

    def linearize(self, anchor: Tensor):
        return _DecodedLinearization(self, anchor.detach()) if self.chunk is None else _ChunkedLinearization(self, anchor.detach())


CPU_PIXELS_PER_PASS = 1 << 18  # output pixels per decoder pass of a linearisation on a CPU (LatentOperator): 64 frames of 64²


class _DecodedLinearization:
    """A at ẑ with the decoder's graph and tangent records of all frames held (see LatentOperator), in
    blocks of frames each linearised by its own decoder pass."""

    def __init__(self, parent: LatentOperator, anchor: Tensor) -> None:
        self.shape = anchor.shape
        flat = anchor.reshape(-1, *anchor.shape[2:])
        size = len(flat)
        if torch.device(parent.device).type == "cpu":
            size = max(1, CPU_PIXELS_PER_PASS // int(np.prod(parent.autoencoder.config.sample_size)))
        self.frames, fields, self.tangents = [], [], []
        with torch.enable_grad():
            for start in range(0, len(flat), size):
                frames = flat[start : start + size].clone().requires_grad_(True)
                value, tangent = parent.decoder_linearization(frames)
                self.frames.append(frames), fields.append(value), self.tangents.append(tangent)
        self.fields, self.sizes = fields, [len(frames) for frames in self.frames]
        values = torch.cat([value.detach() for value in fields])
        self.pixels = Linearization(parent.operator, values.reshape(*self.shape[:2], *values.shape[1:]))
        self.value = self.pixels.value

    def forward(self, v: Tensor) -> Tensor:
        parts = v.reshape(-1, *self.shape[2:]).split(self.sizes)
        x = torch.cat([tangent(part) for tangent, part in zip(self.tangents, parts)])
        return self.pixels.forward(x.reshape(*self.shape[:2], *x.shape[1:]))

    def transpose(self, u: Tensor) -> Tensor:
        g = self.pixels.transpose(u).reshape(-1, *self.fields[0].shape[1:]).split(self.sizes)
        parts = [torch.autograd.grad(fields, frames, block.to(fields.dtype), retain_graph=True)[0]
                 for frames, fields, block in zip(self.frames, self.fields, g)]
        return torch.cat(parts).reshape(self.shape)


class _ChunkedLinearization:
    """A at ẑ holding only the fields G(ẑ); each product recomputes the decoder chunk by chunk."""

    def __init__(self, parent: LatentOperator, anchor: Tensor) -> None:
        self.parent, self.shape = parent, anchor.shape
        self.frames = anchor.reshape(-1, *anchor.shape[2:])
        with torch.no_grad():
            fields = torch.cat([parent.decode(self.frames[part]) for part in parent._chunks(len(self.frames))])
        self.pixels = Linearization(parent.operator, fields.reshape(*self.shape[:2], *fields.shape[1:]))
        self.value = self.pixels.value

    def forward(self, v: Tensor) -> Tensor:
        flat = v.reshape(self.frames.shape)
        out = []
        for part in self.parent._chunks(len(self.frames)):
            with torch.no_grad():
                _, tangent = self.parent.decoder_linearization(self.frames[part])
                out.append(tangent(flat[part]))
        x = torch.cat(out)
        return self.pixels.forward(x.reshape(*self.shape[:2], *x.shape[1:]))

    def transpose(self, u: Tensor) -> Tensor:
        g = self.pixels.transpose(u)
        g = g.reshape(len(self.frames), *g.shape[2:])
        out = []
        for part in self.parent._chunks(len(self.frames)):
            with torch.enable_grad():
                z = self.frames[part].clone().requires_grad_(True)
                out.append(torch.autograd.grad(self.parent.decode(z), z, g[part].to(z.dtype))[0])
        return torch.cat(out).reshape(self.shape)


def guided_denoiser(prior: PriorModel, operator: ObservationOperator, settings: PosteriorSettings):
    """The posterior denoiser E[z̃_{1:L} | z̃_t, y] for the trajectory prior."""
    y, noise_std = operator.observed()
    dtype = settings.compute_dtype(prior.device)
    A = window_operator(prior, LatentOperator(prior, operator, settings.decode_chunk, dtype))
    denoise = settings.prior_denoiser(prior, operator.times)
    if settings.guidance == "dps":
        return DPSDenoiser(denoise, A, y, noise_std, scale=settings.dps_scale)
    return MMPSDenoiser(denoise, A, y, noise_std, iterations=settings.iterations, solver=settings.solver)


def member_generator(seed: int, member: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(member))


def batches(members: list[int], size: int) -> list[list[int]]:
    """``members`` in consecutive batches of at most ``size``."""
    return [list(members[i : i + size]) for i in range(0, len(members), size)]


def sample_members(prior: PriorModel, denoise, length: int, generators: list[torch.Generator], settings: PosteriorSettings,
                   progress: bool = False, description: str = "members") -> Tensor:
    """Standardised latent trajectories (len(generators), length, c, h, w) sampled together, row b
    drawing all its noise from ``generators[b]``: each row is what it would be if sampled alone
    (a prior in increment coordinates samples u and returns its latents z̃)."""
    check_window_length(prior, length)
    drawn = sample(denoise, (len(generators), length, *prior.latent_shape), prior.scheduler, generator=generators,
                   device=prior.device, dtype=prior.dtype, progress=progress, description=description,
                   **settings.sampling(prior).sample_kwargs())
    return window_latents(prior, drawn)


def posterior_members(prior: PriorModel, operator: ObservationOperator, members: list[int], settings: PosteriorSettings,
                      seed: int = 0) -> Iterator[tuple[int, np.ndarray, float]]:
    """Yield (member, fields (L, C, H, W) in physical units, residual ratio) as each member finishes
    (members sampled ``settings.batch_size(device)`` at a time)."""
    denoise = guided_denoiser(prior, operator, settings)
    for batch in batches(members, settings.batch_size(prior.device)):
        generators = [member_generator(seed, member) for member in batch]
        description = f"member {batch[0]}" if len(batch) == 1 else f"members {batch[0]}–{batch[-1]}"
        z = sample_members(prior, denoise, operator.length, generators, settings, prior.progress, description)
        fields = prior.decode(z)
        ratios = operator.residual_ratio(torch.from_numpy(fields).double())
        for member, values, ratio in zip(batch, fields, ratios):
            yield member, values, float(ratio)

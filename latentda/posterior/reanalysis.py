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

from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import numpy as np
import torch
from torch import Tensor

from latentda.config import require
from latentda.errors import LatentdaError
from latentda.observe.operators import ObservationOperator
from latentda.posterior.guidance import DPSDenoiser, MMPSDenoiser
from latentda.posterior.solvers import SOLVERS

__all__ = ["PosteriorSettings", "latent_operator", "guided_denoiser", "posterior_members", "member_generator"]


@dataclass
class PosteriorSettings:
    """How to sample the posterior (defaults: MMPS with 3 CG iterations, the pipeline's sampler)."""

    guidance: Literal["mmps", "dps"] = "mmps"
    iterations: int = 3
    solver: str = "cg"
    sampler: str | None = None
    steps: int | None = None
    dps_scale: float = 1.0
    decode_chunk: int | None = None
    split_blankets: bool = False  # share each trajectory's blanket windows over torch.distributed processes

    def validate(self, prefix: str = "") -> None:
        require(self.guidance in ("mmps", "dps"), "guidance", "must be mmps or dps")
        require(self.iterations >= 1, "iterations", "must be at least 1")
        require(self.solver in SOLVERS, "solver", f"must be one of {', '.join(SOLVERS)}")
        require(self.decode_chunk is None or self.decode_chunk >= 1, "decode_chunk", "must be at least 1")


def _physical_decoder(pipeline) -> Callable[[Tensor], Tensor]:
    """Frames of standardised latents (N, c, h, w) → physical fields (N, C, H, W), differentiable."""

    def decode(z: Tensor) -> Tensor:
        return pipeline.statistics.destandardise(pipeline.decode_standardised(z))

    return decode


def latent_operator(pipeline, operator: ObservationOperator, chunk: int | None = None):
    """A(z̃): standardised latent trajectories (B, L, c, h, w) → observed values (B, M).

    With ``chunk``, a :class:`ChunkedLatentOperator` (memory-lean: the decoder's graph is never held
    for more than ``chunk`` frames at once)."""
    if chunk is not None:
        return ChunkedLatentOperator(pipeline, operator, chunk)
    decode = _physical_decoder(pipeline)

    def apply(z: Tensor) -> Tensor:
        batch, length = z.shape[:2]
        x = decode(z.reshape(batch * length, *z.shape[2:]))
        return operator(x.reshape(batch, length, *x.shape[1:]))

    return apply


class ChunkedLatentOperator:
    """A = H ∘ G with the frame-wise decoder G applied ``chunk`` frames at a time.

    Linearised at ẑ it keeps only the fields G(ẑ) (B, L, C, H, W) and the (cheap) graph of the pixel
    operator H; every product recomputes the decoder chunk by chunk —
    A v = J_H (J_G v) and Aᵀ u = J_Gᵀ (J_Hᵀ u), J_G·/J_Gᵀ· by a backward (and its transpose) through
    one chunk's decoder graph — so peak memory grows with the fields, not with every frame's
    decoder activations, at the price of one decoder forward per chunk and product.
    """

    def __init__(self, pipeline, operator: ObservationOperator, chunk: int) -> None:
        if chunk < 1:
            raise LatentdaError(f"decoder chunk must be at least 1, got {chunk}")
        self.decode = _physical_decoder(pipeline)
        self.operator = operator
        self.chunk = chunk

    def _frames(self, z: Tensor) -> Tensor:
        return z.reshape(-1, *z.shape[2:])

    def fields(self, z: Tensor) -> Tensor:
        frames = self._frames(z)
        with torch.no_grad():
            x = torch.cat([self.decode(frames[i : i + self.chunk]) for i in range(0, len(frames), self.chunk)])
        return x.reshape(*z.shape[:2], *x.shape[1:])

    def __call__(self, z: Tensor) -> Tensor:
        frames = self._frames(z)
        x = torch.cat([self.decode(frames[i : i + self.chunk]) for i in range(0, len(frames), self.chunk)])
        return self.operator(x.reshape(*z.shape[:2], *x.shape[1:]))

    def linearize(self, anchor: Tensor) -> "_ChunkedLinearization":
        return _ChunkedLinearization(self, anchor.detach())


class _ChunkedLinearization:
    def __init__(self, parent: ChunkedLatentOperator, anchor: Tensor) -> None:
        from latentda.posterior.guidance import Linearization

        self.parent, self.anchor = parent, anchor
        self.pixels = Linearization(parent.operator, parent.fields(anchor))
        self.value = self.pixels.value

    def _decoder_products(self, vectors: Tensor, transpose: bool) -> Tensor:
        frames = self.parent._frames(self.anchor)
        flat = vectors.reshape(-1, *vectors.shape[2:])
        out = []
        for i in range(0, len(frames), self.parent.chunk):
            with torch.enable_grad():
                z = frames[i : i + self.parent.chunk].clone().requires_grad_(True)
                x = self.parent.decode(z)
                if transpose:
                    out.append(torch.autograd.grad(x, z, flat[i : i + self.parent.chunk].to(x.dtype))[0])
                else:
                    probe = torch.zeros_like(x, requires_grad=True)
                    (g,) = torch.autograd.grad(x, z, probe, create_graph=True)
                    out.append(torch.autograd.grad(g, probe, flat[i : i + self.parent.chunk].to(g.dtype))[0])
        stacked = torch.cat(out)
        return stacked.reshape(*self.anchor.shape[:2], *stacked.shape[1:])

    def forward(self, v: Tensor) -> Tensor:
        return self.pixels.forward(self._decoder_products(v, transpose=False))

    def transpose(self, u: Tensor) -> Tensor:
        return self._decoder_products(self.pixels.transpose(u), transpose=True)


def guided_denoiser(pipeline, operator: ObservationOperator, settings: PosteriorSettings):
    """The posterior denoiser E[z̃_{1:L} | z̃_t, y] for the pipeline's trajectory prior."""
    y, noise_std = operator.observed()
    A = latent_operator(pipeline, operator, settings.decode_chunk)
    prior = pipeline.trajectory_denoiser(times=operator.times, split_blankets=settings.split_blankets)
    if settings.guidance == "dps":
        return DPSDenoiser(prior, A, y, noise_std, scale=settings.dps_scale)
    return MMPSDenoiser(prior, A, y, noise_std, iterations=settings.iterations, solver=settings.solver)


def member_generator(seed: int, member: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(member))


def posterior_members(pipeline, operator: ObservationOperator, members: list[int], settings: PosteriorSettings,
                      seed: int = 0) -> Iterator[tuple[int, np.ndarray, float]]:
    """Yield (member, fields (L, C, H, W) in physical units, residual ratio) as each member finishes."""
    from latentda.diffusion.sampling import sample

    length = operator.length
    denoise = guided_denoiser(pipeline, operator, settings)
    for member in members:
        z = sample(denoise, (1, length, *pipeline.latent_shape), pipeline.scheduler,
                   steps=settings.steps or pipeline.settings["steps"], method=settings.sampler or pipeline.settings["sampler"],
                   corrections=pipeline.settings["corrections"], generator=member_generator(seed, member),
                   device=pipeline.device, dtype=pipeline.dtype, progress=pipeline.progress, description=f"member {member}")
        fields = pipeline.decode(z)[0]
        ratio = float(operator.residual_ratio(torch.from_numpy(fields)[None].double())[0])
        yield member, fields, ratio

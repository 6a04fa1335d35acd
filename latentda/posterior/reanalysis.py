"""Reanalysis: posterior trajectories p(x_{1:L} | y_{1:L}) through the decoder.

The observation operator acts on physical fields, so in latent space it is

    A(z̃_{1:L}) = H(μ_x + s_x · D(μ_z + s_z · z̃_t)  for t = 1..L),

the pixel-space operator H composed with the decoder D and both destandardisations. The guided
denoiser (MMPS or DPS, :mod:`latentda.posterior.guidance`) wraps the trajectory denoiser stitched
from blankets, so the cost of a guided step grows linearly with L. Each member is an independent
sampler run from its own seed (seed, member), so members can be computed in any order, on any
process, and an interrupted run resumes member by member with identical results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import numpy as np
import torch
from torch import Tensor

from latentda.config import require
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

    def validate(self, prefix: str = "") -> None:
        require(self.guidance in ("mmps", "dps"), "guidance", "must be mmps or dps")
        require(self.iterations >= 1, "iterations", "must be at least 1")
        require(self.solver in SOLVERS, "solver", f"must be one of {', '.join(SOLVERS)}")


def latent_operator(pipeline, operator: ObservationOperator) -> Callable[[Tensor], Tensor]:
    """A(z̃): standardised latent trajectories (B, L, c, h, w) → observed values (B, M)."""
    mean = torch.as_tensor(pipeline.statistics.mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    std = torch.as_tensor(pipeline.statistics.std, dtype=torch.float32).reshape(1, -1, 1, 1)

    def apply(z: Tensor) -> Tensor:
        batch, length = z.shape[:2]
        x = pipeline.decode_standardised(z.reshape(batch * length, *z.shape[2:]))
        x = x * std.to(x) + mean.to(x)
        return operator(x.reshape(batch, length, *x.shape[1:]))

    return apply


def guided_denoiser(pipeline, operator: ObservationOperator, settings: PosteriorSettings):
    """The posterior denoiser E[z̃_{1:L} | z̃_t, y] for the pipeline's trajectory prior."""
    y, noise_std = operator.observed()
    A = latent_operator(pipeline, operator)
    prior = pipeline.trajectory_denoiser()
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

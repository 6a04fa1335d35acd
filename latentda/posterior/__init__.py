"""Posterior sampling: guidance of a prior denoiser by observations (MMPS, DPS) and its solvers."""

from latentda.posterior.guidance import DPSDenoiser, MMPSDenoiser
from latentda.posterior.solvers import SOLVERS, conjugate_gradient, gmres

__all__ = ["MMPSDenoiser", "DPSDenoiser", "conjugate_gradient", "gmres", "SOLVERS"]

"""Posterior sampling: guidance of a prior denoiser by observations (MMPS, DPS) and its solvers;
the prior is any :class:`PriorModel`."""

from latentda.posterior.guidance import DPSDenoiser, MMPSDenoiser
from latentda.posterior.prior import PriorModel
from latentda.posterior.solvers import SOLVERS, conjugate_gradient, gmres

__all__ = ["MMPSDenoiser", "DPSDenoiser", "PriorModel", "conjugate_gradient", "gmres", "SOLVERS"]

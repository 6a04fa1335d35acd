"""Posterior sampling: guidance of a prior denoiser by observations (MMPS, DPS) and its solvers;
the prior is any :class:`PriorModel` (names imported on first use)."""

from typing import TYPE_CHECKING

from latentda.lazy import lazy_names

_LAZY = {
    "MMPSDenoiser": "latentda.posterior.guidance",
    "DPSDenoiser": "latentda.posterior.guidance",
    "PriorModel": "latentda.posterior.prior",
    "conjugate_gradient": "latentda.posterior.solvers",
    "gmres": "latentda.posterior.solvers",
    "SOLVERS": "latentda.posterior.solvers",
}
__all__ = list(_LAZY)

if TYPE_CHECKING:
    from latentda.posterior.guidance import DPSDenoiser, MMPSDenoiser
    from latentda.posterior.prior import PriorModel
    from latentda.posterior.solvers import SOLVERS, conjugate_gradient, gmres

__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())

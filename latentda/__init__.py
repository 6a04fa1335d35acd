"""latentda: data assimilation with latent diffusion models.

Fields x (variables × H × W per time) are compressed into latents z by an autoencoder, a
transformer diffusion model learns the prior over latent trajectories, and the MMPS posterior
sampler conditions it on pixel-space observations through the decoder.

The public API is importable from here (``from latentda import LatentDAPipeline``). Its names are
loaded on first use (PEP 562 module ``__getattr__``), so ``import latentda`` — and the command
line's start — does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from latentda.errors import LatentdaError
from latentda.lazy import lazy_names

__version__ = "0.1.0"

# public name → the module that defines it
_LAZY = {
    "LatentDAPipeline": "latentda.pipeline",
    "PosteriorSettings": "latentda.posterior.reanalysis",
    "SamplerSettings": "latentda.diffusion.settings",
    "MMPSDenoiser": "latentda.posterior.guidance",
    "DPSDenoiser": "latentda.posterior.guidance",
    "PriorModel": "latentda.posterior.prior",
    "EnsembleRun": "latentda.runs",
}

__all__ = ["LatentdaError", "__version__", *_LAZY]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from latentda.pipeline import LatentDAPipeline
    from latentda.posterior.guidance import DPSDenoiser, MMPSDenoiser
    from latentda.posterior.prior import PriorModel
    from latentda.diffusion.settings import SamplerSettings
    from latentda.posterior.reanalysis import PosteriorSettings
    from latentda.runs import EnsembleRun


__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())

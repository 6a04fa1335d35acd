"""latentda: data assimilation with latent diffusion models.

Fields x (variables × H × W per time) are compressed into latents z by an autoencoder, a
transformer diffusion model learns the prior over latent trajectories, and the MMPS posterior
sampler conditions it on pixel-space observations through the decoder.
"""

from latentda.errors import LatentdaError

__all__ = ["LatentdaError", "__version__"]
__version__ = "0.1.0"

"""The networks: the autoencoder and the trajectory transformer (imported on first use)."""

from typing import TYPE_CHECKING

from latentda.lazy import lazy_names

_LAZY = {
    "AutoEncoder": "latentda.nn.autoencoder",
    "PeriodicConv2d": "latentda.nn.autoencoder",
    "soft_clip": "latentda.nn.autoencoder",
    "TrajectoryTransformer": "latentda.nn.transformer",
}
__all__ = list(_LAZY)

if TYPE_CHECKING:
    from latentda.nn.autoencoder import AutoEncoder, PeriodicConv2d, soft_clip
    from latentda.nn.transformer import TrajectoryTransformer

__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())

from latentda.nn.autoencoder import AutoEncoder, PeriodicConv2d, soft_clip  # noqa: F401
from latentda.nn.transformer import TrajectoryTransformer  # noqa: F401

"""The QG benchmark's configs (configs/ae/qg.yaml, configs/ldm/qg.yaml, docs/qg-benchmark.md) fit together
and fit DAPPER's 129 × 129 box: encode pads to a multiple of the factor and decode crops back, the
latent grid is what the prior's patches divide, and a window of the prior is the documented tokens."""

import numpy as np
import torch
import yaml

from latentda.nn.autoencoder import AutoEncoder
from latentda.nn.transformer import TrajectoryTransformer
from latentda.simulate.dapper_qg import GRID_POINTS as GRID  # importing it needs no DAPPER


def _load(path: str) -> dict:
    with open(path) as file:
        return yaml.safe_load(file)


def test_autoencoder_and_prior_shapes_agree():
    ae_config, ldm_config = _load("configs/ae/qg.yaml"), _load("configs/ldm/qg.yaml")
    model = ae_config["model"]
    torch.manual_seed(0)
    autoencoder = AutoEncoder(1, model["latent_channels"], model["hidden_channels"], model["blocks_per_stage"],
                              (GRID, GRID), (False, False), model["latent_bound"]).eval()
    x = torch.randn(2, 1, GRID, GRID)
    with torch.no_grad():
        z = autoencoder.encode(x)
        back = autoencoder.decode(z)
    factor = autoencoder.downsample_factor
    latent_grid = -(-GRID // factor)  # the padded grid (a multiple of the factor) over the factor
    assert z.shape == (2, model["latent_channels"], latent_grid, latent_grid)
    assert back.shape == x.shape and torch.isfinite(back).all()
    assert z.abs().max() < model["latent_bound"]  # the soft clip
    compression = GRID * GRID / (model["latent_channels"] * latent_grid**2)
    assert compression > 10  # documented ×12.8

    prior = ldm_config["model"]
    window, patch = prior["window"], prior["patch_size"]
    assert latent_grid % patch[1] == 0 and latent_grid % patch[2] == 0 and window % patch[0] == 0
    backbone = TrajectoryTransformer(in_channels=model["latent_channels"], window=window,
                                     sample_size=(latent_grid, latent_grid), patch_size=patch,
                                     hidden_size=prior["hidden_size"], depth=1, num_heads=prior["num_heads"],
                                     mlp_ratio=prior["mlp_ratio"], attention=prior["attention"])
    assert int(np.prod(backbone.grid)) == window * (latent_grid // patch[1]) * (latent_grid // patch[2]) == 144
    with torch.no_grad():
        out = backbone(torch.randn(1, window, model["latent_channels"], latent_grid, latent_grid), torch.zeros(1))
    assert out.shape == (1, window, model["latent_channels"], latent_grid, latent_grid)

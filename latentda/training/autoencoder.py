"""``latentda train-ae``: train the compressive autoencoder on standardised fields.

The loss is the area-weighted mean squared reconstruction error of standardised fields,

    L = mean_{b,c,i,j} w_i (D(E(x̃))_{bcij} − x̃_{bcij})²,

with w_i = cos φ_i / mean cos φ on latitude-longitude grids and w = 1 elsewhere. Validation reports
the area-weighted reconstruction RMSE per channel in standardised units on the validation split.
The run folder holds ``checkpoints/``, ``log.jsonl``, ``config.yaml``, ``metrics.json`` and the
final ``autoencoder/`` folder (EMA weights, layout, statistics, and ``representation_error.json``:
the final validation RMSE per channel in standardised units, which the posterior adds to the
observation noise, :mod:`latentda.observe.operators`).

``hidden_channels: []`` with ``latent_channels`` = the number of variables is the identity
autoencoder (:class:`latentda.nn.AutoEncoder`): nothing is trained, the folder is written with the
statistics of the training split and the prior trained next works on the standardised fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from latentda.components import save_autoencoder
from latentda.config import require, to_dict
from latentda.data import FieldLayout, FieldSource, Statistics, WindowDataset, compute_statistics, open_dataset, split_segments
from latentda.errors import LatentdaError
from latentda.training.loop import Trainer, TrainingConfig, check_run_dir, make_accelerator, shared_statistics

__all__ = ["DataConfig", "AutoEncoderModelConfig", "AutoEncoderConfig", "train_autoencoder", "reconstruction_rmse"]


@dataclass
class DataConfig:
    """Which dataset, which variables, how to split it."""

    path: str
    variables: list[str] | None = None
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    time_dim: str | None = None  # the time dimension's name when its CF attributes do not say (latentda.data.times)


@dataclass
class AutoEncoderModelConfig:
    """Architecture of :class:`latentda.nn.AutoEncoder` (grid and periodicity come from the data)."""

    latent_channels: int = 4
    hidden_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    blocks_per_stage: int = 2
    latent_bound: float = 5.0
    groups: int = 8

    def validate(self, prefix: str) -> None:
        require(self.latent_channels >= 1, f"{prefix}.latent_channels", "must be at least 1")
        require(all(c >= 1 for c in self.hidden_channels), f"{prefix}.hidden_channels",
                "must be a list of positive widths (empty: the identity)")
        require(all(c % self.groups == 0 for c in self.hidden_channels), f"{prefix}.groups",
                f"must divide every hidden width {self.hidden_channels}")
        require(self.blocks_per_stage >= 1, f"{prefix}.blocks_per_stage", "must be at least 1")
        require(self.latent_bound > 0, f"{prefix}.latent_bound", "must be positive")


@dataclass
class AutoEncoderConfig:
    """A ``configs/ae/*.yaml`` file."""

    data: DataConfig
    output: str
    model: AutoEncoderModelConfig = field(default_factory=AutoEncoderModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    valid_samples: int = 64

    def validate(self, prefix: str) -> None:
        require(self.valid_samples >= 1, "valid_samples", "must be at least 1")


def reconstruction_rmse(model, frames: torch.Tensor, weights: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Area-weighted RMSE per channel of ``model`` on ``frames`` (N, C, H, W), standardised units."""
    squared = torch.zeros(frames.shape[1], dtype=torch.float64)
    for start in range(0, len(frames), batch_size):
        batch = frames[start : start + batch_size]
        error = (model(batch) - batch).double() ** 2 * weights.double()
        squared += error.mean(dim=(2, 3)).sum(dim=0)
    return (squared / len(frames)).sqrt()


def _valid_frames(dataset: WindowDataset, count: int) -> torch.Tensor:
    picks = np.linspace(0, len(dataset) - 1, num=min(count, len(dataset))).round().astype(int)
    return torch.stack([dataset[int(i)][0] for i in picks])


def train_autoencoder(config: AutoEncoderConfig, resume: bool = False, progress: bool = True, accelerator=None) -> dict:
    """Train the autoencoder described by ``config``; returns the final validation metrics."""
    from latentda.nn.autoencoder import AutoEncoder

    run_dir = Path(config.output)
    accelerator = accelerator or make_accelerator(config.training)
    check_run_dir(run_dir, resume, {"data": config.data.path})
    if not resume and (run_dir / "autoencoder").exists():
        raise LatentdaError(f"{run_dir}: run already has an autoencoder (choose another output)")
    dataset = open_dataset(config.data.path, config.data.time_dim)
    layout = FieldLayout.from_dataset(dataset, config.data.variables)
    splits = split_segments(dataset, config.data.splits)
    torch.manual_seed(config.training.seed)  # the initial weights depend on the config only
    try:  # architecture errors before any pass over the data
        model = AutoEncoder(
            in_channels=layout.num_channels,
            latent_channels=config.model.latent_channels,
            hidden_channels=list(config.model.hidden_channels),
            blocks_per_stage=config.model.blocks_per_stage,
            sample_size=list(layout.shape),
            periodic=list(layout.periodic),
            latent_bound=config.model.latent_bound,
            groups=config.model.groups,
        )
    except ValueError as error:
        raise LatentdaError(f"config: model: {error}") from None
    statistics = shared_statistics(accelerator, run_dir / "statistics.json",
                                   lambda: compute_statistics(dataset, layout, splits["train"], progress=progress), resume)
    if model.is_identity:
        return _write_identity(config, run_dir, model, layout, statistics, accelerator)
    source = FieldSource(config.data.path, layout, statistics, config.data.time_dim)
    train = WindowDataset(source, splits["train"], window=1)
    valid = WindowDataset(source, splits["valid"] or splits["train"], window=1)
    weights = torch.from_numpy(layout.area_weights())

    def loss_fn(network, batch, generator):
        frames = batch[:, 0]
        return ((network(frames) - frames) ** 2 * weights.to(frames.device)).mean()

    valid_frames = _valid_frames(valid, config.valid_samples)

    def validate_fn(network):
        device = next(network.parameters()).device
        rmse = reconstruction_rmse(network, valid_frames.to(device), weights.to(device))
        return {"rmse": dict(zip(layout.channels, rmse.tolist())), "rmse_mean": float(rmse.mean())}

    trainer = Trainer(model, loss_fn, train, config.training, run_dir, validate_fn, accelerator, progress, "train-ae", resume)

    def save_outputs(final, metrics):
        rmse = [metrics["rmse"][channel] for channel in layout.channels]
        save_autoencoder(run_dir / "autoencoder", final, layout, statistics, representation_error=rmse)
        return {"compression_factor": final.compression_factor, "latent_shape": list(final.latent_shape)}

    return trainer.run(to_dict(config), save_outputs)


def _write_identity(config: AutoEncoderConfig, run_dir: Path, model, layout: FieldLayout, statistics: Statistics,
                    accelerator) -> dict:
    """The identity autoencoder's run: nothing to train, the folder and an exact metrics.json."""
    import json

    import yaml

    metrics = {"rmse": {channel: 0.0 for channel in layout.channels}, "rmse_mean": 0.0}
    if accelerator.is_main_process:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        save_autoencoder(run_dir / "autoencoder", model, layout, statistics,
                         representation_error=np.zeros(layout.num_channels))
        summary = {"steps": 0, "valid": metrics, "parameters": 0, "identity": True,
                   "compression_factor": model.compression_factor, "latent_shape": list(model.latent_shape)}
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    accelerator.wait_for_everyone()
    return metrics

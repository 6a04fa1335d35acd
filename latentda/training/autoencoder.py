"""``latentda train-ae``: train the compressive autoencoder on standardised fields.

The loss is the area-weighted mean squared reconstruction error of standardised fields over their
valid points,

    L = Σ_{b,c,i,j} m_{bcij} w_i (D(E(x̃⁰))_{bcij} − x̃_{bcij})² / (B Σ_{c,i,j} M_{cij} w_i),

with w_i the area weights of the layout (cell areas floored near the poles on latitude-longitude
grids, ``FieldLayout.area_weights``; w = 1 elsewhere), m = 1 where x̃ is finite and 0 where it is
masked or missing (NaN), M the fixed mask (1 where a channel has values), and x̃⁰ = x̃ with NaN set
to 0 (the channel mean): the network never learns made-up values. The denominator is the valid area
of B states without gaps, not the batch's own: a missing value (``allow_missing``) counts zero and
every valid value weighs the same whichever batch holds it, and a batch split over processes has
the loss of the whole batch in one process (DDP averages the processes' gradients). The training split's fixed mask (pixels with no value at any step) and the
bounded variables' transforms (``data.bounds``, ``data.non_negative``, :mod:`latentda.data.bounds`)
are saved with the model. Validation reports the area-weighted reconstruction RMSE per channel in
standardised units on the validation split.
The run folder holds ``checkpoints/``, ``log.jsonl``, ``config.yaml``, ``metrics.json`` and the
final ``autoencoder/`` folder (EMA weights, layout, statistics, and ``representation_error.json``:
the final validation RMSE per channel of the physical fields divided by the channel's physical std —
the standardised RMSE when no transform applies — which the posterior adds to the observation
noise, :mod:`latentda.observe.operators`).

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
from latentda.config import config_defaults, require, to_dict
from latentda.data import FieldLayout, FieldSource, Statistics, WindowDataset, compute_statistics, open_dataset, split_segments
from latentda.data.statistics import MissingScan
from latentda.errors import LatentdaError
from latentda.processes import run_on_main
from latentda.training.loop import (Trainer, TrainingConfig, check_resumed_config, check_run_dir, continues, make_accelerator,
                                    one_run_at_a_time, shared_statistics)

__all__ = ["DataConfig", "AutoEncoderModelConfig", "AutoEncoderConfig", "train_autoencoder", "reconstruction_rmse"]


@dataclass
class DataConfig:
    """Which dataset, which variables, how to split it."""

    path: str
    variables: list[str] | None = None
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    time_dim: str | None = None  # the time dimension's name when its CF attributes do not say (latentda.data.times)
    allow_missing: bool = False  # NaN outside the fixed mask: masked in the loss (else refused, naming the step)
    bounds: dict[str, dict] | None = None  # variable → {lower, upper, transform, offset} (latentda.data.bounds)
    non_negative: list[str] | None = None  # variables ≥ 0 (square-root transform): shorthand for bounds

    def transforms(self, channels: list[str]) -> list:
        """Per channel the :class:`latentda.data.bounds.Bounds` of its variable (None: unbounded)."""
        from latentda.data.bounds import bounds_by_channel

        return bounds_by_channel(channels, self.bounds, self.non_negative)


@dataclass
class AutoEncoderModelConfig:
    """Architecture of :class:`latentda.nn.AutoEncoder` (grid and periodicity come from the data)."""

    latent_channels: int = 4
    hidden_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    blocks_per_stage: int = 2
    latent_bound: float = 5.0
    groups: int = 8
    attention_heads: int = 0  # self-attention at the coarsest grid (0: none)

    def validate(self, prefix: str) -> None:
        require(self.latent_channels >= 1, f"{prefix}.latent_channels", "must be at least 1")
        require(all(c >= 1 for c in self.hidden_channels), f"{prefix}.hidden_channels",
                "must be a list of positive widths (empty: the identity)")
        require(self.groups >= 1, f"{prefix}.groups", "must be at least 1")
        require(all(c % self.groups == 0 for c in self.hidden_channels), f"{prefix}.groups",
                f"must divide every hidden width {self.hidden_channels}")
        require(self.blocks_per_stage >= 1, f"{prefix}.blocks_per_stage", "must be at least 1")
        require(self.latent_bound > 0, f"{prefix}.latent_bound", "must be positive")
        require(self.attention_heads >= 0, f"{prefix}.attention_heads", "must be 0 (no attention) or positive")
        require(not self.attention_heads or (self.hidden_channels and self.hidden_channels[-1] % self.attention_heads == 0),
                f"{prefix}.attention_heads", f"must divide the coarsest width (hidden_channels[-1]) of {self.hidden_channels}")


@dataclass
class AutoEncoderConfig:
    """A ``configs/ae/*.yaml`` file."""

    data: DataConfig
    output: str
    model: AutoEncoderModelConfig = field(default_factory=AutoEncoderModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    valid_samples: int = 64
    # σ of Gaussian noise added to the latents before decoding in training, D(E(x) + σε) (latent units;
    # 0: none): a decoder that tolerates latent errors, as the prior's (docs/compression.md)
    latent_noise: float = 0.0

    def validate(self, prefix: str) -> None:
        require(self.valid_samples >= 1, "valid_samples", "must be at least 1")
        require(self.latent_noise >= 0, "latent_noise", "must be at least 0")


def masked_squared_error(output: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ m w e², Σ m w) per channel over (N, C, H, W), e = output − target, m = 1 where target is
    finite: the two sums of the masked, area-weighted mean squared error."""
    valid = torch.isfinite(target)
    error = torch.where(valid, output - torch.nan_to_num(target), torch.zeros_like(output))
    area = valid * weights
    return (error.double() ** 2 * area).sum(dim=(0, 2, 3)), area.double().sum(dim=(0, 2, 3))


def reconstruction_rmse(model, frames: torch.Tensor, weights: torch.Tensor, batch_size: int = 32,
                        statistics: Statistics | None = None) -> torch.Tensor:
    """Area-weighted RMSE per channel of ``model`` on ``frames`` (N, C, H, W) over their valid
    points, in standardised units; with ``statistics``, of the physical fields divided by each
    channel's physical std (the same number when no channel is bounded)."""
    squared = torch.zeros(frames.shape[1], dtype=torch.float64)
    area = torch.zeros(frames.shape[1], dtype=torch.float64)
    for start in range(0, len(frames), batch_size):
        batch = frames[start : start + batch_size]
        output = model(torch.nan_to_num(batch))
        if statistics is not None:
            output, batch = statistics.destandardise(output.double()), statistics.destandardise(batch.double())
        sums = masked_squared_error(output, batch, weights)
        squared, area = squared + sums[0], area + sums[1]
    rmse = (squared / area.clamp_min(1e-300)).sqrt()
    if statistics is not None:
        rmse = rmse / torch.as_tensor(statistics.physical_std)
    return rmse


def evenly_spaced_frames(dataset: WindowDataset, count: int) -> torch.Tensor:
    """``count`` frames (N, C, H, W) of a window-1 ``dataset``, evenly spaced over it (all when fewer)."""
    picks = np.linspace(0, len(dataset) - 1, num=min(count, len(dataset))).round().astype(int)
    return torch.stack([dataset[int(i)][0] for i in picks])


@one_run_at_a_time
def train_autoencoder(config: AutoEncoderConfig, resume: bool = False, progress: bool = True, accelerator=None) -> dict:
    """Train the autoencoder described by ``config``; returns the final validation metrics."""
    from latentda.nn.autoencoder import AutoEncoder

    run_dir = Path(config.output)
    accelerator = accelerator or make_accelerator(config.training)
    check_run_dir(run_dir, resume, {"data": config.data.path}, final="autoencoder",
                  files=frozenset({"statistics.json", "layout.json"}))
    # continuing on more (or other) data is allowed: the statistics stay those of the first run's data
    may_change = frozenset({"data.path"})
    if continues(run_dir, resume):  # another run's settings are refused before any pass over the data
        check_resumed_config(run_dir, to_dict(config), may_change, config_defaults(AutoEncoderConfig))
    dataset = open_dataset(config.data.path, config.data.time_dim)
    layout = FieldLayout.from_dataset(dataset, config.data.variables)
    transforms = config.data.transforms(layout.channels)
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
            attention_heads=config.model.attention_heads,
        )
    except ValueError as error:
        raise LatentdaError(f"config: model: {error}") from None
    scan = MissingScan(layout.channels)

    def scan_statistics() -> Statistics:
        statistics = compute_statistics(dataset, layout, splits["train"], progress=progress, transforms=transforms, scan=scan)
        scan.check(config.data.allow_missing)  # a gap is refused (naming the step) unless allowed
        return statistics

    statistics = shared_statistics(accelerator, run_dir / "statistics.json", scan_statistics, continues(run_dir, resume))
    layout = _shared_layout(accelerator, run_dir / "layout.json", layout, scan, config.data.allow_missing)
    if model.is_identity:
        return _write_identity(config, run_dir, model, layout, statistics, accelerator)
    source = FieldSource(config.data.path, layout, statistics, config.data.time_dim)
    train = WindowDataset(source, splits["train"], window=1, split="train")
    valid = WindowDataset(source, splits["valid"] or splits["train"], window=1, split="valid" if splits["valid"] else "train")
    weights = torch.from_numpy(layout.area_weights())
    present = np.ones((layout.num_channels, *layout.shape), bool) if layout.mask is None else layout.mask
    frame_area = float((present * layout.area_weights().astype(np.float64)).sum())  # Σ_c Σ_yx w of a state with no gap

    def loss_fn(network, batch, generator):
        """Σ m w e² / (B · frame_area): the area-weighted mean squared error, a gap (allow_missing)
        counting zero. The denominator is fixed, not the batch's own valid area, so that every valid
        value weighs the same in every batch and the loss of a batch split over P processes (DDP
        averages their gradients) equals that of the whole batch in one process."""
        frames = batch[:, 0]
        noise = None
        if config.latent_noise > 0:
            noise = config.latent_noise * generator.randn(*model.latent_shape).to(frames.device, frames.dtype)
        squared, _ = masked_squared_error(network(torch.nan_to_num(frames), noise), frames, weights.to(frames.device))
        return (squared.sum() / (len(frames) * frame_area)).to(frames.dtype)

    valid_frames = evenly_spaced_frames(valid, config.valid_samples)

    def validate_fn(network):
        device = next(network.parameters()).device
        rmse = reconstruction_rmse(network, valid_frames.to(device), weights.to(device))
        return {"rmse": dict(zip(layout.channels, rmse.tolist())), "rmse_mean": float(rmse.mean())}

    trainer = Trainer(model, loss_fn, train, config.training, run_dir, validate_fn, accelerator, progress, "train-ae", resume)

    def save_outputs(final, metrics):
        rmse = [metrics["rmse"][channel] for channel in layout.channels]
        if statistics.bounded:  # the error of the physical fields, in units of their std
            device = next(final.parameters()).device
            with torch.no_grad():
                rmse = reconstruction_rmse(final, valid_frames.to(device), weights.to(device), statistics=statistics).tolist()
        save_autoencoder(run_dir / "autoencoder", final, layout, statistics, representation_error=rmse)
        return {"compression_factor": final.compression_factor, "latent_shape": list(final.latent_shape)}

    return trainer.run(to_dict(config), save_outputs)


def _shared_layout(accelerator, path: Path, layout: FieldLayout, scan: MissingScan, allow_missing: bool) -> FieldLayout:
    """The layout with the fixed mask of the training split (``scan``, when it ran) and the
    ``allow_missing`` rule, saved to ``path`` by the main process and read by all (a resumed run reads
    the saved one: its scan did not run again; a run started again from scratch writes its own)."""
    def save() -> None:
        if scan.finite is not None:  # the scan ran (on the main process)
            layout.mask, layout.allow_missing = scan.mask, allow_missing
            layout.save(path)

    run_on_main(save, accelerator.is_main_process)  # as the statistics: a failure stops every process
    if path.is_file():
        return FieldLayout.load(path)
    layout.allow_missing = allow_missing  # a run folder from before masks were recorded
    return layout


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

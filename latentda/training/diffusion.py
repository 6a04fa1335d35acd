"""``latentda train-ldm``: train the latent trajectory prior on windows of K consecutive latents.

Latents z from ``latentda encode`` are standardised per channel (statistics of the training split,
computed once in a streaming pass) and the transformer backbone is trained inside the EDM denoiser
with the λ(σ)-weighted denoising loss (:mod:`latentda.diffusion.denoiser`). Validation reports the
denoising error E‖D(z̃ + σ ε, σ) − z̃‖² per element at fixed σ ∈ {0.01, 0.1, 1, 10} on fixed
held-out windows and noise. The run folder holds ``checkpoints/``, ``log.jsonl``, ``config.yaml``,
``metrics.json`` and the final ``pipeline/`` (autoencoder + EMA denoiser + schedule).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml

from latentda.components import autoencoder_fingerprint, load_autoencoder, load_model, load_representation_error
from latentda.config import config_defaults, require, to_dict
from latentda.data import LatentSource, Statistics, WindowDataset, split_segments, time_step
from latentda.data.splits import Segment, segment_blocks
from latentda.data.calendar import CALENDAR_FEATURES
from latentda.data.statistics import MissingScan, streaming_statistics
from latentda.diffusion.denoiser import SIGMA_MAX, SIGMA_MIN, Denoiser, KnownFrames, TrainingNoise, denoising_loss, make_schedule
from latentda.diffusion.increments import Increments
from latentda.diffusion.settings import SamplerSettings
from latentda.errors import LatentdaError
from latentda.pipeline import LatentDAPipeline, SavedSettings
from latentda.training.checkpoint import latest_checkpoint
from latentda.training.loop import (Trainer, TrainingConfig, check_resumed_config, check_run_dir, continues, make_accelerator,
                                    one_run_at_a_time, shared_statistics)

__all__ = ["DenoiserModelConfig", "DiffusionConfig", "LatentDiffusionConfig", "initial_weights", "train_latent_diffusion", "VALID_SIGMAS"]

VALID_SIGMAS = (0.01, 0.1, 1.0, 10.0)


@dataclass
class DenoiserModelConfig:
    """Architecture of :class:`latentda.nn.TrajectoryTransformer` (latent shape comes from the data).

    ``calendar``: when the data's time axis holds dates (datetimes, or dates of a climate calendar), condition
    on the time of day and year (:mod:`latentda.data.calendar`); ignored for numeric (model) time axes.

    ``known_frames``: also train the conditional of a window given its first n states clean (n
    uniform in 1..K − 1, in a fraction ``known_probability`` of the windows; the others train the
    prior as usual): forecasts and filters then condition on a member's history exactly
    (``conditioning: known``) instead of through guidance (:mod:`latentda.diffusion.denoiser`,
    "Known frames"; docs/filter.md). ``history_noise`` σ_h: the given states are trained off the
    truth by one offset e ~ N(0, σ_h² I) per window, as a filter member's past is
    (:class:`latentda.diffusion.denoiser.KnownFrames`), so that the window may depart from a wrong history.

    ``increments``: diffuse windows in increment coordinates, u_1 = z̃_1, u_k = (z̃_k − z̃_{k−1} − m)/s
    with the one-step increments' per-channel moments m, s of the training split
    (:mod:`latentda.diffusion.increments`): every state at unit scale, so the network predicts the
    change from one state to the next. Such a prior samples one window at a time (forecasts,
    filters, reanalyses of one window of K states; no blankets)."""

    window: int = 8
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    attention: Literal["full", "local"] = "full"
    local_window: list[int] | None = None
    calendar: bool = True
    known_frames: bool = False
    known_probability: float = 0.5
    history_noise: float = 0.0
    increments: bool = False

    def validate(self, prefix: str) -> None:
        require(self.window >= 1, f"{prefix}.window", "must be at least 1")
        require(not self.known_frames or self.window >= 2, f"{prefix}.known_frames", "needs a window of at least 2 states")
        try:  # the rules of known_probability and history_noise, once (KnownFrames)
            KnownFrames(self.known_probability, self.history_noise)
        except ValueError as error:  # "key: message"
            key, message = str(error).split(": ", 1)
            require(False, f"{prefix}.{key}", message)
        require(self.history_noise == 0 or self.known_frames, f"{prefix}.history_noise", "needs known_frames: true")
        require(not self.increments or self.window >= 2, f"{prefix}.increments", "needs a window of at least 2 states")
        for name in ("hidden_size", "depth", "num_heads"):
            require(getattr(self, name) >= 1, f"{prefix}.{name}", "must be at least 1")
        require(self.mlp_ratio > 0, f"{prefix}.mlp_ratio", "must be positive")
        require(self.hidden_size % self.num_heads == 0, f"{prefix}.hidden_size", f"must be divisible by num_heads={self.num_heads}")
        require(self.attention == "full" or self.local_window is not None, f"{prefix}.local_window", "is required with attention: local")


@dataclass(frozen=True)
class DiffusionConfig(SamplerSettings):
    """The ``diffusion:`` section: the noise range of training and sampling, the law of the training
    noise levels on it (``noise_distribution``: ``log-uniform``, or ``log-normal`` with
    log σ ~ N(``log_sigma_mean``, ``log_sigma_std``²) truncated to the range;
    :class:`latentda.diffusion.denoiser.TrainingNoise`), and the default sampler settings saved with the
    pipeline (the fields of :class:`latentda.diffusion.settings.SamplerSettings`, flat in the same section)."""

    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    noise_distribution: str = "log-uniform"
    log_sigma_mean: float = TrainingNoise.log_sigma_mean
    log_sigma_std: float = TrainingNoise.log_sigma_std

    def validate(self, prefix: str = "") -> None:
        super().validate(prefix)
        require(0 < self.sigma_min < self.sigma_max, f"{prefix}.sigma_min", "must satisfy 0 < sigma_min < sigma_max")
        self.check_sigma_range(self.sigma_min, self.sigma_max, prefix)
        try:
            self.training_noise()
        except ValueError as error:  # "key: message"
            key, message = str(error).split(": ", 1)
            require(False, f"{prefix}.{key}", message)

    def training_noise(self) -> TrainingNoise:
        """The law the training noise levels are drawn from."""
        return TrainingNoise(self.noise_distribution, self.log_sigma_mean, self.log_sigma_std)


@dataclass
class LatentDiffusionConfig:
    """A ``configs/ldm/*.yaml`` file.

    ``init_from``: a pipeline folder whose denoiser weights start the training instead of a random
    initialisation (:func:`initial_weights`): fine-tuning a shared prior on other data of the same
    autoencoder, or to another window K (the transformer's weights do not depend on K)."""

    output: str
    autoencoder: str | None = None
    init_from: str | None = None
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    model: DenoiserModelConfig = field(default_factory=DenoiserModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    valid_windows: int = 32

    def validate(self, prefix: str) -> None:
        require(self.valid_windows >= 1, "valid_windows", "must be at least 1")
        self.diffusion.check_window(self.model.window, "diffusion")


STATES_PER_READ = 64  # the statistics passes read this many states at a time: memory bounded whatever a segment's length


def latent_statistics(source: LatentSource, segments: list[Segment], progress: bool = True) -> Statistics:
    """Per-channel mean/std of the latents in ``segments`` (one streaming pass, :data:`STATES_PER_READ`
    states at a time)."""
    channels = [f"latent{i}" for i in range(source.dataset.sizes["channel"])]
    blocks = segment_blocks(segments, STATES_PER_READ)
    chunks = (source.read(*block) for block in blocks)  # missing states: NaN, skipped
    return streaming_statistics(chunks, channels, len(blocks), progress, scan=MissingScan(channels))


def increment_statistics(source: LatentSource, segments: list[Segment], statistics: Statistics, progress: bool = True) -> Statistics:
    """Per-channel mean/std of the one-step increments z̃_{k+1} − z̃_k of the standardised latents in
    ``segments`` (one streaming pass; blocks overlap by one state, so each increment is counted once)."""
    channels = [f"latent{i}" for i in range(source.dataset.sizes["channel"])]
    blocks = segment_blocks(segments, STATES_PER_READ, overlap=1)

    def chunks():
        for block in blocks:
            z = statistics.standardise(source.read(*block))
            yield z[1:] - z[:-1]

    return streaming_statistics(chunks(), channels, len(blocks), progress, scan=MissingScan(channels))


class _Standardised(torch.utils.data.Dataset):
    """Windows of standardised latents z̃, or their increment coordinates u when ``increments`` is given."""

    def __init__(self, windows: WindowDataset, statistics: Statistics, increments: Increments | None = None) -> None:
        self.windows, self.statistics, self.increments = windows, statistics, increments

    def __len__(self) -> int:
        return len(self.windows)

    def _coordinates(self, window):
        z = self.statistics.standardise(window)
        return z if self.increments is None else self.increments.to_increments(torch.as_tensor(z))

    def __getitem__(self, i: int):
        item = self.windows[i]
        if isinstance(item, tuple):  # (window, context)
            return self._coordinates(item[0]), item[1]
        return self._coordinates(item)


def initial_weights(pipeline: str | Path, backbone, autoencoder_sha256: str, increments: bool) -> dict:
    """The denoiser weights of the pipeline folder ``pipeline`` (safetensors only, checked as any
    loaded model: :func:`latentda.components.load_model`), to start training ``backbone`` from, the
    run's autoencoder having the fingerprint ``autoencoder_sha256``.

    Refused in one line: a pipeline of another autoencoder (its latents mean something else: another
    :func:`latentda.components.autoencoder_fingerprint`), of
    the other coordinates (``model.increments``), or of another architecture (a setting of the
    transformer's config, or a weight missing, extra or of another shape). Only the window K may
    differ: the rotary encoding computes the positions, so no weight depends on K (a prior of
    K = 16 starts one of K = 32)."""
    from latentda.components import check_inside
    from latentda.nn.transformer import TrajectoryTransformer

    folder = Path(pipeline)
    if not (folder / "denoiser").is_dir() or not (folder / "autoencoder").is_dir():
        raise LatentdaError(f"config: init_from: {folder} is not a pipeline folder (no denoiser/ and autoencoder/)")
    check_inside(folder, "pipeline")
    if (folder / "denoiser" / "increment_statistics.json").is_file() != increments:
        raise LatentdaError(f"config: init_from: {folder} is a prior in " + ("increment" if not increments else "state")
                            + " coordinates, this run's model.increments is " + str(increments).lower())
    if autoencoder_fingerprint(folder / "autoencoder") != autoencoder_sha256:
        raise LatentdaError(f"config: init_from: {folder} was trained on the latents of another autoencoder than this run's")
    initial = load_model(TrajectoryTransformer, folder / "denoiser", "denoiser")
    settings = {k: v for k, v in dict(initial.config).items() if not k.startswith("_") and k != "window"}
    differ = [f"{k}: {v} → {backbone.config.get(k)}" for k, v in settings.items() if _plain(v) != _plain(backbone.config.get(k))]
    weights, expected = initial.state_dict(), backbone.state_dict()
    differ += sorted(set(weights) ^ set(expected)) + [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if differ:
        calendar = ("; it was trained without the calendar's features (model.calendar: false, or a climate calendar's dates "
                    "before latentda conditioned them): set model.calendar: false to start from it"
                    if not settings.get("context_features") and backbone.config.get("context_features") else "")
        raise LatentdaError(f"config: init_from: {folder}'s denoiser has another architecture than this run's "
                            f"({', '.join(differ[:3])}{calendar})")
    return weights


def _plain(value):
    """A config value comparable across a JSON round trip (tuples as lists)."""
    return json.loads(json.dumps(value))


def validation_error(denoiser: Denoiser, windows: torch.Tensor, seed: int = 0, context: torch.Tensor | None = None,
                     given: int = 0) -> dict:
    """Mean squared denoising error per element at each σ of ``VALID_SIGMAS`` (fixed noise); with
    ``given`` > 0 (known-frame models) the first ``given`` states are given clean and the error is
    that of the others."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(windows.shape, generator=generator).to(windows.device)
    known = None
    if given:
        known = (torch.arange(windows.shape[1], device=windows.device) < given)[None].expand(windows.shape[0], -1)
        noise[:, :given] = 0  # the given states are clean
    errors = {}
    for sigma in VALID_SIGMAS:
        out = denoiser(windows + sigma * noise, torch.tensor(sigma, device=windows.device), context, known)
        errors[f"sigma={sigma:g}"] = float(((out - windows)[:, given:] ** 2).mean())
    return errors


def _conditioned(run_dir: Path) -> bool:
    """Whether the run's latest checkpoint has the calendar's context weights (model.calendar on dated data; before
    session 37 dates of climate calendars were not conditioned, so such a run's checkpoints have none)."""
    from safetensors import safe_open

    latest = latest_checkpoint(run_dir / "checkpoints")
    if latest is None:
        return True
    try:
        with safe_open(str(latest / "model.safetensors"), framework="pt") as weights:
            return any("context_embedding." in f".{key}" for key in weights.keys())
    except Exception:  # noqa: BLE001 — unreadable: the loader names what is wrong (or falls back)
        return True


@one_run_at_a_time
def train_latent_diffusion(config: LatentDiffusionConfig, latents: str, resume: bool = False, progress: bool = True,
                           accelerator=None) -> dict:
    """Train the trajectory prior on ``latents``; writes ``{output}/pipeline``. Returns validation metrics."""
    from latentda.nn.transformer import TrajectoryTransformer

    run_dir = Path(config.output)
    source = LatentSource(latents)
    dataset = source.dataset
    autoencoder_dir = config.autoencoder or dataset.attrs.get("autoencoder")
    if autoencoder_dir is None:
        raise LatentdaError("config: autoencoder: not given and not recorded in the latents")
    autoencoder, layout, statistics = load_autoencoder(autoencoder_dir)
    fingerprint = autoencoder_fingerprint(autoencoder_dir)
    recorded = dataset.attrs.get("latentda_autoencoder_sha256")  # absent in stores of older versions
    if recorded not in (None, fingerprint) and recorded != autoencoder_fingerprint(autoencoder_dir, legacy=True):
        raise LatentdaError(f"{latents}: encoded by another autoencoder than {autoencoder_dir} (its weights, config or "
                            "statistics differ from those `latentda encode` used): encode the data again with it")
    c, h, w = (dataset.sizes[d] for d in ("channel", "latent_y", "latent_x"))
    if (c, h, w) != tuple(autoencoder.latent_shape):
        raise LatentdaError(f"latents are {c}×{h}×{w} but the autoencoder gives {tuple(autoencoder.latent_shape)}")
    splits = split_segments(dataset, config.splits)
    calendar = config.model.calendar and source.calendar is not None  # dated times: condition on the calendar
    accelerator = accelerator or make_accelerator(config.training)
    inputs = {"latents": latents, "autoencoder": autoencoder_dir, **({"init_from": config.init_from} if config.init_from else {})}
    check_run_dir(run_dir, resume, inputs, final="pipeline",
                  files=frozenset({"latent_statistics.json", "increment_statistics.json"}))
    continuing = continues(run_dir, resume)  # else from scratch: statistics computed again
    # the sampler defaults only set how the saved pipeline samples: a resumed run may retune them
    sampling = frozenset(f"diffusion.{f.name}" for f in dataclasses.fields(SamplerSettings))
    if continuing:  # another run's settings are refused before any pass over the data
        check_resumed_config(run_dir, to_dict(config), sampling, config_defaults(LatentDiffusionConfig))
        if calendar and not _conditioned(run_dir):  # started by a latentda that left climate calendars unconditioned
            if accelerator.is_main_process:  # once, not once per process
                warnings.warn(f"{run_dir}: this run was started by a latentda that did not condition a climate calendar's "
                              "dates on the calendar: it continues without (start a new run to condition it)", stacklevel=2)
            calendar = False
    torch.manual_seed(config.training.seed)
    try:  # architecture errors before any pass over the data
        backbone = TrajectoryTransformer(
            in_channels=c, window=config.model.window, sample_size=(h, w), patch_size=tuple(config.model.patch_size),
            hidden_size=config.model.hidden_size, depth=config.model.depth, num_heads=config.model.num_heads,
            mlp_ratio=config.model.mlp_ratio, periodic=tuple(layout.periodic), attention=config.model.attention,
            local_window=tuple(config.model.local_window) if config.model.local_window else None,
            context_features=CALENDAR_FEATURES if calendar else 0, known_frames=config.model.known_frames,
        )
    except ValueError as error:
        raise LatentdaError(f"config: model: {error}") from None
    if config.init_from is not None and not continuing:
        backbone.load_state_dict(initial_weights(config.init_from, backbone, fingerprint, config.model.increments))
    K = config.model.window  # windows that do not fit the splits fail here, before any statistics file is written
    train_windows = WindowDataset(source, splits["train"], window=K, with_context=calendar, split="train")
    valid_source = WindowDataset(source, splits["valid"] or splits["train"], window=K, stride=K, with_context=calendar,
                                  split="valid" if splits["valid"] else "train")
    z_statistics = shared_statistics(accelerator, run_dir / "latent_statistics.json",
                                     lambda: latent_statistics(source, splits["train"], progress), continuing)
    increments = None
    if config.model.increments:
        increments = Increments(shared_statistics(accelerator, run_dir / "increment_statistics.json",
                                                  lambda: increment_statistics(source, splits["train"], z_statistics, progress),
                                                  continuing))
    schedule = make_schedule(config.diffusion.sigma_min, config.diffusion.sigma_max)
    denoiser = Denoiser(backbone, schedule)
    train = _Standardised(train_windows, z_statistics, increments)
    valid_set = _Standardised(valid_source, z_statistics, increments)
    picks = np.linspace(0, len(valid_set) - 1, num=min(config.valid_windows, len(valid_set))).round().astype(int)
    valid_items = [valid_set[int(i)] for i in picks]
    valid_batch = torch.stack([item[0] if calendar else item for item in valid_items])
    valid_context = torch.stack([item[1] for item in valid_items]) if calendar else None

    levels = config.diffusion.training_noise()
    known_frames = (KnownFrames(config.model.known_probability, config.model.history_noise)
                    if config.model.known_frames else None)

    def loss_fn(model, batch, random):
        x, context = batch if isinstance(batch, tuple) else (batch, None)
        return denoising_loss(Denoiser(model, schedule), x, random, context, levels, known_frames, increments)

    def validate_fn(model):
        device = next(model.parameters()).device
        context = valid_context.to(device) if valid_context is not None else None
        errors = validation_error(Denoiser(model, schedule), valid_batch.to(device), context=context)
        metrics = {"denoising_mse": errors, "denoising_mse_mean": float(np.mean(list(errors.values())))}
        if known_frames is not None:  # the forecast's case: the first 3/4 of the window given
            given = max(1, 3 * K // 4)
            known = validation_error(Denoiser(model, schedule), valid_batch.to(device), context=context, given=given)
            metrics[f"known_{given}_denoising_mse"] = known
            metrics[f"known_{given}_denoising_mse_mean"] = float(np.mean(list(known.values())))
        return metrics

    # the latents mean what their autoencoder made them: more of its latents may continue a run, another's may not
    trainer = Trainer(backbone, loss_fn, train, config.training, run_dir, validate_fn, accelerator, progress, "train-ldm", resume,
                      fingerprints={"autoencoder of the latents": fingerprint})

    def save_outputs(final, metrics):
        step, units = time_step(dataset["time"])  # checked regular by split_segments
        settings = SavedSettings(**dataclasses.asdict(SamplerSettings.of(config.diffusion)), time_step=step, time_units=units)
        pipeline = LatentDAPipeline(autoencoder, layout, statistics, final, z_statistics, schedule, settings,
                                    representation_error=load_representation_error(autoencoder_dir, layout.channels),
                                    increment_statistics=None if increments is None else increments.statistics)
        summary = {"steps": trainer.step, "valid": metrics, "train_samples_per_second": trainer.throughput,
                   "parameters": sum(p.numel() for p in final.parameters())}
        pipeline.save_pretrained(run_dir / "pipeline", model_card=model_card(pipeline, config, summary))
        return {}

    return trainer.run(to_dict(config), save_outputs)


def model_card(pipeline: LatentDAPipeline, config: LatentDiffusionConfig, summary: dict) -> str:
    """A short README for the pipeline folder: data, grid, variables, training config, metrics."""
    layout = pipeline.layout
    lines = [
        "---", "library_name: latentda", "tags: [data-assimilation, latent-diffusion, safetensors]", "---", "",
        "# latentda pipeline", "",
        "Latent diffusion prior over trajectories of physical fields, for posterior sampling (reanalysis, forecasting)",
        "with [latentda](https://pypi.org/project/latentda/).", "",
        "## Data", "",
        f"- variables/channels: {', '.join(layout.channels)}",
        f"- grid: {layout.grid[0].name} × {layout.grid[1].name} = {layout.shape[0]} × {layout.shape[1]}, periodic {layout.periodic}",
        f"- time step between states: {pipeline.time_step} ({pipeline.time_units})",
        f"- latent shape: {pipeline.latent_shape}, compression factor {pipeline.autoencoder.compression_factor:.1f}",
        f"- window (blanket) K = {pipeline.window}", "",
        "## Training", "", "```yaml", yaml.safe_dump(to_dict(config), sort_keys=False).strip(), "```", "",
        "## Metrics", "", "```json", json.dumps(summary, indent=1), "```", "",
    ]
    return "\n".join(lines)

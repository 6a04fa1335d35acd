"""Saved component folders: a diffusers model folder plus the data description it was trained on.

An autoencoder folder is what ``latentda train-ae`` writes and ``latentda encode`` reads::

    autoencoder/
        config.json                          the model's registered config (diffusers)
        diffusion_pytorch_model.safetensors  the (EMA) weights; the only weight format accepted
        layout.json                          variables, levels, grid, periodicity (FieldLayout)
        statistics.json                      per-channel mean and std (Statistics)

Loading checks that every file is present, that no pickle-based weight file is there, and that
the model's channels and grid agree with the layout and the statistics.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from latentda.data.io import atomic_path
from latentda.data.layout import FieldLayout
from latentda.data.statistics import Statistics
from latentda.errors import LatentdaError

__all__ = ["save_autoencoder", "load_autoencoder", "check_model_folder", "UNSAFE_WEIGHT_SUFFIXES"]

UNSAFE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
LAYOUT_FILE = "layout.json"
STATISTICS_FILE = "statistics.json"


def check_model_folder(path: str | os.PathLike, what: str) -> Path:
    """Check ``path`` is a diffusers model folder with safetensors weights and nothing pickled."""
    path = Path(path)
    if not path.is_dir():
        raise LatentdaError(f"{path}: {what} folder not found")
    unsafe = sorted(p.name for p in path.iterdir() if p.suffix in UNSAFE_WEIGHT_SUFFIXES)
    if unsafe:
        raise LatentdaError(f"{path}: refusing pickle-based weight file(s) {', '.join(unsafe)} (only safetensors is accepted)")
    if not (path / "config.json").is_file():
        raise LatentdaError(f"{path}: {what} folder lacks config.json")
    if not any(p.suffix == ".safetensors" for p in path.iterdir()):
        raise LatentdaError(f"{path}: {what} folder has no .safetensors weights")
    return path


def save_autoencoder(path: str | os.PathLike, model, layout: FieldLayout, statistics: Statistics) -> Path:
    """Write an autoencoder folder (see module docstring)."""
    path = Path(path)
    with atomic_path(path, overwrite=True) as folder:  # never a half-written folder
        model.save_pretrained(folder, safe_serialization=True)
        layout.save(folder / LAYOUT_FILE)
        statistics.save(folder / STATISTICS_FILE)
    return path


def load_autoencoder(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Read an autoencoder folder: (model in eval mode, layout, statistics)."""
    from latentda.nn.autoencoder import AutoEncoder

    path = check_model_folder(path, "autoencoder")
    layout = FieldLayout.load(path / LAYOUT_FILE)
    statistics = Statistics.load(path / STATISTICS_FILE)
    try:
        model = AutoEncoder.from_pretrained(path, use_safetensors=True)
    except Exception as error:  # diffusers raises several types for mismatched shapes / corrupt files
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LatentdaError(f"{path}: cannot load the autoencoder weights ({message})") from None
    if statistics.channels != layout.channels:
        raise LatentdaError(f"{path}: statistics channels {statistics.channels} do not match the layout {layout.channels}")
    if model.config.in_channels != layout.num_channels or tuple(model.config.sample_size) != layout.shape:
        raise LatentdaError(
            f"{path}: model expects {model.config.in_channels} channels on {tuple(model.config.sample_size)}, "
            f"layout has {layout.num_channels} on {layout.shape}"
        )
    return model.to(device).eval(), layout, statistics

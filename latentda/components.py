"""Saved component folders: a diffusers model folder plus the data description it was trained on.

An autoencoder folder is what ``latentda train-ae`` writes and ``latentda encode`` reads::

    autoencoder/
        config.json                          the model's registered config (diffusers)
        diffusion_pytorch_model.safetensors  the (EMA) weights; the only weight format accepted
        layout.json                          variables, levels, grid, periodicity (FieldLayout)
        statistics.json                      per-channel mean and std (Statistics)
        representation_error.json            optional: per-channel validation reconstruction RMSE,
                                             standardised units (absent in older folders: 0)

Loading checks that every file is present, that nothing but safetensors weights inside the folder
can be loaded (no pickle-based file, no index naming other shards, no link out of the folder), that
every weight is present and finite, and that the model's channels and grid agree with the layout and
the statistics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import logging as diffusers_logging

from latentda.config import read_json
from latentda.data.io import atomic_path
from latentda.data.layout import FieldLayout
from latentda.data.statistics import Statistics
from latentda.errors import LatentdaError
from latentda.processes import drop_dynamo_exit_report

drop_dynamo_exit_report()  # diffusers imported torch._dynamo: no import at interpreter exit (latentda.processes)

__all__ = ["save_autoencoder", "load_autoencoder", "load_model", "check_model_folder", "check_inside",
           "save_representation_error", "load_representation_error", "checked_representation_error", "UNSAFE_WEIGHT_SUFFIXES"]

UNSAFE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
LAYOUT_FILE = "layout.json"
STATISTICS_FILE = "statistics.json"
REPRESENTATION_FILE = "representation_error.json"


def _allowed_root(folder: Path) -> Path:
    """Where the files of ``folder`` must resolve: the folder itself, or for a Hugging Face cache
    snapshot (``.../models--org--name/snapshots/<revision>/...``, whose files are links into
    ``../blobs``) the repository's cache folder."""
    for parent in folder.absolute().parents:
        if parent.name == "snapshots" and parent.parent.name.startswith("models--"):
            return parent.parent.resolve()
    return folder.resolve()


def check_inside(path: str | os.PathLike, what: str) -> None:
    """Every file under the folder ``path`` resolves inside it (see :func:`_allowed_root`): a link out
    of a model or pipeline folder would make loading it read files the folder does not hold."""
    root = _allowed_root(Path(path))
    outside = [str(p.relative_to(path)) for p in sorted(Path(path).rglob("*")) if root not in p.resolve().parents]
    if outside:
        raise LatentdaError(f"{path}: refusing {', '.join(outside)}: a link to a file outside the {what} folder")


def check_model_folder(path: str | os.PathLike, what: str) -> Path:
    """Check ``path`` is a diffusers model folder from which only safetensors weights can be loaded.

    Refused: pickle-based weight files; any file resolving outside the folder (a link out of it);
    and a ``*.safetensors.index.json`` naming a shard that is not a plain ``.safetensors`` file name
    in the folder, since diffusers opens whatever an index names (a ``.bin`` shard with
    ``torch.load``, a ``../`` path outside the folder). So nothing is ever unpickled and no file
    outside the folder is read.
    """
    path = Path(path)
    if not path.is_dir():
        raise LatentdaError(f"{path}: {what} folder not found")
    files = sorted(path.iterdir())
    unsafe = [p.name for p in files if p.suffix in UNSAFE_WEIGHT_SUFFIXES]
    if unsafe:
        raise LatentdaError(f"{path}: refusing pickle-based weight file(s) {', '.join(unsafe)} (only safetensors is accepted)")
    check_inside(path, what)
    if not (path / "config.json").is_file():
        raise LatentdaError(f"{path}: {what} folder lacks config.json")
    if not any(p.suffix == ".safetensors" for p in files):
        raise LatentdaError(f"{path}: {what} folder has no .safetensors weights")
    for index in (p for p in files if p.name.endswith(".safetensors.index.json")):
        shards = read_json(index, "weight index").get("weight_map")
        names = sorted(set(shards.values())) if isinstance(shards, dict) else [None]
        for name in names:
            if not (isinstance(name, str) and name.endswith(".safetensors") and Path(name).name == name
                    and (path / name).is_file()):
                raise LatentdaError(f"{index}: refusing shard {name!r} (only .safetensors files in the {what} folder "
                                    "are loaded)")
    return path


def load_model(model_class, path: str | os.PathLike, what: str):
    """``model_class.from_pretrained`` on a checked folder (:func:`check_model_folder`), then every
    weight checked: none missing, unexpected or of the wrong shape (diffusers would leave a missing
    one on the meta device), and all finite (NaN weights would make every output NaN, silently)."""
    path = check_model_folder(path, what)
    _check_model_config(model_class, path / "config.json", what)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its warnings about missing weights become our one-line error
    try:
        model, info = model_class.from_pretrained(path, use_safetensors=True, output_loading_info=True)
    except Exception as error:  # diffusers raises several types for mismatched shapes / corrupt files
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LatentdaError(f"{path}: cannot load the {what} weights ({message})") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
    for problem in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        if info.get(problem):
            names = ", ".join(str(k[0] if isinstance(k, tuple) else k) for k in list(info[problem])[:3])
            raise LatentdaError(f"{path}: the {what} weights have {problem.replace('_', ' ')} ({names})")
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise LatentdaError(f"{path}: the {what} weight '{name}' holds NaN or inf values")
    return model


def _check_model_config(model_class, config_file: Path, what: str) -> None:
    """The model's ``config.json`` names ``model_class`` and only keys its constructor takes (diffusers
    would ignore a misspelt key and build the model with that setting's default)."""
    import inspect

    config = read_json(config_file, f"{what} config")
    named = config.get("_class_name", model_class.__name__)
    if named != model_class.__name__:
        raise LatentdaError(f"{config_file}: a {named} config, expected {model_class.__name__}")
    accepted = set(inspect.signature(model_class.__init__).parameters) | set(getattr(model_class, "ignore_for_config", ()))
    unknown = sorted(key for key in config if not key.startswith("_") and key not in accepted)
    if unknown:
        raise LatentdaError(f"{config_file}: unknown key(s) {', '.join(map(repr, unknown))} for the {what}")


def save_autoencoder(path: str | os.PathLike, model, layout: FieldLayout, statistics: Statistics,
                     representation_error=None) -> Path:
    """Write an autoencoder folder (see module docstring); ``representation_error``: the per-channel
    validation reconstruction RMSE in standardised units (None: no file, read back as 0)."""
    path = Path(path)
    with atomic_path(path, overwrite=True) as folder:  # never a half-written folder
        model.save_pretrained(folder, safe_serialization=True)
        layout.save(folder / LAYOUT_FILE)
        statistics.save(folder / STATISTICS_FILE)
        if representation_error is not None:
            save_representation_error(folder / REPRESENTATION_FILE, layout.channels, representation_error)
    return path


def save_representation_error(path: str | os.PathLike, channels: list[str], rmse) -> Path:
    """Write ``representation_error.json``: the autoencoder's reconstruction RMSE per channel on the
    validation split, in standardised units (a fraction of the channel's std)."""
    values = [float(v) for v in np.asarray(rmse, dtype=np.float64).reshape(-1)]
    record = {"channels": list(channels), "rmse": values,
              "units": "standardised (fraction of each channel's std in statistics.json)",
              "measured_on": "validation split"}
    Path(path).write_text(json.dumps(record, indent=1))
    return Path(path)


def load_representation_error(path: str | os.PathLike, channels: list[str]) -> np.ndarray:
    """The per-channel reconstruction RMSE (standardised units) of the autoencoder folder ``path``:
    zeros when it has no ``representation_error.json`` (folders written before it existed)."""
    file = Path(path) / REPRESENTATION_FILE
    if not file.is_file():
        return np.zeros(len(channels))
    record = read_json(file, "representation error")
    rmse = record.get("rmse") if isinstance(record, dict) else None
    if isinstance(record, dict) and record.get("channels", list(channels)) != list(channels):
        raise LatentdaError(f"{file}: 'rmse' must hold one value per channel {list(channels)}, got {rmse!r}")
    try:
        return checked_representation_error(rmse, channels)
    except LatentdaError as error:
        raise LatentdaError(f"{file}: 'rmse' {error}") from None


def checked_representation_error(rmse, channels: list[str]) -> np.ndarray:
    """``rmse`` as float64 if it holds one finite, non-negative value per channel (else a one-line error)."""
    try:
        values = np.asarray(rmse, dtype=np.float64)
    except (TypeError, ValueError):
        values = np.full(1, np.nan)
    if values.shape != (len(channels),):
        raise LatentdaError(f"must hold one value per channel {list(channels)}, got {rmse!r}")
    if not (np.isfinite(values).all() and (values >= 0).all()):
        raise LatentdaError(f"must be finite and non-negative, got {rmse!r}")
    return values


def autoencoder_fingerprint(path: str | os.PathLike, legacy: bool = False) -> str:
    """sha256 of what decides an autoencoder's latents: its config, weights, layout and statistics.
    ``latentda encode`` records it so that ``train-ldm`` can tell latents of another autoencoder (one
    retrained at the same path) from latents of this one, and ``init_from`` a pipeline of another.
    The config counts by its settings, without diffusers' bookkeeping keys (``_name_or_path``, which
    a re-save, e.g. into a pipeline folder, writes): a copy of the folder has the fingerprint of its
    original. ``legacy``: the fingerprint earlier latentda versions recorded, over config.json's bytes
    (still accepted from stores they encoded)."""
    import hashlib

    folder = Path(path)
    digest = hashlib.sha256()
    for name in ("config.json", LAYOUT_FILE, STATISTICS_FILE, *sorted(p.name for p in folder.glob("*.safetensors"))):
        content = (folder / name).read_bytes()
        if name == "config.json" and not legacy:
            settings = {k: v for k, v in json.loads(content).items() if not k.startswith("_")}
            content = json.dumps(settings, sort_keys=True).encode()
        digest.update(name.encode() + b"\0" + content + b"\0")
    return digest.hexdigest()


def load_autoencoder(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Read an autoencoder folder: (model in eval mode, layout, statistics)."""
    from latentda.nn.autoencoder import AutoEncoder

    path = check_model_folder(path, "autoencoder")
    layout = FieldLayout.load(path / LAYOUT_FILE)
    statistics = Statistics.load(path / STATISTICS_FILE)
    model = load_model(AutoEncoder, path, "autoencoder")
    if statistics.channels != layout.channels:
        raise LatentdaError(f"{path}: statistics channels {statistics.channels} do not match the layout {layout.channels}")
    if model.config.in_channels != layout.num_channels or tuple(model.config.sample_size) != layout.shape:
        raise LatentdaError(
            f"{path}: model expects {model.config.in_channels} channels on {tuple(model.config.sample_size)}, "
            f"layout has {layout.num_channels} on {layout.shape}"
        )
    return model.to(device).eval(), layout, statistics

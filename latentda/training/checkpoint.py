"""Training checkpoints in safetensors and JSON only (nothing is ever pickled or unpickled).

Accelerate's ``save_state`` writes the optimizer, scheduler and RNG states with ``torch.save``
(pickle) and ``load_state`` unpickles registered objects with ``weights_only=False``; a checkpoint
shared between users would then be able to run code. So a checkpoint here is a folder::

    step-000500/
        model.safetensors       the (unwrapped, gathered) model weights
        ema.safetensors         the exponential moving average of the weights
        optimizer.safetensors   every tensor of the optimizer state, keys "state.<param>.<name>"
        state.json              step, optimizer param groups, scheduler state, EMA counters

written to a temporary folder, flushed to disk (files and folder) and renamed once complete, so a run
killed while saving, or a node that crashes after it, leaves the previous checkpoint intact; older
ones are pruned only then. Resuming reads the newest checkpoint that loads whole: a corrupt newer one
is skipped with a warning (:func:`load_latest`). Random states are not needed: data order and noise are derived from
(seed, step) (see :mod:`latentda.training.loop`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from latentda.data.io import atomic_path, remove_path
from latentda.errors import LatentdaError

__all__ = ["save_checkpoint", "load_checkpoint", "load_latest", "latest_checkpoint", "list_checkpoints"]

_NAME = re.compile(r"^step-(\d+)$")


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``directory`` as (step, path), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1][1] if checkpoints else None


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor],
    optimizer_state: dict,
    extra: dict,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and keep only the ``keep`` most recent ones."""
    directory = Path(directory)
    path = directory / f"step-{step:06d}"
    for stale in [*directory.glob(".step-*.tmp-*"), *directory.glob(".step-*.old-*")]:
        remove_path(stale)  # the half-written folder of a save that was killed
    with atomic_path(path, overwrite=True) as temporary:
        temporary.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, temporary / "model.safetensors")
        save_file({k: v.detach().cpu().contiguous() for k, v in ema_state.items()}, temporary / "ema.safetensors")
        tensors, meta = _flatten_optimizer(optimizer_state)
        save_file(tensors, temporary / "optimizer.safetensors")
        (temporary / "state.json").write_text(json.dumps({"step": step, "optimizer": meta, **extra}, indent=1))
        for file in temporary.iterdir():
            _fsync(file)
        _fsync(temporary)
    _fsync(directory)  # the rename is on disk before an older checkpoint goes
    for _, old in list_checkpoints(directory)[:-keep]:
        remove_path(old)
    return path


def _fsync(path: Path) -> None:
    """Flush a file or a folder's entries to disk (a no-op where the system cannot sync folders)."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def load_latest(directory: str | os.PathLike) -> tuple | None:
    """(model_state, ema_state, optimizer_state, state_json, path) of the newest checkpoint in
    ``directory`` that reads whole, None when there is none. A corrupt newer one is skipped with a
    warning naming it (resuming from an older complete one loses steps, not the run); when every one
    is corrupt, the newest's error."""
    import warnings

    checkpoints = list_checkpoints(directory)
    first_error = None
    for _, path in reversed(checkpoints):
        try:
            loaded = (*load_checkpoint(path), path)
        except LatentdaError as error:
            first_error = first_error or error
            continue
        if first_error is not None:
            warnings.warn(f"{first_error}; resuming from the older {path.name}", stacklevel=2)
        return loaded
    if first_error is not None:
        raise first_error
    return None


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict, dict, dict]:
    """Read a checkpoint folder: (model_state, ema_state, optimizer_state, state_json)."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        model = load_file(path / "model.safetensors")
        ema = load_file(path / "ema.safetensors")
        optimizer = _unflatten_optimizer(load_file(path / "optimizer.safetensors"), state["optimizer"])
    except Exception as error:  # safetensors raises its own error type on a truncated file
        raise LatentdaError(f"{path}: corrupt or incomplete checkpoint ({error})") from None
    return model, ema, optimizer, state

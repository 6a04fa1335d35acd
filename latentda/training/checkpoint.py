"""Training checkpoints in safetensors and JSON only (nothing is ever pickled or unpickled).

Accelerate's ``save_state`` writes the optimizer, scheduler and RNG states with ``torch.save``
(pickle) and ``load_state`` unpickles registered objects with ``weights_only=False``; a checkpoint
shared between users would then be able to run code. So a checkpoint here is a folder::

    step-000500/
        model.safetensors       the (unwrapped, gathered) model weights
        ema.safetensors         the exponential moving average of the weights
        optimizer.safetensors   every tensor of the optimizer state, keys "state.<param>.<name>"
        state.json              step, optimizer param groups, scheduler state, EMA counters, fingerprints

written to a temporary folder, flushed to disk (files and folder) and renamed once complete, so a run
killed while saving, or a node that crashes after it, leaves the previous checkpoint intact; older
ones are pruned only then. Resuming reads the newest checkpoint that loads whole and is consistent
(:func:`load_checkpoint`; with the model, :func:`check_fits`): a corrupt newer one is skipped with a warning
(:func:`load_latest`). Random states are not needed: data order and noise are derived from
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
from latentda.processes import is_main_rank

__all__ = ["save_checkpoint", "load_checkpoint", "load_latest", "latest_checkpoint", "list_checkpoints", "check_fits"]

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


def load_latest(directory: str | os.PathLike, model: torch.nn.Module | None = None) -> tuple | None:
    """(model_state, ema_state, optimizer_state, state_json, path) of the newest checkpoint in
    ``directory`` that reads whole (and, given ``model``, fits it: :func:`check_fits`), None when there
    is none. A corrupt newer one is skipped with a warning naming it (resuming from an older complete
    one loses steps, not the run); when every one is corrupt, the newest's error."""
    import warnings

    checkpoints = list_checkpoints(directory)
    first_error = None
    for _, path in reversed(checkpoints):
        try:
            loaded = (*load_checkpoint(path), path)
            if model is not None:
                check_fits(loaded, model)
        except LatentdaError as error:
            first_error = first_error or error
            continue
        if first_error is not None and is_main_rank():  # once, not once per process
            warnings.warn(f"{first_error}; resuming from the older {path.name}", stacklevel=2)
        return loaded
    if first_error is not None:
        raise first_error
    return None


def _corrupt(path: Path, problem: str) -> LatentdaError:
    return LatentdaError(f"{path}: corrupt or incomplete checkpoint ({problem})")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict, dict, dict]:
    """Read a checkpoint folder: (model_state, ema_state, optimizer_state, state_json).

    Checked, else one line naming the checkpoint (:func:`load_latest` then tries an older one): every
    file reads; ``state.json``'s step is the folder's, the scheduler's count of steps is that step, the
    EMA's is a count and the optimizer has parameter groups; every floating tensor is finite (NaN
    weights would train NaN, or be written as the final model)."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        model = load_file(path / "model.safetensors")
        ema = load_file(path / "ema.safetensors")
        optimizer = _unflatten_optimizer(load_file(path / "optimizer.safetensors"), state["optimizer"])
    except Exception as error:  # safetensors raises its own error type on a truncated file
        raise _corrupt(path, str(error)) from None
    step = int(_NAME.match(path.name).group(1)) if _NAME.match(path.name) else None
    scheduler = state.get("scheduler")
    groups = optimizer["param_groups"]
    if not (_is_count(state.get("step")) and state["step"] == step):
        raise _corrupt(path, f"state.json: step {state.get('step')!r}, not the folder's {step}")
    if not (isinstance(scheduler, dict) and scheduler.get("last_epoch") == step):
        raise _corrupt(path, f"state.json: no scheduler state at step {step}")
    fingerprints = state.get("fingerprints", {})
    if not (isinstance(fingerprints, dict) and all(isinstance(v, str) for v in fingerprints.values())):
        raise _corrupt(path, f"state.json: fingerprints {fingerprints!r} are not sha256 by name")
    if not _is_count(state.get("ema_step")):
        raise _corrupt(path, f"state.json: ema_step {state.get('ema_step')!r} is not a count of steps")
    if not (isinstance(groups, list) and groups and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                         and _GROUP_KEYS <= g.keys() for g in groups)):
        raise _corrupt(path, "state.json: the optimizer's parameter groups are missing or incomplete")
    tensors = {"model.safetensors": model.items(), "ema.safetensors": ema.items(),
               "optimizer.safetensors": ((f"state.{i}.{n}", v) for i, values in optimizer["state"].items()
                                         for n, v in values.items() if isinstance(v, torch.Tensor))}
    for file, items in tensors.items():
        for name, tensor in items:
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise _corrupt(path, f"{file}: '{name}' holds NaN or inf values")
    return model, ema, optimizer, state


_GROUP_KEYS = frozenset({"params", "lr", "betas", "eps", "weight_decay"})  # AdamW's (the loop's optimizer)
_MOMENTS = ("exp_avg", "exp_avg_sq")


def check_fits(loaded: tuple, model: torch.nn.Module) -> None:
    """The checkpoint ``loaded`` (:func:`load_latest`'s tuple) fits ``model``: the same weights by name
    and shape (else "does not match the model": another config), the EMA of every parameter, and an
    AdamW state over the model's parameters (each index once in the groups; step and both moments of
    the parameter's shape). One line naming the checkpoint otherwise."""
    model_state, ema_state, optimizer_state, _, path = loaded
    expected = model.state_dict()
    if model_state.keys() != expected.keys() or any(model_state[k].shape != v.shape for k, v in expected.items()):
        raise LatentdaError(f"{path}: checkpoint does not match the model (different config?)")
    shapes = {name: p.shape for name, p in model.named_parameters()}
    wrong = sorted(ema_state.keys() ^ shapes.keys()) + [k for k in shapes if k in ema_state and ema_state[k].shape != shapes[k]]
    if wrong:
        raise _corrupt(path, f"ema.safetensors: '{wrong[0]}' missing, unexpected or of another shape")
    shapes = list(shapes.values())
    indices = [i for group in optimizer_state["param_groups"] for i in group["params"]]
    if not (all(_is_count(i) for i in indices) and sorted(indices) == list(range(len(shapes)))):
        raise _corrupt(path, "state.json: the optimizer's parameter groups are not the model's parameters")
    for index, values in optimizer_state["state"].items():
        if not (0 <= index < len(shapes) and "step" in values
                and all(isinstance(values.get(n), torch.Tensor) and values[n].shape == shapes[index] for n in _MOMENTS)):
            raise _corrupt(path, f"optimizer.safetensors: the state of parameter {index} is incomplete or of another shape")

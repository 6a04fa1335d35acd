"""Fully sharded data parallel training (FSDP2, ``torch.distributed.fsdp.fully_shard``).

With ``training.strategy: fsdp`` and P processes, every parameter, its gradient, its AdamW moments
and its EMA are split in P shards along their first dimension: rank r holds 1/P of each. Before a
unit's forward (and again in its backward) its full parameters are all-gathered, and its gradients
are reduce-scattered afterwards, so the update is the same as data-parallel training with the
global batch, while the memory of the model state falls from ~16 bytes per parameter (weights,
gradients, two moments; plus the EMA) per rank to that divided by P. The units are the model's
repeated blocks (``_no_split_modules``: transformer blocks, residual blocks) plus the root.

Accelerate only turns on its FSDP plugin on accelerator devices (CUDA, XPU, …); sharding with
torch's own ``fully_shard`` works on GPUs and on CPU processes (gloo) alike, so the same option is
tested on this CPU machine and used unchanged on a cluster. Accelerate still sets up the process
group, devices, autocast and the optimizer wrapper.

Checkpoints stay in one format whatever the strategy (full tensors, optimizer state keyed by the
parameter's index): the states are gathered here on save and sharded again on resume, so a run can
be resumed with another number of processes or with DDP.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from latentda.nn.compilation import repeated_blocks

__all__ = ["shard_model", "full_model_state", "full_tensor", "full_optimizer_state", "load_optimizer_state",
           "shard_like"]

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard_model(model: nn.Module) -> nn.Module:
    """Shard ``model`` in place: each block named in ``model._no_split_modules``, then the root."""
    for block in repeated_blocks(model):
        fully_shard(block)
    fully_shard(model)
    return model


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (a collective for a shard; the tensor itself otherwise)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's shard of ``full``, split as the sharded parameter ``like``."""
    if not isinstance(like, DTensor):
        return full.to(like.device)
    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gathered weights (a collective: call on every rank; the main process receives them)."""
    return get_model_state_dict(model, options=_FULL)


def _names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Gathered optimizer state keyed by parameter index, as ``optimizer.state_dict()`` of an unsharded
    model (a collective; the main process receives it)."""
    state = get_optimizer_state_dict(model, optimizer, options=_FULL)
    index = {name: i for i, name in enumerate(_names(model))}
    groups = [{**group, "params": [index[name] for name in group["params"]]} for group in state.get("param_groups", [])]
    return {"state": {index[name]: values for name, values in state.get("state", {}).items()}, "param_groups": groups}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Shard a full, index-keyed optimizer state (from a checkpoint) into ``optimizer`` (every rank)."""
    names = _names(model)
    by_name = {
        "state": {names[int(i)]: values for i, values in state["state"].items()},
        "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]} for group in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))

"""The blankets of one trajectory evaluated across processes: a tensor-parallel region.

The trajectory denoiser of :mod:`latentda.diffusion.blankets` is

    D(x) = S(W_1(x), …, W_n(x)),   W_i(x) = D_K(P_i x),

where P_i cuts window i (start s_i, K states) out of x (B, L, ...), D_K is the window denoiser and
S is the stitching: a selection that takes state t from the output of its most central window. With
P processes that all hold the same x (every process samples the same member from the same seed),
process r evaluates only the windows I_r = {r, r + P, r + 2P, …} and the outputs are exchanged:

    forward    D(x) = S(gather_r (W_i(x))_{i ∈ I_r})                       (same on every process)
    VJP        vᵀ ∂D/∂x = Σ_r Σ_{i ∈ I_r} (Sᵀ v)_iᵀ ∂W_i/∂x                  (Sᵀ v: one block per window)

Two autograd functions make autograd compute exactly this (the "copy to region" and "gather from
region" of Megatron-LM's tensor parallelism):

- :class:`CopyToRegion` enters the region: identity forward; its backward sums the gradient over the
  processes (all-reduce), since each process holds only the part Σ_{i ∈ I_r} of the sum above;
- :class:`GatherFromRegion` leaves it: forward concatenates the window outputs of all processes
  (all-gather); its backward returns this process's rows of the incoming gradient. That is exact
  because everything after the gather (stitching, guidance, sampler) runs identically on every
  process, so every process receives the same gradient Sᵀ v and needs only its own blocks.

Hence D(x) and every vector-Jacobian product through it (the MMPS/DPS guidance takes several per
step, each with ``retain_graph``) equal the one-process values up to the order of float additions,
while each process runs ⌈n/P⌉ of the n windows. Processes with fewer windows pad their outputs with
zero rows, which stitching never selects (so their gradient is zero). Every process must make the
same calls in the same order (one all-gather per evaluation, one all-reduce per backward), and each
needs at least one window. Alone (no process group, or a group of one) nothing here is used:
:func:`blanket_denoiser` returns the plain :class:`BlanketDenoiser`.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from latentda.diffusion.blankets import BlanketDenoiser, blanket_starts
from latentda.diffusion.settings import resolve_overlap
from latentda.errors import LatentdaError
from latentda.processes import collective_device, process_count

__all__ = ["CopyToRegion", "GatherFromRegion", "DistributedBlanketDenoiser", "blanket_denoiser", "check_blanket_split"]






def check_blanket_split(length: int, window: int, overlap: int | None, processes: int) -> None:
    """Every one of ``processes`` must get at least one blanket window of a trajectory of ``length``."""
    overlap = resolve_overlap(window, overlap)
    windows = len(blanket_starts(length, window, overlap))
    if windows < processes:
        raise LatentdaError(f"a trajectory of {length} states has {windows} blanket window(s) (window {window}, "
                            f"overlap {overlap}), fewer than the {processes} processes: use at most {windows} "
                            "processes, or split the members")


class CopyToRegion(torch.autograd.Function):
    """x ↦ x on every process; backward: g ↦ Σ_r g_r (all-reduce over ``group``)."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, gradient: Tensor):
        total = gradient.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total, None


class GatherFromRegion(torch.autograd.Function):
    """(m, ...) per process ↦ (P·m, ...), rows r·m … r·m + m − 1 from process r (all-gather);
    backward: g ↦ g[r·m : (r + 1)·m] on process r (g is the same on every process)."""

    @staticmethod
    def forward(ctx, local: Tensor, group) -> Tensor:
        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, local, group=group)
        ctx.rows = slice(dist.get_rank(group) * len(local), (dist.get_rank(group) + 1) * len(local))
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, gradient: Tensor):
        return gradient[ctx.rows], None


class DistributedBlanketDenoiser(BlanketDenoiser):
    """A :class:`BlanketDenoiser` whose windows are shared out over the processes of ``group``
    (see the module docstring); same values and gradients, 1/P of the windows per process."""

    def __init__(self, denoiser: Callable, window: int, overlap: int | None = None, batch_windows: int = 16,
                 group=None) -> None:
        super().__init__(denoiser, window, overlap, batch_windows)
        self.group = group

    def window_outputs(self, x_t: Tensor, sigma: Tensor, context: Tensor | None, starts: list[int]) -> Tensor:
        processes = process_count(self.group)
        if processes == 1:
            return super().window_outputs(x_t, sigma, context, starts)
        if len(starts) < processes:  # (the CLI checks before any work; this guards other callers)
            check_blanket_split(x_t.shape[1], self.window, self.overlap, processes)
        rank = dist.get_rank(self.group)
        share = -(-len(starts) // processes)  # ⌈n/P⌉ windows per process
        mine = super().window_outputs(CopyToRegion.apply(x_t, self.group), sigma, context, starts[rank::processes])
        if len(mine) < share:
            mine = torch.cat([mine, mine.new_zeros(share - len(mine), *mine.shape[1:])])
        gathered = GatherFromRegion.apply(mine, self.group)  # row r·share + j holds window r + j·P
        order = [(i % processes) * share + i // processes for i in range(len(starts))]
        return gathered[order]


def blanket_denoiser(denoiser: Callable, window: int, overlap: int | None = None, split: bool = False,
                     group=None) -> BlanketDenoiser:
    """The trajectory denoiser; with ``split`` and more than one process in ``group``, the windows are
    shared out over the processes (:class:`DistributedBlanketDenoiser`), otherwise the plain one."""
    if split and process_count(group) > 1:
        return DistributedBlanketDenoiser(denoiser, window, overlap, group=group)
    return BlanketDenoiser(denoiser, window, overlap)

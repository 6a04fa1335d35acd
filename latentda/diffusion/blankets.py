"""Trajectories longer than the denoiser's window: overlapping blankets (Rozet & Louppe 2023).

The window denoiser D_K sees K consecutive states. For a trajectory of L ≥ K states it runs on
windows starting at 0, S, 2S, …, and L − K (stride S = K − overlap), and each state t takes the
output of the window whose centre is nearest to t, so that every state is denoised with as much
context on both sides as the window allows. With n = ⌈(L − K)/S⌉ + 1 windows the cost is O(L) and
windows are evaluated ``batch_windows`` at a time, so memory grows at most linearly with L.
When L = K this is exactly the window denoiser. Written here because no library provides it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from latentda.diffusion.settings import resolve_overlap
from latentda.errors import LatentdaError

__all__ = ["blanket_starts", "resolve_overlap", "BlanketDenoiser"]


def blanket_starts(length: int, window: int, overlap: int) -> list[int]:
    """Start indices of the windows covering ``length`` states."""
    if length < window:
        raise LatentdaError(f"trajectory of {length} states is shorter than the window of {window}")
    if not 0 <= overlap < window:
        raise LatentdaError(f"overlap {overlap} must be in [0, {window})")
    stride = window - overlap
    starts = list(range(0, length - window, stride)) + [length - window]
    return sorted(set(starts))


class BlanketDenoiser:
    """Turns a window denoiser (B, K, ...) into a trajectory denoiser (B, L, ...)."""

    def __init__(self, denoiser: Callable, window: int, overlap: int | None = None, batch_windows: int = 16) -> None:
        self.denoiser = denoiser
        self.window = window
        self.overlap = resolve_overlap(window, overlap)
        self.batch_windows = batch_windows

    def assignment(self, length: int) -> tuple[list[int], Tensor]:
        """(window starts, index of the window each state takes its output from)."""
        starts = blanket_starts(length, self.window, self.overlap)
        centres = torch.tensor(starts, dtype=torch.float64) + (self.window - 1) / 2
        t = torch.arange(length, dtype=torch.float64)
        distance = (t[:, None] - centres[None, :]).abs()
        starts_t = torch.tensor(starts)
        inside = (t[:, None] >= starts_t[None, :]) & (t[:, None] < starts_t[None, :] + self.window)
        distance[~inside] = float("inf")
        return starts, distance.argmin(dim=1)

    def __call__(self, x_t: Tensor, sigma: Tensor | float, context: Tensor | None = None) -> Tensor:
        length = x_t.shape[1]
        if length == self.window:
            return self.denoiser(x_t, sigma, context) if context is not None else self.denoiser(x_t, sigma)
        starts, owner = self.assignment(length)
        sigma = torch.as_tensor(sigma, dtype=x_t.dtype, device=x_t.device)
        return self.stitch(self.window_outputs(x_t, sigma, context, starts), starts, owner)

    def window_outputs(self, x_t: Tensor, sigma: Tensor, context: Tensor | None, starts: list[int]) -> Tensor:
        """D_K on the windows x_t[:, s : s + K] for s in ``starts``: (len(starts), B, K, ...),
        evaluated ``batch_windows`` windows at a time."""
        batch = x_t.shape[0]
        outputs = []
        for first in range(0, len(starts), self.batch_windows):
            chunk = starts[first : first + self.batch_windows]
            windows = torch.cat([x_t[:, s : s + self.window] for s in chunk])  # (len(chunk)·B, K, ...)
            sig = sigma.expand(batch).repeat(len(chunk)) if sigma.ndim <= 1 else sigma
            if context is not None:
                ctx = torch.cat([context[:, s : s + self.window] for s in chunk])
                out = self.denoiser(windows, sig, ctx)
            else:
                out = self.denoiser(windows, sig)
            outputs.append(out.reshape(len(chunk), batch, *out.shape[1:]))
        return torch.cat(outputs)

    def stitch(self, outputs: Tensor, starts: list[int], owner: Tensor) -> Tensor:
        """The trajectory (B, L, ...) whose state t is state t − s of the output of its window (start s)."""
        owner = owner.to(outputs.device)
        offset = torch.arange(owner.numel(), device=outputs.device) - torch.tensor(starts, device=outputs.device)[owner]
        return outputs[owner, :, offset].transpose(0, 1)

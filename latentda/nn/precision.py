"""Reduced precision for inference: the networks' forward passes under ``torch.autocast``.

``precision`` names the dtype of the matrix products and convolutions of the denoiser and the
decoder (their forward, tangent and backward passes): ``float32`` (no autocast), ``bfloat16`` or
``float16``; ``auto`` is bfloat16 on a CUDA device that supports it and float32 elsewhere (on the
2-core CPU of docs/benchmarks.md bfloat16 was slower, ``tools/bench_precision.py``). Everything
around the networks — the CG solve of MMPS (float64), the sampler's updates, the observation
operator — keeps its own dtype: :class:`Autocast` returns its outputs in the input's dtype. The transformer's
query and key RMS norms run in float32 under autocast (``latentda.nn.transformer._rms_norm``).
torch is imported on first use, so that the command line lists :data:`PRECISIONS` without it.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = ["PRECISIONS", "resolve_precision", "autocast", "Autocast"]

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def resolve_precision(precision: str | None, device) -> torch.dtype:
    """The compute dtype that ``precision`` (one of :data:`PRECISIONS`, None = auto) means on ``device``."""
    import torch

    precision = precision or "auto"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}' (choose from {', '.join(PRECISIONS)})")
    if precision == "auto":
        cuda = torch.device(device).type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda else torch.float32
    return getattr(torch, precision)


def autocast(device, dtype: torch.dtype):
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or nothing for float32."""
    import torch

    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


class Autocast:
    """``fn(x, *args)`` computed under :func:`autocast`, its output cast back to x's dtype."""

    def __init__(self, fn: Callable[..., Tensor], device, dtype: torch.dtype) -> None:
        import torch

        self.fn, self.device, self.dtype = fn, device, dtype
        self.reduced = dtype != torch.float32

    def __call__(self, x: Tensor, *args, **kwargs) -> Tensor:
        if not self.reduced:
            return self.fn(x, *args, **kwargs)
        with autocast(self.device, self.dtype):
            out = self.fn(x, *args, **kwargs)
        return out.to(x.dtype)

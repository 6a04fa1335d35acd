"""Devices: a name the user gives (``cpu``, ``cuda``, ``cuda:N``, ``mps``) checked against what torch sees
on this machine, so that a wrong one is a one-line error before any weight is read, not an assertion deep
in torch. torch is imported on first use (``import latentda`` stays cheap)."""

from __future__ import annotations

from latentda.errors import LatentdaError

__all__ = ["check_device"]


def check_device(device, what: str = "device") -> None:
    """``device`` (a name or a ``torch.device``) is one this machine has (cpu, cuda, cuda:N and mps are counted; another
    backend torch knows is left to torch); errors begin with ``what``."""
    import torch

    try:
        device = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise LatentdaError(f"{what} {device}: not a device (cpu, cuda, cuda:N or mps)") from None
    if device.type == "meta":  # shapes without data: nothing could be sampled or written
        raise LatentdaError(f"{what} {device}: the meta device holds no data; use cpu, cuda, cuda:N or mps")
    count = {"cpu": 1, "cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
             "mps": int(torch.backends.mps.is_available())}
    if device.type not in count:  # another backend torch knows (xpu, …): its own errors tell
        return
    if (device.index or 0) >= count[device.type]:
        raise LatentdaError(f"{what} {device}: this machine has {count[device.type]} {device.type} device(s)")

"""The exact denoiser of a Gaussian prior: ground truth for samplers and posterior guidance.

With x ~ N(μ, Σ) and x_t = x + σ ε (VE),

    E[x | x_t] = μ + Σ (Σ + σ² I)⁻¹ (x_t − μ),     V[x | x_t] = Σ − Σ (Σ + σ² I)⁻¹ Σ.

Used by the tests and benchmarks to check samplers and MMPS against closed forms.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["GaussianDenoiser"]


class GaussianDenoiser:
    """E[x | x_t] for x ~ N(mean, covariance) over flattened states of shape ``event_shape``."""

    def __init__(self, mean: Tensor, covariance: Tensor, event_shape: tuple[int, ...] | None = None) -> None:
        self.mean = mean.flatten()
        self.covariance = covariance
        self.event_shape = tuple(event_shape) if event_shape is not None else tuple(mean.shape)

    def __call__(self, x_t: Tensor, sigma: Tensor | float) -> Tensor:
        batch = x_t.shape[0]
        flat = x_t.reshape(batch, -1).to(self.mean.dtype)
        sigma = torch.as_tensor(sigma, dtype=self.mean.dtype).reshape(-1)
        eye = torch.eye(self.mean.numel(), dtype=self.mean.dtype)
        gains = [self.covariance @ torch.linalg.inv(self.covariance + s**2 * eye) for s in sigma]
        gain = torch.stack(gains) if len(gains) > 1 else gains[0].expand(batch, -1, -1)
        out = self.mean + torch.einsum("bij,bj->bi", gain, flat - self.mean)
        return out.reshape(x_t.shape).to(x_t.dtype)

    def posterior_covariance(self, sigma: float) -> Tensor:
        """V[x | x_t] at noise level σ."""
        eye = torch.eye(self.mean.numel(), dtype=self.mean.dtype)
        return self.covariance - self.covariance @ torch.linalg.solve(self.covariance + sigma**2 * eye, self.covariance)

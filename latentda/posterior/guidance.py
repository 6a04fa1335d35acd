"""Posterior guidance: turn a prior denoiser into a posterior denoiser given y = A(x) + ε.

Both guided denoisers take any denoiser callable ``denoise(x_t, σ) -> E[x | x_t]``, any
differentiable operator ``A(x) -> (B, M)`` and observations y — (M,) shared by every batch row, or
(B, M), one row per member — with a diagonal noise covariance Σ_y = diag(noise_std²), and return a
callable of the same signature, to hand to any sampler of :mod:`latentda.diffusion.sampling`.
Batch rows are independent: the solve is per row, so a member's guided mean does not depend on
the members that share its batch.

**MMPS** (Rozet et al. 2024). With x̂ = E[x | x_t] and the Tweedie covariance
V[x | x_t] ≈ σ² ∂x̂/∂x_t, the likelihood p(y | x_t) ≈ N(y | A(x̂), Σ_y + A V Aᵀ) with A linearised
at x̂ gives the guided mean

    E[x | x_t, y] ≈ x̂ + σ² ∇_{x_t} (A(x̂)ᵀ u),   (Σ_y + σ² A J Aᵀ) u = y − A(x̂),   J = ∂x̂/∂x_t,

where u is found by a fixed number of CG (or GMRES) iterations in float64. For a learned denoiser
σ² A J Aᵀ need not be a covariance (J is neither symmetric nor positive semi-definite); CG, given Σ_y,
solves with it made one in its Krylov space and leaves the mean uncorrected along directions of
negative variance (:func:`latentda.posterior.solvers.conjugate_gradient`). Each matrix-vector
product costs one VJP through A (Aᵀ·), one VJP through the denoiser (Jᵀ· = J· for an exact
denoiser, whose Jacobian is symmetric) and one JVP through A (A·). The graphs of the denoiser and
of A are built once per step and reused by every iteration. An operator may bring its own
linearisation (``A.linearize(x̂)``; the decoded operator of :mod:`latentda.posterior.reanalysis`
takes A·v by one tangent pass through the decoder, about one decoder forward); otherwise A·v is the
transpose of its VJP (a double backward through the graph of Aᵀ w, linear in w). Either way A —
the decoder, when A acts through it — is evaluated once per step, never once per iteration. The correction
∇_{x_t}(A(x̂)ᵀ u) = Jᵀ Aᵀ u is linear in u = Σ_k c_k p_k, a combination of the vectors the solver multiplied, so
it is summed from their products Jᵀ Aᵀ p_k (:mod:`latentda.posterior.solvers`, ``lifted``) rather than paid as
one more VJP through the denoiser and A: n iterations cost n VJPs of each, not n + 1. For a Gaussian prior with
its exact denoiser and linear A, M iterations reproduce E[x | x_t, y] exactly.

**DPS** (Chung et al. 2022), the baseline: V = 0, so u = Σ_y⁻¹ (y − A(x̂)) and the guided mean is
x̂ + ζ σ² ∇_{x_t} (A(x̂)ᵀ u), one VJP through the denoiser and A (ζ = ``scale``, 1 by default).

Written here because no library implements MMPS; the decoder-Jacobian plumbing follows DESIGN.md.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from latentda.posterior.solvers import SOLVERS, conjugate_gradient

__all__ = ["MMPSDenoiser", "DPSDenoiser", "Unguided", "Operator", "Linearization", "linearize"]

Operator = Callable[[Tensor], Tensor]
Denoise = Callable[[Tensor, Tensor], Tensor]


def _check_observations(y: Tensor, noise_std: Tensor | float) -> tuple[Tensor, Tensor]:
    """y as (M,) (shared by every batch row) or (B, M) (one row per member); σ_y as (M,)."""
    y = torch.as_tensor(y)
    y = y if y.ndim == 2 else y.flatten()
    noise_std = torch.as_tensor(noise_std, dtype=torch.float64).flatten().expand(y.shape[-1:]).clone()
    if not torch.isfinite(y).all():
        raise ValueError("observations contain NaN or inf values (drop unobserved entries)")
    if not (noise_std > 0).all():
        raise ValueError("observation noise std must be positive")
    return y, noise_std


class Linearization:
    """A(x) linearised at x̂ from one graph: ``value`` = A(x̂), ``forward(v)`` = A v, ``transpose(u)`` = Aᵀ u.

    The graph of ŷ = A(x̂) is built once; Aᵀ·u is a backward through it, and A·v is a backward
    through the graph of w ↦ Aᵀ w (linear in w, built once with ``create_graph``): the transpose of
    the transpose. Operators may provide their own ``linearize(x̂)`` returning an object with the
    same three members (e.g. :class:`latentda.posterior.reanalysis.ChunkedLatentOperator`, which
    trades recomputation for memory).
    """

    def __init__(self, operator: Operator, anchor: Tensor) -> None:
        with torch.enable_grad():
            self.anchor = anchor.detach().requires_grad_(True)
            self.predicted = operator(self.anchor)
        self.value = self.predicted.detach()
        self.transposed = None  # built on the first forward product (DPS never needs it)

    def transpose(self, u: Tensor) -> Tensor:
        return torch.autograd.grad(self.predicted, self.anchor, u.to(self.predicted.dtype), retain_graph=True)[0]

    def forward(self, v: Tensor) -> Tensor:
        if self.transposed is None:
            with torch.enable_grad():
                self.probe = torch.zeros_like(self.predicted, requires_grad=True)
                (self.transposed,) = torch.autograd.grad(self.predicted, self.anchor, self.probe, create_graph=True)
        return torch.autograd.grad(self.transposed, self.probe, v.to(self.transposed.dtype), retain_graph=True)[0]


def linearize(operator, anchor: Tensor):
    """The operator's own linearisation when it has one, else a :class:`Linearization`."""
    own = getattr(operator, "linearize", None)
    return own(anchor) if own is not None else Linearization(operator, anchor)


class _Guided:
    def __init__(self, denoise: Denoise, operator: Operator, y: Tensor, noise_std: Tensor | float) -> None:
        self.denoise = denoise
        self.operator = operator
        self.y, self.noise_std = _check_observations(y, noise_std)

    def _setup(self, x_t: Tensor, sigma: Tensor):
        """The step's graphs: x̂ = D(x_t) with Jᵀ· by backward, and A linearised at x̂."""
        with torch.enable_grad():
            x_t = x_t.detach().requires_grad_(True)
            mean = self.denoise(x_t, sigma)

        def jacobian_transpose(v: Tensor) -> Tensor:
            return torch.autograd.grad(mean, x_t, v.to(mean.dtype), retain_graph=True)[0]

        return mean, jacobian_transpose, linearize(self.operator, mean.detach())


class MMPSDenoiser(_Guided):
    """E[x | x_t, y] by moment matching (see module docstring); ``iterations`` solver steps."""

    def __init__(self, denoise: Denoise, operator: Operator, y: Tensor, noise_std: Tensor | float,
                 iterations: int = 3, solver: str = "cg") -> None:
        super().__init__(denoise, operator, y, noise_std)
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver '{solver}' (choose from {', '.join(SOLVERS)})")
        if iterations < 1:
            raise ValueError(f"solver iterations must be at least 1, got {iterations}")
        self.iterations = iterations
        self.solve = SOLVERS[solver]

    def __call__(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        mean, jacobian_transpose, A = self._setup(x_t, sigma)
        variance = torch.as_tensor(sigma, dtype=torch.float64) ** 2
        noise_var = self.noise_std.to(A.value.device) ** 2

        def matvec(u: Tensor) -> tuple[Tensor, Tensor]:  # (M u, Jᵀ Aᵀ u): the solver sums the correction
            lifted = jacobian_transpose(A.transpose(u))
            return noise_var * u + variance * A.forward(lifted).double(), lifted

        residual = self.y.to(A.value.device, torch.float64) - A.value.double()
        # CG makes σ² A J Aᵀ a covariance in its Krylov space where it is not one (solvers.conjugate_gradient)
        noise_part = {"shift": noise_var.double()} if self.solve is conjugate_gradient else {}
        _, correction = self.solve(matvec, residual, self.iterations, lifted=True, **noise_part)  # Jᵀ Aᵀ u, no further product
        return (mean.detach() + (variance * correction).to(mean.dtype)).detach()


class DPSDenoiser(_Guided):
    """Diffusion posterior sampling as a guided mean: V = 0 (see module docstring)."""

    def __init__(self, denoise: Denoise, operator: Operator, y: Tensor, noise_std: Tensor | float, scale: float = 1.0) -> None:
        super().__init__(denoise, operator, y, noise_std)
        self.scale = scale

    def __call__(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        mean, jacobian_transpose, A = self._setup(x_t, sigma)
        weights = (self.y.to(A.value.device, torch.float64) - A.value.double()) / self.noise_std.to(A.value.device) ** 2
        gradient = jacobian_transpose(A.transpose(weights))
        variance = torch.as_tensor(sigma, dtype=torch.float64) ** 2
        return (mean.detach() + (self.scale * variance * gradient.double()).to(mean.dtype)).detach()


class Unguided:
    """A denoiser called without gradients (a sample no observation guides)."""

    def __init__(self, denoise) -> None:
        self.denoise = denoise

    def __call__(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        with torch.no_grad():
            return self.denoise(x_t, sigma)

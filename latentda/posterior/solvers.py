"""Batched Krylov solvers with a fixed number of iterations (for the MMPS linear system).

Both solve M u = b for a batch of right-hand sides b (B, n) given only the product v ↦ M v, in the
dtype of b (float64 in MMPS), with a fixed iteration count so that the cost of a guided step is
known in advance. In exact arithmetic, conjugate gradients (M symmetric positive definite) and
GMRES (any invertible M) both return the exact solution after n iterations.
Written here because torch has no batched matrix-free CG/GMRES with a fixed iteration count.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["conjugate_gradient", "gmres", "SOLVERS"]

MatVec = Callable[[Tensor], Tensor]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=-1, keepdim=True)


def conjugate_gradient(matvec: MatVec, b: Tensor, iterations: int) -> Tensor:
    """u ≈ M⁻¹ b by ``iterations`` CG steps from u₀ = 0 (M symmetric positive definite).

    r₀ = p₀ = b; α = rᵀr / pᵀMp; u += α p; r −= α Mp; β = r'ᵀr' / rᵀr; p = r' + β p.
    A direction of non-positive curvature (pᵀMp ≤ 0, possible when a learned denoiser's Jacobian
    is not positive semi-definite) ends that system's iterations instead of diverging.
    """
    u = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = _dot(r, r)
    tiny = torch.finfo(b.dtype).tiny
    active = torch.ones_like(rr, dtype=torch.bool)
    for _ in range(iterations):
        mp = matvec(p)
        curvature = _dot(p, mp)
        active = active & (curvature > 0) & (rr > 0)
        alpha = torch.where(active, rr / curvature.where(active, torch.ones_like(curvature)), torch.zeros_like(rr))
        u = u + alpha * p
        r = r - alpha * mp
        rr_next = _dot(r, r)
        p = r + (rr_next / rr.clamp_min(tiny)) * p
        rr = rr_next
    return u


def gmres(matvec: MatVec, b: Tensor, iterations: int) -> Tensor:
    """u ≈ M⁻¹ b by GMRES with ``iterations`` Arnoldi steps from u₀ = 0 (no restart).

    Builds an orthonormal Krylov basis Q of span{b, Mb, …} (modified Gram–Schmidt) and the
    Hessenberg matrix H with M Q_k = Q_{k+1} H, then minimises ‖β e₁ − H c‖ and returns u = Q_k c.
    """
    batch, n = b.shape
    beta = b.norm(dim=-1, keepdim=True)
    tiny = torch.finfo(b.dtype).tiny
    basis = [b / beta.clamp_min(tiny)]
    hessenberg = torch.zeros(batch, iterations + 1, iterations, dtype=b.dtype, device=b.device)
    for k in range(iterations):
        w = matvec(basis[k])
        for j in range(k + 1):
            h = _dot(w, basis[j])
            hessenberg[:, j, k] = h[:, 0]
            w = w - h * basis[j]
        norm = w.norm(dim=-1, keepdim=True)
        hessenberg[:, k + 1, k] = norm[:, 0]
        basis.append(w / norm.clamp_min(tiny))
    rhs = torch.zeros(batch, iterations + 1, 1, dtype=b.dtype, device=b.device)
    rhs[:, 0, 0] = beta[:, 0]
    coefficients = torch.linalg.lstsq(hessenberg, rhs).solution[..., 0]  # (B, iterations)
    return torch.einsum("bk,kbn->bn", coefficients, torch.stack(basis[:iterations]))


SOLVERS = {"cg": conjugate_gradient, "gmres": gmres}

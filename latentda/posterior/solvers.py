"""Batched Krylov solvers with a fixed number of iterations (for the MMPS linear system).

Both solve M u = b for a batch of right-hand sides b (B, n) given only the product v ↦ M v, in the
dtype of b (float64 in MMPS), with a fixed iteration count so that the cost of a guided step is
known in advance. In exact arithmetic, conjugate gradients (M symmetric positive definite) and
GMRES (any invertible M) both return the exact solution after n iterations.
Written here because torch has no batched matrix-free CG/GMRES with a fixed iteration count.

With ``lifted``, ``matvec`` returns the pair (M p, L p) for a linear map L whose product M needs
anyway (in MMPS, M p = Σ_y p + σ² A J Jᵀ Aᵀ p needs L p = Jᵀ Aᵀ p), and the solver returns
(u, L u): u is a linear combination Σ c_k p_k of the vectors it multiplied, so L u = Σ c_k L p_k
costs no further product (MMPS's correction Jᵀ Aᵀ u without one more backward pass through the
denoiser and the decoder).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["conjugate_gradient", "gmres", "SOLVERS"]

MatVec = Callable[[Tensor], "Tensor | tuple[Tensor, Tensor]"]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=-1, keepdim=True)


def _scaled(coefficient: Tensor, lifted: Tensor) -> Tensor:
    """coefficient (B, 1) times L p (B, ...), in float64."""
    return coefficient.reshape(-1, *[1] * (lifted.dim() - 1)) * lifted.double()


def conjugate_gradient(matvec: MatVec, b: Tensor, iterations: int, lifted: bool = False,
                       shift: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """u ≈ M⁻¹ b by ``iterations`` CG steps from u₀ = 0 (M symmetric positive definite); with
    ``lifted``, (u, L u) (module docstring).

    r₀ = p₀ = b; α = rᵀr / pᵀMp; u += α p; r −= α Mp; β = r'ᵀr' / rᵀr; p = r' + β p.
    A direction of non-positive curvature (pᵀMp ≤ 0) ends that system's iterations instead of
    diverging. ``shift``: the known diagonal s > 0 of M = diag(s) + C, C positive semi-definite by
    construction (MMPS: s = σ_y², C = σ² A V Aᵀ, a covariance); a direction p with pᵀCp =
    pᵀMp − pᵀ diag(s) p ≤ 0 then ends the iterations too. A learned denoiser's Jacobian is neither
    symmetric nor positive semi-definite: along such a p the system's "covariance" is negative, M
    (still positive there) is smaller than the noise alone, and the step α = rᵀr / pᵀMp moves u
    further than any covariance allows. Truncating at the first such direction keeps u in the Krylov
    directions along which the model is a covariance (as Steihaug's truncated CG stops at negative
    curvature) and changes nothing for an exact denoiser. A partial guard: a negative variance mixed
    into directions whose pᵀCp stays positive goes undetected — 10 iterations on the exactness
    benchmark's learned prior come back from a variance ratio of 2.59 to 1.82 (3: 1.73), 8 on QG still
    diverge (docs/exactness.md, "What the excess is not, and what was measured").
    """
    u = torch.zeros_like(b)
    lu = None
    r = b.clone()
    p = r.clone()
    rr = _dot(r, r)
    tiny = torch.finfo(b.dtype).tiny
    active = torch.ones_like(rr, dtype=torch.bool)
    for _ in range(iterations):
        mp, lp = matvec(p) if lifted else (matvec(p), None)
        curvature = _dot(p, mp)
        floor = _dot(p, shift * p) if shift is not None else 0.0
        active = active & (curvature > floor) & (curvature > 0) & (rr > 0)
        alpha = torch.where(active, rr / curvature.where(active, torch.ones_like(curvature)), torch.zeros_like(rr))
        u = u + alpha * p
        if lifted:
            lu = _scaled(alpha, lp) if lu is None else lu + _scaled(alpha, lp)
        r = r - alpha * mp
        rr_next = _dot(r, r)
        p = r + (rr_next / rr.clamp_min(tiny)) * p
        rr = rr_next
    return (u, lu) if lifted else u


def gmres(matvec: MatVec, b: Tensor, iterations: int, lifted: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """u ≈ M⁻¹ b by GMRES with ``iterations`` Arnoldi steps from u₀ = 0 (no restart); with
    ``lifted``, (u, L u) = (Q_k c, Σ c_k L q_k) (module docstring).

    Builds an orthonormal Krylov basis Q of span{b, Mb, …} (modified Gram–Schmidt) and the
    Hessenberg matrix H with M Q_k = Q_{k+1} H, then minimises ‖β e₁ − H c‖ and returns u = Q_k c.
    """
    batch, n = b.shape
    beta = b.norm(dim=-1, keepdim=True)
    tiny = torch.finfo(b.dtype).tiny
    basis = [b / beta.clamp_min(tiny)]
    lifts = []
    hessenberg = torch.zeros(batch, iterations + 1, iterations, dtype=b.dtype, device=b.device)
    for k in range(iterations):
        w = matvec(basis[k])
        if lifted:
            w, lq = w
            lifts.append(lq)
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
    u = torch.einsum("bk,kbn->bn", coefficients, torch.stack(basis[:iterations]))
    if not lifted:
        return u
    return u, sum(_scaled(coefficients[:, k : k + 1], lifts[k]) for k in range(iterations))


SOLVERS = {"cg": conjugate_gradient, "gmres": gmres}

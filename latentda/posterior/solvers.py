"""Batched Krylov solvers with a fixed number of iterations (for the MMPS linear system).

Both solve M u = b for a batch of right-hand sides b (B, n) given only the product v ↦ M v, in the
dtype of b (float64 in MMPS), with a fixed iteration count so that the cost of a guided step is
known in advance. In exact arithmetic, conjugate gradients (M symmetric positive definite) and
GMRES (any invertible M) both return the exact solution after n iterations. Given M = diag(s) + C
with C meant to be a covariance (``shift`` = s), CG makes C one in its Krylov space where it is not
(:func:`_clip_covariance`).
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

CONVERGED = 1e-12  # CG: a residual below this fraction of ‖b‖ ends the iterations that count
NEGATIVE_FLOOR = 1e-10  # CG: a variance of C below −this × (its largest + max s) makes the Krylov space's C not a covariance
GRAM_FLOOR = 1e-12  # CG: Krylov directions below this fraction of the Gram matrix's largest eigenvalue are dependent

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
    diverging. ``shift``: the known diagonal s > 0 of M = diag(s) + C whose part C should be a
    covariance but need not be — MMPS's σ² A J Aᵀ with a learned denoiser's Jacobian, neither
    symmetric nor positive semi-definite (docs/exactness.md, "The guidance's covariance made one").
    C is then made one in the Krylov space before u is formed (:func:`_clip_covariance`): where it
    already is one (an exact denoiser), u is CG's iterate unchanged.
    """
    u = torch.zeros_like(b)
    lu = None
    r = b.clone()
    p = r.clone()
    rr = _dot(r, r)
    tiny = torch.finfo(b.dtype).tiny
    active = torch.ones_like(rr, dtype=torch.bool)
    history = []  # with shift: per iteration (r, rᵀr, β, M p, L p, active)
    for _ in range(iterations):
        mp, lp = matvec(p) if lifted else (matvec(p), None)
        curvature = _dot(p, mp)
        active = active & (curvature > 0) & (rr > 0)
        alpha = torch.where(active, rr / curvature.where(active, torch.ones_like(curvature)), torch.zeros_like(rr))
        if shift is not None:
            history.append([r, rr, None, mp, lp, active])
        u = u + alpha * p
        if lifted:
            lu = _scaled(alpha, lp) if lu is None else lu + _scaled(alpha, lp)
        r = r - alpha * mp
        rr_next = _dot(r, r)
        beta = rr_next / rr.clamp_min(tiny)
        p = r + beta * p
        rr = rr_next
        if shift is not None:
            history[-1][2] = beta
    if shift is not None:
        return _clip_covariance(history, shift, u, lu)
    return (u, lu) if lifted else u


def _clip_covariance(history: list, shift: Tensor, u: Tensor, lu: Tensor | None):
    """CG's iterate (u, L u) where C (M = diag(s) + C) is a covariance on the Krylov space; where it is
    not, the Galerkin solve in that space with C made a covariance and u kept to its directions of
    variance ≥ 0.

    V = [v_0 … v_{k−1}], v_j = r_j / ‖r_j‖, spans CG's Krylov space. C's quadratic form on span V, from
    the products CG made (M v_j = (M p_j − β_{j−1} M p_{j−1}) / ‖r_j‖, since r_j = p_j − β_{j−1} p_{j−1}),
    is F = ½ (Vᵀ M V + (Vᵀ M V)ᵀ) − Vᵀ diag(s) V. With the Gram matrix G = VᵀV = U diag(g) Uᵀ, E = U g^−½
    maps to orthonormal coordinates (V E is orthonormal; directions with g ≤ 10⁻¹² max g, where V is
    dependent after n iterations, are left out: they add nothing to u), and Eᵀ F E = W Λ Wᵀ gives C's
    principal directions in span V. If Λ ≥ 0 (an exact denoiser: C a covariance), CG's iterate is
    returned as it is. Otherwise, with S = Eᵀ Vᵀ diag(s) V E and C⁺ = W max(Λ, 0) Wᵀ,

        (S + C⁺) y = Eᵀ Vᵀ b,   u = V E P₊ y,   P₊ = W 1[Λ ≥ 0] Wᵀ.

    A negative variance is found in the whole Krylov space — also one mixed into directions with
    pᵀCp > 0 — and u has no part along it. MMPS corrects the mean by σ² Jᵀ Aᵀ u; along a direction of
    negative variance the plain solve divides by less than the noise alone, and the learned Jacobian
    then pushes the mean away from y, while a covariance clipped to 0 there corrects nothing there.
    For symmetric M after n iterations, u = P₊ (diag(s) + C⁺)⁻¹ b (C⁺: sym(C)'s negative eigenvalues set
    to 0, P₊ the projector on its other eigenvectors). Since S + C⁺ ⪰ S, yᵀ S y ≤ y·Eᵀ Vᵀ b: ‖u‖ ≤ ‖b‖ /
    min s, no more than the noise alone allows. The Galerkin solve, not CG's iterate projected: with a
    negative direction CG's other coefficients are already thrown off by it (measured on the exactness
    benchmark, docs/exactness.md). Iterations after a stop (non-positive curvature, or a residual below
    10⁻¹² ‖b‖) are left out. Cost beyond CG's: O(k² n) for the k × k forms and two k × k
    eigendecompositions per system; L u = Σ c_j L v_j from the products L p_j.
    """
    k = len(history)
    residuals, rr, beta, mp, lp, active = (list(column) for column in zip(*history))
    dtype, device, batch = residuals[0].dtype, residuals[0].device, residuals[0].shape[0]
    tiny = torch.finfo(dtype).tiny
    zero = torch.zeros((), dtype=dtype, device=device)
    real = torch.cat([a & (value > CONVERGED**2 * rr[0]) for a, value in zip(active, rr)], dim=1)  # (B, k), a prefix
    norms = [value.clamp_min(tiny).sqrt() for value in rr]
    V = torch.stack([r / norm for r, norm in zip(residuals, norms)], dim=1) * real[..., None]  # (B, k, n), 0 after a stop
    MV = torch.stack([(mp[j] - (beta[j - 1] * mp[j - 1] if j else 0)) / norms[j] for j in range(k)], dim=1) * real[..., None]
    K = V @ MV.mT  # K_ij = v_iᵀ M v_j
    noise = torch.einsum("bin,bjn->bij", V * shift, V)  # Vᵀ diag(s) V
    form = 0.5 * (K + K.mT) - noise  # C's quadratic form on span V (0 after a stop: V's rows are)
    gram, U = torch.linalg.eigh(V @ V.mT)  # G = U diag(g) Uᵀ
    independent = gram > GRAM_FLOOR * gram.amax(dim=-1, keepdim=True)  # after n iterations V is dependent
    to_orthonormal = U * (1 / gram.clamp_min(tiny).sqrt()).where(independent, zero)[:, None, :]  # V U g^−½: orthonormal
    values, W = torch.linalg.eigh(to_orthonormal.mT @ form @ to_orthonormal)  # C's form, orthonormal coordinates
    # C is not a covariance on this system's Krylov space: a variance below −10⁻¹⁰ of the scale (rounding is not one)
    negative = (values < -NEGATIVE_FLOOR * (values.abs().amax(dim=-1, keepdim=True) + shift.amax())).any(dim=-1)
    clipped = to_orthonormal.mT @ noise @ to_orthonormal + W @ (values.clamp_min(0)[..., None] * W.mT)  # S + C⁺
    independent_pairs = independent[:, :, None] & independent[:, None, :]
    eye = torch.eye(k, dtype=dtype, device=device).expand(batch, -1, -1)
    y = torch.linalg.solve(clipped.where(independent_pairs, eye), to_orthonormal.mT @ (V @ residuals[0][..., None]))
    c = (to_orthonormal @ (W @ ((values >= 0)[..., None] * (W.mT @ y))))[..., 0].where(real, zero)  # E P₊ y on V, (B, k)
    u = torch.where(negative[:, None], torch.einsum("bk,bkn->bn", c, V), u)
    if lu is None:
        return u
    galerkin = None
    for j in range(k):  # L v_j = (L p_j − β_{j−1} L p_{j−1}) / ‖r_j‖
        lr = lp[j].double() - (_scaled(beta[j - 1], lp[j - 1]) if j else 0)
        term = _scaled(c[:, j : j + 1] / norms[j], lr)
        galerkin = term if galerkin is None else galerkin + term
    return u, torch.where(negative.reshape(-1, *[1] * (lu.dim() - 1)), galerkin, lu)


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

"""Observation operators in pixel (physical) space: y = H(x) + ε, ε ~ N(0, diag(σ²)).

An operator acts on physical fields x of shape (B, T, C, H, W) (B trajectories, T times, C
channels as stacked by the :class:`FieldLayout`) and returns the observed values as (B, M). It is a
composition of three parts, each differentiable (the posterior sampler needs JVPs and VJPs):

1. a *transform* of the source channels, per pixel:
   ``identity`` (one channel), ``speed`` √(u² + v²) (two channels, e.g. wind or current speed),
   ``saturate`` s·tanh(x / s) (a sensor that saturates at ±s);
2. a *sampling* of the transformed field at each time:
   ``grid`` every pixel; ``coarsen`` block averages over k × k pixels (the field is cropped to a
   multiple of k); ``points`` bilinear interpolation at arbitrary (off-grid) positions given as
   fractional pixel indices, wrapping around periodic axes; ``linear`` a user matrix
   R^{M_g × H W} applied to the field flattened per time;
3. a *selection* of the entries actually observed (a boolean mask over (T, …): NaN in files),
   which also expresses observations at some time steps only.

Noise. Each observed entry has its own σ_y: ``noise_std`` is a scalar (one σ for the group) or an
array broadcast to the values' shape (T, *sample_shape), e.g. a σ per report of a station table;
only the observed entries' σ must be finite and positive.

Several groups combine by concatenating their outputs (:class:`ObservationOperator`).

Representation error. The posterior sees the fields only through the decoder, which cannot express
the truth exactly: its reconstruction error e_c (RMSE r_c in standardised units, s_c the channel's
std, so r_c s_c in physical units) is added to the noise variance of each observation of channel c
(:meth:`ObservationGroup.with_representation_error`):

    σ_eff² = σ_y² + (r_c s_c)² g.

The errors are assumed fully correlated over an observation's footprint (the conservative choice:
neighbouring pixels' reconstruction errors are smooth, and independence would shrink a k × k block
mean's error by 1/k² and understate it), so a weighted sum Σ_j a_j x_j has error std at most
Σ_j |a_j| · r_c s_c: g = 1 for grid values, block means and bilinear points (weights summing to 1),
g = (Σ_j |a_j|)² for a row of a linear sampling. For the nonlinear transforms the state-independent
bound of the linearised error is used: ``saturate`` has slope ≤ 1 (g as for identity), ``speed``
√(u² + v²) changes by at most √(δu² + δv²), so (r_c s_c)² becomes (r_u s_u)² + (r_v s_v)².
The residual ratio (:meth:`ObservationOperator.residual_ratio`) stays against σ_y alone.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from latentda.errors import LatentdaError

__all__ = ["ObservationGroup", "ObservationOperator", "TRANSFORMS", "SAMPLINGS"]

TRANSFORMS = ("identity", "speed", "saturate")
SAMPLINGS = ("grid", "coarsen", "points", "linear")


@dataclass
class ObservationGroup:
    """One observed quantity: transform ∘ sampling of source channels, with its values and noise.

    ``values`` has shape (T, *sample_shape) with NaN where nothing is observed, where
    sample_shape is (H, W) for grid, (H//k, W//k) for coarsen, (P,) for points, (M_g,) for linear.
    """

    name: str
    channels: list[int]
    transform: str
    sampling: str
    values: np.ndarray
    noise_std: float | np.ndarray  # a scalar, or an array broadcast to values' shape (σ per entry)
    factor: int = 1
    points: np.ndarray | None = None  # (P, 2) fractional (row, column) pixel indices
    matrix: np.ndarray | None = None  # (M_g, H·W)
    saturation: float = 1.0
    periodic: tuple[bool, bool] = (False, False)
    attrs: dict = field(default_factory=dict)
    representation_std: float | np.ndarray = 0.0  # in the observation's units; per row for linear sampling

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise LatentdaError(f"observation '{self.name}': unknown transform '{self.transform}' (choose from {', '.join(TRANSFORMS)})")
        if self.sampling not in SAMPLINGS:
            raise LatentdaError(f"observation '{self.name}': unknown sampling '{self.sampling}' (choose from {', '.join(SAMPLINGS)})")
        needed = 2 if self.transform == "speed" else 1
        if len(self.channels) != needed:
            raise LatentdaError(f"observation '{self.name}': transform '{self.transform}' needs {needed} source variable(s)")
        self._check_noise()
        if self.sampling == "points" and (self.points is None or self.points.ndim != 2 or self.points.shape[1] != 2):
            raise LatentdaError(f"observation '{self.name}': points sampling needs (P, 2) positions")
        if self.sampling == "linear" and self.matrix is None:
            raise LatentdaError(f"observation '{self.name}': linear sampling needs a matrix")
        if self.sampling == "coarsen" and self.factor < 1:
            raise LatentdaError(f"observation '{self.name}': coarsen factor must be at least 1")
        if np.isinf(self.values).any():
            raise LatentdaError(f"observation '{self.name}': values contain inf")
        if not (np.isfinite(self.saturation) and self.saturation > 0):
            raise LatentdaError(f"observation '{self.name}': saturation must be a positive number, got {self.saturation}")

    def _check_noise(self) -> None:
        """σ_y broadcasts to the values' shape and is finite and positive: everywhere for a scalar,
        at the observed entries for an array (NaN elsewhere is fine)."""
        if np.ndim(self.noise_std) == 0:
            if not (np.isfinite(self.noise_std) and self.noise_std > 0):
                raise LatentdaError(f"observation '{self.name}': noise_std must be positive, got {self.noise_std}")
            return
        try:
            observed = self.noise()[self.mask]
        except ValueError:
            raise LatentdaError(f"observation '{self.name}': noise_std of shape {np.shape(self.noise_std)} does not match "
                                f"the values' {self.values.shape}") from None
        bad = int(np.sum(~(np.isfinite(observed) & (observed > 0))))
        if bad:
            raise LatentdaError(f"observation '{self.name}': noise_std must be positive at every observed entry "
                                f"({bad} are not)")

    @property
    def mask(self) -> np.ndarray:
        return ~np.isnan(self.values)

    def noise(self) -> np.ndarray:
        """σ_y over the values' shape (T, *sample_shape) (a read-only broadcast)."""
        return np.broadcast_to(np.asarray(self.noise_std, dtype=np.float64), self.values.shape)

    # ------------------------------------------------------------------ the operator
    def transformed(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) → (B, T, H, W)."""
        if self.transform == "speed":
            u, v = x[:, :, self.channels[0]], x[:, :, self.channels[1]]
            return torch.sqrt(u * u + v * v + 1e-12)
        field_ = x[:, :, self.channels[0]]
        if self.transform == "saturate":
            return self.saturation * torch.tanh(field_ / self.saturation)
        return field_

    def sampled(self, field_: Tensor) -> Tensor:
        """(B, T, H, W) → (B, T, *sample_shape)."""
        B, T, H, W = field_.shape
        if self.sampling == "grid":
            return field_
        if self.sampling == "coarsen":
            k = self.factor
            cropped = field_[..., : H // k * k, : W // k * k].reshape(B * T, 1, H // k * k, W // k * k)
            return F.avg_pool2d(cropped, k).reshape(B, T, H // k, W // k)
        if self.sampling == "linear":
            matrix = torch.as_tensor(self.matrix, dtype=field_.dtype, device=field_.device)
            return field_.reshape(B, T, H * W) @ matrix.T
        return _bilinear(field_, torch.as_tensor(self.points, dtype=field_.dtype, device=field_.device), self.periodic)

    def __call__(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) → observed entries (B, M_g)."""
        sampled = self.sampled(self.transformed(x))
        mask = torch.as_tensor(self.mask, device=x.device)
        if sampled.shape[1:] != mask.shape:
            raise LatentdaError(f"observation '{self.name}': operator output {tuple(sampled.shape[1:])} does not match values {tuple(mask.shape)}")
        return sampled[:, mask]

    def reads_masked(self, valid: np.ndarray) -> np.ndarray:
        """Entries (T, *sample_shape) whose value reads a pixel without values: ``valid`` (C, H, W) is a
        model's fixed mask (False: land in an ocean field). A pixel counts where any of the group's source channels
        has no value and the entry gives it a nonzero weight (a bilinear corner, a block's pixel, a matrix column):
        a station exactly on a sea pixel beside land reads only that pixel."""
        masked = torch.from_numpy((~np.asarray(valid, dtype=bool)[self.channels]).any(axis=0).astype(np.float64))
        if self.sampling == "linear":  # |weights|: signed ones could cancel
            reads = torch.from_numpy(np.abs(self.matrix).astype(np.float64)) @ masked.reshape(-1, 1)
        else:
            reads = self.sampled(masked[None, None])  # means and bilinear weights: > 0 iff a weighted pixel is masked
        return np.broadcast_to(reads.reshape(1, *self.values.shape[1:]).numpy() > 0, self.values.shape)

    def off_mask(self, valid: np.ndarray) -> tuple["ObservationGroup", int]:
        """(a copy with NaN at the observed entries that read a pixel of the fixed mask ``valid`` (C, H, W,
        :meth:`reads_masked`), how many they are); the group itself when none does."""
        masked = self.mask & self.reads_masked(valid)
        dropped = int(masked.sum())
        return (dataclasses.replace(self, values=np.where(masked, np.nan, self.values)) if dropped else self), dropped

    def with_representation_error(self, channel_error: np.ndarray) -> "ObservationGroup":
        """A copy whose :attr:`representation_std` comes from the decoder's reconstruction error per
        source channel ``channel_error`` (r_c s_c, physical units, indexed by channel; see the module
        docstring)."""
        error = np.asarray(channel_error, dtype=np.float64)[self.channels]
        scale = float(np.sqrt(np.sum(error**2)))  # speed: √((r_u s_u)² + (r_v s_v)²); else r_c s_c
        weights = np.abs(self.matrix).sum(axis=1) if self.sampling == "linear" else 1.0
        return dataclasses.replace(self, representation_std=weights * scale)

    def effective_std(self) -> np.ndarray:
        """√(σ_y² + σ_r²) over the sample shape (T, *sample_shape)."""
        return np.broadcast_to(np.hypot(self.noise(), self.representation_std), self.values.shape)

    def observed(self, representation: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(y, σ) of the observed entries, in the order of ``__call__``; σ includes the
        representation error unless ``representation`` is False (then σ_y alone)."""
        y = self.values[self.mask]
        if not representation:
            return y, self.noise()[self.mask]
        return y, self.effective_std()[self.mask]


def _bilinear(field_: Tensor, points: Tensor, periodic: tuple[bool, bool]) -> Tensor:
    """Bilinear interpolation of (B, T, H, W) at fractional pixel indices (P, 2) → (B, T, P)."""
    sizes = field_.shape[-2:]
    corners, weights = [], []
    base = torch.floor(points)
    frac = points - base
    base = base.long()
    for axis in range(2):
        if not periodic[axis]:
            low = base[:, axis].clamp(0, sizes[axis] - 1)
            high = (base[:, axis] + 1).clamp(0, sizes[axis] - 1)
        else:
            low = base[:, axis] % sizes[axis]
            high = (base[:, axis] + 1) % sizes[axis]
        corners.append((low, high))
        weights.append((1 - frac[:, axis], frac[:, axis]))
    out = 0
    for i in range(2):
        for j in range(2):
            out = out + weights[0][i] * weights[1][j] * field_[..., corners[0][i], corners[1][j]]
    return out


def nothing_off_mask(dropped: int) -> LatentdaError:
    """The error of observations that all read the model's fixed mask (:meth:`ObservationOperator.off_mask`)."""
    return LatentdaError(f"all {dropped} observations read pixels of the model's fixed mask (pixels without values, "
                         "e.g. land): nothing to assimilate")


class ObservationOperator:
    """Several :class:`ObservationGroup` concatenated: x (B, T, C, H, W) → (B, M)."""

    def __init__(self, groups: list[ObservationGroup], times: np.ndarray | None = None) -> None:
        if not groups:
            raise LatentdaError("no observation groups")
        names = [g.name for g in groups]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise LatentdaError(f"observation group name(s) {', '.join(duplicated)} used more than once")
        self.groups = groups
        self.times = times
        lengths = {g.values.shape[0] for g in groups}
        if len(lengths) != 1:
            raise LatentdaError(f"observation groups cover different numbers of time steps: {sorted(lengths)}")
        self.length = lengths.pop()
        if self.size == 0:
            raise LatentdaError("observations are all NaN: nothing is observed")

    @property
    def size(self) -> int:
        return int(sum(g.mask.sum() for g in self.groups))

    def __call__(self, x: Tensor) -> Tensor:
        return torch.cat([group(x) for group in self.groups], dim=1)

    def off_mask(self, valid: np.ndarray, refuse_empty: bool = True) -> tuple["ObservationOperator | None", int]:
        """(a copy without the observed entries that read a pixel of the fixed mask ``valid`` (C, H, W, False where a
        channel has no values: :meth:`ObservationGroup.reads_masked`), how many were left out). The model's fields
        there are no data (the autoencoder never learned them): an observation of them would pull the posterior
        toward the decoder's filler. Leaving nothing observed is an error, or with ``refuse_empty`` False (one
        cycle of many may observe only masked pixels) gives None for the operator."""
        groups, counts = zip(*(group.off_mask(valid) for group in self.groups))
        groups, dropped = list(groups), sum(counts)
        if dropped and dropped == self.size:
            if not refuse_empty:
                return None, dropped
            raise nothing_off_mask(dropped)
        return ObservationOperator(groups, self.times), dropped

    def with_representation_error(self, channel_error: np.ndarray) -> "ObservationOperator":
        """A copy with the decoder's reconstruction error r_c s_c (physical units, per channel) added
        to every group's noise (:meth:`ObservationGroup.with_representation_error`)."""
        return ObservationOperator([group.with_representation_error(channel_error) for group in self.groups], self.times)

    def observed(self, representation: bool = True) -> tuple[Tensor, Tensor]:
        """(y, σ) as float64 tensors of length M (σ with the representation error unless
        ``representation`` is False)."""
        ys, stds = zip(*(g.observed(representation) for g in self.groups))
        return torch.from_numpy(np.concatenate(ys)).double(), torch.from_numpy(np.concatenate(stds)).double()

    def residual_ratio(self, x: Tensor) -> Tensor:
        """Per trajectory root mean square of (y − H(x)) / σ_y: ≈ 1 when x is consistent with the data
        (the std of the normalised residual when it has zero mean; a bias also raises it). σ_y is
        the observation noise given, without the representation error, so the ratio means the same
        with or without it (through an imperfect decoder it cannot then reach 1). Entries where H(x)
        is NaN (an output's fixed mask under a point's corners or a block) are left out."""
        y, std = self.observed(representation=False)
        with torch.no_grad():
            z = (y - self(x).double()) / std
        return z.square().nanmean(dim=1).sqrt()

r"""Compressive convolutional autoencoder for physical fields on (possibly periodic) grids.

The encoder :math:`E` maps standardised fields :math:`x \in \mathbb{R}^{C \times H \times W}` to
bounded latents :math:`z \in \mathbb{R}^{c \times h \times w}`, the decoder :math:`D` maps them
back. Axis 0 of the grid is :math:`H` (latitude or :math:`y`), axis 1 is :math:`W` (longitude or
:math:`x`).

Architecture (Appa-style, Andry et al. 2025):

* Encoder: 3x3 conv in, then one stage per entry of ``hidden_channels``: ``blocks_per_stage``
  residual blocks (GroupNorm, SiLU, 3x3 conv, twice, plus the identity or a 1x1 skip), followed,
  between stages only, by a ``pixel_unshuffle(2)`` and a 1x1 conv to the next stage's width.
  The last stage's blocks are the bottleneck; then GroupNorm, SiLU, 3x3 conv to ``latent_channels``
  and a soft clip.
* Decoder: the mirror image, with a 1x1 conv to 4x the next width followed by ``pixel_shuffle(2)``
  between stages.
* Optional attention (``attention_heads`` > 0): one :class:`SelfAttention2d` block at the coarsest
  grid, after the encoder's last stage and before the decoder's first, as Appa's bottleneck
  (Andry et al. 2025). It has no positional encoding, so it commutes with every permutation of the
  grid points, the periodic shifts included: the padding rule below still makes the network
  shift-equivariant.

Downsampling rule: with :math:`S` = ``len(hidden_channels)`` stages there are :math:`S - 1`
downsamplings, so the factor is :math:`f = 2^{S-1}` (:attr:`AutoEncoder.downsample_factor`).

Soft clip: the latents are bounded by :math:`b` = ``latent_bound`` through

.. math:: z \mapsto \frac{z}{\sqrt{1 + (z / b)^2}} ,

which is the identity near 0 and tends to :math:`\pm b` as :math:`z \to \pm\infty`, so
:math:`|z| < b` (in floating point :math:`|z| \le b`). It is computed as
:math:`b \, u / \operatorname{hypot}(1, u)` with :math:`u = z / b` to avoid overflow.

Padding rule: every 3x3 conv pads explicitly, circularly along periodic axes and with zeros along
the others, so the network is equivariant to shifts along periodic axes (by multiples of
:math:`f` pixels for the latent grid). Along a non-periodic axis of size :math:`n` not divisible
by :math:`f`, :meth:`AutoEncoder.encode` pads the input at the end by replicating the last row /
column up to :math:`\lceil n / f \rceil f` and :meth:`AutoEncoder.decode` crops back to
``sample_size``. Along a periodic axis the size must be a multiple of :math:`f` (wrapping a padded
grid would join unrelated edges), otherwise construction raises :class:`ValueError`.

Compression factor: :math:`C H W / (c \, h \, w)` with :math:`h = \lceil H / f \rceil`,
:math:`w = \lceil W / f \rceil`.

Identity: with no stages (``hidden_channels=[]``, ``latent_channels = in_channels``) the
autoencoder is :math:`E = D = \mathrm{id}`, nothing to train: the latents are the standardised
fields (no soft clip), the prior is a pixel-space diffusion model (as in score-based data
assimilation, Rozet & Louppe 2023) and the guidance's decoder Jacobian is the identity. It serves
small grids and tells what the compression costs (``tools/bench_exact.py``). diffusers writes no
weights file for a model without tensors, so the identity keeps a buffer of ones it multiplies by.

The decoder uses no in-place operations and no branching on tensor values, so
:func:`torch.func.jvp` and :func:`torch.func.vjp` go through :meth:`AutoEncoder.decode`, as the
posterior sampler requires.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

__all__ = ["AutoEncoder", "PeriodicConv2d", "ResidualBlock", "SelfAttention2d", "soft_clip"]


def soft_clip(z: Tensor, bound: float) -> Tensor:
    r"""Bounds :math:`z` smoothly in :math:`(-b, b)`: :math:`z / \sqrt{1 + (z / b)^2}`."""
    u = z / bound
    return bound * u / torch.hypot(torch.ones_like(u), u)


class _TorusPad(torch.autograd.Function):
    r"""Circular padding of both grid axes by :math:`q` in one copy, with a backward that folds the
    margins back onto the edges they copy, one axis after the other (the sums autograd does, without
    its zero-filled gradient per axis), and a forward-mode rule (the padding is linear, so its
    tangent is the padded tangent) for ``torch.func.jvp``. The padded values are those of
    ``F.pad(x, (q, q, q, q), mode="circular")``."""

    @staticmethod
    def forward(x: Tensor, q: int) -> Tensor:
        return F.pad(x, (q, q, q, q), mode="circular")

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.q = inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor):
        q = ctx.q
        columns = grad[..., q:-q].clone()  # fold the column margins onto the opposite edges, then the rows
        columns[..., :q] += grad[..., -q:]
        columns[..., -q:] += grad[..., :q]
        folded = columns[..., q:-q, :].clone()
        folded[..., :q, :] += columns[..., -q:, :]
        folded[..., -q:, :] += columns[..., :q, :]
        return folded, None

    @staticmethod
    def jvp(ctx, tangent: Tensor, _) -> Tensor:
        return F.pad(tangent, (ctx.q,) * 4, mode="circular")


class PeriodicConv2d(nn.Conv2d):
    r"""2-d convolution that keeps the grid size, padding circularly along periodic axes and with
    zeros along the others.

    Arguments:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Odd square kernel size.
        periodic: Whether grid axes 0 (H) and 1 (W) are periodic.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        periodic: Sequence[bool] = (False, False),
    ):
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=0)
        self.periodic = tuple(bool(p) for p in periodic)
        self.margin = kernel_size // 2

    def forward(self, x: Tensor) -> Tensor:
        p = self.margin
        if p > 0 and all(self.periodic):
            x = _TorusPad.apply(x, p)
        elif p > 0:
            # F.pad's tuple runs from the last axis backwards: (W left, W right, H top, H bottom).
            x = F.pad(x, (0, 0, p, p), mode="circular" if self.periodic[0] else "constant")
            x = F.pad(x, (p, p, 0, 0), mode="circular" if self.periodic[1] else "constant")
        return super().forward(x)


class ResidualBlock(nn.Module):
    r"""Pre-activation residual block: :math:`x + f(x)` with
    :math:`f` = (GroupNorm, SiLU, 3x3 conv) twice, and a 1x1 skip when channels change."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        periodic: Sequence[bool] = (False, False),
        groups: int = 8,
    ):
        super().__init__()
        self.residual = nn.Sequential(
            nn.GroupNorm(groups, in_channels),
            nn.SiLU(),
            PeriodicConv2d(in_channels, out_channels, 3, periodic),
            nn.GroupNorm(groups, out_channels),
            nn.SiLU(),
            PeriodicConv2d(out_channels, out_channels, 3, periodic),
        )
        self.skip = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.residual(x)


class SelfAttention2d(nn.Module):
    r"""Pre-normalised residual multi-head self-attention over the :math:`N = HW` grid points:

    .. math:: x + W_o \big[\, V_h \operatorname{softmax}(K_h^\top Q_h / \sqrt{d}) \,\big]_{h=1}^{n}

    with :math:`(Q, K, V) = W_{qkv} \operatorname{GroupNorm}(x)` (1x1 convolutions), :math:`n` heads of
    :math:`d = C / n` channels each; the softmax normalises over the keys. The cost is
    :math:`4 N d n (N + 2 C)` FLOP per frame (projections and the two products), small at the
    coarsest grid. The softmax is functional, so the decoder's tangent pass
    (:mod:`latentda.nn.linearization`) falls back to ``torch.func.jvp`` for a network with it."""

    def __init__(self, channels: int, heads: int, groups: int = 8):
        super().__init__()
        if heads < 1 or channels % heads != 0:
            raise ValueError(f"attention_heads={heads} must divide the coarsest width {channels}")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(batch, 3, self.heads, channels // self.heads, height * width)
        q, k, v = qkv.unbind(1)  # (B, heads, d, N)
        weights = torch.softmax(q.transpose(-1, -2) @ k / math.sqrt(q.shape[2]), dim=-1)  # (B, heads, N query, N key)
        mixed = v @ weights.transpose(-1, -2)  # (B, heads, d, N query)
        return x + self.out(mixed.reshape(batch, channels, height, width))


class Downsample(nn.Module):
    r"""Halves both grid sizes: ``pixel_unshuffle(2)`` then a 1x1 conv to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(4 * in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.pixel_unshuffle(x, 2))


class Upsample(nn.Module):
    r"""Doubles both grid sizes: a 1x1 conv to ``4 * out_channels`` then ``pixel_shuffle(2)``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, 4 * out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.proj(x), 2)


class _Trunk(nn.Module):
    r"""``stem`` conv, then ``layers`` (checkpointable), then GroupNorm, SiLU and ``head`` conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        widths: Sequence[int],
        resample: type[nn.Module],
        blocks_per_stage: int,
        periodic: Sequence[bool],
        groups: int,
        attention_heads: int = 0,
    ):
        super().__init__()
        self.stem = PeriodicConv2d(in_channels, widths[0], 3, periodic)
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            layers.extend(ResidualBlock(width, width, periodic, groups) for _ in range(blocks_per_stage))
            if i + 1 < len(widths):
                layers.append(resample(width, widths[i + 1]))
        if attention_heads and resample is Downsample:  # at the coarsest grid: the encoder's end
            layers.append(SelfAttention2d(widths[-1], attention_heads, groups))
        elif attention_heads:  # the decoder's start
            layers.insert(0, SelfAttention2d(widths[0], attention_heads, groups))
        self.layers = nn.ModuleList(layers)
        self.norm = nn.GroupNorm(groups, widths[-1])
        self.activation = nn.SiLU()  # a module, not F.silu: the decoder's tangent pass replaces it (nn.linearization)
        self.head = PeriodicConv2d(widths[-1], out_channels, 3, periodic)
        # Set by `ModelMixin.enable_gradient_checkpointing`, together with `_gradient_checkpointing_func`.
        self.gradient_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        checkpointing = self.gradient_checkpointing and torch.is_grad_enabled()
        for layer in self.layers:
            x = self._gradient_checkpointing_func(layer, x) if checkpointing else layer(x)
        return self.head(self.activation(self.norm(x)))


class AutoEncoder(ModelMixin, ConfigMixin):
    r"""Convolutional autoencoder with pixel-(un)shuffle resampling, periodic padding and bounded
    latents (see the module docstring for the math).

    Arguments:
        in_channels: Number of field channels :math:`C`.
        latent_channels: Number of latent channels :math:`c`.
        hidden_channels: Width of each stage, from the finest grid to the coarsest. With
            :math:`S` stages the grid is downsampled by :math:`2^{S-1}`.
        blocks_per_stage: Residual blocks per stage (in the encoder and in the decoder).
        sample_size: Grid size :math:`(H, W)` of the fields.
        periodic: Whether grid axes 0 (H) and 1 (W) are periodic.
        latent_bound: Soft bound :math:`b` of the latents, :math:`|z| < b`.
        groups: GroupNorm groups; must divide every entry of ``hidden_channels``.
        attention_heads: Heads of the self-attention block at the coarsest grid (0: none); must
            divide the last entry of ``hidden_channels``.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["ResidualBlock", "SelfAttention2d"]  # the units FSDP shards one at a time

    @register_to_config
    def __init__(
        self,
        in_channels: int,
        latent_channels: int = 4,
        hidden_channels: Sequence[int] = (32, 64, 128),
        blocks_per_stage: int = 2,
        sample_size: Sequence[int] = (64, 64),
        periodic: Sequence[bool] = (False, False),
        latent_bound: float = 5.0,
        groups: int = 8,
        attention_heads: int = 0,
    ):
        super().__init__()
        widths = [int(w) for w in hidden_channels]
        if len(widths) == 0 and latent_channels != in_channels:
            raise ValueError(f"an identity autoencoder (no hidden_channels) needs latent_channels = in_channels "
                             f"({in_channels}), got {latent_channels}")
        if len(sample_size) != 2 or len(periodic) != 2:
            raise ValueError(
                f"sample_size and periodic need one entry per grid axis (2), "
                f"got sample_size={tuple(sample_size)}, periodic={tuple(periodic)}"
            )
        if not latent_bound > 0:
            raise ValueError(f"latent_bound must be positive, got {latent_bound}")
        bad = [w for w in widths if w % groups != 0]
        if bad:
            raise ValueError(f"groups={groups} must divide every hidden channel width, not {bad}")

        self._sample_size = (int(sample_size[0]), int(sample_size[1]))
        self._periodic = (bool(periodic[0]), bool(periodic[1]))
        if not widths:  # the identity (module docstring)
            self.register_buffer("unit", torch.ones(in_channels, 1, 1))
            self.encoder = self.decoder = None
            return
        factor = 2 ** (len(widths) - 1)
        for axis, (size, wraps) in enumerate(zip(self._sample_size, self._periodic)):
            if wraps and size % factor != 0:
                raise ValueError(
                    f"grid axis {axis} is periodic with size {size}, which is not a multiple of the "
                    f"downsampling factor {factor} = 2**(len(hidden_channels) - 1)"
                )

        self.encoder = _Trunk(
            in_channels, latent_channels, widths, Downsample, blocks_per_stage, self._periodic, groups,
            attention_heads,
        )
        self.decoder = _Trunk(
            latent_channels, in_channels, widths[::-1], Upsample, blocks_per_stage, self._periodic, groups,
            attention_heads,
        )

    @property
    def is_identity(self) -> bool:
        """Whether this is the identity (no stages: the latents are the standardised fields)."""
        return len(self.config.hidden_channels) == 0

    @property
    def downsample_factor(self) -> int:
        r"""Grid downsampling factor :math:`f = 2^{S-1}`, :math:`S` = ``len(hidden_channels)`` (1 for the identity)."""
        return 2 ** max(len(self.config.hidden_channels) - 1, 0)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        r"""Shape :math:`(c, h, w)` of one latent, :math:`h = \lceil H / f \rceil`, :math:`w = \lceil W / f \rceil`."""
        f = self.downsample_factor
        height, width = self._sample_size
        return (self.config.latent_channels, -(-height // f), -(-width // f))

    @property
    def compression_factor(self) -> float:
        r"""Ratio :math:`C H W / (c h w)` of field to latent sizes."""
        height, width = self._sample_size
        return self.config.in_channels * height * width / math.prod(self.latent_shape)

    def encode(self, x: Tensor) -> Tensor:
        r"""Encodes fields :math:`x` of shape :math:`(B, C, H, W)` into latents of shape
        :math:`(B, c, h, w)`, bounded by ``latent_bound``."""
        expected = (self.config.in_channels, *self._sample_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"encode expects fields of shape (B, {', '.join(map(str, expected))}) "
                f"(B, in_channels, *sample_size), got {tuple(x.shape)}"
            )
        if self.is_identity:
            return x * self.unit
        f = self.downsample_factor
        pad_height = -self._sample_size[0] % f
        pad_width = -self._sample_size[1] % f
        if pad_height or pad_width:
            # Only non-periodic axes can need padding (checked at construction).
            x = F.pad(x, (0, pad_width, 0, pad_height), mode="replicate")
        return soft_clip(self.encoder(x), self.config.latent_bound)

    def decode(self, z: Tensor) -> Tensor:
        r"""Decodes latents :math:`z` of shape :math:`(B, c, h, w)` into fields of shape
        :math:`(B, C, H, W)`, cropped to ``sample_size``."""
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"decode expects latents of shape (B, {', '.join(map(str, self.latent_shape))}), "
                f"got {tuple(z.shape)}"
            )
        if self.is_identity:
            return z * self.unit
        height, width = self._sample_size
        return self.decoder(z)[..., :height, :width]

    def forward(self, x: Tensor, latent_noise: Tensor | None = None) -> Tensor:
        r"""Reconstruction :math:`D(E(x))`, or :math:`D(E(x) + \epsilon)` with ``latent_noise``
        :math:`\epsilon` (training with noisy latents, :mod:`latentda.training.autoencoder`)."""
        z = self.encode(x)
        return self.decode(z if latent_noise is None else z + latent_noise)

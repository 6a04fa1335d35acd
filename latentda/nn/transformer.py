r"""Trajectory transformer: the DiT-style denoiser backbone of the latent diffusion prior.

The prior models windows ("blankets") of :math:`K` consecutive latent states
:math:`z_{1:K} \in \mathbb{R}^{K \times c \times h \times w}`. This module is only the network
:math:`F_\theta(x, c_{\text{noise}}, \text{context})`; the EDM preconditioning
(:math:`c_{\text{skip}}, c_{\text{out}}, c_{\text{in}}, c_{\text{noise}} = \ln(\sigma)/4`) lives in
the denoiser that wraps it.

Architecture (Peebles & Xie 2023, DiT, with the changes listed below)
-------------------------------------------------------------------
1. **Patchify** in :math:`(t, h, w)`: the input :math:`(B, K, c, h, w)` is cut into
   :math:`p_t \times p_h \times p_w` patches, giving a grid of :math:`T \times H \times W`
   tokens (:math:`T = K/p_t`, :math:`H = h/p_h`, :math:`W = w/p_w`), each linearly embedded to
   ``hidden_size`` features. Unpatchify is the exact inverse at the end.
2. **Noise conditioning** (AdaLN-Zero): the noise label is embedded with sinusoids of angular
   frequencies log-spaced in :math:`[1, 100]` (for labels :math:`\ln(\sigma)/4 \in [-1.7, 1.7]`
   this resolves :math:`\sigma` to a few percent), then an MLP gives the conditioning vector
   :math:`e`. Every block regresses from :math:`e` a shift, scale and gate for its attention and
   MLP branches,

   .. math:: x \leftarrow x + g_a \odot \mathrm{Attn}(\mathrm{LN}(x)(1 + s_a) + b_a), \qquad
             x \leftarrow x + g_m \odot \mathrm{MLP}(\mathrm{LN}(x)(1 + s_m) + b_m),

   with the regression layers zero-initialised so that every block starts as the identity.
   The final layer (LayerNorm, adaLN shift/scale, linear) is zero-initialised too, so the
   network outputs exactly zero at initialisation.
3. **Context** (optional): per-time-step features (e.g. time-of-day or calendar encodings)
   :math:`(B, K, F)` are grouped by time patch, mapped by a zero-initialised linear layer and
   added to every token of that time step.
   **Known frames** (optional, ``known_frames=True``): a per-time-step flag
   :math:`k_t \in \{0, 1\}` (1: the state is given clean, e.g. a forecast's history), mapped the
   same way and added to its tokens, so one network is the prior of a window and its conditional
   given clean leading states (:mod:`latentda.diffusion.denoiser`, "Known frames").
4. **Attention** with QK-norm: queries and keys are RMS-normalised per head before the rotary
   encoding and :func:`torch.nn.functional.scaled_dot_product_attention`. Optionally *local*: a
   boolean mask lets token :math:`i` attend to token :math:`j` only if
   :math:`|t_i - t_j| \le r_t`, :math:`d_h(i, j) \le r_h` and :math:`d_w(i, j) \le r_w`, with the
   distance measured circularly along periodic axes. With depth :math:`D` the receptive field
   along an axis is :math:`D r` tokens.
5. **Positional encoding**: 3-D rotary embeddings (RoPE, Su et al. 2021). The head dimension is
   split into three groups of rotation pairs, for :math:`t`, :math:`h` and :math:`w`. A pair with
   angular frequency :math:`\omega` rotates the query/key of a token at position :math:`i` by
   :math:`\omega i`, so attention logits depend on :math:`\omega (i - j)` only.

   * Along time and non-periodic spatial axes we use the standard RoPE frequencies
     :math:`\omega_j = b^{-j/n}` (:math:`b` = ``rope_base``, :math:`n` pairs on that axis).
   * Along **periodic** axes (longitude, or both axes of a periodic box) with :math:`N` tokens we
     use only integer harmonics of the grid period, :math:`\omega_j = 2\pi m_j / N` with
     :math:`m_j \in \{1, \dots, \lfloor N/2 \rfloor\}` (cycled if there are more pairs than
     harmonics). The encoding is then periodic, attention depends only on the relative position
     modulo :math:`N`, and, since patch embedding, MLPs, local masks (circular distances) and
     unpatchify are all per-token or shift-invariant, the whole network is exactly equivariant to
     circular shifts of the input by multiples of the patch size along periodic axes. This is the
     design's "periodic axes encoded periodically".

Gradient checkpointing follows diffusers: :meth:`TrajectoryTransformer.enable_gradient_checkpointing`
sets ``gradient_checkpointing`` and a checkpoint function, used over blocks when gradients are
enabled. Nothing is done in place on tensors that need gradients, so the network works under
:func:`torch.func.vjp` and :func:`torch.func.jvp` (under forward-mode AD, attention switches to
the math SDPA backend, because the fused kernels have no forward derivative).

Written by hand because no well-kept library provides a DiT over (t, h, w) with periodic rotary
encodings and circular local attention masks; the parts (SDPA, RMSNorm, einops, diffusers mixins)
are library code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "AttentionBlock",
    "FinalLayer",
    "NoiseEmbedding",
    "Rotary3d",
    "SelfAttention",
    "SinusoidalEmbedding",
    "TrajectoryTransformer",
    "local_attention_mask",
]


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Adaptive affine transform, broadcast over tokens: ``x * (1 + scale) + shift``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _rms_norm(norm: nn.RMSNorm, x: Tensor) -> Tensor:
    """``norm(x)`` = x / √(mean(x²) + ε) · weight over the last axis, computed in float32 at least (float64 stays
    float64) and returned in x's dtype. Under bfloat16 autocast x arrives in bfloat16 and the weight stays float32, a
    mix torch's fused kernel refuses (a warning, and a slower unfused path); in one dtype it is fused, and the mean of
    squares keeps its precision."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return F.rms_norm(x.to(dtype), norm.normalized_shape, norm.weight.to(dtype), norm.eps).to(x.dtype)


def _forward_ad_active() -> bool:
    """Whether forward-mode AD is running (``torch.func.jvp`` or ``forward_ad.dual_level``)."""
    return forward_ad._current_level >= 0


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"{name} must be an int or 3 ints for (t, h, w), got {value}")
    return value  # type: ignore[return-value]


class SinusoidalEmbedding(nn.Module):
    r"""Sinusoidal features :math:`[\cos(\omega_k u), \sin(\omega_k u)]_k` of a scalar label.

    Angular frequencies :math:`\omega_k` are log-spaced in ``[min_frequency, max_frequency]``.

    Arguments:
        features: Number of output features (even).
        min_frequency: Lowest angular frequency.
        max_frequency: Highest angular frequency.
    """

    def __init__(self, features: int, min_frequency: float = 1.0, max_frequency: float = 100.0) -> None:
        super().__init__()
        if features % 2 != 0:
            raise ValueError(f"features must be even, got {features}")
        frequencies = torch.logspace(
            math.log10(min_frequency), math.log10(max_frequency), features // 2, dtype=torch.float64
        )
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, label: Tensor) -> Tensor:
        """(B,) labels → (B, features) features."""
        dtype = torch.promote_types(label.dtype, torch.float32)
        angles = label.to(dtype)[:, None] * self.frequencies.to(dtype)
        return torch.cat([angles.cos(), angles.sin()], dim=-1)


class NoiseEmbedding(nn.Module):
    """Noise label → conditioning vector: sinusoidal features followed by a SiLU MLP.

    Arguments:
        hidden_size: Size of the conditioning vector.
        frequency_features: Number of sinusoidal features.
    """

    def __init__(self, hidden_size: int, frequency_features: int = 256) -> None:
        super().__init__()
        self.sinusoids = SinusoidalEmbedding(frequency_features)
        self.mlp = nn.Sequential(
            nn.Linear(frequency_features, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, label: Tensor) -> Tensor:
        features = self.sinusoids(label)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class Rotary3d(nn.Module):
    r"""Rotary position encoding over a :math:`(T, H, W)` token grid, periodic where asked.

    The ``head_dim / 2`` rotation pairs are split over the three axes (spatial axes get the
    remainder). Pair :math:`j` couples features :math:`2j` and :math:`2j + 1`.
    See the module docstring for the frequencies.

    Arguments:
        head_dim: Features per attention head (even, at least 6).
        grid: Token grid size (T, H, W).
        periodic: Whether each of (t, h, w) is periodic.
        base: RoPE base :math:`b` for non-periodic axes.
    """

    def __init__(
        self,
        head_dim: int,
        grid: tuple[int, int, int],
        periodic: tuple[bool, bool, bool],
        base: float = 10000.0,
    ) -> None:
        super().__init__()
        if head_dim % 2 != 0 or head_dim < 6:
            raise ValueError(f"rotary encoding needs an even head dimension >= 6, got {head_dim}")
        pairs = head_dim // 2
        per_axis = [pairs // 3] * 3
        for axis in range(pairs % 3):
            per_axis[2 - axis] += 1
        self.head_dim = head_dim
        self.pairs_per_axis = tuple(per_axis)

        axis_angles = []
        for size, n_pairs, is_periodic in zip(grid, per_axis, periodic):
            positions = torch.arange(size, dtype=torch.float64)
            if is_periodic:
                harmonics = 1 + torch.arange(n_pairs) % max(size // 2, 1)
                # Reduce (m i) mod N on integers first so that the angles are exactly periodic.
                phase = (harmonics[None, :] * torch.arange(size)[:, None]) % size
                angles = 2 * math.pi * phase.double() / size
            else:
                frequencies = base ** (-torch.arange(n_pairs, dtype=torch.float64) / n_pairs)
                angles = positions[:, None] * frequencies[None, :]
            axis_angles.append(angles)

        t_angles, h_angles, w_angles = axis_angles
        T, H, W = grid
        angles = torch.cat(
            [
                t_angles[:, None, None, :].expand(T, H, W, -1),
                h_angles[None, :, None, :].expand(T, H, W, -1),
                w_angles[None, None, :, :].expand(T, H, W, -1),
            ],
            dim=-1,
        ).reshape(T * H * W, pairs)
        # Kept in float64 until the model is cast; rotations run in at least float32.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Rotate (..., N, head_dim) queries or keys, N = T·H·W in (t h w) order.

        Features (2j, 2j+1) form pair j, rotated as one complex multiplication (a single pass
        over memory, which matters on CPU where these elementwise passes are bandwidth bound).
        """
        dtype = torch.promote_types(x.dtype, torch.float32)
        rotation = torch.complex(self.cos.to(dtype), self.sin.to(dtype))
        pairs = torch.view_as_complex(x.to(dtype).unflatten(-1, (-1, 2)).contiguous())
        return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)


def local_attention_mask(
    grid: tuple[int, int, int],
    radius: tuple[int, int, int],
    periodic: tuple[bool, bool, bool],
) -> Tensor:
    """Boolean (N, N) mask, True where token j lies within ``radius`` of token i along every axis.

    Distances along periodic axes are circular. Tokens are in (t h w) order.
    """
    coordinates = torch.stack(
        torch.meshgrid(*(torch.arange(size) for size in grid), indexing="ij"), dim=-1
    ).reshape(-1, 3)
    allowed = torch.ones(coordinates.shape[0], coordinates.shape[0], dtype=torch.bool)
    for axis, (size, r, is_periodic) in enumerate(zip(grid, radius, periodic)):
        distance = (coordinates[:, None, axis] - coordinates[None, :, axis]).abs()
        if is_periodic:
            distance = torch.minimum(distance, size - distance)
        allowed = allowed & (distance <= r)
    return allowed


class SelfAttention(nn.Module):
    """Multi-head self-attention with QK RMS-norm and rotary encoding.

    Arguments:
        hidden_size: Token features.
        num_heads: Number of heads (must divide ``hidden_size``).
    """

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.query_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.key_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.out = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor, rotary: Rotary3d, mask: Tensor | None = None) -> Tensor:
        # Normalise while the head features are still contiguous: RMSNorm on the strided
        # (b, heads, n, d) view is ~30x slower on CPU.
        query, key, value = rearrange(
            self.qkv(x), "b n (three heads d) -> three b n heads d", three=3, heads=self.num_heads
        )
        query = rotary(rearrange(_rms_norm(self.query_norm, query), "b n heads d -> b heads n d"))
        key = rotary(rearrange(_rms_norm(self.key_norm, key), "b n heads d -> b heads n d"))
        value = rearrange(value, "b n heads d -> b heads n d")
        if _forward_ad_active():
            # The fused CPU/GPU attention kernels have no forward-mode derivative; the math
            # backend is composed of differentiable primitives, so torch.func.jvp works.
            with sdpa_kernel(SDPBackend.MATH):
                attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        else:
            attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return self.out(rearrange(attended, "b heads n d -> b n (heads d)"))


class AttentionBlock(nn.Module):
    """DiT block: adaLN-Zero modulated self-attention and MLP, each with a residual gate.

    Arguments:
        hidden_size: Token features.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden size over ``hidden_size``.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attention = SelfAttention(hidden_size, num_heads)
        self.mlp_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_hidden, hidden_size),
        )
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(
        self, x: Tensor, conditioning: Tensor, rotary: Rotary3d, mask: Tensor | None = None
    ) -> Tensor:
        """x (B, N, D), conditioning (B, D) → (B, N, D)."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(conditioning).chunk(6, dim=-1)
        x = x + gate_a.unsqueeze(1) * self.attention(
            _modulate(self.attention_norm(x), shift_a, scale_a), rotary, mask
        )
        x = x + gate_m.unsqueeze(1) * self.mlp(_modulate(self.mlp_norm(x), shift_m, scale_m))
        return x


class FinalLayer(nn.Module):
    """LayerNorm, adaLN shift/scale, linear projection to patch values (zero-initialised)."""

    def __init__(self, hidden_size: int, out_features: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.linear = nn.Linear(hidden_size, out_features)

    def forward(self, x: Tensor, conditioning: Tensor) -> Tensor:
        shift, scale = self.modulation(conditioning).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm(x), shift, scale))


class TrajectoryTransformer(ModelMixin, ConfigMixin):
    r"""DiT-style denoiser backbone over blankets of :math:`K` latent states.

    Called by the EDM preconditioner as ``backbone(c_in * z_t, c_noise, context)``.

    Arguments:
        in_channels: Latent channels :math:`c`.
        window: Blanket length :math:`K` (latent time steps per window).
        sample_size: Latent spatial size (h, w), or one int for a square.
        patch_size: Patch size (p_t, p_h, p_w) in (time, h, w).
        hidden_size: Token features.
        depth: Number of transformer blocks.
        num_heads: Attention heads; ``hidden_size / num_heads`` must be even and >= 6.
        mlp_ratio: MLP hidden size over ``hidden_size``.
        periodic: Whether (h, w) are periodic (e.g. ``(False, True)`` for latitude-longitude,
            ``(True, True)`` for a periodic box). Time is never periodic.
        attention: ``"full"`` or ``"local"``.
        local_window: For local attention, radius in tokens along (t, h, w) (or one int for all).
        context_features: Per-time-step context features :math:`F` (0 = no context).
        known_frames: Whether the network takes a per-time-step flag of the states given clean
            (``known``, (B, K) bool), trained by the denoiser's known-frame loss.
        noise_embedding_size: Sinusoidal features of the noise label.
        rope_base: RoPE base for time and non-periodic axes.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["AttentionBlock"]  # the units FSDP shards one at a time

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        window: int = 8,
        sample_size: int | Sequence[int] = (16, 16),
        patch_size: Sequence[int] = (1, 2, 2),
        hidden_size: int = 256,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        periodic: Sequence[bool] = (False, False),
        attention: str = "full",
        local_window: int | Sequence[int] | None = None,
        context_features: int = 0,
        noise_embedding_size: int = 256,
        known_frames: bool = False,
        rope_base: float = 10000.0,
    ) -> None:
        super().__init__()
        if isinstance(sample_size, int):
            sample_size = (sample_size, sample_size)
        height, width = (int(s) for s in sample_size)
        patch = _triple(patch_size, "patch_size")
        periodic_hw = tuple(bool(p) for p in periodic)
        if len(periodic_hw) != 2:
            raise ValueError(f"periodic must be two booleans for (h, w), got {periodic}")
        if min(in_channels, window, height, width, hidden_size, depth, num_heads) <= 0 or min(patch) <= 0:
            raise ValueError("sizes must be positive")
        for name, size, p in zip(("window", "height", "width"), (window, height, width), patch):
            if size % p != 0:
                raise ValueError(f"{name} {size} is not divisible by its patch size {p} (patch_size={patch})")
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if attention not in ("full", "local"):
            raise ValueError(f"attention must be 'full' or 'local', got {attention!r}")
        if attention == "local" and local_window is None:
            raise ValueError("attention='local' needs local_window (radius in tokens along t, h, w)")
        if context_features < 0:
            raise ValueError(f"context_features must be >= 0, got {context_features}")

        self.sample_shape = (window, in_channels, height, width)
        self.patch = patch
        self.grid = (window // patch[0], height // patch[1], width // patch[2])
        self.periodic_thw = (False, *periodic_hw)
        self.gradient_checkpointing = False
        patch_features = in_channels * patch[0] * patch[1] * patch[2]

        self.patch_embedding = nn.Linear(patch_features, hidden_size)
        self.noise_embedding = NoiseEmbedding(hidden_size, noise_embedding_size)
        self.context_embedding = (
            nn.Linear(context_features * patch[0], hidden_size) if context_features > 0 else None
        )
        self.known_embedding = nn.Linear(patch[0], hidden_size) if known_frames else None
        self.rotary = Rotary3d(hidden_size // num_heads, self.grid, self.periodic_thw, rope_base)
        if attention == "local":
            radius = _triple(local_window, "local_window")  # type: ignore[arg-type]
            self.register_buffer(
                "attention_mask", local_attention_mask(self.grid, radius, self.periodic_thw), persistent=False
            )
        else:
            self.attention_mask = None
        self.blocks = nn.ModuleList(AttentionBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_features)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT initialisation: Xavier linears, N(0, 0.02) noise MLP, zeros for every adaLN
        regression, the final projection and the context embedding (identity blocks, zero output)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for layer in self.noise_embedding.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        zero = [block.modulation[-1] for block in self.blocks]
        zero += [self.final_layer.modulation[-1], self.final_layer.linear]
        zero += [layer for layer in (self.context_embedding, self.known_embedding) if layer is not None]
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _check_inputs(
        self, x: Tensor, noise_label: Tensor | float, context: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        window, channels, height, width = self.sample_shape
        if x.ndim != 5 or tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"expected x of shape (batch, window={window}, channels={channels}, h={height}, w={width}), "
                f"got {tuple(x.shape)}"
            )
        batch = x.shape[0]
        # At least float32: a bfloat16 label would resolve sigma only to ~3 %.
        label = torch.as_tensor(noise_label, device=x.device).to(torch.promote_types(x.dtype, torch.float32))
        if label.ndim == 0 or label.shape == (1,):
            label = label.reshape(1).expand(batch)
        elif label.shape != (batch,):
            raise ValueError(f"expected noise_label of shape () or ({batch},), got {tuple(label.shape)}")
        features = self.config.context_features
        if features == 0:
            if context is not None:
                raise ValueError(
                    f"got context of shape {tuple(context.shape)} but the model has context_features=0"
                )
        elif context is None or tuple(context.shape) != (batch, window, features):
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"expected context of shape ({batch}, {window}, {features}), got {got}")
        return label, context

    def forward(self, x: Tensor, noise_label: Tensor | float, context: Tensor | None = None,
                known: Tensor | None = None) -> Tensor:
        r"""Denoiser network output.

        Arguments:
            x: Latent blankets, (B, K, c, h, w).
            noise_label: Noise label (EDM's :math:`c_{\text{noise}} = \ln(\sigma)/4`), scalar or (B,).
            context: Per-time-step features (B, K, F); required iff ``context_features > 0``.
            known: Which states are given clean, (B, K) bool (``known_frames`` models only; None:
                none, the flags all false).

        Returns:
            Tensor of the same shape as ``x``.
        """
        label, context = self._check_inputs(x, noise_label, context)
        pt, ph, pw = self.patch
        T, H, W = self.grid
        tokens = rearrange(
            x, "b (t pt) c (h ph) (w pw) -> b (t h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw
        )
        tokens = self.patch_embedding(tokens)
        if self.context_embedding is not None:
            per_time = self.context_embedding(rearrange(context, "b (t pt) f -> b t (pt f)", pt=pt))
            tokens = rearrange(
                rearrange(tokens, "b (t s) d -> b t s d", t=T) + per_time.unsqueeze(2), "b t s d -> b (t s) d"
            )
        if known is not None and self.known_embedding is None:
            raise ValueError("got known frames but the model was built with known_frames=False")
        if self.known_embedding is not None:
            if known is None:  # no state given: the flags as training saw them (its bias included)
                known = torch.zeros(x.shape[0], self.sample_shape[0], dtype=torch.bool, device=x.device)
            if tuple(known.shape) != (x.shape[0], self.sample_shape[0]):
                raise ValueError(f"expected known of shape ({x.shape[0]}, {self.sample_shape[0]}), got {tuple(known.shape)}")
            flags = self.known_embedding(rearrange(known.to(tokens.dtype), "b (t pt) -> b t pt", pt=pt))
            tokens = rearrange(
                rearrange(tokens, "b (t s) d -> b t s d", t=T) + flags.unsqueeze(2), "b t s d -> b (t s) d"
            )
        conditioning = self.noise_embedding(label)
        mask = self.attention_mask
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                tokens = self._gradient_checkpointing_func(block, tokens, conditioning, self.rotary, mask)
            else:
                tokens = block(tokens, conditioning, self.rotary, mask)
        patches = self.final_layer(tokens, conditioning)
        return rearrange(
            patches,
            "b (t h w) (pt ph pw c) -> b (t pt) c (h ph) (w pw)",
            t=T, h=H, w=W, pt=pt, ph=ph, pw=pw,
        )

    def flops_per_forward(self, batch_size: int = 1) -> int:
        """Matmul FLOPs (2·m·n·k) of one forward pass: linear layers and attention.

        Local attention is counted as full attention, because masked SDPA computes every score.
        """
        config = self.config
        tokens = self.grid[0] * self.grid[1] * self.grid[2]
        d = config.hidden_size
        mlp = int(d * config.mlp_ratio)
        patch_features = config.in_channels * self.patch[0] * self.patch[1] * self.patch[2]
        per_block = 2 * tokens * d * (3 * d + d + 2 * mlp)  # qkv, out, MLP
        per_block += 2 * 2 * tokens * tokens * d  # Q K^T and A V over all heads
        per_block += 2 * d * 6 * d  # adaLN regression
        total = config.depth * per_block
        total += 2 * tokens * patch_features * d * 2  # patch embedding, final projection
        total += 2 * d * 2 * d + 2 * (config.noise_embedding_size * d + d * d)  # final adaLN, noise MLP
        if self.context_embedding is not None:
            total += 2 * self.grid[0] * config.context_features * self.patch[0] * d
        if self.known_embedding is not None:
            total += 2 * self.grid[0] * self.patch[0] * d
        return int(batch_size * total)

"""Tests of the convolutional autoencoder network (`latentda.nn.autoencoder`)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from latentda.nn.autoencoder import AutoEncoder, SelfAttention2d, soft_clip


def small_autoencoder(**overrides) -> AutoEncoder:
    config = dict(
        in_channels=3,
        latent_channels=4,
        hidden_channels=(8, 16, 16),
        blocks_per_stage=1,
        sample_size=(32, 32),
        periodic=(False, False),
        latent_bound=5.0,
        groups=4,
    )
    config.update(overrides)
    torch.manual_seed(0)
    return AutoEncoder(**config).eval()


def smooth_fields(batch: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Sums of a few random low-wavenumber sinusoids."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 2 * math.pi, height).view(1, 1, height, 1)
    x = torch.linspace(0, 2 * math.pi, width).view(1, 1, 1, width)
    fields = torch.zeros(batch, channels, height, width)
    for _ in range(4):
        ky, kx = torch.randint(0, 3, (2, batch, channels, 1, 1), generator=generator).float()
        phase = 2 * math.pi * torch.rand(batch, channels, 1, 1, generator=generator)
        amplitude = torch.randn(batch, channels, 1, 1, generator=generator)
        fields = fields + amplitude * torch.sin(ky * y + kx * x + phase)
    return fields


def test_shapes_divisible():
    model = small_autoencoder()
    assert model.downsample_factor == 4
    assert model.latent_shape == (4, 8, 8)
    assert model.compression_factor == pytest.approx(3 * 32 * 32 / (4 * 8 * 8))
    x = torch.randn(2, 3, 32, 32)
    z = model.encode(x)
    assert z.shape == (2, 4, 8, 8)
    assert model.decode(z).shape == (2, 3, 32, 32)
    assert model(x).shape == (2, 3, 32, 32)


def test_shapes_non_divisible_non_periodic_axis_is_padded_then_cropped():
    model = small_autoencoder(sample_size=(30, 32), periodic=(False, True))
    assert model.latent_shape == (4, 8, 8)  # ceil(30 / 4) = 8
    assert model.compression_factor == pytest.approx(3 * 30 * 32 / (4 * 8 * 8))
    x = torch.randn(2, 3, 30, 32)
    z = model.encode(x)
    assert z.shape == (2, 4, 8, 8)
    # the encoder sees the field with its last row repeated twice below it (edge values, not zeros, not on top)
    padded = torch.cat([x, x[..., -1:, :], x[..., -1:, :]], dim=-2)
    torch.testing.assert_close(z, soft_clip(model.encoder(padded), model.config.latent_bound), rtol=0, atol=0)
    x_hat = model.decode(z)
    assert x_hat.shape == (2, 3, 30, 32)
    # The crop keeps the leading rows of the padded (32-row) reconstruction.
    full = model.decoder(z)
    assert full.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x_hat, full[..., :30, :], rtol=0, atol=0)


def test_single_stage_has_no_downsampling():
    model = small_autoencoder(hidden_channels=(8,), sample_size=(6, 5))
    assert model.downsample_factor == 1
    assert model.encode(torch.randn(1, 3, 6, 5)).shape == (1, 4, 6, 5)


@pytest.mark.parametrize("attention_heads", [0, 2])
@pytest.mark.parametrize("axis", [0, 1])
def test_periodic_shift_equivariance(axis: int, attention_heads: int):
    model = small_autoencoder(periodic=(True, True), attention_heads=attention_heads)
    f = model.downsample_factor
    x = torch.randn(2, 3, 32, 32)
    dim = 2 + axis
    with torch.no_grad():
        z, z_rolled = model.encode(x), model.encode(x.roll(f, dims=dim))
        x_hat, x_hat_rolled = model(x), model(x.roll(f, dims=dim))
    torch.testing.assert_close(z_rolled, z.roll(1, dims=dim), rtol=0, atol=1e-5)
    torch.testing.assert_close(x_hat_rolled, x_hat.roll(f, dims=dim), rtol=0, atol=1e-5)


def test_non_periodic_axis_breaks_shift_equivariance():
    model = small_autoencoder(periodic=(True, False))
    f = model.downsample_factor
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        # Still equivariant along the periodic axis 0 ...
        torch.testing.assert_close(
            model.encode(x.roll(f, dims=2)), model.encode(x).roll(1, dims=2), rtol=0, atol=1e-5
        )
        # ... but zero padding at the edges of the non-periodic axis 1 breaks it there.
        z_rolled, z = model.encode(x.roll(f, dims=3)), model.encode(x)
    assert (z_rolled - z.roll(1, dims=3)).abs().max() > 1e-3


def test_latent_bound():
    model = small_autoencoder(latent_bound=0.5)
    x = 1e6 * torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z = model.encode(x)
    assert torch.isfinite(z).all()
    assert z.abs().max() < 0.5


def test_soft_clip_formula():
    z = torch.tensor([-1e30, -1e3, -2.0, 0.0, 1e-3, 2.0, 1e3, 1e30], dtype=torch.float64)
    b = 5.0
    clipped = soft_clip(z, b)
    moderate = z.abs() < 1e10
    expected = z[moderate] / torch.sqrt(1 + (z[moderate] / b) ** 2)
    torch.testing.assert_close(clipped[moderate], expected)
    assert (clipped.abs() <= b).all()
    torch.testing.assert_close(clipped[[0, -1]], torch.tensor([-b, b], dtype=torch.float64))
    assert clipped[4] == pytest.approx(1e-3, rel=1e-7)  # identity near 0


def test_save_load_round_trip(tmp_path: Path):
    model = small_autoencoder(sample_size=(30, 32), periodic=(False, True), latent_bound=3.0)
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "config.json" in files
    assert any(name.endswith(".safetensors") for name in files)
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) for name in files)

    loaded = AutoEncoder.from_pretrained(tmp_path).eval()
    assert loaded.latent_shape == model.latent_shape
    assert list(loaded.config.periodic) == [False, True]
    assert list(loaded.config.sample_size) == [30, 32]
    x = torch.randn(2, 3, 30, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), model.encode(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_periodic_axis_must_divide():
    with pytest.raises(ValueError, match=r"axis 0 .*size 30"):
        AutoEncoder(in_channels=1, hidden_channels=(8, 8, 8), sample_size=(30, 32), periodic=(True, True))
    with pytest.raises(ValueError, match=r"axis 1 .*size 18"):
        AutoEncoder(in_channels=1, hidden_channels=(8, 8, 8), sample_size=(32, 18), periodic=(False, True))


def test_encode_rejects_wrong_shapes():
    model = small_autoencoder()
    with pytest.raises(ValueError, match=r"\(2, 5, 32, 32\)"):
        model.encode(torch.randn(2, 5, 32, 32))
    with pytest.raises(ValueError, match=r"\(2, 3, 32, 31\)"):
        model.encode(torch.randn(2, 3, 32, 31))
    with pytest.raises(ValueError, match=r"\(2, 4, 7, 8\)"):
        model.decode(torch.randn(2, 4, 7, 8))


@pytest.mark.parametrize("attention_heads", [0, 2])
def test_decode_jvp_and_vjp_match_finite_difference(attention_heads: int):
    model = small_autoencoder(sample_size=(14, 16), periodic=(False, True), attention_heads=attention_heads).double()
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(1, *model.latent_shape, generator=generator, dtype=torch.float64)
    v = torch.randn(z.shape, generator=generator, dtype=torch.float64)

    x, jvp = torch.func.jvp(model.decode, (z,), (v,))
    eps = 1e-5
    with torch.no_grad():
        finite = (model.decode(z + eps * v) - model.decode(z - eps * v)) / (2 * eps)
    assert x.shape == (1, 3, 14, 16)
    assert ((jvp - finite).norm() / finite.norm()).item() < 1e-6

    # Adjoint identity <u, J v> = <J^T u, v>.
    u = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    _, vjp_fn = torch.func.vjp(model.decode, z)
    (vjp,) = vjp_fn(u)
    torch.testing.assert_close((u * jvp).sum(), (vjp * v).sum(), rtol=1e-10, atol=0)


def test_self_attention_is_multi_head_attention_over_grid_points():
    """SelfAttention2d against torch's own multi-head attention on the same weights."""
    torch.manual_seed(0)
    block = SelfAttention2d(channels=16, heads=4, groups=4).double()
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    qkv = block.qkv(block.norm(x)).flatten(2)  # (B, 3C, N)
    q, k, v = (t.reshape(2, 4, 4, 30).transpose(-1, -2) for t in qkv.chunk(3, dim=1))  # (B, heads, N, d)
    mixed = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √d) v
    expected = x + block.out(mixed.transpose(-1, -2).reshape(2, 16, 5, 6))
    torch.testing.assert_close(block(x), expected)


def test_attention_sits_at_the_coarsest_grid_and_round_trips(tmp_path: Path):
    model = small_autoencoder(attention_heads=4)
    assert isinstance(model.encoder.layers[-1], SelfAttention2d)  # the encoder's end, 16 channels at 8×8
    assert isinstance(model.decoder.layers[0], SelfAttention2d)  # the decoder's start
    assert sum(isinstance(m, SelfAttention2d) for m in model.modules()) == 2
    model.save_pretrained(tmp_path)
    loaded = AutoEncoder.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="attention_heads=3 must divide the coarsest width 16"):
        small_autoencoder(attention_heads=3)


def test_attention_decoder_is_linearised_by_forward_mode_autograd():
    """The softmax is functional: the tangent pass must notice and fall back to torch.func.jvp."""
    from latentda.nn.linearization import NetworkLinearization

    model = small_autoencoder(attention_heads=2, periodic=(True, True))
    z = torch.randn(2, *model.latent_shape)
    v = torch.randn(z.shape)
    linearization = NetworkLinearization(model, model.decode, z, key="decode")
    assert not linearization.exact
    torch.testing.assert_close(linearization.tangent(v), torch.func.jvp(model.decode, (z,), (v,))[1])


def test_gradient_checkpointing_gives_same_gradients():
    model = small_autoencoder()
    x = torch.randn(2, 3, 32, 32)

    def gradients() -> list[torch.Tensor]:
        model.zero_grad()
        model(x).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    reference = gradients()
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    for got, expected in zip(gradients(), reference):
        torch.testing.assert_close(got, expected)
    model.disable_gradient_checkpointing()
    assert not model.is_gradient_checkpointing


def test_training_reduces_reconstruction_error():
    torch.manual_seed(0)
    model = AutoEncoder(
        in_channels=2,
        latent_channels=4,
        hidden_channels=(8, 16),
        blocks_per_stage=1,
        sample_size=(16, 16),
        periodic=(False, True),
        groups=4,
    )
    x = smooth_fields(8, 2, 16, 16)
    x = (x - x.mean()) / x.std()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        return (model(x) - x).square().mean()

    with torch.no_grad():
        initial = loss().item()
    for _ in range(100):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    with torch.no_grad():
        final = loss().item()
    assert final < initial / 5, (initial, final)


@pytest.mark.parametrize("shape,margin", [((2, 3, 5, 7), 1), ((1, 2, 6, 6), 2), ((1, 1, 3, 4), 1)])
def test_torus_padding_matches_circular_padding_and_its_derivatives(shape, margin):
    import torch.nn.functional as F

    from latentda.nn.autoencoder import _TorusPad

    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    reference = F.pad(x, (margin,) * 4, mode="circular")
    padded = _TorusPad.apply(x, margin)
    assert torch.equal(padded, reference)
    cotangent = torch.randn_like(reference)
    expected, = torch.autograd.grad(reference, x, cotangent)
    folded, = torch.autograd.grad(padded, x, cotangent)
    assert torch.allclose(folded, expected, rtol=0, atol=1e-12)  # the backward folds every margin back
    tangent = torch.randn(shape, dtype=torch.float64)
    _, forward_mode = torch.func.jvp(lambda v: _TorusPad.apply(v, margin), (x.detach(),), (tangent,))
    assert torch.equal(forward_mode, F.pad(tangent, (margin,) * 4, mode="circular"))

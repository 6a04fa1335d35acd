"""Tests of the trajectory transformer backbone (latentda.nn.transformer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentda.nn.transformer import TrajectoryTransformer, _rms_norm, local_attention_mask

BATCH = 2


def make_model(randomize: bool = True, seed: int = 0, **overrides) -> TrajectoryTransformer:
    """Tiny model; ``randomize`` perturbs every parameter so that the zero-initialised
    adaLN-Zero layers no longer hide the network behind an exact zero output."""
    torch.manual_seed(seed)
    config = dict(
        in_channels=2,
        window=4,
        sample_size=(8, 8),
        patch_size=(1, 2, 2),
        hidden_size=24,
        depth=2,
        num_heads=2,
        noise_embedding_size=16,
    )
    config.update(overrides)
    model = TrajectoryTransformer(**config).eval()
    if randomize:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.2 * torch.randn_like(parameter))
    return model


def sample(model: TrajectoryTransformer, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    h, w = config.sample_size
    return torch.randn(BATCH, config.window, config.in_channels, h, w, generator=generator)


LABEL = torch.tensor([0.3, -0.7])


def test_output_shape_and_zero_at_init():
    model = make_model(randomize=False)
    x = sample(model)
    y = model(x, LABEL)
    assert y.shape == x.shape
    assert torch.equal(y, torch.zeros_like(y))  # AdaLN-Zero: exactly zero at initialisation
    assert model(x, 0.5).abs().sum() == 0  # scalar noise label broadcasts

    randomized = make_model(randomize=True)
    y = randomized(x, LABEL)
    assert y.shape == x.shape
    assert y.abs().mean() > 1e-2


def test_context_is_harmless_at_init():
    model = make_model(randomize=False, context_features=3)
    x = sample(model)
    y = model(x, LABEL, torch.randn(BATCH, 4, 3))
    assert torch.equal(y, torch.zeros_like(y))


@pytest.mark.parametrize("attention", ["full", "local"])
def test_equivariance_to_circular_shifts_along_periodic_axes(attention):
    model = make_model(
        periodic=(True, True), attention=attention, local_window=(1, 1, 1), context_features=2
    )
    x = sample(model)
    context = torch.randn(BATCH, 4, 2)
    y = model(x, LABEL, context)
    for shifts in [(2, 0), (0, 6), (4, 2)]:  # multiples of the patch size (2, 2)
        shifted = model(torch.roll(x, shifts, dims=(-2, -1)), LABEL, context)
        torch.testing.assert_close(shifted, torch.roll(y, shifts, dims=(-2, -1)), atol=1e-5, rtol=1e-5)


def test_no_equivariance_along_non_periodic_axes():
    model = make_model(periodic=(True, False))
    x = sample(model)
    y = model(x, LABEL)
    # Periodic h still holds ...
    torch.testing.assert_close(
        model(torch.roll(x, 2, dims=-2), LABEL), torch.roll(y, 2, dims=-2), atol=1e-5, rtol=1e-5
    )
    # ... but w (non-periodic, standard RoPE) and time are not circular.
    assert (model(torch.roll(x, 2, dims=-1), LABEL) - torch.roll(y, 2, dims=-1)).abs().max() > 1e-3
    assert (model(torch.roll(x, 1, dims=1), LABEL) - torch.roll(y, 1, dims=1)).abs().max() > 1e-3


def test_local_attention_mask_values():
    mask = local_attention_mask((1, 1, 5), (0, 0, 1), (False, False, True))
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 1],
            [1, 1, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 1, 1],
            [1, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    mask = local_attention_mask((1, 1, 5), (0, 0, 1), (False, False, False))
    assert not mask[0, 4] and mask[0, 1]


def perturbed_output_change(model, time_slice=slice(None), width_slice=slice(None)):
    """Max change of the output at time step 0, spatial pixels (.., 0:2) after perturbing part of the input."""
    x = sample(model)
    perturbed = x.clone()
    perturbed[:, time_slice, :, :, width_slice] += 1.0
    y, y_perturbed = model(x, LABEL), model(perturbed, LABEL)
    return (y[:, 0, :, :, 0:2] - y_perturbed[:, 0, :, :, 0:2]).abs().max().item()


def test_local_attention_receptive_field_in_time():
    # One block, radius 1 in time (full in space): time token 0 sees time tokens {0, 1} only.
    one_block = make_model(window=6, depth=1, attention="local", local_window=(1, 4, 4))
    assert perturbed_output_change(one_block, time_slice=slice(2, None)) < 1e-6
    assert perturbed_output_change(one_block, time_slice=slice(1, 2)) > 1e-3
    # Two blocks: the receptive field grows by the radius per block.
    two_blocks = make_model(window=6, depth=2, attention="local", local_window=(1, 4, 4))
    assert perturbed_output_change(two_blocks, time_slice=slice(3, None)) < 1e-6
    assert perturbed_output_change(two_blocks, time_slice=slice(2, 3)) > 1e-3
    # Full attention: everything is seen.
    full = make_model(window=6, depth=1)
    assert perturbed_output_change(full, time_slice=slice(5, None)) > 1e-3


def test_local_attention_distance_is_circular_along_periodic_axes():
    # W = 4 tokens (pixels 0:2, 2:4, 4:6, 6:8), radius 1: token 0 neighbours tokens 1 and, if
    # periodic, 3, but never token 2.
    periodic = make_model(depth=1, periodic=(False, True), attention="local", local_window=(3, 3, 1))
    assert perturbed_output_change(periodic, width_slice=slice(4, 6)) < 1e-6
    assert perturbed_output_change(periodic, width_slice=slice(6, 8)) > 1e-3
    bounded = make_model(depth=1, periodic=(False, False), attention="local", local_window=(3, 3, 1))
    assert perturbed_output_change(bounded, width_slice=slice(6, 8)) < 1e-6
    assert perturbed_output_change(bounded, width_slice=slice(2, 4)) > 1e-3


def test_noise_label_and_context_condition_the_output():
    model = make_model(context_features=3)
    x = sample(model)
    context = torch.randn(BATCH, 4, 3)
    y = model(x, LABEL, context)
    assert (model(x, LABEL + 0.5, context) - y).abs().max() > 1e-3
    assert (model(x, LABEL, context + 1.0) - y).abs().max() > 1e-3
    # Context of one time step changes that time step's tokens.
    other = context.clone()
    other[:, 2] += 1.0
    assert (model(x, LABEL, other) - y).abs().max() > 1e-3


def test_save_and_load_round_trip(tmp_path: Path):
    model = make_model(
        context_features=2, attention="local", local_window=(1, 2, 1), periodic=(False, True), patch_size=(2, 2, 2)
    )
    model.save_pretrained(tmp_path)
    names = sorted(path.name for path in tmp_path.iterdir())
    assert "config.json" in names
    assert any(name.endswith(".safetensors") for name in names)
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) for name in names)

    loaded = TrajectoryTransformer.from_pretrained(tmp_path).eval()
    assert list(loaded.config.periodic) == [False, True]
    assert loaded.flops_per_forward(1) == model.flops_per_forward(1)
    x, context = sample(model), torch.randn(BATCH, 4, 2)
    assert torch.equal(loaded(x, LABEL, context), model(x, LABEL, context))


def test_shape_errors():
    model = make_model(context_features=3)
    x = sample(model)
    context = torch.randn(BATCH, 4, 3)
    bad_inputs = [
        (x[:, :3], LABEL, context),  # window 3 != 4
        (x[:, :, :1], LABEL, context),  # channels
        (x[..., :6, :], LABEL, context),  # height
        (x[0], LABEL, context),  # missing batch dimension
        (x, torch.zeros(3), context),  # noise label batch
        (x, LABEL, None),  # context required
        (x, LABEL, context[:, :, :2]),  # context features
    ]
    for args in bad_inputs:
        with pytest.raises(ValueError):
            model(*args)
    with pytest.raises(ValueError, match="window"):
        model(x[:, :3], LABEL, context)
    with pytest.raises(ValueError, match="context_features=0"):
        make_model()(x, LABEL, context)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(sample_size=(9, 8)),  # h not divisible by 2
        dict(window=5, patch_size=(2, 2, 2)),  # K not divisible by 2
        dict(hidden_size=25),  # not divisible by heads
        dict(attention="sparse"),
        dict(attention="local"),  # no local_window
    ],
)
def test_construction_errors(overrides):
    with pytest.raises(ValueError):
        make_model(randomize=False, **overrides)


def test_vjp_and_jvp_match_autograd():
    model = make_model(attention="local", local_window=(1, 1, 1), periodic=(True, True))
    x = sample(model)
    tangent, cotangent = sample(model, seed=2), sample(model, seed=3)

    def denoise(z):
        return model(z, LABEL)

    y, vjp = torch.func.vjp(denoise, x)
    (vjp_value,) = vjp(cotangent)
    leaf = x.clone().requires_grad_(True)
    (autograd_value,) = torch.autograd.grad(denoise(leaf), leaf, cotangent)
    torch.testing.assert_close(y, model(x, LABEL))
    torch.testing.assert_close(vjp_value, autograd_value, atol=1e-6, rtol=1e-5)

    _, jvp_value = torch.func.jvp(denoise, (x,), (tangent,))
    # <v, J t> == <J^T v, t>
    torch.testing.assert_close(
        (jvp_value * cotangent).sum(), (vjp_value * tangent).sum(), atol=1e-4, rtol=1e-4
    )

    # against the derivative itself: central differences of the forward in float64
    double = model.double()
    label, x64, t64 = LABEL.double(), x.double(), tangent.double()
    _, jvp64 = torch.func.jvp(lambda z: double(z, label), (x64,), (t64,))
    step = 1e-6
    difference = (double(x64 + step * t64, label) - double(x64 - step * t64, label)) / (2 * step)
    assert jvp64.abs().max() > 1e-2
    torch.testing.assert_close(jvp64, difference, rtol=1e-5, atol=1e-8)


def test_gradient_checkpointing_gives_same_gradients():
    model = make_model()
    x = sample(model)

    def parameter_gradients():
        model.zero_grad()
        model(x, LABEL).square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    calls = []
    # Hook an inner module: non-reentrant recomputation stops early, before the block returns.
    model.blocks[0].attention.register_forward_hook(lambda *args: calls.append(1))
    reference = parameter_gradients()
    assert len(calls) == 1
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    checkpointed_gradients = parameter_gradients()
    assert len(calls) == 3  # the checkpointed block runs again during the backward pass
    for checkpointed, expected in zip(checkpointed_gradients, reference):
        torch.testing.assert_close(checkpointed, expected)


@pytest.mark.parametrize("overrides", [{}, {"depth": 3}, {"window": 6}, {"mlp_ratio": 2.0, "hidden_size": 32}])
def test_flops_per_forward_is_what_torch_counts(overrides):
    """The matmul FLOPs of one forward (the FLOP figures of the docs) equal torch's FlopCounterMode count,
    attention computed by SDPA's math backend (whose matmuls it sees; CPU's fused kernel is not counted)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = make_model(**overrides)
    for batch in (1, 3):
        z = torch.randn(batch, model.config.window, model.config.in_channels, 8, 8)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter, sdpa_kernel(SDPBackend.MATH):
            model(z, torch.full((batch,), 0.5))
        assert model.flops_per_forward(batch) == counter.get_total_flops() == batch * model.flops_per_forward(1)


def test_query_and_key_norms_run_in_float32_under_bfloat16_autocast(monkeypatch):
    """Under bfloat16 autocast the attention's RMS norms get their input and weight in one dtype, float32 (torch's
    fused kernel refuses a bfloat16 input with a float32 weight), the model's output close to float32's; outside
    autocast they give nn.RMSNorm's result."""
    model = make_model()
    x = sample(model)
    exact = model(x, LABEL)
    calls = []
    rms_norm = torch.nn.functional.rms_norm

    def recording(input, normalized_shape, weight=None, eps=None):
        calls.append((input.dtype, weight.dtype))
        return rms_norm(input, normalized_shape, weight, eps)

    monkeypatch.setattr(torch.nn.functional, "rms_norm", recording)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reduced = model(x, LABEL)
    assert len(calls) == 2 * model.config.depth  # queries and keys of every block
    assert set(calls) == {(torch.float32, torch.float32)}
    error = ((reduced.float() - exact).norm() / exact.norm()).item()
    assert 1e-5 < error < 5e-2  # bfloat16 really used elsewhere, and close
    monkeypatch.undo()
    norm = model.blocks[0].attention.query_norm
    for dtype in (torch.float32, torch.float64):  # outside autocast: nn.RMSNorm's own result, bit for bit
        h = torch.randn(3, 5, norm.normalized_shape[0], dtype=dtype)
        torch.testing.assert_close(_rms_norm(norm.to(dtype), h), norm(h), rtol=0, atol=0)

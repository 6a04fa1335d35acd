"""Tangent-only Jacobian-vector products of a network linearised at a fixed point.

For a network f built from modules, linearised at x₀, the Jacobian-vector product J_f(x₀) v can be
computed by re-running f's own ``forward`` code on v with every module replaced by its
linearisation at the input it saw at x₀:

- affine modules (convolutions, linear layers) W x + b → W v (their bias dropped);
- normalisations and activations → their derivative at the recorded input, applied to v:
  SiLU: σ(x)(1 + x(1 − σ(x))) v; ReLU: 1[x > 0] v; GELU: (Φ(x) + x φ(x)) v (or its tanh form);
  GroupNorm/LayerNorm with x̂ = (x − μ) r, r = (Var x + ε)^(−1/2) over each group:
  γ r (v − mean(v) − x̂ mean(x̂ v));
- parameter-free linear modules (identity, pixel (un)shuffle, dropout in eval) and the glue code
  between modules (sums, padding, reshapes, crops) are linear and act on v as they are.

Each product then costs about one forward of f (the same convolutions, no bias, cheap
element-wise factors) instead of the two or three of a double backward or of ``torch.func.jvp``
(which recomputes the primal at every product), and the primal forward that records the inputs is
the very forward whose autograd graph serves the vector-Jacobian products. ``torch.func.linearize``
does the same in spirit but evaluates f twice more while tracing (measured in
``tools/bench_cost.py``).

The substitution is exact only when every non-linearity of f is one of the modules above (no
functional ``F.silu`` in ``forward`` code). :func:`tangent_supported` checks the module types, and
:class:`NetworkLinearization` verifies the tangent once per network against forward-mode autograd
(:func:`torch.func.jvp`) on one sample; a network that fails either check is linearised with
``torch.func.jvp`` instead (correct, about 3× the cost per product).
Written here because torch offers no tangent-only linearisation that reuses one primal evaluation.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NetworkLinearization", "tangent_supported"]

AFFINE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
LINEAR = (nn.Identity, nn.PixelShuffle, nn.PixelUnshuffle, nn.Dropout, nn.Flatten, nn.Unflatten)


# Element-wise activations f: the tangent f'(x) ⊙ v equals the vector-Jacobian product, which aten
# computes in one fused pass from the recorded input x (no derivative tensor is stored).
ACTIVATIONS: dict[type, Callable[[nn.Module, Tensor, Tensor], Tensor]] = {
    nn.SiLU: lambda module, x, v: torch.ops.aten.silu_backward(v, x),
    nn.ReLU: lambda module, x, v: torch.ops.aten.threshold_backward(v, x, 0),
    nn.GELU: lambda module, x, v: torch.ops.aten.gelu_backward(v, x, approximate=module.approximate),
}


def _group_norm_state(module: nn.GroupNorm, x: Tensor) -> tuple[Tensor, Tensor]:
    """(x̂, r) of ``module`` at x, grouped as (B, G, −1) (fused kernels: one pass each)."""
    grouped = x.reshape(x.shape[0], module.num_groups, -1)
    variance, _ = torch.var_mean(grouped, dim=-1, unbiased=False, keepdim=True)
    normalised = F.group_norm(x, module.num_groups, eps=module.eps).reshape(grouped.shape)
    return normalised, torch.rsqrt(variance + module.eps)


def _layer_norm_state(module: nn.LayerNorm, x: Tensor) -> tuple[Tensor, Tensor]:
    dims = tuple(range(-len(module.normalized_shape), 0))
    variance, _ = torch.var_mean(x, dim=dims, unbiased=False, keepdim=True)
    normalised = F.layer_norm(x, module.normalized_shape, eps=module.eps)
    return normalised, torch.rsqrt(variance + module.eps)


def _normalisation_tangent(normalised: Tensor, rstd: Tensor, v: Tensor, dims) -> Tensor:
    """r (v − mean v − x̂ mean(x̂ v)) over ``dims``: the JVP of (x − μ) r."""
    return rstd * (v - v.mean(dims, keepdim=True) - normalised * (normalised * v).mean(dims, keepdim=True))


def _record(module: nn.Module, x: Tensor):
    """What the tangent of ``module`` needs from its input x (computed without a graph)."""
    x = x.detach()
    if isinstance(module, nn.GroupNorm):
        return _group_norm_state(module, x)
    if isinstance(module, nn.LayerNorm):
        return _layer_norm_state(module, x)
    return x  # activations: the input itself (a reference to what autograd keeps anyway, no copy)


def _tangent(module: nn.Module, state, v: Tensor) -> Tensor:
    """The linearisation of ``module`` at its recorded input, applied to v."""
    if isinstance(module, nn.GroupNorm):
        normalised, rstd = state
        out = _normalisation_tangent(normalised, rstd, v.reshape(normalised.shape), -1).reshape(v.shape)
        if module.affine:
            out = out * module.weight.reshape(1, -1, *([1] * (v.ndim - 2)))
        return out
    if isinstance(module, nn.LayerNorm):
        normalised, rstd = state
        dims = tuple(range(-len(module.normalized_shape), 0))
        out = _normalisation_tangent(normalised, rstd, v, dims)
        return out * module.weight if module.weight is not None else out
    return ACTIVATIONS[type(module)](module, state, v)


def _nonlinear(module: nn.Module) -> bool:
    return isinstance(module, (nn.GroupNorm, nn.LayerNorm)) or type(module) in ACTIVATIONS


def tangent_supported(network: nn.Module) -> bool:
    """Whether every leaf module of ``network`` has a tangent rule (see the module docstring).

    Functional non-linearities inside
    ``forward`` code cannot be seen here: :class:`NetworkLinearization` checks numerically too."""
    for module in network.modules():
        if any(True for _ in module.children()):
            continue
        if not (_nonlinear(module) or isinstance(module, AFFINE + LINEAR)):
            return False
    return True


class _Recorder:
    """Forward hooks storing, call by call, what each non-linear module's tangent needs."""

    def __init__(self, network: nn.Module) -> None:
        self.modules = [m for m in network.modules() if _nonlinear(m)]
        self.states: dict[int, list] = {id(m): [] for m in self.modules}

    @contextmanager
    def recording(self) -> Iterator[None]:
        handles = [m.register_forward_hook(self._hook) for m in self.modules]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, module: nn.Module, inputs, output) -> None:
        self.states[id(module)].append(_record(module, inputs[0]))


@contextmanager
def _tangent_mode(network: nn.Module, recorder: _Recorder) -> Iterator[None]:
    """Within: ``network``'s affine modules lose their bias and its non-linear modules apply their
    recorded linearisation (each call consuming the state recorded by the same call at x₀)."""
    affine = [m for m in network.modules() if isinstance(m, AFFINE) and m.bias is not None]
    biases = [m._parameters["bias"] for m in affine]
    calls = {id(m): 0 for m in recorder.modules}

    def linearised(module: nn.Module):
        def forward(v: Tensor) -> Tensor:
            index = calls[id(module)]
            calls[id(module)] = index + 1
            return _tangent(module, recorder.states[id(module)][index], v)

        return forward

    try:
        for module in affine:
            module._parameters["bias"] = None
        for module in recorder.modules:
            module.forward = linearised(module)
        yield
    finally:
        for module, bias in zip(affine, biases):
            module._parameters["bias"] = bias
        for module in recorder.modules:
            del module.forward


class NetworkLinearization:
    """``call`` (a function of one tensor that runs ``network``) linearised at ``anchor``.

    ``value`` is call(anchor), with its autograd graph to ``anchor`` when ``anchor`` requires grad
    (so vector-Jacobian products are backwards through it); ``tangent(v)`` is J v at ``anchor``, by one
    tangent pass when the network allows it, else by ``torch.func.jvp``. ``call`` must be the
    network applied to its argument with nothing non-linear around it (put affine pre/post maps
    of your own outside: J(s ⊙ v) ⊙ s'). ``key`` names ``call`` for the one-off numerical check.
    """

    def __init__(self, network: nn.Module, call: Callable[[Tensor], Tensor], anchor: Tensor, key: str = "forward") -> None:
        self.network, self.call, self.anchor = network, call, anchor
        self.exact = self._verified(key)
        self.recorder = _Recorder(network) if self.exact else None
        if self.recorder is not None:
            with self.recorder.recording():
                self.value = call(anchor)
        else:
            self.value = call(anchor)

    def tangent(self, v: Tensor) -> Tensor:
        v = v.to(self.anchor.dtype)
        if self.recorder is None:
            return torch.func.jvp(self.call, (self.anchor.detach(),), (v,))[1]
        with torch.no_grad(), _tangent_mode(self.network, self.recorder):
            return self.call(v)

    def _verified(self, key: str) -> bool:
        """Every leaf module has a tangent rule and the tangent pass equals forward-mode autograd on
        one sample and a random direction: decided once per network and ``key``, then cached."""
        verified = self.network.__dict__.setdefault("_tangent_verified", {})
        if key not in verified and not tangent_supported(self.network):
            verified[key] = False
        if key not in verified:
            x = self.anchor[:1].detach()
            generator = torch.Generator().manual_seed(0)
            v = torch.randn(x.shape, generator=generator).to(x)
            with torch.no_grad(), torch.autocast(x.device.type, enabled=False):  # the check in full precision
                expected = torch.func.jvp(self.call, (x,), (v,))[1]
                recorder = _Recorder(self.network)
                with recorder.recording():
                    self.call(x)
                with _tangent_mode(self.network, recorder):
                    got = self.call(v)
            scale = expected.abs().max().clamp_min(torch.finfo(x.dtype).tiny)
            verified[key] = bool(((got - expected).abs().max() / scale) < 1e-3)
        return verified[key]

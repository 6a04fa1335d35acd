r"""Imperfect-model twin experiments with DAPPER: the truth from the exact model, the assimilation with a
model that errs by a known amount.

A learned prior is an imperfect model of the twin experiment's dynamics; an ensemble filter run with its
*exact* model (DAPPER's LETKF on ``HMM``) is not. :func:`with_model_error` makes the comparison fair in the
other direction: a copy of the HMM whose dynamics add, at every model step,

    x_{t+dt} = M(x_t) + (s ε_t + r η_t^m) / √dko,

with ε_t one field shared by every member of the ensemble (a systematic error the ensemble does not see:
its spread stays blind to it) and η_t^m one field per member (a stochastic error the ensemble samples),
both drawn afresh every step, dko the model steps per observation cycle. Each field is white noise smoothed
by a Gaussian kernel of ``length`` grid points and scaled to a root-mean-square of 1 over the grid
(:func:`smooth_fields`), so if the dynamics neither grow nor damp it a member's one-cycle forecast from the
true state errs by √(s² + r²) and the ensemble mean by √(s² + r²/N). Simulate the truth with ``HMM``,
assimilate with the copy::

    xx, yy = HMM.simulate()
    noisy = with_model_error(HMM, shape=(1, 129, 129), shared=0.38, independent=0.27, length=8)
    LETKF(N=25, infl=1.04, loc_rad=10).assimilate(noisy, xx, yy)

``tools/bench_dapper_qg.py`` runs it as the ``letkf-err<s>-<r>`` rows: an LETKF whose model errs by as much
per cycle as the learned prior does (docs/qg-benchmark.md).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter

from latentda.errors import LatentdaError

__all__ = ["ModelError", "smooth_fields", "with_model_error"]


def smooth_fields(rng: np.random.Generator, count: int, shape: tuple[int, int, int], length: float,
                  zero_edges: bool = True) -> np.ndarray:
    r"""``count`` random fields on a grid ``shape`` = (C, H, W), flattened in C order to (count, C·H·W):
    white noise smoothed over (H, W) by a Gaussian kernel of standard deviation ``length`` grid points
    (:func:`scipy.ndimage.gaussian_filter`, reflected at the edges), with ``zero_edges`` its edge rows and
    columns set to 0 (a closed box: DAPPER's QG streamfunction is 0 there), then each field scaled to a
    root-mean-square of exactly 1 over the grid. Away from the edges two points d grid points apart
    correlate by exp(−d²/(4 length²)) (the kernel convolved with itself)."""
    fields = rng.standard_normal((count, *shape))
    fields = gaussian_filter(fields, sigma=(0, 0, length, length), mode="reflect")
    if zero_edges:
        fields[..., 0, :] = fields[..., -1, :] = 0
        fields[..., :, 0] = fields[..., :, -1] = 0
    fields = fields.reshape(count, -1)
    return fields / np.sqrt(np.mean(fields**2, axis=1, keepdims=True))


class ModelError:
    r"""A DAPPER model function ``model(x, t, dt)`` plus additive smooth noise (module docstring):
    ``shared`` · ε + ``independent`` · η^m, divided by √``steps_per_cycle``, ε one field for every row of
    an ensemble ``x`` (N, Nx), η^m one per row; a state (Nx,) gets both. Draws from its own generator
    (``seed``)."""

    def __init__(self, model, shape: tuple[int, int, int], shared: float = 0.0, independent: float = 0.0,
                 length: float = 8.0, steps_per_cycle: int = 1, seed: int = 0, zero_edges: bool = True):
        for name, value in (("shared", shared), ("independent", independent)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise LatentdaError(f"the {name} model error must be a finite number ≥ 0, got {value!r}")
        if not (isinstance(length, (int, float)) and length > 0):
            raise LatentdaError(f"the model error's length must be positive (grid points), got {length!r}")
        if len(shape) != 3:
            raise LatentdaError(f"shape must be the fields' (C, H, W), got {tuple(shape)}")
        self.model, self.shape, self.length, self.zero_edges = model, tuple(int(n) for n in shape), float(length), zero_edges
        self.scale = (float(shared) / math.sqrt(steps_per_cycle), float(independent) / math.sqrt(steps_per_cycle))
        self.rng = np.random.default_rng(seed)

    def __call__(self, x: np.ndarray, t: float, dt: float) -> np.ndarray:
        out = np.asarray(self.model(x, t, dt))
        rows = out.reshape(-1, out.shape[-1])
        if rows.shape[1] != math.prod(self.shape):
            raise LatentdaError(f"the model's states have {rows.shape[1]} entries, the fields {self.shape} have {math.prod(self.shape)}")
        shared, independent = self.scale
        noise = np.zeros_like(rows)
        if shared:
            noise += shared * smooth_fields(self.rng, 1, self.shape, self.length, self.zero_edges)
        if independent:
            noise += independent * smooth_fields(self.rng, len(rows), self.shape, self.length, self.zero_edges)
        return (rows + noise).reshape(out.shape)


def with_model_error(HMM, shape: tuple[int, int, int], shared: float = 0.0, independent: float = 0.0,
                     length: float = 8.0, seed: int = 0, zero_edges: bool = True):
    """A copy of the DAPPER ``HMM`` whose dynamics are :class:`ModelError` around its own (``shared`` and
    ``independent`` per observation cycle: ``steps_per_cycle`` = ``HMM.tseq.dko``); ``HMM`` is unchanged."""
    noisy = HMM.copy()
    noisy.Dyn.model = ModelError(noisy.Dyn.model, shape, shared, independent, length, steps_per_cycle=HMM.tseq.dko,
                                 seed=seed, zero_edges=zero_edges)
    return noisy

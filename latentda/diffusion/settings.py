"""Sampler settings: how a trajectory is drawn from the prior or the posterior, in one typed object.

The same fields are a YAML config's ``diffusion:`` section (:class:`latentda.training.diffusion.DiffusionConfig`),
the defaults saved in a pipeline's ``pipeline_config.json`` (``LatentDAPipeline.sampling``), the
optional overrides of a run (:class:`latentda.posterior.reanalysis.PosteriorSettings`) and the
sampler options of ``latentda sample``, ``reanalyze`` and ``forecast``, so the rules live here once:
:meth:`SamplerSettings.validate` holds every rule on the values alone, and
:meth:`SamplerSettings.check_sigma_range` / :meth:`SamplerSettings.check_window` the rules that need
the prior (its σ range, its window K). :meth:`SamplerSettings.sample_kwargs` are the keyword
arguments of :func:`latentda.diffusion.sampling.sample`, the one sampling entry point.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latentda.config import require
from latentda.errors import LatentdaError

__all__ = ["SamplerSettings", "SAMPLER_FIELDS", "SAMPLERS", "resolve_overlap"]

SAMPLERS = ("ddpm", "ddim", "heun", "pc", "heun-pc")
LANGEVIN_SAMPLERS = ("pc", "heun-pc")  # the samplers with Langevin corrections (``corrections``, ``tau``)


def resolve_overlap(window: int, overlap: int | None) -> int:
    """The overlap of consecutive blankets (:mod:`latentda.diffusion.blankets`): ``overlap`` as given
    (0: windows share no state), or the default K // 2 when None. The one place the default is decided."""
    return window // 2 if overlap is None else overlap


def _help(text: str, **more) -> dict:
    """Field metadata: ``help`` is the one-line description shown by the command line (``choices``
    its allowed values, when they are a list)."""
    return {"help": text, **more}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplerSettings:
    """How :func:`latentda.diffusion.sampling.sample` walks the noise levels (variance exploding,
    x_t = x + σ ε, with x̂ = D(x_i, σ_i) the denoiser mean at level σ_i).

    - ``sampler``: the update from σ_i to σ_{i+1}: ``ddim`` (deterministic, x ← x̂ + (σ_{i+1}/σ_i)(x − x̂)),
      ``ddpm`` (ancestral, the exact Gaussian bridge of the VE process given x̂), ``heun`` (Karras
      et al. 2022 Alg. 1, second order), ``pc`` (predictor-corrector: a ``ddim`` predictor, then
      ``corrections`` Langevin steps at σ_{i+1}) or ``heun-pc`` (a ``heun`` predictor, then the
      same Langevin steps).
    - ``steps``: N, the number of noise levels σ_0 > … > σ_{N−1} = σ_min of the Karras (ρ = 7) grid.
    - ``corrections``: Langevin corrector steps per level of ``pc`` and ``heun-pc``,
      x ← x + δ s + √(2δ) ε with the score s = (D(x, σ) − x)/σ².
    - ``tau``: τ, the Langevin step factor: δ = min(τ / mean(s²), σ²), the mean over each member's own
      values; the cap keeps directions pinned by accurate observations stable (:mod:`latentda.diffusion.sampling`),
      and since mean(s²) ≤ 1/σ², τ ≥ 1 gives δ = σ².
    - ``sigma_start``: σ_0, the level sampling starts from, in (σ_min, σ_max] of the prior
      (None: σ_max). Starting lower spends the same steps where the data are shaped, but a direction
      of a window whose variance λ exceeds σ_0² (standardised data have unit variance per element,
      not along the slow, coherent directions of a window) comes out narrow in unconditional samples.
    - ``churn``: stochastic churn (Karras et al. 2022, Alg. 2): before step i the level is raised to
      σ_i (1 + γ) with fresh noise, γ = min(churn / N, √2 − 1); 0 = none.
    - ``overlap``: states shared by consecutive blankets when a trajectory is longer than the
      window K, in [0, K) (None: K // 2, decided by :func:`latentda.diffusion.blankets.resolve_overlap`);
      also the default context of a forecast window.

    The defaults here are the library's; a pipeline ships its own (``pipeline_config.json``).
    """

    sampler: str = field(default="pc", metadata=_help(
        "update between noise levels: ddim (deterministic), ddpm (ancestral), heun (2nd order), "
        "pc (predictor-corrector: ddim + Langevin corrections), heun-pc", choices=SAMPLERS))
    steps: int = field(default=64, metadata=_help("number of noise levels (diffusion steps)"))
    corrections: int = field(default=1, metadata=_help("Langevin corrections per level (pc and heun-pc samplers)"))
    tau: float = field(default=0.1, metadata=_help("Langevin step factor τ: step δ = min(τ / mean(score²), σ²) (pc and heun-pc)"))
    sigma_start: float | None = field(default=None, metadata=_help(
        "noise level the sampler starts from, in (sigma_min, sigma_max] of the prior"))
    churn: float = field(default=0.0, metadata=_help("stochastic churn (0: none)"))
    overlap: int | None = field(default=None, metadata=_help(
        "states shared by consecutive blankets, in [0, window); also the forecast context"))

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):  # numpy numbers (a sweep over np.arange) as Python's: checked and JSON-written as such
            value = getattr(self, item.name)
            if isinstance(value, np.generic):
                object.__setattr__(self, item.name, value.item())

    def validate(self, prefix: str = "") -> None:
        """Every rule on the values alone (a one-line :class:`LatentdaError` naming the field)."""
        key = (lambda name: f"{prefix}.{name}") if prefix else (lambda name: name)
        require(self.sampler in SAMPLERS, key("sampler"), f"must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        require(_is_int(self.steps) and self.steps >= 1, key("steps"), f"must be an integer ≥ 1, got {self.steps!r}")
        require(_is_int(self.corrections) and self.corrections >= 0, key("corrections"),
                f"must be an integer ≥ 0, got {self.corrections!r}")
        require(_is_number(self.tau) and self.tau > 0, key("tau"), f"must be positive, got {self.tau!r}")
        require(self.sigma_start is None or _is_number(self.sigma_start) and self.sigma_start > 0, key("sigma_start"),
                f"must be positive (or null: the prior's sigma_max), got {self.sigma_start!r}")
        require(_is_number(self.churn) and self.churn >= 0, key("churn"), f"must be ≥ 0, got {self.churn!r}")
        require(self.overlap is None or _is_int(self.overlap) and self.overlap >= 0, key("overlap"),
                f"must be an integer ≥ 0 (or null: window // 2), got {self.overlap!r}")

    def check_sigma_range(self, sigma_min: float, sigma_max: float, prefix: str = "") -> None:
        """``sigma_start`` lies in the prior's noise range (σ_min, σ_max]."""
        require(self.sigma_start is None or sigma_min < self.sigma_start <= sigma_max,
                f"{prefix}.sigma_start" if prefix else "sigma_start",
                f"must be in (sigma_min, sigma_max] = ({sigma_min:g}, {sigma_max:g}], got {self.sigma_start!r}")

    def check_window(self, window: int, prefix: str = "") -> None:
        """``overlap`` leaves consecutive blankets of ``window`` states at least one new state."""
        require(self.overlap is None or self.overlap < window, f"{prefix}.overlap" if prefix else "overlap",
                f"must be in [0, window) = [0, {window}), got {self.overlap!r}")

    def blanket_overlap(self, window: int) -> int:
        """The overlap of blankets of ``window`` states these settings give (None resolved)."""
        return resolve_overlap(window, self.overlap)

    def sample_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`latentda.diffusion.sampling.sample`."""
        return {"steps": self.steps, "method": self.sampler, "corrections": self.corrections, "tau": self.tau,
                "sigma_start": self.sigma_start, "churn": self.churn}

    def with_overrides(self, **overrides: Any) -> "SamplerSettings":
        """A validated copy in which every override that is not None replaces its field (None keeps
        this object's value); an unknown name is an error."""
        unknown = [name for name in overrides if name not in SAMPLER_FIELDS]
        if unknown:
            raise LatentdaError(f"unknown sampler setting '{unknown[0]}' (allowed: {', '.join(SAMPLER_FIELDS)})")
        given = {name: value for name, value in overrides.items() if value is not None}
        settings = dataclasses.replace(self, **given) if given else self
        settings.validate()
        return settings

    def check_applies(self, overrides: dict[str, Any]) -> None:
        """Refuse Langevin settings given for a run (``overrides`` not None) when these settings' sampler
        takes no Langevin steps: they would be recorded with the output as if applied. (A pipeline's
        stored defaults may hold them for any sampler.)"""
        unused = [name for name in ("corrections", "tau") if overrides.get(name) is not None]
        if unused and self.sampler not in LANGEVIN_SAMPLERS:
            raise LatentdaError(f"{unused[0]}: applies to the {' and '.join(LANGEVIN_SAMPLERS)} samplers only (the sampler "
                                f"is {self.sampler}): leave it out, or choose one of those samplers")

    @staticmethod
    def of(source: Any) -> "SamplerSettings":
        """The sampler settings held by ``source`` (an object with these fields and maybe more, e.g. a
        :class:`latentda.training.diffusion.DiffusionConfig`)."""
        return SamplerSettings(**{name: getattr(source, name) for name in SAMPLER_FIELDS})


SAMPLER_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SamplerSettings))
"""The names of the sampler settings, in declaration order (as in ``pipeline_config.json``)."""

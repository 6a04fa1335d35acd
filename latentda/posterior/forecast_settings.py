"""The settings of a forecast (:class:`ForecastSettings`), apart from :mod:`latentda.posterior.forecast`
so that the command line builds its options without importing the networks."""

from __future__ import annotations

from dataclasses import dataclass, field

from latentda.errors import LatentdaError, check_positive

__all__ = ["ForecastSettings", "MODES", "CONDITIONINGS", "check_conditioning"]

MODES = ("autoregressive", "aao")
CONDITIONINGS = ("mmps", "inpaint", "known")


DEFAULT_CONDITIONING, DEFAULT_CONDITION_NOISE = "mmps", 0.05


def check_conditioning(conditioning: str, condition_noise: float) -> None:
    """How a window follows a history (forecasts, filters): a positive σ_c for mmps; σ_c is mmps' only (a value
    given with inpaint or known would be ignored, and recorded as if it applied)."""
    if conditioning == "mmps":
        check_positive("the conditioning noise", condition_noise)
    elif condition_noise != DEFAULT_CONDITION_NOISE:
        raise LatentdaError(f"condition_noise: the mmps conditioning's σ_c, not {conditioning}'s (leave it out)")


@dataclass(frozen=True)
class ForecastSettings:
    """How a forecast continues the history (the module docstring has the math); the options of
    ``latentda forecast`` are generated from these fields (their ``help``)."""

    mode: str = field(default="autoregressive", metadata={"help": "autoregressive: roll blankets forward; aao: sample "
                                                                   "window and lead all at once", "choices": MODES})
    conditioning: str = field(default=DEFAULT_CONDITIONING, metadata={"help": "how each new blanket follows the previous latents "
                                                                "(mmps: sharper and calibrated, docs/benchmarks.md; "
                                                                "known: exact, priors trained with known frames)",
                                                        "choices": CONDITIONINGS})
    condition_noise: float = field(default=DEFAULT_CONDITION_NOISE, metadata={"help": "σ_c of the mmps conditioning, standardised latent units"})

    def validate(self) -> None:
        """Every rule on the values alone (a one-line :class:`LatentdaError` naming the field)."""
        if self.mode not in MODES:
            raise LatentdaError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.conditioning not in CONDITIONINGS:
            raise LatentdaError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, got {self.conditioning!r}")
        check_conditioning(self.conditioning, self.condition_noise)
        if self.mode == "aao" and (self.conditioning, self.condition_noise) != (DEFAULT_CONDITIONING, DEFAULT_CONDITION_NOISE):
            raise LatentdaError("conditioning, condition_noise: the autoregressive mode's (aao samples the observed "
                                "window and the lead at once, conditioned on the observations only)")

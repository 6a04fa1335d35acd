"""The settings of a forecast (:class:`ForecastSettings`), apart from :mod:`latentda.posterior.forecast`
so that the command line builds its options without importing the networks."""

from __future__ import annotations

from dataclasses import dataclass, field

from latentda.errors import LatentdaError, check_positive

__all__ = ["ForecastSettings", "MODES", "CONDITIONINGS"]

MODES = ("autoregressive", "aao")
CONDITIONINGS = ("mmps", "inpaint", "known")


@dataclass(frozen=True)
class ForecastSettings:
    """How a forecast continues the history (the module docstring has the math); the options of
    ``latentda forecast`` are generated from these fields (their ``help``)."""

    mode: str = field(default="autoregressive", metadata={"help": "autoregressive: roll blankets forward; aao: sample "
                                                                   "window and lead all at once", "choices": MODES})
    conditioning: str = field(default="mmps", metadata={"help": "how each new blanket follows the previous latents "
                                                                "(mmps: sharper and calibrated, docs/benchmarks.md; "
                                                                "known: exact, priors trained with known frames)",
                                                        "choices": CONDITIONINGS})
    condition_noise: float = field(default=0.05, metadata={"help": "σ_c of the mmps conditioning, standardised latent units"})

    def validate(self) -> None:
        """Every rule on the values alone (a one-line :class:`LatentdaError` naming the field)."""
        if self.mode not in MODES:
            raise LatentdaError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.conditioning not in CONDITIONINGS:
            raise LatentdaError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, got {self.conditioning!r}")
        if self.conditioning == "mmps":
            check_positive("the conditioning noise", self.condition_noise)

"""Bounded variables: a per-channel transform applied before standardisation and inverted after decoding.

A variable may be declared bounded in the data config (``data.bounds`` or ``data.non_negative``),
e.g. precipitation x ≥ 0. The autoencoder and the prior then work on t = f(x) (standardised), and
every field latentda outputs is x = f⁻¹(t), which respects the bounds whatever t the networks give:

- ``none``: f(x) = x, f⁻¹(t) = clip(t, lower, upper) (a clip only);
- ``sqrt`` (needs ``lower`` = a): f(x) = √(x − a), f⁻¹(t) = a + max(t, 0)², which un-skews
  intermittent, heavy-tailed fields such as precipitation (the usual square-root transform) and maps
  every t ≤ 0 to exactly a (dry pixels stay exactly zero);
- ``log`` (needs ``lower`` = a and ``offset`` ε > 0): f(x) = log(x − a + ε),
  f⁻¹(t) = a + max(eᵗ − ε, 0), for fields spanning orders of magnitude;

each followed by a clip to [lower, upper] when an upper bound is given. The posterior differentiates
through f⁻¹ (:meth:`Bounds.inverse_derivative`): where f⁻¹ is flat (t ≤ 0 for ``sqrt``, a clipped
value) an observation cannot pull the field back inside, as for any clipped quantity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch

from latentda.config import require
from latentda.errors import LatentdaError

__all__ = ["Bounds", "TRANSFORMS", "bounds_by_channel"]

TRANSFORMS = ("none", "sqrt", "log")


@dataclass(frozen=True)
class Bounds:
    """The bounds of a variable and the transform that keeps its outputs within them (module docstring)."""

    lower: float | None = None
    upper: float | None = None
    transform: Literal["none", "sqrt", "log"] = "none"
    offset: float = 1.0  # ε of the log transform, in the variable's units

    def validate(self, prefix: str) -> None:
        require(self.transform in TRANSFORMS, f"{prefix}.transform", f"must be one of {', '.join(TRANSFORMS)}")
        for name in ("lower", "upper"):
            value = getattr(self, name)
            require(value is None or (isinstance(value, (int, float)) and math.isfinite(value)), f"{prefix}.{name}",
                    "must be a finite number or null")
        require(self.lower is not None or self.upper is not None, prefix, "give a lower or an upper bound")
        require(self.lower is None or self.upper is None or self.lower < self.upper, prefix, "lower must be below upper")
        require(self.transform == "none" or self.lower is not None, f"{prefix}.transform",
                f"'{self.transform}' needs a lower bound")
        require(self.transform != "log" or (math.isfinite(self.offset) and self.offset > 0), f"{prefix}.offset",
                "must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "Bounds":
        try:
            bounds = cls(**data)
        except TypeError as error:
            raise LatentdaError(f"{where}: malformed bounds {data!r} ({error})") from None
        bounds.validate(where)
        return bounds

    # ------------------------------------------------------------------ the maps (numpy or torch)
    def forward(self, x):
        """t = f(x): physical values → the values standardised and learned (NaN stays NaN)."""
        lib = torch if isinstance(x, torch.Tensor) else np
        if self.transform == "sqrt":
            return lib.sqrt(lib.clip(x - self.lower, 0, None))
        if self.transform == "log":
            return lib.log(lib.clip(x - self.lower, 0, None) + self.offset)
        return x

    def inverse(self, t):
        """x = f⁻¹(t), within [lower, upper] for any t."""
        lib = torch if isinstance(t, torch.Tensor) else np
        if self.transform == "sqrt":
            x = self.lower + lib.clip(t, 0, None) ** 2
        elif self.transform == "log":
            x = self.lower + lib.clip(lib.exp(t) - self.offset, 0, None)
        else:
            x = t
        return lib.clip(x, self.lower, self.upper) if (self.lower is not None or self.upper is not None) else x

    def inverse_derivative(self, t):
        """df⁻¹/dt at t (0 where f⁻¹ is clipped)."""
        lib = torch if isinstance(t, torch.Tensor) else np
        if self.transform == "sqrt":
            slope = 2 * lib.clip(t, 0, None)
        elif self.transform == "log":
            slope = lib.exp(t) * (lib.exp(t) > self.offset)
        else:
            slope = lib.ones_like(t)
        x = self.inverse(t)
        if self.upper is not None:
            slope = slope * (x < self.upper)
        if self.transform == "none" and self.lower is not None:
            slope = slope * (x > self.lower)
        return slope


def bounds_by_channel(channels: list[str], bounds: dict[str, dict | Bounds] | None,
                      non_negative: list[str] | None = None) -> list[Bounds | None]:
    """Per channel (``variable`` or ``variable@level``) the :class:`Bounds` of its variable, from a
    data config's ``bounds`` (variable → bounds) and ``non_negative`` (variables ≥ 0, square-root
    transform); None for unbounded channels. Unknown variable names are refused."""
    variables = {channel.split("@")[0] for channel in channels}
    merged: dict[str, Bounds] = {}
    for name in non_negative or []:
        merged[name] = Bounds(lower=0.0, transform="sqrt")
    for name, value in (bounds or {}).items():
        merged[name] = value if isinstance(value, Bounds) else Bounds.from_dict(dict(value), f"data.bounds.{name}")
    unknown = sorted(set(merged) - variables)
    if unknown:
        raise LatentdaError(f"bounds given for unknown variable(s) {', '.join(unknown)} (the model has: {', '.join(sorted(variables))})")
    for name, value in merged.items():
        value.validate(f"data.bounds.{name}")
    return [merged.get(channel.split("@")[0]) for channel in channels]

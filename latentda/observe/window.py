"""The window options of tabular observations (:class:`TableWindow`), apart from
:mod:`latentda.observe.tabular` so that the command line builds its options without importing
torch or pandas. How rows are placed on the window's states: :mod:`latentda.observe.tabular`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["TableWindow"]


@dataclass(frozen=True)
class TableWindow:
    """How the rows of a table are placed on the window's states (:mod:`latentda.observe.tabular`); the command
    line options ``--window-start``, ``--window-length``, ``--time-tolerance``."""

    window_start: str | None = field(default=None, metadata={
        "help": "time of the window's first state, an ISO date-time or a number (None: the earliest row's)"})
    window_length: int | None = field(default=None, metadata={
        "help": "number of states of the window (None: up to the latest row)"})
    time_tolerance: str | None = field(default=None, metadata={
        "help": "largest distance from a row's time to its state, in the model's time units (seconds for "
                "datetimes) or a duration like 90min or 3h (None: half the time step)"})

    @classmethod
    def of(cls, arguments) -> "TableWindow":
        """The window options of parsed command line ``arguments`` (an argparse namespace)."""
        return cls(**{f.name: getattr(arguments, f.name, None) for f in dataclasses.fields(cls)})

    @property
    def given(self) -> list[str]:
        """The options given, as command line options."""
        return ["--" + f.name.replace("_", "-") for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

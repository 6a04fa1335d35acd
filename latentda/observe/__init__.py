"""Observations: pixel-space operators, observation files, tables and synthetic observations
(names imported on first use: the command line reads :class:`TableWindow` without torch)."""

from typing import TYPE_CHECKING

from latentda.lazy import lazy_names

_FILES = ("ObservationConfig", "ObservationSpec", "load_observations", "observations_to_dataset", "read_observations",
          "read_observation_groups", "synthesize")
_OPERATORS = ("SAMPLINGS", "TRANSFORMS", "ObservationGroup", "ObservationOperator")
_TABULAR = ("observation_dataset", "observations_from_table", "open_observations", "read_table", "table_to_cycles",
            "table_to_dataset")
_LAZY = {**{name: "latentda.observe.files" for name in _FILES},
         **{name: "latentda.observe.operators" for name in _OPERATORS},
         **{name: "latentda.observe.tabular" for name in _TABULAR},
         "TableWindow": "latentda.observe.window"}
__all__ = list(_LAZY)

if TYPE_CHECKING:
    from latentda.observe.files import (
        ObservationConfig, ObservationSpec, load_observations, observations_to_dataset, read_observation_groups,
        read_observations, synthesize,
    )
    from latentda.observe.operators import SAMPLINGS, TRANSFORMS, ObservationGroup, ObservationOperator
    from latentda.observe.tabular import (
        observation_dataset, observations_from_table, open_observations, read_table, table_to_cycles,
        table_to_dataset,
    )
    from latentda.observe.window import TableWindow

__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())

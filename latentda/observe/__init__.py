"""Observations: pixel-space operators, observation files, tables and synthetic observations."""

from latentda.observe.files import (
    ObservationConfig, ObservationSpec, load_observations, observations_to_dataset, read_observations, synthesize,
)
from latentda.observe.operators import SAMPLINGS, TRANSFORMS, ObservationGroup, ObservationOperator
from latentda.observe.tabular import (
    TableWindow, observation_dataset, observations_from_table, open_observations, read_table, table_to_dataset,
)

__all__ = [
    "ObservationGroup", "ObservationOperator", "ObservationConfig", "ObservationSpec", "read_observations",
    "load_observations", "observations_to_dataset", "synthesize", "SAMPLINGS", "TRANSFORMS",
    "observations_from_table", "table_to_dataset", "observation_dataset", "open_observations", "read_table", "TableWindow",
]

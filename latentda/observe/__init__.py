"""Observations: pixel-space operators, observation files and synthetic observations."""

from latentda.observe.files import (
    ObservationConfig, ObservationSpec, load_observations, observations_to_dataset, read_observations, synthesize,
)
from latentda.observe.operators import SAMPLINGS, TRANSFORMS, ObservationGroup, ObservationOperator

__all__ = [
    "ObservationGroup", "ObservationOperator", "ObservationConfig", "ObservationSpec", "read_observations",
    "load_observations", "observations_to_dataset", "synthesize", "SAMPLINGS", "TRANSFORMS",
]

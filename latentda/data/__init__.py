"""Data layer: CF-style xarray datasets ↔ standardised tensor trajectories (time, C, H, W)."""

from latentda.data.io import atomic_path, dataset_format, open_dataset, write_dataset
from latentda.data.layout import AxisSpec, FieldLayout, VariableSpec
from latentda.data.splits import SPLITS, Segment, split_segments
from latentda.data.statistics import Statistics, check_finite, compute_statistics
from latentda.data.times import describe_step, standard_time_axis, time_step
from latentda.data.windows import LATENT, FieldSource, LatentSource, WindowDataset

__all__ = [
    "AxisSpec", "FieldLayout", "VariableSpec", "Statistics", "compute_statistics", "check_finite",
    "Segment", "split_segments", "SPLITS", "FieldSource", "LatentSource", "WindowDataset", "LATENT",
    "open_dataset", "write_dataset", "atomic_path", "dataset_format", "standard_time_axis", "time_step", "describe_step",
]

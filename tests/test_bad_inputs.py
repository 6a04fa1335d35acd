"""Every stage's bad inputs: a one-line error, exit code 2, nothing written, no input changed.

Each case builds one bad input (a copy of a tiny, valid fixture, broken in one way) and runs
``latentda.cli.main`` in-process. It asserts that the exit code is 2, that stderr is exactly one
line ``latentda COMMAND: error: ...`` naming the problem, and that no file anywhere under the
fixtures or the case's folder was created, removed or changed (so no output, no ``.partial``
store, and no input destroyed by ``--overwrite``). Cases that would sample must fail before the
sampler starts, so the whole file runs in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.torch import load_file, save_file

from conftest import interrupt_forecasts_after, make_box_dataset, make_tiny_pipeline
from latentda import cli
from latentda.data import open_dataset, write_dataset

WEIGHTS = "diffusion_pytorch_model.safetensors"


@dataclass
class World:
    """Valid inputs shared by every case (never modified: a case copies what it breaks)."""

    root: Path
    pipeline: Path  # tiny pipeline on an 8×8 periodic box, window 4
    truth: Path  # netCDF truth (time 8, y, x) the pipeline was built on
    truth_zarr: Path
    data: Path  # zarr (trajectory 3, time 8, y 8, x 8)
    latents: Path  # 'latentda encode' of data
    operator: Path  # observation operator config
    observations: Path  # grid observations of the truth (8 steps)
    points: Path  # point observations
    saturated: Path  # saturating-sensor observations
    prediction: Path  # a 2-member ensemble matched to the truth
    ae_config: Path
    ldm_config: Path


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("bad_inputs")
    pipeline, truth = make_tiny_pipeline(root / "pipeline", times=8)
    truth_path = write_dataset(truth, root / "truth.nc")
    truth_zarr = write_dataset(truth, root / "truth.zarr")
    data = write_dataset(make_box_dataset(trajectories=3, times=8, size=8), root / "data.zarr")
    latents = root / "latents.zarr"
    operator = root / "op.yaml"
    operator.write_text("observations:\n  - {name: o, variables: [u, v], fraction: 0.5, noise_std: 0.1}\n")
    points_op = root / "points.yaml"
    points_op.write_text("observations:\n  - {name: p, variables: [u], sampling: points, points: 5, noise_std: 0.1}\n")
    saturate_op = root / "saturate.yaml"
    saturate_op.write_text("observations:\n  - {name: s, variables: [u], transform: saturate, saturation: 2.0}\n")
    paths = {}
    for name, config in (("observations", operator), ("points", points_op), ("saturated", saturate_op)):
        paths[name] = root / f"{name}.nc"
        assert cli.main(["observe", "--truth", str(truth_path), "--operator", str(config), "--out", str(paths[name])]) == 0
    assert cli.main(["encode", "--autoencoder", str(root / "pipeline" / "autoencoder"), "--data", str(data),
                     "--out", str(latents), "--quiet"]) == 0
    fields = pipeline.layout.to_array(truth)
    members = np.stack([fields, fields + 0.1]).astype(np.float32)
    prediction = write_dataset(pipeline.to_dataset(members, truth["time"]), root / "prediction.zarr")
    ae_config = root / "ae.yaml"
    ae_config.write_text(f"data: {{path: {data}}}\noutput: {root / 'ae-run'}\n"
                         "model: {latent_channels: 2, hidden_channels: [8, 8], blocks_per_stage: 1}\n"
                         "training: {steps: 2, batch_size: 2, warmup_steps: 0, checkpoint_every: 2, validate_every: 2}\n"
                         "valid_samples: 2\n")
    ldm_config = root / "ldm.yaml"
    ldm_config.write_text(f"output: {root / 'ldm-run'}\nmodel: {{window: 4, hidden_size: 16, depth: 1, num_heads: 2}}\n"
                          "training: {steps: 2, batch_size: 2, warmup_steps: 0, checkpoint_every: 2, validate_every: 2}\n"
                          "valid_windows: 2\n")
    return World(root, root / "pipeline", truth_path, truth_zarr, data, latents, operator, paths["observations"],
                 paths["points"], paths["saturated"], prediction, ae_config, ldm_config)


# ---------------------------------------------------------------------------------- breaking things
def copy(source: Path, folder: Path, name: str | None = None) -> Path:
    target = folder / (name or source.name)
    (shutil.copytree if source.is_dir() else shutil.copyfile)(source, target)
    return target


def written(path: Path, content: str | bytes) -> Path:
    """``path``, after writing ``content`` (text as UTF-8) into it (its folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def edit_weights(path: Path, change: Callable[[dict], None]) -> None:
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def nan_first_tensor(tensors: dict) -> None:
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))


def drop_first_tensor(tensors: dict) -> None:
    del tensors[sorted(tensors)[0]]


def chunk_files(store: Path, variable: str) -> list[Path]:
    return sorted(p for p in (store / variable).rglob("*") if p.is_file() and not p.name.startswith((".", "zarr")))


def corrupt_chunk(store: Path, variable: str = "u") -> Path:
    chunk_files(store, variable)[1].write_bytes(b"\x00garbage, not a compressed chunk\xff" * 3)
    return store


def remove_chunk(store: Path, variable: str = "u") -> Path:
    chunk_files(store, variable)[1].unlink()
    return store


def rewrite(source: Path, target: Path, change: Callable) -> Path:
    """``source`` dataset, changed by ``change(dataset) -> dataset``, written to ``target``."""
    dataset = open_dataset(source).load()
    return write_dataset(change(dataset), target)


def with_value(variable: str, value: float, index=(0, 0, 0)):
    def change(dataset):
        values = dataset[variable].values.copy()
        values[index] = value
        dataset[variable] = (dataset[variable].dims, values, dataset[variable].attrs)
        return dataset
    return change


def with_attribute(variable: str, **attrs):
    def change(dataset):
        dataset[variable].attrs.update(attrs)
        return dataset
    return change


def irregular_hours(dataset):
    """The time axis as integer hours since 1940-01-01 on a dimension ``time_index`` (decoded and
    renamed 'time' on reading), 7 hours apart but for one 8-hour gap before index 4."""
    hours = np.array([0, 7, 14, 21, 29, 36, 43, 50])
    return dataset.rename(time="time_index").assign_coords(
        time_index=("time_index", hours, {"units": "hours since 1940-01-01", "long_name": "time"}))


IRREGULAR = "irregular time axis at index 4: 1940-01-01T21:00:00 → 1940-01-02T05:00:00 is 8 hours, expected 7 hours"


def linear_observations(world: World, target: Path, matrix_value: float) -> Path:
    """A linear-sampling observation file (2 rows: means of the u field), one matrix entry set."""
    import xarray as xr

    truth = open_dataset(world.truth).load()
    matrix = np.full((2, 64), 1 / 64)
    matrix[0, 0] = matrix_value
    values = truth["u"].values.reshape(8, 64) @ np.nan_to_num(matrix).T
    dataset = xr.Dataset(
        {"m": (("time", "m_row"), values.astype(np.float32),
               {"latentda_sampling": "linear", "latentda_source": "u", "latentda_transform": "identity",
                "noise_std": 0.1, "units": "1"}),
         "m_matrix": (("m_row", "m_column"), matrix)},
        coords={"time": truth["time"]})
    return write_dataset(dataset, target)


def partial_store_without_bookkeeping(world: World, out: Path) -> None:
    """An interrupted reanalysis store whose ``completed`` array was removed."""
    import zarr

    from latentda.data.ensemble_store import EnsembleWriter
    from latentda.pipeline import LatentDAPipeline

    pipeline = LatentDAPipeline.from_pretrained(world.pipeline)
    observations = open_dataset(world.observations)
    EnsembleWriter(out, pipeline.layout, observations["time"], 2, {}).release()  # a run that stopped
    del zarr.open_group(out.with_name(out.name + ".partial"), mode="a")["completed"]


# ---------------------------------------------------------------------------------- the cases
CASES: dict[str, Callable[[World, Path], tuple[list[str], str]]] = {}


def case(name: str):
    def register(function):
        CASES[name] = function
        return function
    return register


def sample_args(world: World, pipeline: Path, out: Path, *extra: str) -> list[str]:
    return ["sample", "--pipeline", str(pipeline), "--length", "4", "--members", "1", "--out", str(out), *extra]


def reanalyze_args(world: World, observations: Path, out: Path, *extra: str, pipeline: Path | None = None) -> list[str]:
    return ["reanalyze", "--pipeline", str(pipeline or world.pipeline), "--observations", str(observations),
            "--members", "1", "--steps", "2", "--out", str(out), "--quiet", *extra]


def forecast_args(world: World, out: Path, *extra: str) -> list[str]:
    return ["forecast", "--pipeline", str(world.pipeline), "--lead", "2", "--members", "1", "--steps", "2",
            "--out", str(out), "--quiet", *extra]


def evaluate_args(world: World, prediction: Path, *extra: str, truth: Path | None = None) -> list[str]:
    return ["evaluate", "--prediction", str(prediction), "--truth", str(truth or world.truth), *extra]


# simulate -------------------------------------------------------------------------------------
case("simulate-seed-negative")(lambda w, d: (["simulate", "kolmogorov", "--out", str(d / "s.zarr"), "--seed", "-1"], "--seed"))
case("simulate-seed-beyond-64-bits")(lambda w, d: (
    ["simulate", "kolmogorov", "--out", str(d / "s.zarr"), "--seed", str(2**64)], "--seed"))
case("simulate-out-exists")(lambda w, d: (["simulate", "kolmogorov", "--out", str(w.data)], "already exists"))


case("simulate-gaussian-option-for-kolmogorov")(lambda w, d: (
    ["simulate", "kolmogorov", "--out", str(d / "s.zarr"), "--correlation-time", "-5", "--variables", "1"],
    "--variables, --correlation-time: apply to the gaussian system only, not kolmogorov"))
case("simulate-spinup-for-gaussian")(lambda w, d: (
    ["simulate", "gaussian", "--out", str(d / "s.zarr"), "--spinup", "999"], "--spinup: applies to kolmogorov and dapper-qg"))
case("simulate-coarsen-for-dapper-qg")(lambda w, d: (
    ["simulate", "dapper-qg", "--out", str(d / "s.zarr"), "--coarsen", "2"], "--coarsen: applies to the Kolmogorov flow only"))


@case("simulate-out-under-a-file")
def _(w, d):
    (d / "notes").write_text("a file, not a folder")
    return ["simulate", "gaussian", "--size", "16", "--out", str(d / "notes" / "s.zarr")], "notes is a file, not a folder"


case("simulate-spinup-negative")(lambda w, d: (
    ["simulate", "kolmogorov", "--out", str(d / "s.zarr"), "--spinup", "-1"], "spinup"))
case("simulate-out-unknown-format")(lambda w, d: (
    ["simulate", "kolmogorov", "--out", str(d / "s.txt"), "--trajectories", "1"], "unknown format"))

# inspect --------------------------------------------------------------------------------------
case("inspect-missing")(lambda w, d: (["inspect", "--quiet", str(d / "none.zarr")], "no such file"))
case("inspect-corrupt-chunk")(lambda w, d: (["inspect", "--quiet", str(corrupt_chunk(copy(w.data, d)))], "cannot read"))
case("inspect-missing-chunk")(lambda w, d: (["inspect", "--quiet", str(remove_chunk(copy(w.data, d)))], "NaN"))
case("inspect-unknown-variable")(lambda w, d: (["inspect", "--quiet", str(w.data), "--variables", "w"], "unknown variable"))
@case("inspect-time-units-undecodable")
def _(w, d):
    """xarray cannot decode them when opening the file: latentda's own message (the README's table) is given."""
    dataset = make_box_dataset(trajectories=1, times=3, size=8)
    dataset["time"] = ("time", np.arange(3.0), {"units": "hours since doomsday"})
    dataset.to_netcdf(d / "doom.nc", engine="h5netcdf")
    return ["inspect", "--quiet", str(d / "doom.nc")], "doom.nc: time units 'hours since doomsday' cannot be decoded"


@case("inspect-calendar-unknown")
def _(w, d):
    """A calendar CF does not define: named, and xarray's hint (installing cftime) is not relayed."""
    dataset = make_box_dataset(trajectories=1, times=3, size=8)
    dataset["time"] = ("time", np.arange(3.0) * 6, {"units": "hours since 2000-01-01", "calendar": "martian"})
    dataset.to_netcdf(d / "martian.nc", engine="h5netcdf")
    return ["inspect", "--quiet", str(d / "martian.nc")], "calendar 'martian' is not supported"


@case("evaluate-calendars-differ")
def _(w, d):
    """A prediction of one climate calendar scored against a truth of another: seconds of different calendars."""
    truth = make_box_dataset(trajectories=1, times=3, size=8).isel(trajectory=0, drop=True)
    truth["time"] = ("time", np.arange(3.0), {"units": "days since 2000-01-01", "calendar": "noleap"})
    truth.to_netcdf(d / "truth.nc", engine="h5netcdf")
    prediction = truth.expand_dims(realization=2)
    prediction["time"] = ("time", np.arange(3.0), {"units": "days since 2000-01-01", "calendar": "360_day"})
    prediction.to_netcdf(d / "prediction.nc", engine="h5netcdf")
    return (["evaluate", "--quiet", "--prediction", str(d / "prediction.nc"), "--truth", str(d / "truth.nc"),
             "--out", str(d / "report")], "the prediction's times are dates of the 360_day calendar, the truth's are dates of the noleap calendar")


@case("inspect-variables-in-a-netcdf-group")
def _(w, d):
    """A netCDF-4 file whose fields sit in a group: the groups are named (the root group, read, has none)."""
    make_box_dataset(trajectories=1, times=3, size=8).to_netcdf(d / "grouped.nc", group="fields", engine="h5netcdf")
    return ["inspect", "--quiet", str(d / "grouped.nc")], "the root group holds no variables (they are in group(s) fields)"


@case("inspect-time-as-text")
def _(w, d):
    """Times written as text ("2020-01-01 00:00:00"): convert them, the error says how."""
    dataset = make_box_dataset(trajectories=1, times=3, size=8)
    dataset = dataset.assign_coords(time=[f"2020-01-01 0{h}:00:00" for h in range(3)])
    dataset.to_netcdf(d / "text.nc", engine="h5netcdf")
    return ["inspect", "--quiet", str(d / "text.nc")], "the time coordinate holds text"


case("inspect-nan")(lambda w, d: (["inspect", "--quiet", str(rewrite(w.data, d / "nan.zarr", with_value("v", np.nan)))], "'v'"))
case("inspect-fill-value")(lambda w, d: (["inspect", "--quiet", str(rewrite(w.data, d / "fill.zarr", with_value(
    "v", 1e20, (0, 2, 3))))], "variable 'v' holds 1e+20 at trajectory 0, step 2 (channel v): a fill value?"))


case("inspect-not-a-dataset")(lambda w, d: (["inspect", "--quiet", str(written(d / "x.nc", "not netCDF"))], "neither a netCDF file"))
case("inspect-statistics-out-exists")(lambda w, d: (["inspect", "--quiet", str(w.data), "--statistics-out", str(
    written(d / "stats.json", "{}"))], "already exists (remove it"))

case("inspect-statistics-out-is-input")(lambda w, d: (
    ["inspect", str(w.data), "--statistics-out", str(w.data / "stats.json")], "inside the input"))
case("inspect-no-time")(lambda w, d: (
    ["inspect", str(rewrite(w.data, d / "t.zarr", lambda ds: ds.isel(time=0)))], "no 'time' dimension"))
case("inspect-irregular-time")(lambda w, d: (
    ["inspect", "--quiet", str(rewrite(w.data, d / "t.zarr", irregular_hours))], IRREGULAR))
case("inspect-time-dim-unknown")(lambda w, d: (
    ["inspect", "--quiet", str(w.data), "--time-dim", "when"], "time dimension 'when' not found"))


# train-ae -------------------------------------------------------------------------------------
case("train-ae-config-invalid-yaml")(lambda w, d: (
    ["train-ae", "--config", str(written(d / "c.yaml", "data: {path: [unclosed\n"))], "invalid YAML"))
case("train-ae-config-not-utf8")(lambda w, d: (
    ["train-ae", "--config", str(written(d / "c.yaml", b"output: \xff\xfe run\n"))], "UTF-8"))

def ae(w: World, d: Path, *settings: str) -> list[str]:
    args = ["train-ae", "--config", str(w.ae_config), "--set", f"output={d / 'run'}", "--quiet"]
    for setting in settings:
        args += ["--set", setting]
    return args


case("train-ae-config-missing")(lambda w, d: (["train-ae", "--config", str(d / "none.yaml")], "not found"))
case("train-ae-set-invalid-yaml")(lambda w, d: (ae(w, d, "training.steps=[1,"), "--set training.steps"))
case("train-ae-set-not-utf8")(lambda w, d: (ae(w, d, "training.steps=\udcff"), "--set training.steps"))
case("train-ae-set-no-equals")(lambda w, d: (ae(w, d, "training.steps"), "KEY=VALUE"))
case("train-ae-set-unknown-key")(lambda w, d: (ae(w, d, "training.stepz=3"), "training.stepz"))
case("train-ae-set-string-for-number")(lambda w, d: (ae(w, d, "training.learning_rate=fast"), "training.learning_rate"))
case("train-ae-set-infinite-number")(lambda w, d: (ae(w, d, "training.grad_clip=.inf"), "training.grad_clip"))
case("train-ae-set-seed-beyond-64-bits")(lambda w, d: (ae(w, d, f"training.seed={2**64}"), "training.seed"))
case("train-ae-set-seed-negative")(lambda w, d: (ae(w, d, "training.seed=-3"), "training.seed"))
case("train-ae-data-missing")(lambda w, d: (ae(w, d, f"data.path={d / 'none.zarr'}"), "no such file"))
case("train-ae-data-corrupt-chunk")(lambda w, d: (ae(w, d, f"data.path={corrupt_chunk(copy(w.data, d))}"), "cannot read"))
case("train-ae-data-nan")(lambda w, d: (
    ae(w, d, f"data.path={rewrite(w.data, d / 'nan.zarr', with_value('u', np.nan))}"), "'u'"))
case("train-ae-data-fill-value")(lambda w, d: (  # 1 % of the points at 1e20 would set the statistics themselves
    ae(w, d, f"data.path={rewrite(w.data, d / 'fill.zarr', with_value('u', 9.96921e36, (0, 1)))}"),
    "'u' holds 9.96921e+36 at trajectory 0, step 1 (channel u): a fill value?"))
case("train-ae-data-irregular-time")(lambda w, d: (
    ae(w, d, f"data.path={rewrite(w.data, d / 'irregular.zarr', irregular_hours)}"), IRREGULAR))
case("train-ae-output-is-data")(lambda w, d: (ae(w, d, f"output={w.data}"), "is the input data"))
case("train-ae-output-under-a-file")(lambda w, d: (ae(w, d, f"output={written(d / 'notes', 'a file')}/runs/ae"),
                                                   "notes is a file, not a folder"))
case("train-ae-output-in-new-folders-data-missing")(lambda w, d: (  # refused: the folders the run's lock made are gone
    ae(w, d, f"output={d / 'new' / 'runs' / 'ae'}", f"data.path={d / 'none.zarr'}"), "no such file"))
case("train-ae-output-inside-data")(lambda w, d: (ae(w, d, f"output={w.data / 'run'}"), "is inside the input data"))

# encode ---------------------------------------------------------------------------------------
AE = "autoencoder"


def encode(w: World, autoencoder: Path, out: Path, *extra: str, data: Path | None = None) -> list[str]:
    return ["encode", "--autoencoder", str(autoencoder), "--data", str(data or w.data), "--out", str(out), "--quiet", *extra]


def broken_autoencoder(w: World, d: Path, change: Callable[[Path], None]) -> Path:
    folder = copy(w.pipeline / AE, d)
    change(folder)
    return folder


case("encode-autoencoder-missing")(lambda w, d: (encode(w, d / "none", d / "l.zarr"), "folder not found"))
case("encode-nan-in-the-data")(lambda w, d: (encode(w, w.pipeline / AE, d / "l.zarr", data=rewrite(
    w.data, d / "g.nc", with_value("u", np.nan, (0, 3, 1, 1)))), "fill them first: this autoencoder was trained without allow_missing"))
case("encode-nan-weights")(lambda w, d: (encode(w, broken_autoencoder(
    w, d, lambda f: edit_weights(f / WEIGHTS, nan_first_tensor)), d / "l.zarr"), "NaN"))
case("encode-missing-tensor")(lambda w, d: (encode(w, broken_autoencoder(
    w, d, lambda f: edit_weights(f / WEIGHTS, drop_first_tensor)), d / "l.zarr"), "missing"))
case("encode-statistics-wrong-type")(lambda w, d: (encode(w, broken_autoencoder(
    w, d, lambda f: edit_json(f / "statistics.json", std=["big", 1.0])), d / "l.zarr"), "statistics.json"))
case("encode-statistics-negative-std")(lambda w, d: (encode(w, broken_autoencoder(
    w, d, lambda f: edit_json(f / "statistics.json", std=[-1.0, 1.0])), d / "l.zarr"), "std"))
case("encode-statistics-channels-not-strings")(lambda w, d: (encode(w, broken_autoencoder(
    w, d, lambda f: edit_json(f / "statistics.json", channels=[1, 2])), d / "l.zarr"), "statistics.json"))
case("encode-layout-wrong-type")(lambda w, d: (encode(w, broken_autoencoder(
    w, d, lambda f: edit_json(f / "layout.json", grid=5)), d / "l.zarr"), "layout.json"))
case("encode-layout-grid-values-strings")(lambda w, d: (encode(w, broken_autoencoder(
    w, d, lambda f: edit_json(f / "layout.json", grid=[
        {**g, "values": ["a"] * len(g["values"])} for g in json.loads((f / "layout.json").read_text())["grid"]])),
    d / "l.zarr"), "layout.json"))
case("encode-model-config-wrong-type")(lambda w, d: (encode(w, broken_autoencoder(
    w, d, lambda f: edit_json(f / "config.json", in_channels="two")), d / "l.zarr"), "autoencoder"))


def pickle_index(folder: Path) -> None:
    (folder / f"{WEIGHTS}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {"w": "shard.bin"}}))


def outside_index(folder: Path) -> None:
    (folder / f"{WEIGHTS}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {"w": "../x.safetensors"}}))


def symlink_out(folder: Path, name: str = WEIGHTS) -> None:
    """Move ``folder / name`` next to the folder and leave a link to it in its place."""
    target = folder.parent / f"elsewhere-{Path(name).name}"
    shutil.move(folder / name, target)
    (folder / name).symlink_to(target)


case("encode-index-names-pickle-shard")(lambda w, d: (
    encode(w, broken_autoencoder(w, d, pickle_index), d / "l.zarr"), "shard.bin"))
case("encode-index-shard-outside-folder")(lambda w, d: (
    encode(w, broken_autoencoder(w, d, outside_index), d / "l.zarr"), "shard '../x.safetensors'"))
case("encode-weights-symlink-out-of-folder")(lambda w, d: (
    encode(w, broken_autoencoder(w, d, symlink_out), d / "l.zarr"), "outside"))
case("encode-out-is-data")(lambda w, d: (encode(w, w.pipeline / AE, w.data, "--overwrite"), "input"))
case("encode-out-inside-autoencoder")(lambda w, d: (
    encode(w, w.pipeline / AE, w.pipeline / AE / "l.zarr", "--overwrite"), "input"))
case("encode-data-corrupt-chunk")(lambda w, d: (
    encode(w, w.pipeline / AE, d / "l.zarr", data=corrupt_chunk(copy(w.data, d))), "cannot read"))
case("encode-data-missing-chunk")(lambda w, d: (
    encode(w, w.pipeline / AE, d / "l.zarr", data=remove_chunk(copy(w.data, d))), "NaN"))
case("encode-data-absurd-values")(lambda w, d: (
    encode(w, w.pipeline / AE, d / "l.zarr", data=rewrite(w.data, d / "big.zarr", with_value("u", 1e30))), "standard deviations"))
case("encode-data-irregular-time")(lambda w, d: (
    encode(w, w.pipeline / AE, d / "l.zarr", data=rewrite(w.data, d / "irregular.zarr", irregular_hours)), IRREGULAR))
case("encode-data-other-grid")(lambda w, d: (encode(w, w.pipeline / AE, d / "l.zarr", data=write_dataset(
    make_box_dataset(trajectories=1, times=4, size=16), d / "big.zarr")), "size"))


# train-ldm ------------------------------------------------------------------------------------
def ldm(w: World, d: Path, *settings: str, latents: Path | None = None) -> list[str]:
    args = ["train-ldm", "--config", str(w.ldm_config), "--latents", str(latents or w.latents), "--set",
            f"output={d / 'run'}", "--quiet"]
    for setting in settings:
        args += ["--set", setting]
    return args


case("train-ldm-latents-missing")(lambda w, d: (ldm(w, d, latents=d / "none.zarr"), "no such file"))
case("train-ldm-latents-are-fields")(lambda w, d: (ldm(w, d, latents=w.data), "'latent'"))
case("train-ldm-latents-corrupt-chunk")(lambda w, d: (
    ldm(w, d, latents=corrupt_chunk(copy(w.latents, d), "latent")), "cannot read"))
case("train-ldm-latents-irregular-time")(lambda w, d: (
    ldm(w, d, latents=rewrite(w.latents, d / "irregular.zarr", irregular_hours)), IRREGULAR))
case("train-ldm-sigma-min-negative")(lambda w, d: (ldm(w, d, "diffusion.sigma_min=-1"), "sigma_min"))
case("train-ldm-output-is-latents")(lambda w, d: (ldm(w, d, f"output={w.latents}"), "is the input latents"))
case("train-ldm-sampler-unknown")(lambda w, d: (ldm(w, d, "diffusion.sampler=euler"), "diffusion.sampler"))
case("train-ldm-window-longer-than-the-data")(lambda w, d: (  # refused before latent_statistics.json is written
    ldm(w, d, "model.window=16"), "no window of 16 steps fits"))


case("train-ldm-config-invalid-yaml")(lambda w, d: (["train-ldm", "--config", str(
    written(d / "c.yaml", "model: {window: 4\n  - x")), "--latents", str(w.latents)], "invalid YAML"))


# sample ---------------------------------------------------------------------------------------
def broken_pipeline(w: World, d: Path, change: Callable[[Path], None]) -> Path:
    folder = copy(w.pipeline, d)
    change(folder)
    return folder


def broken_sample(change: Callable[[Path], None], expected: str):
    return lambda w, d: (sample_args(w, broken_pipeline(w, d, change), d / "s.nc"), expected)


case("sample-seed-negative")(lambda w, d: (sample_args(w, w.pipeline, d / "s.nc", "--seed", "-1"), "--seed"))
case("sample-seed-beyond-64-bits")(lambda w, d: (sample_args(w, w.pipeline, d / "s.nc", "--seed", str(2**64 + 1)), "--seed"))
case("sample-device-bogus")(lambda w, d: (sample_args(w, w.pipeline, d / "s.nc", "--device", "bogus"), "--device"))
case("sample-device-meta")(lambda w, d: (sample_args(w, w.pipeline, d / "s.nc", "--device", "meta"), "meta device holds no data"))
case("sample-corrections-with-ddim")(lambda w, d: (sample_args(w, w.pipeline, d / "s.nc", "--sampler", "ddim", "--corrections",
                                                                "3"), "--corrections: applies to the pc and heun-pc samplers only"))
case("sample-out-unknown-format")(lambda w, d: (sample_args(w, w.pipeline, d / "s.txt"), "unknown format"))
case("sample-out-is-pipeline")(lambda w, d: (sample_args(w, w.pipeline, w.pipeline, "--overwrite"), "input"))
case("sample-out-inside-pipeline")(lambda w, d: (
    sample_args(w, w.pipeline, w.pipeline / "denoiser", "--overwrite"), "input"))
case("sample-start-time-bogus")(lambda w, d: (
    sample_args(w, w.pipeline, d / "s.nc", "--start-time", "yesterday"), "--start-time"))
case("sample-folder-typo")(lambda w, d: (sample_args(w, Path("runs/typo/pipeline"), d / "s.nc"), "folder not found"))
case("sample-nan-denoiser-weights")(broken_sample(
    lambda f: edit_weights(f / "denoiser" / WEIGHTS, nan_first_tensor), "NaN"))
case("sample-nan-autoencoder-weights")(broken_sample(
    lambda f: edit_weights(f / AE / WEIGHTS, nan_first_tensor), "NaN"))
case("sample-denoiser-missing-tensor")(broken_sample(
    lambda f: edit_weights(f / "denoiser" / WEIGHTS, drop_first_tensor), "missing"))
case("sample-denoiser-pickle-index")(broken_sample(lambda f: pickle_index(f / "denoiser"), "shard.bin"))
case("sample-scheduler-config-symlink-out")(broken_sample(
    lambda f: symlink_out(f, "scheduler/scheduler_config.json"), "outside the pipeline folder"))
case("sample-model-index-wrong-type")(broken_sample(lambda f: edit_json(f / "model_index.json", denoiser=5), "model_index.json"))
case("sample-model-index-not-a-mapping")(broken_sample(
    lambda f: (f / "model_index.json").write_text("[1, 2]"), "model_index.json"))
case("sample-model-index-not-json")(broken_sample(lambda f: (f / "model_index.json").write_text("{"), "model_index.json"))
case("sample-pipeline-config-steps-string")(broken_sample(
    lambda f: edit_json(f / "pipeline_config.json", steps="many"), "steps"))
case("sample-pipeline-config-time-step-negative")(broken_sample(
    lambda f: edit_json(f / "pipeline_config.json", time_step=-1), "time_step"))
case("sample-pipeline-config-sampler-unknown")(broken_sample(
    lambda f: edit_json(f / "pipeline_config.json", sampler="euler"), "sampler"))
case("sample-pipeline-config-corrections-negative")(broken_sample(
    lambda f: edit_json(f / "pipeline_config.json", corrections=-1), "corrections"))
case("sample-pipeline-config-overlap-too-big")(broken_sample(
    lambda f: edit_json(f / "pipeline_config.json", overlap=9), "overlap"))
case("sample-scheduler-sigma-min-negative")(broken_sample(
    lambda f: edit_json(f / "scheduler" / "scheduler_config.json", sigma_min=-1), "sigma_min"))
case("sample-scheduler-sigma-max-string")(broken_sample(
    lambda f: edit_json(f / "scheduler" / "scheduler_config.json", sigma_max="big"), "sigma_max"))
case("sample-latent-statistics-wrong-type")(broken_sample(
    lambda f: edit_json(f / "denoiser" / "latent_statistics.json", mean="zero"), "latent_statistics.json"))
case("sample-pipeline-config-not-utf8")(broken_sample(
    lambda f: (f / "pipeline_config.json").write_bytes(b'{"steps": "\xff"}'), "pipeline_config.json"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_gpu_is_a_clean_error(world, tmp_path, capsys):
    run_case(world, tmp_path, (sample_args(world, world.pipeline, tmp_path / "s.nc", "--device", "cuda"), "cuda"), capsys)


# observe --------------------------------------------------------------------------------------
def observe(w: World, truth: Path, out: Path, *extra: str, operator: Path | None = None) -> list[str]:
    return ["observe", "--truth", str(truth), "--operator", str(operator or w.operator), "--out", str(out), *extra]


case("observe-truth-inf")(lambda w, d: (
    observe(w, rewrite(w.truth, d / "t.nc", with_value("u", np.inf, (3, 2, 2))), d / "o.nc"), "'u' holds inf"))
case("observe-truth-all-nan")(lambda w, d: (  # NaN is masked, hence unobserved: here nothing is left
    observe(w, rewrite(w.truth, d / "t.nc", lambda ds: ds.map(lambda v: v * np.nan)), d / "o.nc"), "nothing observed"))
case("observe-truth-corrupt-chunk")(lambda w, d: (observe(w, corrupt_chunk(copy(w.truth_zarr, d)), d / "o.nc"), "cannot read"))
case("observe-seed-negative")(lambda w, d: (observe(w, w.truth, d / "o.nc", "--seed", "-5"), "--seed"))
case("observe-out-is-truth")(lambda w, d: (observe(w, w.truth, w.truth), "input"))
case("observe-out-unknown-format")(lambda w, d: (observe(w, w.truth, d / "o.txt"), "unknown format"))
case("observe-trajectory-out-of-range")(lambda w, d: (observe(w, w.data, d / "o.nc", "--trajectory", "7"), "--trajectory"))


def bad_operator(content: str | bytes, expected: str):
    return lambda w, d: (observe(w, w.truth, d / "o.nc", operator=written(d / "op.yaml", content)), expected)


case("observe-operator-invalid-yaml")(bad_operator("observations: [{name: o\n", "invalid YAML"))
case("observe-operator-not-utf8")(bad_operator(b"observations:\n  - {name: \xe9t\xe9, variables: [u]}\n", "UTF-8"))
case("observe-operator-noise-negative")(bad_operator(
    "observations:\n  - {name: o, variables: [u], noise_std: -1}\n", "noise_std"))
case("observe-operator-first-past-the-window")(bad_operator(  # the truth has 8 steps: the group would be empty
    "observations:\n  - {name: o, variables: [u], first: 20}\n", "observation 'o' selects nothing"))
case("observe-operator-first-negative")(bad_operator(
    "observations:\n  - {name: o, variables: [u], first: -2}\n", "first: must be at least 0"))
case("observe-operator-factor-of-grid")(bad_operator(  # a key of another sampling would be ignored
    "observations:\n  - {name: o, variables: [u], factor: 4}\n", "factor: is for sampling: coarsen only"))
case("observe-operator-coordinates-of-grid")(bad_operator(
    "observations:\n  - {name: o, variables: [u], coordinates: [[1, 2]]}\n", "points and coordinates are for sampling: points"))
case("observe-operator-saturation-of-identity")(bad_operator(
    "observations:\n  - {name: o, variables: [u], saturation: 3}\n", "saturation: is for transform: saturate only"))


# reanalyze ------------------------------------------------------------------------------------
def bad_observations(source: str, change: Callable, expected: str):
    return lambda w, d: (reanalyze_args(w, rewrite(getattr(w, source), d / "o.nc", change), d / "p.zarr"), expected)


def nan_point_coordinate(dataset):
    values = dataset["p_x"].values.copy()
    values[1] = np.nan
    return dataset.assign_coords(p_x=("p_point", values, dataset["p_x"].attrs))


case("reanalyze-point-coordinate-nan")(bad_observations("points", nan_point_coordinate, "p_x"))
case("reanalyze-saturation-nan")(bad_observations("saturated", with_attribute("s", saturation=np.nan), "saturation"))
case("reanalyze-saturation-string")(bad_observations("saturated", with_attribute("s", saturation="high"), "saturation"))
case("reanalyze-tau-with-the-pipelines-ddpm")(lambda w, d: (  # known once the pipeline is read, before sampling
    reanalyze_args(w, w.observations, d / "r.zarr", "--tau", "0.3"), "--tau: applies to the pc and heun-pc samplers only (the sampler is ddpm)"))
case("reanalyze-values-absurd")(bad_observations("observations", with_value("o_u", 1e30, (1, 0, 0)), "standard deviations"))
case("reanalyze-noise-std-string")(bad_observations("observations", with_attribute("o_u", noise_std="small"), "noise_std"))
case("reanalyze-noise-std-zero")(bad_observations("observations", with_attribute("o_u", noise_std=0.0), "noise_std"))
case("reanalyze-time-step-wrong")(bad_observations(
    "observations", lambda ds: ds.assign_coords(time=ds["time"].values * 3), "apart"))
case("reanalyze-linear-matrix-nan")(lambda w, d: (
    reanalyze_args(w, linear_observations(w, d / "o.nc", np.nan), d / "p.zarr"), "m_matrix"))
case("reanalyze-sigma-start-above-prior")(lambda w, d: (
    reanalyze_args(w, w.observations, d / "p.zarr", "--sigma-start", "5000"), "sigma_start"))
case("forecast-sigma-start-above-prior")(lambda w, d: (
    forecast_args(w, d / "f.zarr", "--initial", str(w.truth), "--sigma-start", "5000"), "sigma_start"))
case("sample-steps-zero")(lambda w, d: (sample_args(w, w.pipeline, d / "s.nc", "--steps", "0"), "steps"))
case("sample-sigma-start-above-prior")(lambda w, d: (
    sample_args(w, w.pipeline, d / "s.nc", "--sigma-start", "5000"), "sigma_start"))
case("reanalyze-overlap-not-below-window")(lambda w, d: (
    reanalyze_args(w, w.observations, d / "p.zarr", "--overlap", "99"), "overlap"))
# options that would be ignored (and recorded as if they applied) are refused
case("forecast-initial-guidance")(lambda w, d: (forecast_args(
    w, d / "f.zarr", "--initial", str(w.truth), "--guidance", "dps", "--no-representation-error", "--decode-chunk", "2"),
    "--guidance, --no-representation-error, --decode-chunk: apply to guidance by observations"))
case("forecast-initial-inpaint-iterations")(lambda w, d: (forecast_args(
    w, d / "f.zarr", "--initial", str(w.truth), "--conditioning", "inpaint", "--iterations", "7"),
    "--iterations: applies to guidance by observations or to the mmps conditioning"))
case("forecast-inpaint-condition-noise")(lambda w, d: (forecast_args(
    w, d / "f.zarr", "--initial", str(w.truth), "--conditioning", "inpaint", "--condition-noise", "0.9"),
    "--condition-noise: the mmps conditioning's"))
case("forecast-aao-conditioning")(lambda w, d: (forecast_args(
    w, d / "f.zarr", "--observations", str(w.observations), "--mode", "aao", "--conditioning", "inpaint"),
    "--conditioning, --condition-noise: the autoregressive mode's"))
case("filter-overlap")(lambda w, d: (["filter", "--pipeline", str(w.pipeline), "--observations", str(w.observations),
                                      "--members", "1", "--steps", "2", "--overlap", "1", "--out", str(d / "f.zarr"),
                                      "--quiet"], "overlap: the blankets of a trajectory longer than the window"))
case("evaluate-trajectory-without-dimension")(lambda w, d: (  # the truth is one trajectory: --trajectory would be ignored
    evaluate_args(w, w.prediction, "--trajectory", "3"), "--trajectory 3: the truth has no 'trajectory' dimension"))
case("forecast-tau-negative")(lambda w, d: (forecast_args(w, d / "f.zarr", "--initial", str(w.truth), "--tau", "-1"), "tau"))
case("reanalyze-observations-missing")(lambda w, d: (reanalyze_args(w, d / "none.nc", d / "p.zarr"), "no such file"))
case("reanalyze-seed-beyond-64-bits")(lambda w, d: (
    reanalyze_args(w, w.observations, d / "p.zarr", "--seed", str(2**70)), "--seed"))
case("reanalyze-device-bogus")(lambda w, d: (
    reanalyze_args(w, w.observations, d / "p.zarr", "--device", "nonsense:0"), "--device"))
case("reanalyze-out-is-observations")(lambda w, d: (
    reanalyze_args(w, w.observations, w.observations, "--overwrite"), "input"))
case("reanalyze-out-is-pipeline")(lambda w, d: (reanalyze_args(w, w.observations, w.pipeline, "--overwrite"), "input"))
case("reanalyze-out-unknown-format")(lambda w, d: (reanalyze_args(w, w.observations, d / "p.txt"), "unknown format"))
case("reanalyze-nan-decoder-weights")(lambda w, d: (reanalyze_args(w, w.observations, d / "p.zarr", pipeline=broken_pipeline(
    w, d, lambda f: edit_weights(f / AE / WEIGHTS, nan_first_tensor))), "NaN"))
case("reanalyze-scheduler-sigma-min-negative")(lambda w, d: (reanalyze_args(
    w, w.observations, d / "p.zarr", pipeline=broken_pipeline(
        w, d, lambda f: edit_json(f / "scheduler" / "scheduler_config.json", sigma_min=-1))), "sigma_min"))


@case("reanalyze-out-contains-observations")
def _(w, d):
    (d / "run").mkdir()
    observations = copy(w.observations, d / "run")
    return reanalyze_args(w, observations, d / "run", "--overwrite"), "input"


@case("reanalyze-resume-without-bookkeeping")
def _(w, d):
    partial_store_without_bookkeeping(w, d / "p.zarr")
    return reanalyze_args(w, w.observations, d / "p.zarr", "--resume"), "bookkeeping"


# forecast -------------------------------------------------------------------------------------
case("forecast-initial-absurd")(lambda w, d: (forecast_args(
    w, d / "f.zarr", "--initial", str(rewrite(w.truth, d / "i.nc", with_value("u", 1e30, (7, 0, 0))))),
    "standard deviations"))
case("forecast-initial-every-other-step")(lambda w, d: (forecast_args(  # states 2 model steps apart
    w, d / "f.zarr", "--initial", str(rewrite(w.truth, d / "i.nc", lambda ds: ds.isel(time=slice(None, None, 2))))),
    "the initial state's times"))
case("forecast-initial-gap")(lambda w, d: (forecast_args(  # state 6 of 8 missing: a gap at the file's index 6
    w, d / "f.zarr", "--initial", str(rewrite(w.truth, d / "i.nc", lambda ds: ds.drop_isel(time=6)))),
    "1 → 1.4 at index 6 is 0.4"))  # the file's index, not the index among the states read
case("forecast-initial-nan")(lambda w, d: (forecast_args(
    w, d / "f.zarr", "--initial", str(rewrite(w.truth, d / "i.nc", with_value("v", np.nan, (7, 1, 1))))),
    "NaN values at step 7 in the initial state (channel v)"))  # the file's step; no training advice
case("forecast-initial-grid-reversed")(lambda w, d: (forecast_args(  # e.g. latitude ascending for a model's descending
    w, d / "f.zarr", "--initial", str(rewrite(w.truth, d / "i.nc", lambda ds: ds.isel(y=slice(None, None, -1))))),
    ": reverse it first, e.g. ds.isel(y=slice(None, None, -1))"))
case("forecast-initial-grid-rolled")(lambda w, d: (forecast_args(  # e.g. longitudes −180…180 for a model's 0…360
    w, d / "f.zarr", "--initial", str(rewrite(w.truth, d / "i.nc", lambda ds: ds.roll(x=3, roll_coords=True)))),
    "the same points in another order or longitude convention"))
case("forecast-initial-lead-dimension")(lambda w, d: (forecast_args(  # a forecast's output given as the initial state
    w, d / "f.zarr", "--initial", str(rewrite(w.truth, d / "i.nc", lambda ds: ds.expand_dims(prediction_timedelta=1, axis=1)))),
    "select one index of 'prediction_timedelta'"))
case("forecast-initial-dates-for-model-time")(lambda w, d: (forecast_args(
    w, d / "f.zarr", "--initial", str(rewrite(w.truth, d / "i.nc", lambda ds: ds.assign_coords(
        time=np.datetime64("2020-01-01") + np.arange(ds.sizes["time"]) * np.timedelta64(200, "ms"))))),
    "the initial state's times: date-times, but the model's time axis is numbers"))


@case("forecast-initial-fewer-members")
def _(w, d):
    args = forecast_args(w, d / "f.zarr", "--initial", str(rewrite(w.truth, d / "i.nc", lambda ds: ds.expand_dims(realization=1))))
    args[args.index("--members") + 1] = "2"
    return args, "the initial state has 1 members, fewer than 2"


case("forecast-both-sources")(lambda w, d: (forecast_args(
    w, d / "f.zarr", "--initial", str(w.truth), "--observations", str(w.observations)), "exactly one"))
case("forecast-out-is-initial")(lambda w, d: (forecast_args(w, w.truth, "--initial", str(w.truth), "--overwrite"), "input"))
case("forecast-out-is-observations")(lambda w, d: (forecast_args(
    w, w.observations, "--observations", str(w.observations), "--overwrite"), "input"))
case("forecast-condition-noise-nan")(lambda w, d: (forecast_args(
    w, d / "f.zarr", "--initial", str(w.truth), "--condition-noise", "nan"), "conditioning noise"))
case("forecast-seed-negative")(lambda w, d: (forecast_args(
    w, d / "f.zarr", "--initial", str(w.truth), "--seed", "-1"), "--seed"))
case("forecast-out-unknown-format")(lambda w, d: (forecast_args(
    w, d / "f.csv", "--initial", str(w.truth)), "unknown format"))
case("forecast-observations-absurd")(lambda w, d: (forecast_args(w, d / "f.zarr", "--observations", str(rewrite(
    w.observations, d / "o.nc", with_value("o_v", -1e30, (2, 3, 3))))), "standard deviations"))

# evaluate -------------------------------------------------------------------------------------
case("evaluate-all-nan-ensemble")(lambda w, d: (evaluate_args(
    w, rewrite(w.prediction, d / "p.zarr", lambda ds: ds * np.nan)), "NaN"))
case("evaluate-not-an-ensemble")(lambda w, d: (evaluate_args(w, w.truth), "realization"))
case("evaluate-overwrite-a-folder-of-other-files")(lambda w, d: (evaluate_args(  # --overwrite replaces only a report
    w, w.prediction, "--out", str(written(d / "paper" / "notes" / "paper.tex", "draft").parents[1]), "--overwrite"),
    "not only an evaluation report (holds notes)"))
case("evaluate-out-exists")(lambda w, d: (evaluate_args(  # refused before anything is read (the prediction is missing)
    w, d / "none.zarr", "--out", str(written(d / "report" / "summary.json", "{}").parent)), "already exists"))
case("evaluate-out-is-prediction")(lambda w, d: (evaluate_args(w, w.prediction, "--out", str(w.prediction), "--overwrite"), "input"))
case("evaluate-out-is-truth")(lambda w, d: (evaluate_args(w, w.prediction, "--out", str(w.truth), "--overwrite"), "input"))
case("evaluate-out-contains-prediction")(lambda w, d: (evaluate_args(
    w, copy(w.prediction, d), "--out", str(d), "--overwrite"), "input"))
case("evaluate-truth-corrupt-chunk")(lambda w, d: (evaluate_args(
    w, w.prediction, truth=corrupt_chunk(copy(w.truth_zarr, d))), "cannot read"))
case("evaluate-truth-needs-trajectory")(lambda w, d: (evaluate_args(w, w.prediction, truth=w.data), "--trajectory"))
case("evaluate-observations-nan-coordinate")(lambda w, d: (evaluate_args(
    w, w.prediction, "--observations", str(rewrite(w.points, d / "o.nc", nan_point_coordinate))), "p_x"))


def after_the_prediction(dataset):
    """The same observations labelled 100 model steps later: no time of the prediction's (observations of some
    of its times are scored at those)."""
    times = dataset["time"]
    return dataset.assign_coords(time=(times + 100 * (times[1] - times[0])).assign_attrs(times.attrs))


def without_times(dataset):
    """A forecast whose initialisation time was dropped (``.isel(time=0, drop=True)``): nothing says when it starts."""
    times = dataset["time"].values
    return dataset.rename(time="prediction_timedelta").assign_coords(prediction_timedelta=times - times[0])


case("evaluate-observations-of-other-times")(lambda w, d: (evaluate_args(
    w, w.prediction, "--observations", str(rewrite(w.observations, d / "o.nc", after_the_prediction))),
    "than the prediction (0 … 1.4): nothing to score"))
case("evaluate-prediction-beyond-the-truth")(lambda w, d: (evaluate_args(  # the last time: one step after the truth's
    w, rewrite(w.prediction, d / "p.nc", lambda ds: ds.assign_coords(time=ds["time"] + 100 * (ds["time"][1] - ds["time"][0])))),
    "not all in the truth: "))
case("evaluate-forecast-without-its-time")(lambda w, d: (evaluate_args(
    w, rewrite(w.prediction, d / "f.zarr", without_times)), "the prediction has no 'time' coordinate"))


def repeated_time(dataset):
    """The second state labelled with the first state's time."""
    times = dataset["time"].values.copy()
    times[1] = times[0]
    return dataset.assign_coords(time=("time", times, dataset["time"].attrs))


case("evaluate-truth-repeated-time")(lambda w, d: (evaluate_args(
    w, w.prediction, truth=rewrite(w.truth, d / "t.nc", repeated_time)), "not unique"))


# ---------------------------------------------------------------------------------- the check
def snapshot(*folders: Path) -> dict[str, str]:
    """Every file (and symlink) under ``folders`` with a hash of its content."""
    files = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink():
                files[str(path)] = "link:" + os.readlink(path)
            elif path.is_file():
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                files[str(path)] = "folder"
    return files


def run_case(world: World, folder: Path, built: tuple[list[str], str | None], capsys) -> None:
    argv, expected = built
    before = snapshot(world.root, folder)
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse's own errors (one line, exit code 2)
        code = exit.code
    stderr = capsys.readouterr().err
    assert code == 2, f"exit code {code}; stderr: {stderr[-2000:]}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"latentda {argv[0]}: error: "), lines[0]
    assert "pass --overwrite" not in lines[0] or "--overwrite" in " ".join(build_help(argv[0])), lines[0]
    if expected is not None:
        assert expected.lower() in lines[0].lower(), lines[0]
    assert snapshot(world.root, folder) == before, "files were written, removed or changed"


def build_help(command: str) -> list[str]:
    """The option strings of ``command``."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return [option for action in sub._actions for option in action.option_strings]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_a_clean_error(name, world, tmp_path, capsys):
    run_case(world, tmp_path, CASES[name](world, tmp_path), capsys)


def test_errors_outside_training_give_no_training_advice(world, tmp_path, capsys):
    """NaN in a forecast's initial state or in a prediction: the message names the file's step and
    ends there (setting allow_missing in a data config does not apply to them)."""
    for name in ("forecast-initial-nan", "evaluate-all-nan-ensemble"):
        folder = tmp_path / name
        folder.mkdir()
        argv, _ = CASES[name](world, folder)
        capsys.readouterr()
        assert cli.main(argv) == 2
        line = capsys.readouterr().err.strip()
        assert "NaN values" in line and "allow_missing" not in line and line.endswith(")"), line


def test_the_suite_is_large_and_counted_in_the_docs():
    assert len(CASES) >= 60
    docs = (Path(__file__).parents[1] / "docs" / "errors.md").read_text()
    assert f"**{len(CASES)} parametrised bad-input cases**" in docs


# ---------------------------------------------------------------------------------- around the cases
def _stop_after_first_member(monkeypatch, stop: Callable[[], None]) -> None:
    """Make reanalyses call ``stop()`` once their first member is written."""
    from latentda.posterior import reanalysis

    real = reanalysis.posterior_members

    def stopping(*args, **kwargs):
        for count, item in enumerate(real(*args, **kwargs)):
            if count == 1:
                stop()
            yield item

    monkeypatch.setattr(reanalysis, "posterior_members", stopping)


def test_sigterm_is_handled_like_ctrl_c_and_resume_accepts_another_spelling(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "post.zarr"
    args = reanalyze_args(world, world.observations, out)
    args[args.index("--members") + 1] = "2"
    _stop_after_first_member(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert cli.main(args) == 128 + signal.SIGTERM
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "latentda reanalyze: interrupted"
    assert lines[1] == (f"latentda reanalyze: the finished members are kept in {tmp_path / 'post.zarr.partial'}: "
                        "the same command with --resume continues")
    partial = open_dataset(tmp_path / "post.zarr.partial")
    assert partial["completed"].values.tolist() == [1, 0]  # the finished member is kept
    assert signal.getsignal(signal.SIGTERM) is not cli._terminate  # the handler is only installed during main
    monkeypatch.undo()
    spelled = world.root / "pipeline" / ".." / world.observations.name  # the same file, spelled differently
    args[args.index("--observations") + 1] = str(spelled)
    assert cli.main(args + ["--resume"]) == 0
    assert open_dataset(out).sizes["realization"] == 2 and not (tmp_path / "post.zarr.partial").exists()


def test_a_forecast_resumes_only_from_the_same_input(world, tmp_path, monkeypatch, capsys):
    """An interrupted forecast records its input: --resume with other observations, or with --initial
    instead, is refused (members from two inputs must not mix), and the same input completes it."""
    out = tmp_path / "fc.zarr"
    args = forecast_args(world, out, "--observations", str(world.observations))
    args[args.index("--members") + 1] = "2"
    interrupt_forecasts_after(monkeypatch, 1)
    assert cli.main(args) == 130
    assert open_dataset(tmp_path / "fc.zarr.partial")["completed"].values.tolist() == [1, 0]
    monkeypatch.undo()
    other = tmp_path / "other.nc"
    shutil.copy(world.observations, other)
    args[args.index("--observations") + 1] = str(other)
    capsys.readouterr()
    assert cli.main(args + ["--resume"]) == 2
    assert "the interrupted run had other settings (observations)" in capsys.readouterr().err
    initial = forecast_args(world, out, "--initial", str(world.truth), "--resume")
    initial[initial.index("--members") + 1] = "2"
    assert cli.main(initial) == 2
    assert "other settings" in capsys.readouterr().err
    assert open_dataset(tmp_path / "fc.zarr.partial")["completed"].values.tolist() == [1, 0]  # nothing lost
    args[args.index("--observations") + 1] = str(world.observations)
    assert cli.main(args + ["--resume"]) == 0
    assert open_dataset(out).sizes["realization"] == 2 and not (tmp_path / "fc.zarr.partial").exists()


def test_an_error_after_the_store_was_created_removes_it(world, tmp_path, monkeypatch, capsys):
    from latentda.errors import LatentdaError

    def fail():
        raise LatentdaError("a problem found after the first member")

    _stop_after_first_member(monkeypatch, fail)
    args = reanalyze_args(world, world.observations, tmp_path / "post.zarr")
    args[args.index("--members") + 1] = "2"
    assert cli.main(args) == 2
    assert "a problem found" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the output nor its .partial store


def test_a_failure_outside_the_inputs_keeps_the_finished_members(world, tmp_path, monkeypatch):
    """Out of memory (or a full disk) after the first member: that member stays for --resume, and the
    error says where; the resumed run completes."""
    def fail():
        raise RuntimeError("CUDA out of memory (simulated)")

    _stop_after_first_member(monkeypatch, fail)
    out = tmp_path / "post.zarr"
    args = reanalyze_args(world, world.observations, out)
    args[args.index("--members") + 1] = "2"
    with pytest.raises(RuntimeError, match="out of memory") as failure:
        cli.main(args)
    assert any("1 finished member(s) kept in" in note and "--resume" in note for note in failure.value.__notes__)
    assert not out.exists()
    assert open_dataset(tmp_path / "post.zarr.partial")["completed"].values.tolist() == [1, 0]
    monkeypatch.undo()
    assert cli.main(args + ["--resume"]) == 0
    assert open_dataset(out).sizes["realization"] == 2 and not (tmp_path / "post.zarr.partial").exists()


def test_a_mistyped_relative_folder_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    from latentda.errors import LatentdaError
    from latentda.pipeline import LatentDAPipeline

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(LatentdaError, match="folder not found"):
        LatentDAPipeline.from_pretrained("runs/typo")


def test_hub_cache_snapshots_may_link_to_their_blobs(world, tmp_path):
    """The Hugging Face cache stores snapshot files as links into the repository's ``blobs``: they
    are inside the repository's cache folder, so they load."""
    from latentda.components import load_autoencoder

    repository = tmp_path / "models--org--name"
    snapshot = repository / "snapshots" / "abc123" / AE
    snapshot.mkdir(parents=True)
    (repository / "blobs").mkdir()
    for file in (world.pipeline / AE).iterdir():
        blob = repository / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    model, layout, _ = load_autoencoder(snapshot)
    assert layout.channels == ["u", "v"]


def test_scores_are_never_bare_nan_in_json(world, tmp_path):
    from latentda.evaluation import evaluate, write_report

    rows, summary = evaluate(open_dataset(world.prediction), open_dataset(world.truth))
    summary["u"]["rmse"] = float("nan")
    write_report(rows, summary, tmp_path / "report")
    text = (tmp_path / "report" / "summary.json").read_text()
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in summary.json"))
    assert data["u"]["rmse"] is None


def test_number_checks_take_numpy_numbers_and_refuse_bools_and_non_finite_values():
    from latentda.errors import LatentdaError, check_integer, check_positive

    value = check_integer("lag", np.int64(3), 1, 3)
    assert value == 3 and type(value) is int
    for bad, message in ((True, "lag must be an integer in \\[1, 3\\], got True"), (2.0, "got 2.0"), ("2", "got '2'"),
                         (0, "got 0"), (4, "got 4")):
        with pytest.raises(LatentdaError, match=message):
            check_integer("lag", bad, 1, 3)
    with pytest.raises(LatentdaError, match="seed must be an integer ≥ 0 \\(a hint\\), got -1"):
        check_integer("seed", -1, 0, hint=" (a hint)")
    assert check_positive("σ", np.float32(0.5)) == 0.5
    for bad in (0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(LatentdaError, match="σ must be positive and finite"):
            check_positive("σ", bad)

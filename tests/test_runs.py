"""Ensemble runs through the Python API (latentda.runs): an interrupted reanalysis resumed through
the API equals an uninterrupted one; the API forecast is the command's (values, lead-time CF
attributes, recorded settings); the public API at the top level; the layers import downwards only."""

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import interrupt_forecasts_after, interrupt_reanalyses_after, make_observed_pipeline
from latentda import cli
from latentda.data import open_dataset, write_dataset
from latentda.errors import LatentdaError
from latentda.pipeline import LatentDAPipeline
from latentda.posterior import reanalysis
from latentda.posterior.reanalysis import PosteriorSettings

PACKAGE = Path(__file__).parents[1] / "latentda"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny pipeline folder, its loaded pipeline and sparse observations of a truth (6 states, K = 4)."""
    root = tmp_path_factory.mktemp("runs")
    folder = root / "pipeline"
    _, _, _, observations = make_observed_pipeline(root)
    pipeline = LatentDAPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return folder, pipeline, observations


def test_api_reanalysis_interrupted_and_resumed_equals_uninterrupted(setup, tmp_path, monkeypatch):
    folder, pipeline, observations = setup
    obs = open_dataset(observations)
    options = dict(members=3, steps=3, iterations=1)
    straight = pipeline.reanalyze(obs, out=tmp_path / "straight.zarr", **options).load()

    real = interrupt_reanalyses_after(monkeypatch, 1)
    killed = tmp_path / "killed.zarr"
    with pytest.raises(KeyboardInterrupt):
        pipeline.reanalyze(obs, out=killed, **options)
    assert not killed.exists()
    assert open_dataset(tmp_path / "killed.zarr.partial")["completed"].values.tolist() == [1, 0, 0]  # kept
    with pytest.raises(LatentdaError, match="interrupted run exists"):
        pipeline.reanalyze(obs, out=killed, **options)  # not without resume
    with pytest.raises(LatentdaError, match="other settings"):
        pipeline.reanalyze(obs, seed=7, out=killed, resume=True, **options)  # members would mix
    with pytest.raises(LatentdaError, match=r"other settings \(latentda_steps\)"):  # given then, the default now
        pipeline.reanalyze(obs, out=killed, resume=True, members=3, iterations=1)

    calls = []
    monkeypatch.setattr(reanalysis, "posterior_members", lambda p, o, members, *a: (calls.append(members), real(p, o, members, *a))[1])
    resumed = pipeline.reanalyze(obs, out=killed, resume=True, **options).load()
    assert calls == [[1, 2]]  # only the unfinished members were computed
    assert "completed" not in resumed and not (tmp_path / "killed.zarr.partial").exists()
    for name in ("u", "v"):
        np.testing.assert_array_equal(resumed[name].values, straight[name].values)
    assert resumed.attrs == straight.attrs and resumed.attrs["latentda_pipeline"] == str(folder.resolve())

    in_memory = pipeline.reanalyze(obs, **options)  # no out: the same dataset, never written
    np.testing.assert_array_equal(in_memory["u"].values, straight["u"].values)
    assert in_memory["realization"].attrs["standard_name"] == "realization"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.zarr", "straight.zarr"]


def test_a_failed_api_run_removes_its_store(setup, tmp_path, monkeypatch):
    folder, pipeline, observations = setup

    def failing(*a, **k):
        yield from ()
        raise ValueError("a problem found while sampling")

    monkeypatch.setattr(reanalysis, "posterior_members", failing)
    with pytest.raises(ValueError, match="a problem"):
        pipeline.reanalyze(open_dataset(observations), members=2, steps=2, out=tmp_path / "p.zarr")
    assert list(tmp_path.iterdir()) == []


def test_api_forecast_is_the_command_line_forecast(setup, tmp_path):
    folder, pipeline, observations = setup
    out = tmp_path / "cli.zarr"
    assert cli.main(["forecast", "--pipeline", str(folder), "--observations", str(observations), "--lead", "3",
                     "--members", "2", "--steps", "2", "--condition-noise", "0.1", "--out", str(out), "--quiet"]) == 0
    command = open_dataset(out).load()
    options = dict(lead=3, members=2, observations=open_dataset(observations), steps=2, condition_noise=0.1)
    in_memory = pipeline.forecast(**options)
    written = pipeline.forecast(**options, out=tmp_path / "api.zarr").load()
    for api in (in_memory, written):
        assert api["u"].dims == ("realization", "time", "prediction_timedelta", "y", "x")
        assert api["prediction_timedelta"].attrs == command["prediction_timedelta"].attrs
        assert api["prediction_timedelta"].attrs["long_name"] == "forecast lead time"
        np.testing.assert_array_equal(api["u"].values, command["u"].values)
    recorded = dict(command.attrs)  # the command also records its input file (--resume checks it)
    assert recorded.pop("observations") == str(observations.resolve())
    assert written.attrs == recorded and command.attrs["latentda_condition_noise"] == "0.1"
    # the API has the command's options (with the untrained prior, σ_c does not change the values)
    other = pipeline.forecast(**{**options, "condition_noise": 0.5}, out=tmp_path / "other.zarr")
    assert other.attrs["latentda_condition_noise"] == "0.5"
    with pytest.raises(LatentdaError, match="conditioning noise must be positive"):
        pipeline.forecast(**{**options, "condition_noise": 0.0}, out=tmp_path / "never.zarr")
    assert not (tmp_path / "never.zarr").exists() and not (tmp_path / "never.zarr.partial").exists()


def test_api_resume_refuses_another_input(setup, tmp_path, monkeypatch):
    """The API records a fingerprint of a run's observations (values, coordinates and the attributes that define
    them): resume=True with other observations is refused instead of mixing members; the same observations,
    opened again, complete the run."""
    from latentda.runs import input_fingerprint

    folder, pipeline, observations = setup
    dataset = open_dataset(observations).load()
    changed = dataset.copy(deep=True)
    name = next(iter(changed.data_vars))
    changed[name].values[..., 0] += 1.0
    assert input_fingerprint(dataset) == input_fingerprint(open_dataset(observations))  # lazily opened: the same
    assert input_fingerprint(dataset) == input_fingerprint(dataset, states_per_read=1)  # read in parts: the same
    assert input_fingerprint(dataset) != input_fingerprint(changed)
    out = tmp_path / "post.zarr"
    interrupt_reanalyses_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        pipeline.reanalyze(dataset, members=2, steps=2, out=out)
    monkeypatch.undo()
    with pytest.raises(LatentdaError, match=r"other settings \(latentda_observations_sha256\); resume with the obs"):
        pipeline.reanalyze(changed, members=2, steps=2, out=out, resume=True)
    for attribute, value in (("noise_std", 2.0), ("latentda_source", "v")):  # the same values, another σ or variable
        described = dataset.copy(deep=True)
        described[name].attrs[attribute] = value
        with pytest.raises(LatentdaError, match=r"other settings \(latentda_observations_sha256\)"):
            pipeline.reanalyze(described, members=2, steps=2, out=out, resume=True)
    resumed = pipeline.reanalyze(open_dataset(observations), members=2, steps=2, out=out, resume=True)
    assert resumed.sizes["realization"] == 2 and resumed.attrs["latentda_observations_sha256"] == input_fingerprint(dataset)


def test_api_forecast_resume_reads_the_same_initial_states(setup, tmp_path, monkeypatch):
    """A forecast from initial states records the fingerprint of the states it reads (the last
    `context`): other ones are refused on resume; a change to earlier, unread states is not a change."""
    from latentda.posterior.forecast import default_context
    from latentda.posterior.reanalysis import PosteriorSettings

    folder, pipeline, observations = setup
    truth = pipeline.sample(length=8, members=1, seed=3).isel(realization=0, drop=True).load()
    options = dict(lead=2, members=2, steps=2, out=tmp_path / "fc.zarr")
    interrupt_forecasts_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        pipeline.forecast(initial=truth, **options)
    monkeypatch.undo()
    name = next(iter(truth.data_vars))
    read = default_context(pipeline, PosteriorSettings(steps=2))
    last, first = truth.copy(deep=True), truth.copy(deep=True)
    last[name].values[-1] += 1.0  # a state the forecast reads
    first[name].values[0] += 1.0  # a state before the last `read`
    assert read < truth.sizes["time"]
    with pytest.raises(LatentdaError, match=r"other settings \(latentda_initial_sha256\)"):
        pipeline.forecast(initial=last, resume=True, **options)
    resumed = pipeline.forecast(initial=first, resume=True, **options)
    assert resumed.sizes["realization"] == 2


def test_api_arguments_are_checked_before_any_work(setup, monkeypatch):
    """Members, seeds, leads, settings and their fields of the wrong type or range are one-line errors
    naming the argument, raised before anything is sampled (the command line checks the same)."""
    folder, pipeline, observations = setup
    dataset = open_dataset(observations)

    def never(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr(reanalysis, "posterior_members", never)
    bad = [(dict(members=0), "members must be an integer ≥ 1, got 0"),
           (dict(members=True), "members must be an integer ≥ 1, got True"),
           (dict(members="2"), "members must be an integer ≥ 1, got '2'"),
           (dict(seed=-1), r"seed must be an integer in \[0, 4294967295\], got -1"),
           (dict(seed=1.5), "seed must be an integer"),
           (dict(settings="fast"), "settings: expected a PosteriorSettings or a dict of its fields, got str"),
           (dict(iterations="3"), "iterations: expected an integer, got '3'"),
           (dict(batch_members=2.0), "batch_members: expected an integer"),
           (dict(dps_scale=float("nan")), "dps_scale: must be finite"),
           (dict(guidance="dps", dps_scale=-1.0), "dps_scale: must be non-negative"),
           (dict(representation_error="no"), "representation_error: expected true or false, got 'no'"),
           (dict(split_blankets=1), "split_blankets: expected true or false"),
           (dict(attrs="note"), "attrs: expected a dict")]
    for options, message in bad:
        with pytest.raises(LatentdaError, match=message):
            pipeline.reanalyze(dataset, **options)
    with pytest.raises(LatentdaError, match="observations: none given"):
        pipeline.reanalyze(None, members=1)
    with pytest.raises(LatentdaError, match="lead must be an integer ≥ 1, got '2'"):
        pipeline.forecast("2", members=1, observations=dataset)
    with pytest.raises(LatentdaError, match="members must be an integer ≥ 1, got 0"):
        pipeline.filter(dataset, members=0)
    with pytest.raises(LatentdaError, match="length must be an integer ≥ 1, got 16.0"):
        pipeline.sample(16.0)
    with pytest.raises(LatentdaError, match="start_time: this pipeline's time axis is model time"):
        pipeline.sample(4, start_time="2020-01-01")
    monkeypatch.undo()
    as_mapping = pipeline.reanalyze(dataset, members=1, settings={"steps": 2, "iterations": 1})
    as_keywords = pipeline.reanalyze(dataset, members=1, steps=2, iterations=1)
    np.testing.assert_array_equal(as_mapping["u"].values, as_keywords["u"].values)
    as_numpy = pipeline.reanalyze(dataset, members=np.int64(1), seed=np.int32(0), steps=np.int64(2), iterations=np.int64(1),
                                  dps_scale=np.float32(0.5))  # numpy numbers, as a sweep over np.arange gives them
    np.testing.assert_array_equal(as_numpy["u"].values, as_keywords["u"].values)


def test_run_commands_read_files_whose_time_dimension_has_another_name(setup, tmp_path, capsys):
    """--time-dim names the time dimension of reanalyze's observation file and forecast's --initial (a model trained
    with --time-dim step reads its own files): the same run as with the axis called time; without it, refused."""
    folder, pipeline, observations = setup
    renamed = write_dataset(open_dataset(observations).rename(time="step"), tmp_path / "obs-step.nc")
    run = ["reanalyze", "--pipeline", str(folder), "--members", "2", "--steps", "2", "--iterations", "1", "--quiet"]
    assert cli.main(run + ["--observations", str(observations), "--out", str(tmp_path / "a.zarr")]) == 0
    assert cli.main(run + ["--observations", str(renamed), "--time-dim", "step", "--out", str(tmp_path / "b.zarr")]) == 0
    np.testing.assert_array_equal(open_dataset(tmp_path / "a.zarr")["u"].values, open_dataset(tmp_path / "b.zarr")["u"].values)
    assert cli.main(run + ["--observations", str(renamed), "--out", str(tmp_path / "c.zarr")]) == 2
    assert "no 'time' dimension" in capsys.readouterr().err
    initial = write_dataset(open_dataset(tmp_path / "a.zarr").rename(time="step"), tmp_path / "initial-step.nc")
    forecast = ["forecast", "--pipeline", str(folder), "--lead", "1", "--members", "2", "--steps", "2", "--quiet"]
    assert cli.main(forecast + ["--initial", str(tmp_path / "a.zarr"), "--out", str(tmp_path / "f1.zarr")]) == 0
    assert cli.main(forecast + ["--initial", str(initial), "--time-dim", "step", "--out", str(tmp_path / "f2.zarr")]) == 0
    np.testing.assert_array_equal(open_dataset(tmp_path / "f1.zarr")["u"].values, open_dataset(tmp_path / "f2.zarr")["u"].values)


def test_overlap_and_forecast_context_defaults(setup):
    from latentda.posterior.forecast import default_context

    folder, pipeline, observations = setup
    assert pipeline.sampling.overlap is None and pipeline.overlap == pipeline.window // 2 == 2
    assert default_context(pipeline) == 2 and pipeline.trajectory_denoiser().overlap == 2
    saved = pipeline.sampling
    try:
        pipeline.sampling = dataclasses.replace(saved, overlap=0)  # blankets sharing no state; a forecast still needs context
        assert pipeline.overlap == 0 and default_context(pipeline) == 2
        pipeline.sampling = dataclasses.replace(saved, overlap=3)
        assert pipeline.overlap == 3 and default_context(pipeline) == 3
    finally:
        pipeline.sampling = saved
    # a run's overlap overrides the pipeline's: for the blankets and the forecast context
    assert default_context(pipeline, PosteriorSettings(overlap=3)) == 3
    assert default_context(pipeline, PosteriorSettings(overlap=0)) == 2
    with pytest.raises(LatentdaError, match=r"overlap: must be in \[0, window\) = \[0, 4\)"):
        PosteriorSettings(overlap=4).validate(pipeline)


def test_the_public_api_is_importable_from_the_package_lazily():
    code = ("import sys, latentda\n"
            "assert 'torch' not in sys.modules, 'import latentda must stay cheap'\n"
            "from latentda import LatentDAPipeline, PosteriorSettings, SamplerSettings, MMPSDenoiser, DPSDenoiser, LatentdaError, PriorModel\n"
            "from latentda.pipeline import LatentDAPipeline as direct\n"
            "assert LatentDAPipeline is direct and 'torch' in sys.modules\n"
            "assert set(latentda.__all__) <= set(dir(latentda))\n"
            "try:\n    latentda.nothing\nexcept AttributeError:\n    print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=PACKAGE.parent)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_pipeline_is_a_prior_model(setup):
    from latentda.posterior.prior import PriorModel

    assert isinstance(setup[1], PriorModel)


LAYERS = ["processes", "data", "observe", "nn", "diffusion", "posterior", "runs", "pipeline", "cli"]


def _imports(path: Path) -> set[str]:
    """Every latentda module a file imports, at any level (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {name for name in names if name.startswith("latentda")}


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_a_layer_never_imports_a_higher_one(layer):
    """processes → data → observe → nn → diffusion → posterior → runs → pipeline → cli (docs/design.md, "Layers")."""
    files = sorted((PACKAGE / layer).glob("*.py")) if (PACKAGE / layer).is_dir() else [PACKAGE / f"{layer}.py"]
    higher = tuple(f"latentda.{name}" for name in LAYERS[LAYERS.index(layer) + 1 :])
    for file in files:
        wrong = [name for name in _imports(file) if name.startswith(higher)]
        assert not wrong, f"{file.relative_to(PACKAGE.parent)} imports {wrong}"


def test_members_are_dealt_round_robin_each_process_one_at_least():
    from latentda.processes import deal_members

    shares = [deal_members(7, index, 3) for index in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]] and sorted(sum(shares, [])) == list(range(7))
    with pytest.raises(LatentdaError, match="2 members cannot be dealt over 3 processes"):
        deal_members(2, 0, 3)


def test_latentda_files_in_a_store_raise_no_zarr_warning(tmp_path):
    """zarr warns about any file of a store outside its hierarchy; a filter's run state is one (kept in its
    .partial store for --resume), so latentda's readers and writers silence that warning for its own files."""
    import warnings

    import xarray as xr

    from latentda.data.ensemble_store import RUN_STATE
    from latentda.data.io import write_region

    path = tmp_path / "s.zarr"
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_zarr(path, mode="w", consolidated=False)
    (path / RUN_STATE).write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        xr.open_zarr(path, consolidated=False)
        assert any(f"{RUN_STATE} is not recognized" in str(w.message) for w in caught)  # zarr's own, as it reads
        caught.clear()
        open_dataset(path)
        write_region(path, {"a": np.zeros(1)}, (slice(0, 1),))
        assert not [w for w in caught if "not recognized" in str(w.message)]


def test_one_run_writes_an_output_at_a_time(setup, tmp_path, monkeypatch, capsys):
    """Another process writing the output now (two jobs of an array given one --out, a --resume while the
    first still runs): a new run, a resumed one and a filter are refused in one line before any work, the
    live run's partial store untouched; once that process is gone (even killed) the output is free, and a
    finished run leaves no lock file."""
    import os
    import signal

    folder, pipeline, observations = setup
    obs = open_dataset(observations)
    options = dict(members=2, steps=2, iterations=1)
    out = tmp_path / "post.zarr"
    with pytest.raises(KeyboardInterrupt):  # an interrupted run's partial store, as the live run would have
        interrupt_reanalyses_after(monkeypatch, 1)
        pipeline.reanalyze(obs, out=out, **options)
    monkeypatch.undo()
    partial = sorted(p.name for p in (tmp_path / "post.zarr.partial").iterdir())
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from latentda.data.io import OutputLock; "
                               "lock = OutputLock(sys.argv[1]); print('held', flush=True); time.sleep(60)", str(out)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    try:
        assert holder.stdout.readline().strip() == "held"
        for resume in (False, True):
            with pytest.raises(LatentdaError, match="post.zarr: another process is writing it now"):
                pipeline.reanalyze(obs, out=out, resume=resume, **options)
        run = ["reanalyze", "--pipeline", str(folder), "--observations", str(observations), "--members", "2",
               "--steps", "2", "--iterations", "1", "--out", str(out), "--resume", "--quiet"]
        assert cli.main(run) == 2
        assert capsys.readouterr().err.count("\n") == 1
        with pytest.raises(LatentdaError, match="another process is writing it now"):
            pipeline.filter(obs, out=out, resume=True, **options)
        assert sorted(p.name for p in (tmp_path / "post.zarr.partial").iterdir()) == partial
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / ".post.zarr.lock").exists()  # left by the killed process, and no longer held
    resumed = pipeline.reanalyze(obs, out=out, resume=True, **options)
    assert np.isfinite(resumed["u"].values).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["post.zarr"]


def test_an_output_lock_leaves_nothing_of_its_own(tmp_path, monkeypatch):
    """The lock of a run that is refused or ends removes its file and the folders it had to create; `.` is the
    folder it names; a path under a file is one line."""
    from latentda.data.io import OutputLock

    lock = OutputLock(tmp_path / "new" / "deep" / "run")
    assert (tmp_path / "new" / "deep" / ".run.lock").is_file()
    with pytest.raises(LatentdaError, match="another process is writing it now"):
        OutputLock(tmp_path / "new" / "deep" / "run")
    lock.release()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    lock = OutputLock(".")
    assert (tmp_path / ".here.lock").is_file()
    lock.release()
    (tmp_path / "notes").write_text("a file")
    with pytest.raises(LatentdaError, match="notes/run: cannot write beside it"):
        OutputLock(tmp_path / "notes" / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "notes"]


def test_a_stray_partial_store_is_named_by_the_writer(setup, tmp_path):
    """An empty or foreign `.partial` (not a run's store): the run says an interrupted run is in the way, as
    before fingerprints of earlier versions were looked up (those are read only when resuming)."""
    folder, pipeline, observations = setup
    (tmp_path / "post.zarr.partial").mkdir()
    with pytest.raises(LatentdaError, match="post.zarr.partial: an interrupted run exists"):
        pipeline.reanalyze(open_dataset(observations), members=1, steps=2, out=tmp_path / "post.zarr")


def test_a_run_of_another_sampler_revision_is_not_resumed(setup, tmp_path, monkeypatch):
    """A partial run records the revision of the sampling code (latentda.runs.SAMPLER_REVISION): one an earlier
    latentda left — before the Langevin step's cap, without the attribute — is refused on resume, naming why,
    rather than completed with members of another sampler; with the revision it resumes."""
    import zarr

    from latentda.runs import SAMPLER_REVISION

    folder, pipeline, observations = setup
    out = tmp_path / "post.zarr"
    interrupt_reanalyses_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        pipeline.reanalyze(open_dataset(observations), members=2, steps=2, out=out)
    monkeypatch.undo()
    attrs = zarr.open_group(str(tmp_path / "post.zarr.partial"), mode="a").attrs
    assert attrs["latentda_sampler_revision"] == SAMPLER_REVISION
    del attrs["latentda_sampler_revision"]
    with pytest.raises(LatentdaError, match=r"other settings \(latentda_sampler_revision\); it was sampled by another "
                                            "version of latentda's sampler"):
        pipeline.reanalyze(open_dataset(observations), members=2, steps=2, out=out, resume=True)
    attrs["latentda_sampler_revision"] = SAMPLER_REVISION
    resumed = pipeline.reanalyze(open_dataset(observations), members=2, steps=2, out=out, resume=True)
    assert resumed.sizes["realization"] == 2 and resumed.attrs["latentda_sampler_revision"] == SAMPLER_REVISION


@pytest.mark.parametrize("by_time", [False, True])
def test_output_chunks_hold_one_write_and_many_states(tmp_path, monkeypatch, by_time):
    """An ensemble output's chunk holds one member (a filter's: one cycle) — two processes' writes never share a
    chunk — and as many times (members) as ensemble_store.CHUNK_BYTES holds, not one 64² state per file; the
    fields read back are those written, whatever the chunking."""
    import xarray as xr
    import zarr

    from latentda.data import ensemble_store
    from latentda.data.ensemble_store import EnsembleWriter, open_ensemble
    from latentda.data.layout import FieldLayout

    members, steps, size = 3, 10, 8
    time = xr.DataArray(np.arange(float(steps)), dims="time")
    layout = FieldLayout.from_dataset(xr.Dataset({name: (("time", "y", "x"), np.zeros((steps, size, size), np.float32))
                                                  for name in "uv"}, coords={"time": time, "y": np.arange(8.0), "x": np.arange(8.0)}))
    fields = np.random.default_rng(0).standard_normal((members, steps, 2, size, size)).astype(np.float32)
    for chunk_bytes, span in ((1 << 20, members if by_time else steps), (3 * 4 * size * size, 3)):
        monkeypatch.setattr(ensemble_store, "CHUNK_BYTES", chunk_bytes)
        out = tmp_path / f"{chunk_bytes}.zarr"
        writer = EnsembleWriter(out, layout, time, members, by_time=by_time)
        attached = EnsembleWriter(out, layout, time, members, by_time=by_time, attach=True)  # another process's writer
        for index in range(steps if by_time else members):
            (attached if index % 2 else writer).write(index, fields[:, index] if by_time else fields[index])
        writer.finalize()
        chunks = zarr.open_group(out, mode="r")["u"].chunks
        assert chunks == ((span, 1) if by_time else (1, span)) + (size, size)
        written = open_ensemble(out, layout)
        np.testing.assert_array_equal(np.stack([written[name].values for name in "uv"], axis=2), fields)

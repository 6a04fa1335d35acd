"""Resuming train-ae: a checkpoint that reads but holds no consistent state is refused in one line naming it (an
older one resumes instead), a run killed before its first checkpoint starts again from scratch, and the output is
a run's folder. The runs are tiny (4 × 8 states of 8 × 8); train-ldm's own cases are in test_train_ldm.py."""

import json
import re
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import kill_training_at, make_box_dataset
from latentda import cli
from latentda.components import load_autoencoder
from latentda.config import parse
from latentda.data import write_dataset
from latentda.errors import LatentdaError
from latentda.training.autoencoder import AutoEncoderConfig, train_autoencoder

TRAINING = {"steps": 9, "batch_size": 4, "learning_rate": 3e-3, "warmup_steps": 2, "checkpoint_every": 3, "validate_every": 9}


def _settings(data, output, **training) -> dict:
    return {"data": {"path": str(data)}, "output": str(output),
            "model": {"latent_channels": 2, "hidden_channels": [8, 16], "blocks_per_stage": 1},
            "training": {**TRAINING, **training}, "valid_samples": 4}


def _config(data, output, **training) -> AutoEncoderConfig:
    return parse(AutoEncoderConfig, _settings(data, output, **training))


def _killed_at(step: int, config: AutoEncoderConfig) -> None:
    """Train ``config`` until the job is killed at ``step`` (after the checkpoints before it)."""
    kill_training_at(step, lambda: train_autoencoder(config, progress=False))


def _files(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _weights(run):
    return load_file(run / "autoencoder" / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """box.zarr, other.zarr (other values), a run killed at step 7 of 9 (checkpoints at 3 and 6) and the same run
    uninterrupted."""
    root = tmp_path_factory.mktemp("runs")
    write_dataset(make_box_dataset(trajectories=4, times=8, size=8), root / "box.zarr")
    write_dataset(make_box_dataset(trajectories=4, times=8, size=8, seed=1), root / "other.zarr")
    train_autoencoder(_config(root / "box.zarr", root / "straight"), progress=False)
    _killed_at(7, _config(root / "box.zarr", root / "killed"))
    return root


def _edit_state(change):
    def edit(checkpoint):
        state = json.loads((checkpoint / "state.json").read_text())
        change(state)
        (checkpoint / "state.json").write_text(json.dumps(state))
    return edit


def _edit_tensors(file, change):
    def edit(checkpoint):
        tensors = load_file(checkpoint / file)
        change(tensors)
        save_file(tensors, checkpoint / file)
    return edit


def _first(tensors, part=""):
    return next(k for k in tensors if part in k)


def _nan(tensors):
    tensors[_first(tensors)] = torch.full_like(tensors[_first(tensors)], float("nan"))


CORRUPTIONS = {  # name: (edit of a checkpoint folder, the problem the error names)
    "no scheduler": (_edit_state(lambda s: s.pop("scheduler")), r"state.json: no scheduler state at step 6"),
    "no ema_step": (_edit_state(lambda s: s.pop("ema_step")), r"state.json: ema_step None is not a count of steps"),
    "step a string": (_edit_state(lambda s: s.update(step="6")), r"state.json: step '6', not the folder's 6"),
    "step negative": (_edit_state(lambda s: s.update(step=-5)), r"state.json: step -5, not the folder's 6"),
    "step beyond the run": (_edit_state(lambda s: s.update(step=10**6)), r"state.json: step 1000000, not the folder's 6"),
    "no param_groups": (_edit_state(lambda s: s["optimizer"].update(param_groups=[])),
                        r"state.json: the optimizer's parameter groups are missing or incomplete"),
    "ema weight missing": (_edit_tensors("ema.safetensors", lambda t: t.pop(_first(t))),
                           r"ema.safetensors: '.+' missing, unexpected or of another shape"),
    "ema weight of another shape": (_edit_tensors("ema.safetensors", lambda t: t.update({_first(t): torch.zeros(3)})),
                                    r"ema.safetensors: '.+' missing, unexpected or of another shape"),
    "ema NaN": (_edit_tensors("ema.safetensors", _nan), r"ema.safetensors: '.+' holds NaN or inf values"),
    "model NaN": (_edit_tensors("model.safetensors", _nan), r"model.safetensors: '.+' holds NaN or inf values"),
    "moment of another shape": (_edit_tensors("optimizer.safetensors", lambda t: t.update({_first(t, "exp_avg"): torch.zeros(3)})),
                                r"optimizer.safetensors: the state of parameter \d+ is incomplete or of another shape"),
    "second moment missing": (_edit_tensors("optimizer.safetensors", lambda t: t.pop(_first(t, "exp_avg_sq"))),
                              r"optimizer.safetensors: the state of parameter \d+ is incomplete or of another shape"),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_a_malformed_checkpoint_is_one_line_naming_it_and_nothing_is_written(tmp_path, runs, name, capsys):
    """Every checkpoint parses but holds a state that would crash (a traceback), train from step −5, write the final
    model of a 10⁶-step run or NaN weights: `train-ae --resume` exits 2 with one line naming the newest checkpoint
    and the problem, and leaves the run folder as it was (no autoencoder/, no metrics.json)."""
    edit, problem = CORRUPTIONS[name]
    run = shutil.copytree(runs / "killed", tmp_path / "run")
    for checkpoint in sorted((run / "checkpoints").iterdir()):
        edit(checkpoint)
    before = _files(run)
    config = tmp_path / "ae.yaml"
    config.write_text(yaml.safe_dump(_settings(runs / "box.zarr", run)))
    assert cli.main(["train-ae", "--config", str(config), "--resume", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert re.search(r"run/checkpoints/step-000006: corrupt or incomplete checkpoint \(" + problem + r"\)$", error), error
    assert _files(run) == before


@pytest.mark.parametrize("name", ["step negative", "ema NaN", "second moment missing"])
def test_a_malformed_newest_checkpoint_resumes_from_the_older_one(tmp_path, runs, name):
    """As a truncated checkpoint: a warning naming the newest and its problem, then the run resumes from the older
    one and ends with the weights of the uninterrupted run."""
    edit, problem = CORRUPTIONS[name]
    run = shutil.copytree(runs / "killed", tmp_path / "run")
    edit(run / "checkpoints" / "step-000006")
    with pytest.warns(UserWarning, match=r"step-000006: corrupt or incomplete checkpoint \(" + problem
                      + r"\); resuming from the older step-000003"):
        train_autoencoder(_config(runs / "box.zarr", run), resume=True, progress=False)
    straight, resumed = _weights(runs / "straight"), _weights(run)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_resume_with_fewer_steps_than_the_checkpoint_is_refused(tmp_path, runs):
    """A run at step 6 resumed with training.steps 5 would write its step-6 weights as a 5-step run's: refused."""
    run = shutil.copytree(runs / "killed", tmp_path / "run")
    before = _files(run)
    with pytest.raises(LatentdaError, match=r"step-000006: the run is at step 6, past training.steps 5: "
                                            r"resume with training.steps of at least 6"):
        train_autoencoder(_config(runs / "box.zarr", run, steps=5), resume=True, progress=False)
    assert _files(run) == before


def test_resume_without_the_runs_config_is_refused(tmp_path, runs):
    """config.yaml is what a resumed run's settings are checked against (a learning rate is not in the tensors):
    deleted, resuming is refused rather than continued unchecked."""
    run = shutil.copytree(runs / "killed", tmp_path / "run")
    (run / "config.yaml").unlink()
    before = _files(run)
    with pytest.raises(LatentdaError, match=r"run/config.yaml: missing, the run's first config is lost"):
        train_autoencoder(_config(runs / "box.zarr", run, learning_rate=1e-2), resume=True, progress=False)
    assert _files(run) == before


def test_resume_without_the_runs_statistics_is_refused(tmp_path, runs):
    """The checkpoints were trained on standardised fields: statistics.json deleted, resuming is refused rather than
    continued with statistics computed again from data that may be another."""
    run = shutil.copytree(runs / "killed", tmp_path / "run")
    (run / "statistics.json").unlink()
    before = _files(run)
    with pytest.raises(LatentdaError, match=r"run/statistics.json: missing, and the run's checkpoints were trained with"):
        train_autoencoder(_config(runs / "other.zarr", run), resume=True, progress=False)
    assert _files(run) == before


def test_resume_before_the_first_checkpoint_starts_from_scratch(tmp_path, runs):
    """A run killed before its first checkpoint left statistics.json and layout.json of its data; resumed on other
    data, it starts from scratch: its statistics, layout and weights are those of a new run on that data (not the
    stale ones), and with fewer variables it trains instead of failing."""
    other = runs / "other.zarr"
    train_autoencoder(_config(other, tmp_path / "fresh", steps=3), progress=False)
    _killed_at(1, _config(runs / "box.zarr", tmp_path / "run", steps=3))
    assert not (tmp_path / "run" / "checkpoints").exists() and (tmp_path / "run" / "statistics.json").is_file()
    train_autoencoder(_config(other, tmp_path / "run", steps=3), resume=True, progress=False)
    for name in ("statistics.json", "layout.json"):
        assert (tmp_path / "run" / name).read_text() == (tmp_path / "fresh" / name).read_text()
    fresh, resumed = _weights(tmp_path / "fresh"), _weights(tmp_path / "run")
    assert all(torch.equal(resumed[k], fresh[k]) for k in fresh)

    _killed_at(1, _config(runs / "box.zarr", tmp_path / "one", steps=3))
    config = parse(AutoEncoderConfig, {**_settings(other, tmp_path / "one", steps=3), "data": {"path": str(other), "variables": ["u"]}})
    train_autoencoder(config, resume=True, progress=False)
    assert load_autoencoder(tmp_path / "one" / "autoencoder")[1].channels == ["u"]


def test_output_is_a_run_folder(tmp_path, runs, capsys):
    """`output` an existing file, or a folder of other files (a copy of an autoencoder folder), is refused in one
    line before the statistics pass, resumed or not, and nothing is written into it; a new or empty folder trains."""
    config = tmp_path / "ae.yaml"
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    config.write_text(yaml.safe_dump(_settings(runs / "box.zarr", file, steps=1)))
    assert cli.main(["train-ae", "--config", str(config), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.endswith("notes.txt: exists and is not a folder (output is the run's folder): "
                                                     "choose another output")
    assert file.read_text() == "mine"
    copy = shutil.copytree(runs / "straight" / "autoencoder", tmp_path / "ae-copy")
    before = _files(copy)
    for resume in (False, True):
        with pytest.raises(LatentdaError, match=r"ae-copy: not a folder of this kind of run \(it holds config.json, "
                                                r"diffusion_pytorch_model.safetensors, representation_error.json\): "
                                                "train into a new or empty output"):
            train_autoencoder(_config(runs / "box.zarr", copy, steps=1), resume=resume, progress=False)
    assert _files(copy) == before and sorted(p.name for p in copy.iterdir()) == sorted(before)
    (tmp_path / "empty").mkdir()
    train_autoencoder(_config(runs / "box.zarr", tmp_path / "empty", steps=1), progress=False)
    assert (tmp_path / "empty" / "autoencoder").is_dir()


def test_an_interrupted_training_names_its_last_checkpoint(tmp_path, runs, capsys, monkeypatch):
    """Ctrl-C during `train-ae` (after two checkpoints): exit 130, the progress bar's line ended before the messages,
    which name the last checkpoint and --resume (an 'interrupted' glued to the bar before, and no word of resuming)."""
    from latentda.training import loop

    config = tmp_path / "ae.yaml"
    config.write_text(yaml.safe_dump(_settings(runs / "box.zarr", tmp_path / "run")))
    real = loop.batch_random

    def dies(seed, at, rank, local):
        if at == 7:
            raise KeyboardInterrupt
        return real(seed, at, rank, local)

    monkeypatch.setattr(loop, "batch_random", dies)
    assert cli.main(["train-ae", "--config", str(config)]) == 130
    error = capsys.readouterr().err
    lines = error.splitlines()
    assert "latentda train-ae: interrupted" in lines  # a line of its own, not the end of the bar's
    assert lines[-1] == (f"latentda train-ae: the checkpoints are kept (the last: {tmp_path / 'run' / 'checkpoints' / 'step-000006'}): "
                         "the same command with --resume continues from it")

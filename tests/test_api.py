"""The Python API: save/load round trips, loading from a hub cache offline, push_to_hub's commit,
refusal of pickles, clear errors for broken folders."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import CommitOperationAdd, HfApi
from safetensors.torch import load_file

from conftest import make_tiny_pipeline
from latentda.errors import LatentdaError
from latentda.pipeline import LatentDAPipeline


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api") / "pipeline"
    pipeline, truth = make_tiny_pipeline(folder)
    return pipeline, truth, folder


def test_save_load_round_trip_identical_outputs(saved, tmp_path):
    pipeline, truth, folder = saved
    loaded = LatentDAPipeline.from_pretrained(folder)
    for name in ("denoiser", "autoencoder"):  # every weight as saved and as it was in memory (not re-initialised)
        on_disk = load_file(folder / name / "diffusion_pytorch_model.safetensors")
        module = {"denoiser": lambda p: p.backbone, "autoencoder": lambda p: p.autoencoder}[name]
        saved_state, loaded_state = module(pipeline).state_dict(), module(loaded).state_dict()
        assert on_disk.keys() == loaded_state.keys() == saved_state.keys()
        for key in on_disk:
            assert torch.equal(loaded_state[key], on_disk[key]) and torch.equal(saved_state[key], on_disk[key]), key
    fields = pipeline.layout.to_array(truth)
    torch.testing.assert_close(loaded.encode(fields), pipeline.encode(fields), rtol=0, atol=0)
    z = pipeline.encode(fields)
    np.testing.assert_array_equal(loaded.decode(z), pipeline.decode(z))
    for p in (pipeline, loaded):
        p.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(loaded.sample(5, 2, seed=1)["u"].values, pipeline.sample(5, 2, seed=1)["u"].values)
    # the sampler by its settings' name (as reanalyze takes it) or by method=: the same draw
    np.testing.assert_array_equal(pipeline.sample(5, 1, steps=2, sampler="ddpm", seed=1)["u"].values,
                                  pipeline.sample(5, 1, steps=2, method="ddpm", seed=1)["u"].values)
    assert pipeline.sample(5, 1, steps=2, method="ddpm", sampler=None, seed=1)["u"].shape[0] == 1  # None: not given
    drawn = loaded.sample(5, 1, steps=2, sampler="ddpm", seed=3, churn=0.5)  # what decides the draw is recorded
    assert {k: v for k, v in drawn.attrs.items() if k.startswith("latentda_")} == {
        "latentda_pipeline": str(folder.resolve()), "latentda_seed": "3", "latentda_steps": "2", "latentda_sampler": "ddpm",
        "latentda_churn": "0.5"}
    with pytest.raises(LatentdaError, match="method or as sampler, not both"):
        pipeline.sample(5, 1, method="ddpm", sampler="pc")
    with pytest.raises(LatentdaError, match="tau: applies to the pc and heun-pc samplers only"):  # not recorded as if used
        pipeline.sample(5, 1, steps=2, sampler="ddpm", tau=0.5)
    assert loaded.model_card.startswith("# tiny test pipeline")


def _hub_cache(cache, folder, repo="org/tiny", commit="0123456789abcdef0123456789abcdef01234567"):
    """Lay out a huggingface_hub cache entry: models--org--name/{refs/main, snapshots/<hash>/...}."""
    entry = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, entry / "snapshots" / commit)
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    return entry / "snapshots" / commit


def test_load_by_repo_id_from_offline_cache(saved, tmp_path, monkeypatch):
    pipeline, truth, folder = saved
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    _hub_cache(tmp_path / "cache", folder)
    loaded = LatentDAPipeline.from_pretrained("org/tiny", cache_dir=tmp_path / "cache")
    z = pipeline.encode(pipeline.layout.to_array(truth))
    np.testing.assert_array_equal(loaded.decode(z), pipeline.decode(z))
    with pytest.raises(LatentdaError, match="not in the local hub cache"):
        LatentDAPipeline.from_pretrained("org/unknown", cache_dir=tmp_path / "cache")


def test_pickle_weights_are_refused(saved, tmp_path, monkeypatch):
    pipeline, truth, folder = saved
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "denoiser" / "diffusion_pytorch_model.safetensors").unlink()
    (copy / "denoiser" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(LatentdaError, match="refusing pickle-based weight file"):
        LatentDAPipeline.from_pretrained(copy)
    # through the hub cache too: the snapshot is checked the same way
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    _hub_cache(tmp_path / "cache", copy, repo="org/pickled")
    with pytest.raises(LatentdaError, match="refusing pickle-based|no .safetensors"):
        LatentDAPipeline.from_pretrained("org/pickled", cache_dir=tmp_path / "cache")


def test_push_to_hub_builds_the_commit(saved, monkeypatch):
    pipeline, truth, folder = saved
    loaded = LatentDAPipeline.from_pretrained(folder)
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["repo"] = (repo_id, kwargs)

    def create_commit(self, repo_id, operations, **kwargs):
        calls["commit"] = (repo_id, [(op.path_in_repo, type(op)) for op in operations], kwargs)
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    assert loaded.push_to_hub("org/tiny", private=True) == "commit-info"
    repo_id, operations, kwargs = calls["commit"]
    paths = sorted(path for path, _ in operations)
    assert repo_id == "org/tiny" and calls["repo"][1]["private"] is True
    assert all(kind is CommitOperationAdd for _, kind in operations)
    assert {"model_index.json", "pipeline_config.json", "README.md", "autoencoder/config.json",
            "autoencoder/diffusion_pytorch_model.safetensors", "autoencoder/layout.json", "autoencoder/statistics.json",
            "autoencoder/representation_error.json",
            "denoiser/config.json", "denoiser/diffusion_pytorch_model.safetensors", "denoiser/latent_statistics.json",
            "scheduler/scheduler_config.json"} == set(paths)
    assert not any(p.endswith((".bin", ".pt", ".pkl")) for p in paths)


def test_broken_folders_give_one_line_errors(saved, tmp_path):
    pipeline, truth, folder = saved
    missing = tmp_path / "missing"
    shutil.copytree(folder, missing)
    shutil.rmtree(missing / "autoencoder")
    with pytest.raises(LatentdaError, match="lacks 'autoencoder'"):
        LatentDAPipeline.from_pretrained(missing)
    shapes = tmp_path / "shapes"
    shutil.copytree(folder, shapes)
    config = json.loads((shapes / "denoiser" / "config.json").read_text())
    (shapes / "denoiser" / "config.json").write_text(json.dumps({**config, "hidden_size": 32}))
    with pytest.raises(LatentdaError, match="cannot load the denoiser"):
        LatentDAPipeline.from_pretrained(shapes)
    stats = tmp_path / "stats"
    shutil.copytree(folder, stats)
    data = json.loads((stats / "autoencoder" / "statistics.json").read_text())
    (stats / "autoencoder" / "statistics.json").write_text(json.dumps({**data, "channels": ["a", "b"]}))
    with pytest.raises(LatentdaError, match="statistics channels"):
        LatentDAPipeline.from_pretrained(stats)
    with pytest.raises(LatentdaError, match="not a hub id|not found"):
        LatentDAPipeline.from_pretrained(tmp_path / "nowhere")


def test_save_pretrained_replaces_only_a_pipeline_folder(saved, tmp_path):
    """save_pretrained never deletes what is not a pipeline's: a folder holding other files, or a file, is
    refused and left as it was; an earlier save is replaced whole; the card it was loaded with is kept."""
    pipeline, truth, folder = saved
    loaded = LatentDAPipeline.from_pretrained(folder)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "important.txt").write_text("keep me")
    with pytest.raises(LatentdaError, match=r"not only a pipeline \(holds important.txt\); saving would delete it"):
        loaded.save_pretrained(mine)
    assert [p.name for p in mine.iterdir()] == ["important.txt"]
    (tmp_path / "afile").write_text("data")
    with pytest.raises(LatentdaError, match="exists and is not a pipeline folder"):
        loaded.save_pretrained(tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "data"
    with pytest.raises(LatentdaError, match="cannot write the pipeline folder"):  # a parent that is a file
        loaded.save_pretrained(tmp_path / "afile" / "pipeline")
    copy = loaded.save_pretrained(tmp_path / "copy")
    assert (copy / "README.md").read_text(encoding="utf-8") == loaded.model_card  # the card goes with it
    (copy / "README.md").unlink()  # an earlier save, even without its card: replaced whole
    again = LatentDAPipeline.from_pretrained(folder).save_pretrained(copy, model_card="# another card\n")
    assert (again / "README.md").read_text(encoding="utf-8") == "# another card\n"
    z = pipeline.encode(pipeline.layout.to_array(truth))
    np.testing.assert_array_equal(LatentDAPipeline.from_pretrained(copy).decode(z), pipeline.decode(z))
    (copy / ".DS_Store").write_bytes(b"junk")  # a file browser's: replaced with the rest
    loaded.save_pretrained(copy)
    (copy / ".git").mkdir()  # a clone of a hub repo: its history is not the pipeline's to delete
    with pytest.raises(LatentdaError, match=r"not only a pipeline \(holds .git\)"):
        loaded.save_pretrained(copy)
    assert (copy / ".git").is_dir()
    tuned = LatentDAPipeline.from_pretrained(folder)
    tuned.sampling = tuned.sampling.with_overrides(steps=np.int64(3), tau=np.float32(0.5))  # a sweep's numpy numbers
    assert LatentDAPipeline.from_pretrained(tuned.save_pretrained(tmp_path / "tuned")).sampling.steps == 3


def test_misspelt_keys_in_a_saved_folder_are_refused(saved, tmp_path):
    """pipeline_config.json and the models' config.json are latentda's own files: a key they do not
    declare (a misspelling that would silently fall back to the default), a missing time step (the
    default 1 would silently set the model's clock) or another model or pipeline class is refused."""
    pipeline, truth, folder = saved
    cases = [("pipeline_config.json", lambda d: d.update(time_stp=5.0), r"pipeline_config.json: unknown key 'time_stp'"),
             ("pipeline_config.json", lambda d: d.pop("time_step"), r"pipeline_config.json: lacks 'time_step'"),
             ("model_index.json", lambda d: d.update(_class_name="StableDiffusionPipeline"),
              r"model_index.json names StableDiffusionPipeline for '_class_name', expected LatentDAPipeline"),
             ("denoiser/config.json", lambda d: d.update(rope_bse=10.0),
              r"denoiser/config.json: unknown key\(s\) 'rope_bse' for the denoiser"),
             ("autoencoder/config.json", lambda d: d.update(_class_name="UNet2DModel"),
              r"a UNet2DModel config, expected AutoEncoder")]
    for number, (name, change, message) in enumerate(cases):
        broken = tmp_path / f"{number}-{name.replace('/', '-')}"
        shutil.copytree(folder, broken)
        data = json.loads((broken / name).read_text())
        change(data)
        (broken / name).write_text(json.dumps(data))
        with pytest.raises(LatentdaError, match=message):
            LatentDAPipeline.from_pretrained(broken)


def test_loading_names_what_it_ignores_and_what_it_loaded(saved, tmp_path):
    """A revision or cache folder given with a local folder is ignored with a warning; a folder from a newer
    latentda loads with one; a pipeline shows where it came from (as in DAPPER's tables of experiments);
    no folder at all is a one-line error."""
    pipeline, truth, folder = saved
    with pytest.warns(UserWarning, match="revision and cache_dir apply to hub ids only"):
        LatentDAPipeline.from_pretrained(folder, revision="v2")
    newer = Path(shutil.copytree(folder, tmp_path / "newer"))
    index = json.loads((newer / "model_index.json").read_text())
    (newer / "model_index.json").write_text(json.dumps({**index, "_latentda_version": "99.0"}))
    with pytest.warns(UserWarning, match=r"written by latentda 99.0, newer than this"):
        loaded = LatentDAPipeline.from_pretrained(newer)
    assert repr(loaded) == f"LatentDAPipeline({str(newer.resolve())!r}, fields 2×8×8, window 4, time step 0.2)"
    with pytest.raises(LatentdaError, match="a pipeline folder or hub id .org/name. is needed, got NoneType"):
        LatentDAPipeline.from_pretrained(None)


def test_device_dtype_and_hub_upload_errors_are_one_line(saved, monkeypatch):
    """A device torch cannot use or a dtype that is not a floating torch dtype is refused before any weight
    is read; a bad repo id before anything is saved; an unreachable hub as one line."""
    pipeline, truth, folder = saved
    with pytest.raises(LatentdaError, match="device gpu: not a device"):
        LatentDAPipeline.from_pretrained(folder, device="gpu")
    with pytest.raises(LatentdaError, match="expected a floating torch dtype"):
        LatentDAPipeline.from_pretrained(folder, dtype="float16")
    with pytest.raises(LatentdaError, match="expected a floating torch dtype"):
        LatentDAPipeline.from_pretrained(folder, dtype=torch.int32)
    if not torch.cuda.is_available():
        with pytest.raises(LatentdaError, match="device cuda: this machine has 0 cuda device"):
            LatentDAPipeline.from_pretrained(folder, device="cuda")
    from latentda.devices import check_device

    check_device("xpu")  # a backend latentda does not count is left to torch
    with pytest.raises(LatentdaError, match="device meta: the meta device holds no data"):  # not one to sample on
        LatentDAPipeline.from_pretrained(folder, device="meta")
    loaded = LatentDAPipeline.from_pretrained(folder)
    saves = []
    monkeypatch.setattr(LatentDAPipeline, "save_pretrained", lambda self, path, **k: saves.append(path))
    with pytest.raises(LatentdaError, match="not a hub repo id"):
        loaded.push_to_hub("bad id!!")
    assert saves == []
    monkeypatch.undo()

    def unreachable(self, repo_id, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "create_repo", unreachable)
    with pytest.raises(LatentdaError, match=r"org/tiny: upload to the hub failed \(\[Errno -2\] Name or service"):
        loaded.push_to_hub("org/tiny")

"""Several processes (torchrun, 2 gloo CPU processes): one error for all, the global batch's loss,
autoencoder training with gaps and `encode` dealt over the processes, each equal to one process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import make_box_dataset, run_torchrun
from latentda import cli
from latentda.components import load_autoencoder
from latentda.data import open_dataset, write_dataset

pytestmark = pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                                reason="torchrun missing")


def _exchange_worker():
    """Run by each of 2 torchrun processes: texts gathered in rank order; an error of one process,
    or of the main process's step, raised on both with its message; a main-process step, or the work
    of one process before a barrier, longer than the collectives' timeout (2 s here) waited for."""
    import time
    from datetime import timedelta

    import torch.distributed as dist

    from latentda.errors import LatentdaError
    from latentda.processes import gather_texts, raise_first, run_on_main, wait_for_all

    dist.init_process_group("gloo", timeout=timedelta(seconds=2))
    rank = dist.get_rank()
    assert gather_texts(["", "ψ≥0 on rank 1"][rank]) == ["", "ψ≥0 on rank 1"]
    raise_first(None)  # nobody has one: nothing raised
    try:
        raise_first(LatentdaError("x.zarr: NaN at step 3") if rank == 1 else None)
    except LatentdaError as error:
        print(f"rank {rank} raised: {error}")

    def bad():
        raise OSError("disk full")

    try:
        run_on_main(bad, rank == 0)
    except OSError as error:
        print(f"rank {rank} own: {error}")
    except LatentdaError as error:
        print(f"rank {rank} raised: {error}")
    assert run_on_main(lambda: 7, rank == 0) == (7 if rank == 0 else None)
    assert run_on_main(lambda: time.sleep(5) or "long", rank == 0) == ("long" if rank == 0 else None)
    if rank == 1:
        time.sleep(5)  # its last members: the other waits
    wait_for_all()
    print(f"rank {rank} waited")
    dist.destroy_process_group()


def test_an_error_of_one_process_is_raised_on_every_process(tmp_path):
    import inspect

    script = tmp_path / "worker.py"
    script.write_text(inspect.getsource(_exchange_worker) + "\n\n_exchange_worker()\n")
    out = run_torchrun([str(script)]).stdout
    assert "rank 0 raised: x.zarr: NaN at step 3" in out and "rank 1 raised: x.zarr: NaN at step 3" in out
    assert "rank 0 own: disk full" in out and "rank 1 raised: on another process: OSError: disk full" in out
    assert "rank 0 waited" in out and "rank 1 waited" in out


def _unreadable_batch_worker():
    """Run by each of 2 torchrun processes: process 1 cannot read its 3rd batch (a corrupt chunk met
    mid-run): both stop with its one line, neither with the gradients' collective's traceback."""
    import sys

    import torch

    from latentda.errors import LatentdaError
    from latentda.training.loop import Trainer, TrainingConfig, make_accelerator

    config = TrainingConfig(steps=20, batch_size=4, warmup_steps=0, checkpoint_every=100, validate_every=100)
    accelerator = make_accelerator(config)
    rank = accelerator.process_index

    class Frames(torch.utils.data.Dataset):
        reads = 0

        def __len__(self):
            return 16

        def __getitem__(self, index):
            Frames.reads += 1
            if rank == 1 and Frames.reads == 5:  # 2 examples a batch on each process: its 3rd batch
                raise LatentdaError("x.zarr: cannot read variable 'latent' (chunk 5)")
            return torch.full((2,), float(index))

    trainer = Trainer(torch.nn.Linear(2, 1), lambda model, batch, random: model(batch).pow(2).mean(), Frames(), config,
                      sys.argv[1], accelerator=accelerator, progress=False)
    try:
        trainer.fit()
    except LatentdaError as error:
        print(f"rank {rank} at step {trainer.step} raised: {error}")


def test_a_batch_one_process_cannot_read_stops_both_with_its_line(tmp_path):
    import inspect

    script = tmp_path / "worker.py"
    script.write_text(inspect.getsource(_unreadable_batch_worker) + "\n\n_unreadable_batch_worker()\n")
    result = run_torchrun([str(script), str(tmp_path / "run")])
    for rank in (0, 1):
        assert f"rank {rank} at step 2 raised: x.zarr: cannot read variable 'latent' (chunk 5)" in result.stdout, result.stdout
    assert "RuntimeError" not in result.stderr and "Connection closed" not in result.stderr


def test_a_read_error_raised_through_training_leaves_no_reference_cycle(tmp_path):
    """A read error raised through the trainer (one process here) and caught leaves no reference cycle
    holding it: once the caller drops its trainer the model is freed at once, with the garbage collector
    off. Through a cycle, a DDP model (and its gloo group) lived until the interpreter's exit and aborted
    the process there under torchrun (SIGABRT after its work was done: the test above, 2 runs in 30)."""
    import gc
    import weakref

    from latentda.errors import LatentdaError
    from latentda.training.loop import Trainer, TrainingConfig

    class Unreadable(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, index):
            raise LatentdaError("x.zarr: cannot read variable 'latent' (chunk 0)")

    config = TrainingConfig(steps=4, batch_size=2, warmup_steps=0, checkpoint_every=100, validate_every=100)
    model = torch.nn.Linear(2, 1)
    freed = weakref.ref(model)
    gc.collect()
    gc.disable()
    try:
        trainer = Trainer(model, lambda model, batch, random: model(batch).pow(2).mean(), Unreadable(), config,
                          tmp_path / "run", progress=False)
        del model
        message = ""
        try:
            trainer.fit()
        except LatentdaError as error:
            message = str(error)
        assert "chunk 0" in message
        del trainer
        assert freed() is None, "the model outlived its trainer: a reference cycle holds it"
    finally:
        gc.enable()


def test_an_error_raised_by_run_on_main_leaves_no_reference_cycle():
    """run_on_main re-raises its work's error without a frame holding it: what the work's frames hold
    is freed once the error is dropped, with the garbage collector off."""
    import gc
    import weakref

    from latentda.processes import run_on_main

    class Held:
        pass

    def work(held):
        raise OSError("disk full")

    held = Held()
    freed = weakref.ref(held)
    gc.collect()
    gc.disable()
    try:
        message = ""
        try:
            run_on_main(lambda: work(held), True)
        except OSError as error:
            message = str(error)
        assert message == "disk full"
        del held
        assert freed() is None, "the work's frames outlived its error: a reference cycle holds them"
    finally:
        gc.enable()


def _ae_config(tmp_path, data, name, **training) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"path": str(data), "allow_missing": True},
        "output": str(tmp_path / name),
        "model": {"latent_channels": 2, "hidden_channels": [8, 16], "blocks_per_stage": 1},
        "training": {"steps": 10, "batch_size": 4, "learning_rate": 3e-3, "warmup_steps": 2, "checkpoint_every": 10,
                     "validate_every": 10, **training},
        "valid_samples": 4,
    }))
    return path


@pytest.fixture(scope="module")
def gappy(tmp_path_factory):
    """A box dataset with missing values (NaN) in some states but not others."""
    dataset = make_box_dataset(trajectories=4, times=8, size=8)
    u = dataset["u"].values
    u[0, 2, :3, :] = np.nan  # a partial gap
    u[2, 5] = np.nan  # a whole missing state
    dataset["u"].values[:] = u
    return write_dataset(dataset, tmp_path_factory.mktemp("gappy") / "gappy.zarr")


def test_two_processes_train_the_autoencoder_with_gaps_like_one(tmp_path, gappy):
    """The loss's denominator is fixed (not each process's valid area), so DDP's mean of the processes'
    gradients is the one-process gradient even when the processes' shares hold different gaps; the
    logged loss is the global batch's; the result lines are printed once."""
    assert cli.main(["train-ae", "--config", str(_ae_config(tmp_path, gappy, "one")), "--quiet"]) == 0
    two = run_torchrun(["-m", "latentda.cli", "train-ae", "--config", str(_ae_config(tmp_path, gappy, "two")), "--quiet"])
    assert two.stdout.count("wrote ") == 1 and two.stdout.count("validation reconstruction RMSE") == 1
    # the same function (weights compared directly differ: a bias before a normalisation has a zero gradient,
    # whose float rounding noise Adam scales up to steps of the learning rate's size, on 1 process as on 2)
    frames = torch.nan_to_num(torch.from_numpy(np.stack([open_dataset(gappy)[v].values[:, :4] for v in ("u", "v")], 2)
                                               .reshape(-1, 2, 8, 8)))
    with torch.no_grad():
        outputs = [load_autoencoder(tmp_path / name / "autoencoder")[0](frames) for name in ("one", "two")]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    records = [[json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()] for name in ("one", "two")]
    losses = [[record["loss"] for record in run if "loss" in record] for run in records]
    assert len(losses[0]) == 1 and np.allclose(losses[1], losses[0], rtol=1e-5)
    valid = [[record["valid"]["rmse_mean"] for record in run if "valid" in record] for run in records]
    assert len(valid[0]) == 1 and np.allclose(valid[1], valid[0], rtol=1e-6)  # 5e-4 apart with each process's own area


def test_bad_input_stops_both_processes_with_one_line_each(tmp_path, gappy):
    """Errors found by the main process alone (the statistics pass) or before any work (a batch the
    processes cannot share): every process prints the same one-line error; nothing is written."""
    config = _ae_config(tmp_path, gappy, "strict")
    result = run_torchrun(["-m", "latentda.cli", "train-ae", "--config", str(config), "--set", "data.allow_missing=false",
                           "--quiet"], check=False)
    message = "train-ae: error: variable 'u' holds NaN at trajectory 0, step 2"  # the two lines may interleave
    assert result.returncode != 0 and result.stderr.count(message) == 2, result.stderr[-2000:]
    assert "gloo" not in result.stderr and "RuntimeError" not in result.stderr
    assert not (tmp_path / "strict").exists()

    result = run_torchrun(["-m", "latentda.cli", "train-ae", "--config", str(config), "--set", "training.batch_size=3",
                           "--quiet"], check=False)
    assert result.stderr.count("error: batch_size 3 is not divisible by the 2 processes") == 2, result.stderr[-2000:]
    assert not (tmp_path / "strict").exists()  # refused before the statistics pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory, gappy):
    root = tmp_path_factory.mktemp("encode")
    assert cli.main(["train-ae", "--config", str(_ae_config(root, gappy, "ae", steps=2)), "--quiet"]) == 0
    return root / "ae" / "autoencoder"


def test_two_processes_encode_like_one(tmp_path, trained, gappy):
    """The batches dealt over 2 processes (uneven: 4 trajectories × 3 batches of ≤ 3 states): the same
    latents and missing states as one process, one store, one report."""
    args = ["encode", "--autoencoder", str(trained), "--data", str(gappy), "--batch-size", "3", "--quiet"]
    assert cli.main([*args, "--out", str(tmp_path / "one.zarr")]) == 0
    result = run_torchrun(["-m", "latentda.cli", *args, "--out", str(tmp_path / "two.zarr")])
    assert result.stdout.count("wrote ") == 1
    one, two = open_dataset(tmp_path / "one.zarr"), open_dataset(tmp_path / "two.zarr")
    np.testing.assert_allclose(two["latent"].values, one["latent"].values, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert two.attrs["latentda_missing_states"] == one.attrs["latentda_missing_states"] == "[[0, 2], [2, 5]]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.zarr", "two.zarr"]  # no temporary left


def test_a_bad_state_in_another_process_share_stops_both(tmp_path, trained):
    """A NaN that only process 1 reads (a state of its batch) with an autoencoder trained without
    allow_missing: both processes give its one-line error and no output or temporary is left."""
    strict = tmp_path / "strict"
    shutil.copytree(trained, strict)
    layout = json.loads((strict / "layout.json").read_text())
    layout["allow_missing"] = False
    (strict / "layout.json").write_text(json.dumps(layout))
    load_autoencoder(strict)  # still a valid folder
    dataset = make_box_dataset(trajectories=2, times=6, size=8)
    dataset["u"].values[1, 4, 2, 2] = np.nan  # batch (trajectory 1, steps 3–5): the second process's
    data = write_dataset(dataset, tmp_path / "bad.zarr")
    result = run_torchrun(["-m", "latentda.cli", "encode", "--autoencoder", str(strict), "--data", str(data),
                           "--batch-size", "3", "--out", str(tmp_path / "z.zarr"), "--quiet"], check=False)
    message = "encode: error: variable 'u' holds NaN values at step 4 of trajectory 1"
    assert result.returncode != 0 and result.stderr.count(message) == 2, result.stderr[-2000:]
    assert "gloo" not in result.stderr and "RuntimeError" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zarr", "strict"]


def _interrupted_encode_worker(autoencoder: str, data: str, out: str):
    """Run by each of 2 torchrun processes: process 0 is interrupted (Ctrl-C) at its second batch while
    process 1, slower, is still writing its own."""
    import os
    import time

    import latentda.encoding as encoding

    rank, real, count = int(os.environ["RANK"]), encoding.write_region, [0]

    def write_region(path, arrays, region):
        count[0] += 1
        if rank == 0 and count[0] == 2:
            raise KeyboardInterrupt
        if rank == 1:
            time.sleep(0.3)
        return real(path, arrays, region)

    encoding.write_region = write_region
    try:
        encoding.encode_dataset(autoencoder, data, out, batch_size=2, progress=False)
    except BaseException as error:  # noqa: BLE001 — reported, then the process ends
        print(f"rank {rank}: {type(error).__name__}", flush=True)


def test_an_interrupted_two_process_encode_leaves_nothing(tmp_path, trained, gappy):
    """The main process removes the temporary when interrupted; the other, still writing, never creates
    it again (its writes need the store to exist) and removes it too as it leaves."""
    import inspect

    script = tmp_path / "worker.py"
    script.write_text(inspect.getsource(_interrupted_encode_worker)
                      + f"\n\n_interrupted_encode_worker({str(trained)!r}, {str(gappy)!r}, {str(tmp_path / 'z.zarr')!r})\n")
    result = run_torchrun([str(script)], check=False)
    assert "rank 0: KeyboardInterrupt" in result.stdout, result.stdout + result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker.py"]


def test_commands_of_one_process_run_once_under_a_launcher(tmp_path):
    """`sample` (one generator draws every member) launched on 2 processes: the main one samples and writes,
    as one process would; the other does nothing (before: both wrote the same file, one failed)."""
    from conftest import make_tiny_pipeline

    make_tiny_pipeline(tmp_path / "pipeline")
    args = ["sample", "--pipeline", str(tmp_path / "pipeline"), "--length", "5", "--members", "3", "--steps", "2", "--quiet"]
    assert cli.main([*args, "--out", str(tmp_path / "one.nc")]) == 0
    result = run_torchrun(["-m", "latentda.cli", *args, "--out", str(tmp_path / "two.nc")])
    assert result.stdout.count("wrote ") == 1
    assert result.stderr.count("latentda sample: runs on one process (the main one)") == 1
    one, two = (open_dataset(tmp_path / name) for name in ("one.nc", "two.nc"))  # the same draws (threads round apart)
    np.testing.assert_allclose(two["u"].values, one["u"].values, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module", ["latentda.training.loop", "latentda.pipeline"])
def test_no_module_is_imported_at_interpreter_exit(module):
    """torch._dynamo (imported with diffusers' EMA) registers an exit report that imports tabulate at interpreter exit;
    an import at exit waits on the import lock, which a thread left at finalisation can hold: a two-process run hung
    there after printing its result (test_a_batch_one_process_cannot_read_stops_both_with_its_line, sessions 37 and
    39). latentda removes that report where it imports diffusers (training and sampling): nothing is imported at exit."""
    code = (
        "import atexit, sys, importlib.abc\n"
        f"import {module}\n"
        "assert 'torch._dynamo' in sys.modules and 'tabulate' not in sys.modules\n"
        "class Spy(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        print('imported at exit:', name, flush=True)\n"
        "atexit.register(lambda: sys.meta_path.insert(0, Spy()))  # the last registered runs first\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "imported at exit" not in result.stdout, result.stdout

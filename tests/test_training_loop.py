"""The training loop's schedule, logged rates and precision: a resumed run follows its stretched
schedule from its first step; the EMA model validates in full precision under bf16; one Python
process may train stages of different precisions one after the other."""

import json
import math

import pytest
import torch

from conftest import make_box_dataset
from latentda.data import write_dataset
from latentda.training.autoencoder import train_autoencoder
from latentda.training.loop import Trainer, TrainingConfig, make_accelerator
from test_train_autoencoder import _config


def _cosine_rate(step: int, total: int, warmup: int = 2, base: float = 3e-3) -> float:
    """diffusers' cosine schedule with linear warm-up: the rate of the step taken at scheduler step ``step``."""
    if step < warmup:
        return base * step / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_a_run_resumed_with_more_steps_follows_the_stretched_schedule_from_its_first_step(tmp_path):
    data = write_dataset(make_box_dataset(trajectories=4, times=8, size=8), tmp_path / "box.zarr")
    train_autoencoder(_config(tmp_path, data, "run", steps=10, checkpoint_every=5, validate_every=10), progress=False)
    train_autoencoder(_config(tmp_path, data, "run", steps=11, checkpoint_every=5, validate_every=10), resume=True,
                      progress=False)
    logged = {record["step"]: record["lr"] for record in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text()
                                                              .splitlines()) if "lr" in record}
    assert logged[10] == pytest.approx(_cosine_rate(9, 10), rel=1e-9)  # the rate step 10 was taken with
    # the first step after resuming, at the 11-step schedule's rate (the 10-step schedule's was 0 there)
    assert logged[11] == pytest.approx(_cosine_rate(10, 11), rel=1e-9) and logged[11] > 1e-5


class _Points(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, index):
        return torch.linspace(-1, 1, 64) * (index + 1) / 16


def test_the_ema_model_validates_in_full_precision_under_bf16(tmp_path):
    config = TrainingConfig(steps=3, batch_size=4, warmup_steps=0, mixed_precision="bf16", checkpoint_every=100,
                            validate_every=100)
    torch.manual_seed(0)
    trainer = Trainer(torch.nn.Linear(64, 64), lambda model, batch, random: model(batch).pow(2).mean(), _Points(), config,
                      tmp_path / "run", accelerator=make_accelerator(config), progress=False)
    trainer.fit()
    x = torch.randn(8, 64)
    model = trainer.ema_model()
    with torch.no_grad():
        validated, exact = model(x), torch.nn.functional.linear(x, model.weight, model.bias)
    torch.testing.assert_close(validated, exact, rtol=0, atol=0)  # bf16 autocast would differ by ~1e-3
    trainer.restore_weights()
    with torch.no_grad():
        trained = model(x)
    assert not torch.equal(trained, torch.nn.functional.linear(x, model.weight, model.bias))  # training: bf16 again


def test_one_process_trains_stages_of_different_precisions(tmp_path):
    for precision in ("bf16", "no", "bf16"):  # Accelerate keeps one state per process: reset between runs alone
        assert make_accelerator(TrainingConfig(mixed_precision=precision)).mixed_precision == precision

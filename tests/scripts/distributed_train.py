"""Run by tests/test_train_ldm.py under torchrun: a tiny train-ldm, then each rank reports its weights
(a digest) and the fraction of them it holds.

Usage: torchrun --nproc_per_node N distributed_train.py LATENTS CONFIG OUT_DIR [RESUME_STEPS]

With RESUME_STEPS the run is then resumed from its last checkpoint up to that many steps (the
configured strategy shards and gathers the states on the way).
"""

import hashlib
import sys
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import Accelerator

from latentda.config import load_config
from latentda.training import diffusion
from latentda.training.diffusion import LatentDiffusionConfig, train_latent_diffusion
from torch.distributed.tensor import DTensor

from latentda.training.sharding import full_tensor

latents, config_path, out = sys.argv[1:4]
accelerator = Accelerator(cpu=True)
config = load_config(LatentDiffusionConfig, config_path)
captured = {}
real_trainer = diffusion.Trainer


class Capturing(real_trainer):
    def fit(self):
        metrics = super().fit()
        captured["model"] = self.accelerator.unwrap_model(self.model_prepared)
        return metrics


diffusion.Trainer = Capturing
train_latent_diffusion(config, latents, progress=False, accelerator=accelerator)
if len(sys.argv) > 4:
    config = replace(config, training=replace(config.training, steps=int(sys.argv[4])))
    train_latent_diffusion(config, latents, progress=False, accelerator=accelerator, resume=True)
model = captured["model"]
flat = torch.cat([full_tensor(p).detach().flatten() for p in model.parameters()])
digest = hashlib.sha256(flat.numpy().tobytes()).hexdigest()
# the fraction of the parameters this rank holds (1 unless they are sharded)
held = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters()) / flat.numel()
Path(out, f"rank{accelerator.process_index}-of-{accelerator.num_processes}.txt").write_text(f"{digest} {held:.3f}")

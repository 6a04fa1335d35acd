"""Run by tests/test_distributed.py under torchrun: a tiny train-ldm, then each rank reports its weights.

Usage: torchrun --nproc_per_node N distributed_train.py LATENTS CONFIG OUT_DIR
"""

import hashlib
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from latentda.config import load_config
from latentda.training import diffusion
from latentda.training.diffusion import LatentDiffusionConfig, train_latent_diffusion

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
model = captured["model"]
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
digest = hashlib.sha256(flat.numpy().tobytes()).hexdigest()
Path(out, f"rank{accelerator.process_index}-of-{accelerator.num_processes}.txt").write_text(digest)

"""Two processes against one on this machine: training and ensemble sampling, speed-up and agreement.

    python tools/bench_distributed.py --pipeline runs/ldm-kolmogorov/pipeline --latents data/latents.zarr \
        --config configs/ldm/kolmogorov.yaml --steps 20 --members 4

Runs ``train-ldm`` for a few steps (same global batch) and ``reanalyze`` of a few members with one
process and with ``torchrun --nproc_per_node 2`` (gloo on CPU), and prints the wall-time ratios and
the largest difference between the outputs (the math says they are equal up to float rounding).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def run(command: list[str], processes: int, port: int) -> float:
    launcher = [sys.executable, "-m", "latentda.cli"] if processes == 1 else [
        str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(processes), "--master_port", str(port),
        "-m", "latentda.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, os.cpu_count() // processes))}
    start = time.perf_counter()
    subprocess.run(launcher + command, check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--latents", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--observations", help="observation file for the reanalysis (default: make one)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--sampling-steps", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        times, weights = {}, {}
        for processes in (1, 2):
            out = work / f"train{processes}"
            times[("train", processes)] = run(["train-ldm", "--config", args.config, "--latents", args.latents, "--quiet",
                                               "--set", f"output={out}", "--set", f"training.steps={args.steps}",
                                               "--set", f"training.checkpoint_every={args.steps}",
                                               "--set", f"training.validate_every={args.steps}"], processes, 29531)
            weights[processes] = load_file(out / "pipeline" / "denoiser" / "diffusion_pytorch_model.safetensors")
        train_difference = max(float(np.abs(weights[1][k] - weights[2][k]).max()) for k in weights[1])
        observations = args.observations
        if observations is None:
            observations = str(work / "obs.nc")
            operator = work / "op.yaml"
            operator.write_text("observations:\n  - {name: o, variables: [u, v], fraction: 0.05, noise_std: 0.1}\n")
            data = Path(args.latents).with_name("kolmogorov.zarr")
            subprocess.run([sys.executable, "-m", "latentda.cli", "observe", "--truth", str(data), "--trajectory", "127",
                            "--length", "16", "--operator", str(operator), "--out", observations], check=True, capture_output=True)
        outputs = {}
        for processes in (1, 2):
            out = work / f"post{processes}.zarr"
            times[("reanalyze", processes)] = run(["reanalyze", "--pipeline", args.pipeline, "--observations", observations,
                                                   "--members", str(args.members), "--steps", str(args.sampling_steps),
                                                   "--sampler", "ddpm", "--iterations", "1", "--quiet", "--out", str(out)],
                                                  processes, 29532)
            import xarray as xr

            outputs[processes] = xr.open_zarr(out)["u"].values
        sample_difference = float(np.abs(outputs[1] - outputs[2]).max())
    for task, difference in (("train", train_difference), ("reanalyze", sample_difference)):
        print(f"{task:10s}: 1 process {times[(task, 1)]:7.1f} s, 2 processes {times[(task, 2)]:7.1f} s, "
              f"speed-up ×{times[(task, 1)] / times[(task, 2)]:.2f}; max |difference| {difference:.2e}")


if __name__ == "__main__":
    main()

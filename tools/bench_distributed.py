r"""Two processes against one on this machine: training and ensemble sampling, speed-up and agreement.

    python tools/bench_distributed.py --pipeline runs/ldm-kolmogorov/pipeline --latents data/latents.zarr \
        --config configs/ldm/kolmogorov.yaml --steps 20 --members 4
    python tools/bench_distributed.py --pipeline pretrained/kolmogorov --tasks blankets --length 64 --members 1

Runs ``train-ldm`` for a few steps (same global batch) and ``reanalyze`` of a few members with one
process and with ``torchrun --nproc_per_node 2`` (gloo on CPU), and prints the wall-time ratios and
the largest difference between the outputs (the math says they are equal up to float rounding).
Task ``fsdp`` trains like ``train`` with ``training.strategy: fsdp`` (two processes shard the model
state; one process trains unsharded). Task ``blankets`` reanalyses one long trajectory (``--length`` states) with ``--split blankets``:
the 2 processes sample every member together, each evaluating half of the blanket windows.
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
from latentda.cli import ScriptHelpFormatter


def call(command: list[str], processes: int = 1, env: dict | None = None) -> None:
    """Run a ``latentda`` child; when it fails, print the last lines of its error output and exit 2."""
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        lines = (result.stderr.strip() or result.stdout.strip() or "(no output)").splitlines()[-10:]
        name = command[command.index("latentda.cli") + 1]
        print(f"bench_distributed.py: latentda {name} with {processes} process{'es' if processes > 1 else ''} failed "
              f"(exit {result.returncode}):", *lines, sep="\n", file=sys.stderr)
        sys.exit(2)


def run(command: list[str], processes: int, port: int) -> float:
    launcher = [sys.executable, "-m", "latentda.cli"] if processes == 1 else [
        str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(processes), "--master_port", str(port),
        "-m", "latentda.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, os.cpu_count() // processes))}
    start = time.perf_counter()
    call(launcher + command, processes, env)
    return time.perf_counter() - start


def observation_file(work: Path, truth: str, length: int) -> str:
    """5% of the pixels of ``length`` states of the last (held-out) trajectory, σ = 0.1."""
    from latentda.data import open_dataset
    from latentda.errors import LatentdaError

    try:
        last = open_dataset(truth).sizes.get("trajectory", 1) - 1
    except LatentdaError as error:
        print(f"bench_distributed.py: --truth: {error}", file=sys.stderr)
        sys.exit(2)
    observations = work / f"obs{length}.nc"
    operator = work / "op.yaml"
    operator.write_text("observations:\n  - {name: o, variables: [u, v], fraction: 0.05, noise_std: 0.1}\n")
    call([sys.executable, "-m", "latentda.cli", "observe", "--truth", truth, "--trajectory", str(last),
          "--length", str(length), "--operator", str(operator), "--out", str(observations)])
    return str(observations)


def reanalysis(args: argparse.Namespace, work: Path, observations: str, name: str, extra: list[str], port: int):
    """(wall time, u of the output) of one process and of two processes."""
    import xarray as xr

    times, outputs = {}, {}
    for processes in (1, 2):
        out = work / f"{name}{processes}.zarr"
        times[processes] = run(["reanalyze", "--pipeline", args.pipeline, "--observations", observations,
                                "--members", str(args.members), "--steps", str(args.sampling_steps), "--sampler", "ddpm",
                                "--iterations", "1", "--quiet", "--out", str(out), *extra], processes, port)
        outputs[processes] = xr.open_zarr(out, consolidated=False)["u"].values
    return times, float(np.abs(outputs[1] - outputs[2]).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="pipeline folder (or Hub repo id) for the reanalyses")
    parser.add_argument("--tasks", nargs="+", choices=["train", "fsdp", "reanalyze", "blankets"], default=["train", "reanalyze"],
                        help="what to run with 1 and with 2 processes")
    parser.add_argument("--latents", help="latents zarr to train on (tasks train, fsdp)")
    parser.add_argument("--config", help="train-ldm config YAML (tasks train, fsdp)")
    parser.add_argument("--truth", default="data/kolmogorov.zarr",
                        help="truth dataset whose last trajectory is observed (task blankets, and task reanalyze "
                             "without --observations)")
    parser.add_argument("--observations", help="observation file for task reanalyze (default: 5 %% of the pixels of 16 "
                                               "states of --truth)")
    parser.add_argument("--steps", type=int, default=20, help="training steps (tasks train, fsdp)")
    parser.add_argument("--members", type=int, default=4, help="ensemble members (tasks reanalyze, blankets)")
    parser.add_argument("--sampling-steps", type=int, default=8, help="diffusion steps per member (tasks reanalyze, blankets)")
    parser.add_argument("--length", type=int, default=64, help="states of the long trajectory (task blankets)")
    args = parser.parse_args()
    if {"train", "fsdp"} & set(args.tasks) and not (args.latents and args.config):
        parser.error("tasks train and fsdp need --latents and --config")
    needed = {}  # --pipeline may be a Hub repo id: the child says when it cannot load it
    if {"train", "fsdp"} & set(args.tasks):
        needed |= {"--latents": args.latents, "--config": args.config}
    if "reanalyze" in args.tasks and args.observations:
        needed["--observations"] = args.observations
    if "blankets" in args.tasks or "reanalyze" in args.tasks and not args.observations:
        needed["--truth"] = args.truth
    for option, path in needed.items():
        if not Path(path).exists():
            parser.error(f"{option} {path}: no such file or directory")
    times, differences = {}, {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for task in ("train", "fsdp"):
            if task not in args.tasks:
                continue
            weights = {}
            for processes in (1, 2):
                out = work / f"{task}{processes}"
                times[(task, processes)] = run(["train-ldm", "--config", args.config, "--latents", args.latents, "--quiet",
                                                "--set", f"output={out}", "--set", f"training.steps={args.steps}",
                                                "--set", f"training.checkpoint_every={args.steps}",
                                                "--set", f"training.validate_every={args.steps}",
                                                "--set", f"training.strategy={'fsdp' if task == 'fsdp' else 'ddp'}"],
                                               processes, 29531)
                weights[processes] = load_file(out / "pipeline" / "denoiser" / "diffusion_pytorch_model.safetensors")
            differences[task] = max(float(np.abs(weights[1][k] - weights[2][k]).max()) for k in weights[1])
        if "reanalyze" in args.tasks:
            observations = args.observations or observation_file(work, args.truth, 16)
            task_times, differences["reanalyze"] = reanalysis(args, work, observations, "post", [], 29532)
            times.update({("reanalyze", p): t for p, t in task_times.items()})
        if "blankets" in args.tasks:
            observations = observation_file(work, args.truth, args.length)
            task_times, differences["blankets"] = reanalysis(args, work, observations, "long", ["--split", "blankets"], 29533)
            times.update({("blankets", p): t for p, t in task_times.items()})
    for task, difference in differences.items():
        print(f"{task:10s}: 1 process {times[(task, 1)]:7.1f} s, 2 processes {times[(task, 2)]:7.1f} s, "
              f"speed-up ×{times[(task, 1)] / times[(task, 2)]:.2f}; max |difference| {difference:.2e}")


if __name__ == "__main__":
    main()

"""The cost of multi-process training's per-step read-error flag against a training step.

    python tools/bench_step_flag.py [--processes 2] [--width 256] [--depth 8] [--batch 16]

Each training step exchanges the processes' read errors (``latentda.training.loop.Trainer._next_batch``:
``latentda.processes.raise_first(None)``, one one-element all-reduce when none failed), so that a batch one
process cannot read stops every process with its message. This launches ``--processes`` processes with
torchrun (gloo on CPU, NCCL on GPUs), times that exchange (``--flags`` times) and a DDP step of an MLP of ``--depth`` layers of ``--width`` features on
``--batch`` examples (forward, backward, gradient all-reduce; ``--steps`` times), and prints both and their
ratio: the flag's share of a step of that size.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from latentda.cli import ScriptHelpFormatter


def measure(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from latentda.processes import raise_first

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if torch.cuda.is_available() else torch.device("cpu")
    for _ in range(50):
        raise_first(None)
    started = time.perf_counter()
    for _ in range(args.flags):
        raise_first(None)
    per_flag = (time.perf_counter() - started) / args.flags
    layers = [torch.nn.Linear(args.width, args.width) for _ in range(args.depth)]
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Sequential(*layers).to(device))
    x = torch.randn(args.batch, args.width, device=device)
    for _ in range(5):
        model(x).pow(2).mean().backward()
    started = time.perf_counter()
    for _ in range(args.steps):
        model(x).pow(2).mean().backward()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - started) / args.steps
    if dist.get_rank() == 0:
        parameters = sum(p.numel() for p in model.parameters())
        print(f"{dist.get_world_size()} processes ({dist.get_backend()}): flag exchange {per_flag * 1e6:.1f} µs, DDP step "
              f"of a {parameters / 1e6:.2f} M-parameter MLP on {args.batch} examples {per_step * 1e3:.2f} ms, "
              f"ratio {per_flag / per_step:.4f}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=ScriptHelpFormatter)
    parser.add_argument("--processes", type=int, default=2, help="processes torchrun starts (default 2)")
    parser.add_argument("--width", type=int, default=256, help="features of each MLP layer (default 256)")
    parser.add_argument("--depth", type=int, default=8, help="MLP layers (default 8)")
    parser.add_argument("--batch", type=int, default=16, help="examples per process and step (default 16)")
    parser.add_argument("--flags", type=int, default=2000, help="flag exchanges timed (default 2000)")
    parser.add_argument("--steps", type=int, default=50, help="training steps timed (default 50)")
    args = parser.parse_args()
    if "RANK" in os.environ:  # a process torchrun started
        measure(args)
        return
    if args.processes < 2:
        parser.error("--processes: at least 2 (one process exchanges nothing)")
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    sys.exit(subprocess.run([torchrun, "--nproc_per_node", str(args.processes), "--master_port", "29581", __file__,
                             *sys.argv[1:]], env=env).returncode)


if __name__ == "__main__":
    main()

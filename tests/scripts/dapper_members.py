"""Run by tests/test_dapper_adapter.py under torchrun: LatentDA (filter, smoother, filter with the HMM's model) on the tiny HMM
with its members dealt over the processes; the main process saves DAPPER's per-cycle statistics.
Then gather_members must return every process's rows in member order.

Usage: torchrun --nproc_per_node P dapper_members.py PIPELINE OUT.npz [disagree]

With ``disagree`` the last process perturbs its truth: every process must stop with the one-line error
naming the truth.
"""

import os
import sys
from pathlib import Path

import numpy as np
import dapper as dpr

sys.path.insert(0, str(Path(__file__).parents[1]))  # the tests' folder: the tiny HMM

from test_dapper_adapter import MODES, N_MEMBERS, statistics, tiny_hmm  # noqa: E402

from latentda.errors import LatentdaError  # noqa: E402
from latentda.integrations.dapper import LatentDA  # noqa: E402
from latentda.processes import gather_members  # noqa: E402
from latentda.pipeline import LatentDAPipeline  # noqa: E402

pipeline_path, out = sys.argv[1:3]
disagree = sys.argv[3:] == ["disagree"]
pipeline = LatentDAPipeline.from_pretrained(pipeline_path)
pipeline.set_progress_bar_config(disable=True)
HMM = tiny_hmm()
dpr.set_seed(3)
xx, yy = HMM.simulate()
import torch.distributed as dist  # noqa: E402  (the process group exists once LatentDA joined it)

results = {}
for mode, options in MODES.items():
    xp = LatentDA(pipeline=pipeline, N=N_MEMBERS, settings={"steps": 2}, **options)
    if disagree:
        try:
            last = int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]) - 1
            xp.assimilate(HMM, xx + 1.0 * last, yy, fail_gently=False)
        except LatentdaError as error:
            print(f"rank {os.environ['RANK']}: {error}")
            sys.exit(3)
        sys.exit(0)
    xp.assimilate(HMM, xx, yy, fail_gently=False)
    results.update({f"{mode}.{key}": value for key, value in statistics(xp).items()})
for count in (2, 5):  # every process's members, in member order (uneven shares are padded)
    mine = np.arange(count)[dist.get_rank() :: dist.get_world_size()]
    gathered = gather_members(np.stack([mine, -mine], axis=1).astype(np.float32), count)
    assert gathered.dtype == np.float32 and np.array_equal(gathered, np.stack([np.arange(count), -np.arange(count)], axis=1)), gathered
if dist.get_rank() == 0:
    np.savez(out, **results)
# the process group is released at exit, before the interpreter's finalisation (a gloo group left to it can
# abort the process after its work: latentda.processes.started_here)
import atexit  # noqa: E402

atexit._run_exitfuncs()
assert not dist.is_initialized()

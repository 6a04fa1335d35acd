"""The processes of one run under ``torchrun`` or ``accelerate launch`` (one process alone).

- joining the process group (:func:`process_state`, :func:`started_here`) and counting it
  (:func:`process_count`); where its collectives take tensors (:func:`collective_device`);
- members dealt round-robin over the processes and gathered back (:func:`deal_members`,
  :func:`gather_members`);
- **one error for all**: a problem of the inputs found by one process (the main one checking a store
  or computing statistics, any one meeting a bad value in its share) must stop every process with the
  same one-line message, not leave the others waiting at the next barrier until the launcher tears
  them down with a collective's traceback. :func:`raise_first` exchanges each process's message
  (:func:`gather_texts`: an all-gather of UTF-8 bytes, never pickled objects); :func:`run_on_main`
  runs a step on the main process and raises its error on every process;
- **waiting without a deadline**: a collective gives up after the process group's timeout (torch's
  default: 30 minutes under gloo, 10 under NCCL), so processes that wait for long work of another —
  the main process's statistics pass over a large dataset, the last members of an ensemble — wait
  on the process group's key-value store instead (:func:`posted_by_main`, :func:`wait_for_all`),
  polling it; a process that dies is the launcher's to report (torchrun stops the others).
"""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from latentda.errors import LatentdaError

__all__ = ["process_state", "started_here", "drop_dynamo_exit_report", "process_count", "is_main_rank", "collective_device", "deal_members",
           "gather_members", "gather_texts", "first_text", "raise_first", "run_on_main", "posted_by_main", "wait_for_all"]


def process_count(group=None) -> int:
    """Number of processes in ``group`` (the default torch.distributed group), 1 when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def is_main_rank() -> bool:
    """Whether this is the main process (rank 0) of the default process group, or alone; also before
    the group is joined, from the launcher's ``RANK``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") in ("", "0")


def started_here(make: Callable):
    """``make()`` — accelerate's ``PartialState`` or ``Accelerator``, which join the default process
    group under torchrun — and, when that call started the group, its destruction at this process's
    exit, while Python is still whole. Left to the interpreter's finalisation, a gloo group's worker
    threads may still hold tensors whose release needs the GIL: the process then aborts (``terminate
    called without an active exception``, SIGABRT) after its work is done, and torchrun reports the
    run as failed (seen once here in the two-process DAPPER test; the hook pytorch/pytorch PR #179291
    proposed for every group, closed unmerged). Gloo (CPU) groups only: NCCL's shutdown waits for
    outstanding collectives, so at the exit of a failed rank it could hang where leaving it to
    torchrun does not. A group the caller started is left alone; registering again replaces the
    earlier registration; a forked child does not destroy its parent's group."""
    import atexit

    joining = not (dist.is_available() and dist.is_initialized())
    made = make()
    if joining and dist.is_available() and dist.is_initialized():
        atexit.unregister(_release_process_group)
        atexit.register(_release_process_group)
        _release_process_group.owner = os.getpid()
    return made


def drop_dynamo_exit_report() -> None:
    """Unregister torch._dynamo's exit report (``dump_compile_times``) once torch._dynamo is imported (diffusers'
    models and EMA import it).

    The report logs compile times at INFO (never shown by latentda) but builds its table first, importing tabulate
    and wcwidth *at interpreter exit*; an import then waits on the interpreter's import lock, which a thread left at
    finalisation can hold — a two-process run hung there after printing its result (py-spy: the main thread in
    ``_get_module_lock`` under ``dump_compile_times``; tests/test_processes.py). Called where latentda imports
    diffusers (latentda.components, latentda.training.loop); a no-op before torch._dynamo is imported or without it."""
    import atexit
    import sys

    report = getattr(sys.modules.get("torch._dynamo.utils"), "dump_compile_times", None)
    if report is not None:
        atexit.unregister(report)


def _release_process_group() -> None:
    """Destroy the default gloo group this process started (:func:`started_here`), after a garbage
    collection: an object left in a reference cycle that holds the group (a DDP model in the frames of a
    caught error's traceback) would otherwise be freed only during finalisation, after Python's last
    exit hook, and abort the process there as an undestroyed group does (seen: 2 runs in 30 of the
    two-process read-error test, tests/test_processes.py)."""
    if (os.getpid() == getattr(_release_process_group, "owner", None) and dist.is_available() and dist.is_initialized()
            and dist.get_backend() == "gloo"):
        import gc

        gc.collect()
        dist.destroy_process_group()


def collective_device(group=None) -> torch.device:
    """Where the process group's collectives take tensors: this process's GPU under NCCL, else the CPU (gloo)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def process_state():
    """Accelerate's view of the processes (joins the process group under torchrun/accelerate launch;
    alone, one process)."""
    from accelerate import PartialState  # heavy: imported when a run starts

    return started_here(lambda: PartialState(cpu=not torch.cuda.is_available()))


def deal_members(count: int, index: int, processes: int) -> list[int]:
    """Process ``index``'s share of ``count`` members dealt round-robin over ``processes`` (member m to
    process m mod P, the layout :func:`gather_members` reverses); every process needs one."""
    if count < processes:
        raise LatentdaError(f"{count} members cannot be dealt over {processes} processes: give at least {processes}")
    return list(range(count))[index::processes]


def gather_members(local: np.ndarray, count: int) -> np.ndarray:
    """The rows of ``count`` members dealt round-robin over the processes (member m on process
    m mod P; ``local`` holds this process's, in increasing order) gathered on every process, in member
    order (an all-gather; processes with fewer members pad). Alone (no process group, or one
    process): ``local`` itself. Values pass as float64: exact for float32 and small integers."""
    import torch.distributed as dist

    processes = process_count()
    if processes == 1:
        return local
    rows = -(-count // processes)  # ⌈count / P⌉
    padded = np.zeros((rows, *local.shape[1:]), dtype=np.float64)
    padded[: len(local)] = local
    tensor = torch.from_numpy(padded).to(collective_device())
    parts = [torch.empty_like(tensor) for _ in range(processes)]
    dist.all_gather(parts, tensor)
    stacked = torch.stack(parts).cpu().numpy()  # (P, rows, ...): member m = r + P·i at [r, i]
    members = np.arange(count)
    return stacked[members % processes, members // processes].astype(local.dtype, copy=False)


def gather_texts(text: str) -> list[str]:
    """Every process's ``text`` in rank order, on every process (an all-gather of UTF-8 bytes: nothing
    is pickled); each calls it at the same point. Alone: ``[text]``. When every text is empty, one
    all-reduce of their longest length is the whole exchange (cheap enough to run every training step)."""
    processes = process_count()
    if processes == 1:
        return [text]
    device = collective_device()
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.int32)
    length = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    if int(length) == 0:  # the same on every process: none goes on to the all-gather
        return [""] * processes
    padded = torch.zeros(max(int(length), 1), dtype=torch.int32, device=device)
    padded[: len(data)] = data.to(device)
    parts = [torch.empty_like(padded) for _ in range(processes)]
    dist.all_gather(parts, padded)
    return [bytes(part.cpu().tolist()).rstrip(b"\0").decode("utf-8") for part in parts]


def first_text(text: str) -> str:
    """The first non-empty ``text`` of the processes in rank order ("" when none), on every process:
    e.g. what the main process alone knows (the others give "")."""
    return next((part for part in gather_texts(text) if part), "")


def raise_first(error: BaseException | None) -> None:
    """Raise on every process the first process's (in rank order) ``error`` (None: it has none): the
    process whose error it is raises its own, the others a :class:`LatentdaError` with its message
    (another kind is named: ``"on another process: RuntimeError: …"``). Every process calls it at the
    same point.

    A raised error's traceback holds the frames it passed; a frame that also holds the error (here, and a
    caller's ``error = caught``) makes a reference cycle that keeps every object of those frames (a
    trainer, its DDP model and process group) alive until the garbage collector runs, possibly only at
    the interpreter's exit (:func:`started_here`). So this frame drops it, and callers drop theirs
    (``finally: error = None``)."""
    message = _message(error)
    shared = first_text(message)
    if not shared:
        return
    if error is not None and shared == message:
        try:
            raise error
        finally:
            error = None
    raise LatentdaError(shared)


def _store_and_key(kind: str):
    """The default process group's store and a key for this exchange: the processes call exchanges at
    the same points, so the n-th exchange of each (counted in the store itself, which a new process
    group starts afresh) is the same one."""
    store = dist.distributed_c10d._get_default_store()
    number = store.add(f"latentda/exchanges/{dist.get_rank()}", 1)
    return store, f"latentda/{kind}/{number}"


def _wait_until(ready: Callable[[], bool]) -> None:
    """Poll ``ready()`` (every 10 ms at first, then at most every second) until it holds."""
    delay = 0.01
    while not ready():
        time.sleep(delay)
        delay = min(2 * delay, 1.0)


def _barrier() -> None:
    """A collective barrier (all processes are known to be there or about to be)."""
    dist.all_reduce(torch.zeros(1, device=collective_device()))


def posted_by_main(text: str, is_main: bool) -> str:
    """The main process's ``text`` on every process, however long the main process takes to post it:
    the others wait on the process group's store, not in a collective (module docstring); then every
    process meets at a barrier. Every process calls it at the same point. Alone: ``text``."""
    if process_count() == 1:
        return text
    store, key = _store_and_key("posted")
    if is_main:
        store.set(key, text.encode("utf-8"))
    else:
        _wait_until(lambda: store.check([key]))
        text = store.get(key).decode("utf-8")
    _barrier()
    return text


def wait_for_all() -> None:
    """A barrier without a deadline: each process counts itself in on the process group's store and
    waits until all have (module docstring). Every process calls it at the same point."""
    processes = process_count()
    if processes == 1:
        return
    store, key = _store_and_key("arrived")
    store.add(key, 1)
    _wait_until(lambda: store.add(key, 0) >= processes)
    _barrier()


def _message(error: BaseException | None) -> str:
    if error is None:
        return ""
    if isinstance(error, LatentdaError):
        return str(error) or type(error).__name__
    return f"on another process: {type(error).__name__}: {error}"


def run_on_main(work: Callable, is_main: bool):
    """``work()`` on the main process (its result there; None elsewhere); an error it raises is raised
    on every process instead of leaving the others at the next collective (the process whose error it
    is raises its own, the others a :class:`LatentdaError` with its message). The others wait for it
    without a deadline (:func:`posted_by_main`): a statistics pass over a large dataset may take hours.
    Every process calls it at the same point; it ends with a barrier."""
    result = error = None
    if is_main:
        try:
            result = work()
        except BaseException as caught:  # noqa: BLE001 — re-raised below; an interrupt too: the others must not wait on
            error = caught
    shared = posted_by_main(_message(error), is_main)
    if error is not None:
        try:
            raise error
        finally:
            error = None  # no reference cycle through this frame (see raise_first)
    if shared:
        raise LatentdaError(shared)
    return result

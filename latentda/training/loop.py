"""One Accelerate training loop for every model of latentda (autoencoder, diffusion prior).

AdamW, linear warm-up then cosine (or constant) learning rate (diffusers' schedules), gradient
clipping, gradient accumulation, optional bf16 autocast, an exponential moving average of the
weights (diffusers' ``EMAModel``), periodic validation, a tqdm progress bar and checkpoints that a
``resume`` continues from without losing a step.

Resuming is exact: the loop keeps no hidden random state. The examples of step s are a slice of a
permutation drawn from a generator seeded by (seed, epoch), and the noise a loss draws for example
j of step s comes from a generator seeded by (seed, s, j) (:class:`BatchRandom`). A run killed after
step s and resumed from its checkpoint therefore ends with the same weights as an uninterrupted
run. Each process loads only its own slice of every global batch (no rank reads the whole dataset)
and draws the same noise for its examples as a single process would, so P processes with a local
batch of B/P compute the same averaged gradient as one process with a batch of B (up to
floating-point reduction order).

With several processes the model is replicated (``strategy: ddp``, Accelerate's DDP) or sharded
(``strategy: fsdp``, :mod:`latentda.training.sharding`); ``compile`` compiles its repeated blocks
(:mod:`latentda.nn.compilation`). Neither changes the update nor the checkpoint format.
"""

from __future__ import annotations

import functools
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from accelerate import Accelerator
from diffusers.optimization import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from latentda.config import MAX_SEED, require
from latentda.data.io import OutputLock, check_output_path, write_text_atomic
from latentda.processes import drop_dynamo_exit_report, process_count, raise_first, run_on_main, started_here
from latentda.errors import LatentdaError
from latentda.training.checkpoint import latest_checkpoint, load_latest, save_checkpoint


drop_dynamo_exit_report()  # diffusers' EMA imported torch._dynamo (latentda.processes)

__all__ = ["TrainingConfig", "Trainer", "BatchRandom", "batch_indices", "batch_random", "make_accelerator",
           "one_run_at_a_time", "check_run_dir", "continues", "shared_statistics"]
ValidateFn = Callable[[torch.nn.Module], dict]


@dataclass
class TrainingConfig:
    """Optimisation settings shared by every training stage."""

    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    mixed_precision: Literal["no", "bf16"] = "no"
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False
    strategy: Literal["ddp", "fsdp"] = "ddp"
    compile: bool = False
    compile_backend: str = "inductor"
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    validate_every: int = 200
    seed: int = 0
    num_workers: int = 0

    def validate(self, prefix: str) -> None:
        key = f"{prefix}." if prefix else ""
        for name in ("steps", "batch_size", "gradient_accumulation", "checkpoint_every", "validate_every", "keep_checkpoints"):
            require(getattr(self, name) >= 1, key + name, "must be at least 1")
        require(self.learning_rate > 0, key + "learning_rate", "must be positive")
        require(self.weight_decay >= 0, key + "weight_decay", "must be non-negative")
        require(self.warmup_steps >= 0, key + "warmup_steps", "must be non-negative")
        require(self.grad_clip > 0, key + "grad_clip", "must be positive")
        require(0 <= self.ema_decay < 1, key + "ema_decay", "must be in [0, 1)")
        require(self.num_workers >= 0, key + "num_workers", "must be non-negative")
        require(0 <= self.seed <= MAX_SEED, key + "seed", f"must be in [0, {MAX_SEED}]")
        if self.compile:  # a wrong name would fail only once the model is built, after the statistics pass
            from torch._dynamo import list_backends

            backends = list_backends(exclude_tags=())
            require(self.compile_backend in backends, key + "compile_backend",
                    f"must be one of torch's compile backends ({', '.join(b for b in backends if 'TESTING' not in b)})")


def _generator(*keys: int) -> torch.Generator:
    seed = 0
    for key in keys:  # a simple, stable mixing of integers into one 63-bit seed
        seed = (seed * 6364136223846793005 + key + 1442695040888963407) % (1 << 63)
    return torch.Generator().manual_seed(seed)


class BatchRandom:
    """Random draws for a batch, example by example: example j of global batch s always receives the
    same numbers, however the batch is split over processes."""

    def __init__(self, seed: int, step: int, examples: range) -> None:
        self.generators = [_generator(seed, step, j, 1) for j in examples]

    def __len__(self) -> int:
        return len(self.generators)

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform [0, 1) draws of shape (B, *shape)."""
        return torch.stack([torch.rand(shape, generator=g, dtype=dtype) for g in self.generators])

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal draws of shape (B, *shape)."""
        return torch.stack([torch.randn(shape, generator=g, dtype=dtype) for g in self.generators])


def batch_random(seed: int, step: int, rank: int, local_batch: int) -> BatchRandom:
    """The draws of process ``rank``'s slice of global batch ``step``."""
    return BatchRandom(seed, step, range(rank * local_batch, (rank + 1) * local_batch))


LossFn = Callable[[torch.nn.Module, torch.Tensor, BatchRandom], torch.Tensor]


def batch_indices(size: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Example indices of global batch ``step``: epoch-wise permutations without replacement
    (drop-last), or draws with replacement when the dataset is smaller than one batch."""
    per_epoch = size // batch_size
    if per_epoch == 0:
        return torch.randint(size, (batch_size,), generator=_generator(seed, step, 2))
    epoch, position = divmod(step, per_epoch)
    permutation = torch.randperm(size, generator=_generator(seed, epoch, 3))
    return permutation[position * batch_size : (position + 1) * batch_size]


def make_accelerator(config: TrainingConfig) -> Accelerator:
    """An Accelerator for this config; on a machine without CUDA, processes use the CPU (gloo), so
    ``torchrun --nproc_per_node N`` gives N ranks there too."""
    from accelerate.state import AcceleratorState

    earlier = AcceleratorState._shared_state.get("_mixed_precision")  # one state per Python process
    if earlier is not None and earlier != config.mixed_precision:
        if process_count() > 1:
            raise LatentdaError(f"training.mixed_precision: {config.mixed_precision}, but this process already trained with "
                                f"{earlier} (Accelerate keeps one precision per process): run it in a new process")
        AcceleratorState._reset_state(reset_partial_state=False)  # alone: e.g. a notebook training two stages
    accelerator = started_here(lambda: Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available()))
    check_batch_split(config, accelerator.num_processes)  # before any pass over the data
    return accelerator


def one_run_at_a_time(train: Callable) -> Callable:
    """``train(config, …, accelerator=None)`` (a training stage writing ``config.output``) run while the
    main process holds the run folder's :class:`latentda.data.io.OutputLock`: a second run into the same
    folder — a requeued job while the first still trains, a script submitted twice — is refused in one
    line, on every process, before any work, instead of training beside it and removing its checkpoint
    temporaries. Released when the run ends, however it ends."""

    @functools.wraps(train)
    def locked(config, *args, accelerator: Accelerator | None = None, **kwargs):
        check_output_path(config.output, {}, "output", replaced=False)  # not under a file: before the lock's folder
        accelerator = accelerator or make_accelerator(config.training)
        lock = run_on_main(lambda: OutputLock(config.output), accelerator.is_main_process)
        try:
            return train(config, *args, accelerator=accelerator, **kwargs)
        finally:
            if lock is not None:
                lock.release()

    return locked


def check_batch_split(config: TrainingConfig, processes: int) -> None:
    """The global batch is dealt evenly over the processes (each takes batch_size / P examples)."""
    if config.batch_size % processes:
        raise LatentdaError(f"batch_size {config.batch_size} is not divisible by the {processes} processes")


# What every run writes into its folder (a command adds its statistics and its final artefact).
RUN_FILES = frozenset({"checkpoints", "config.yaml", "log.jsonl", "metrics.json"})


def check_run_dir(run_dir: str | Path, resume: bool, inputs: dict | None = None, final: str | None = None,
                  files: frozenset[str] | None = None) -> None:
    """A run folder with checkpoints is continued only with ``resume`` (never overwritten by mistake);
    one holding the run's ``final`` artefact (e.g. ``pipeline``) only from a checkpoint with ``resume``
    (which rewrites the same weights), never trained again from scratch over it; and it is never one
    of the run's ``inputs`` (name → path) or inside one. It is a folder (or does not exist yet); given
    ``files`` (what a run of this kind writes besides :data:`RUN_FILES` and ``final``), one holding
    anything else (hidden names aside: temporaries) is not this kind of run's and is refused, before
    anything is written into it."""
    check_output_path(run_dir, inputs or {}, "output", replaced=False)  # a run writes into its folder
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise LatentdaError(f"{run_dir}: exists and is not a folder (output is the run's folder): choose another output")
    if files is not None and Path(run_dir).is_dir():
        own = RUN_FILES | files | {final}
        foreign = sorted(p.name for p in Path(run_dir).iterdir() if p.name not in own and not p.name.startswith("."))
        if foreign:
            raise LatentdaError(f"{run_dir}: not a folder of this kind of run (it holds {', '.join(foreign[:3])}"
                                + (", …" if len(foreign) > 3 else "") + "): train into a new or empty output")
    checkpoint = latest_checkpoint(Path(run_dir) / "checkpoints") is not None
    if not resume and checkpoint:
        raise LatentdaError(f"{run_dir}: run already has checkpoints (pass --resume to continue it, or choose another output)")
    if final is not None and (Path(run_dir) / final).exists() and not checkpoint:
        article = "an" if final[0] in "aeiou" else "a"
        raise LatentdaError(f"{run_dir}: run already has {article} {final}" + (" and no checkpoint to continue from" if resume else "")
                            + " (choose another output)")


# What a resumed run may change: how long it trains (a longer cosine schedule restarts warm from the
# checkpoint's step), how often it checkpoints and validates, how it is run, and where it writes. The rest
# is the run itself: the checkpoint's optimizer state would silently override a new learning rate or
# weight decay, and the model, its training law and data split must stay those the weights were trained with.
RESUMABLE = frozenset({"output", "training.steps", "training.checkpoint_every", "training.validate_every",
                       "training.keep_checkpoints", "training.num_workers", "training.compile",
                       "training.compile_backend", "training.gradient_checkpointing", "training.strategy"})


def _dotted(tree: dict, prefix: str = "") -> dict:
    """A nested config as {"section.key": value}."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        flat.update(_dotted(value, name + ".") if isinstance(value, dict) else {name: value})
    return flat


def check_resumed_config(run_dir: Path, config_data: dict, may_change: frozenset[str] = frozenset(),
                         defaults: dict | None = None) -> None:
    """A resumed run keeps its first config (``run_dir/config.yaml``) except :data:`RESUMABLE` keys and
    ``may_change`` (a model's own, e.g. the sampler defaults a pipeline is saved with): one line naming
    the keys that differ otherwise. A key the first config lacks (written by a latentda without it)
    had its default (``defaults``, :func:`latentda.config.config_defaults`, which keep an older run's
    behaviour): set to anything else now, it differs too."""
    import yaml

    recorded = run_dir / "config.yaml"
    if not recorded.is_file():  # the checkpoints' settings are unknown: their tensors would not tell a learning rate
        raise LatentdaError(f"{recorded}: missing, the run's first config is lost: restore it to --resume, "
                            "or train into another output")
    try:
        first = yaml.safe_load(recorded.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise LatentdaError(f"{recorded}: unreadable ({type(error).__name__}): the run's first config is lost") from None
    old, new = _dotted(first if isinstance(first, dict) else {}), _dotted(config_data)
    allowed = RESUMABLE | may_change
    # keys of both: a config written by another version of latentda may lack (or have) a field this one has not
    changed = sorted(k for k in old.keys() & new.keys() if k not in allowed and str(old[k]) != str(new[k]))
    fallback = _dotted(defaults or {})
    added = sorted(k for k in new.keys() - old.keys()
                   if k in fallback and k not in allowed and str(fallback[k]) != str(new[k]))
    if changed or added:
        listed = ", ".join([f"{k}: {old[k]!r} → {new[k]!r}" for k in changed]
                           + [f"{k}: not recorded, the default {fallback[k]!r} → {new[k]!r}" for k in added])
        raise LatentdaError(f"{run_dir}: --resume continues the run of {recorded.name}, which had other settings ({listed}); "
                            "train into another output to change them")


def continues(run_dir: str | Path, resume: bool) -> bool:
    """Whether a run continues from a checkpoint (``resume`` and one exists); else it starts from
    scratch, whatever an attempt killed before its first checkpoint left in ``run_dir``."""
    return resume and latest_checkpoint(Path(run_dir) / "checkpoints") is not None


def shared_statistics(accelerator: Accelerator, path: Path, compute: Callable, reuse: bool):
    """Statistics computed once, by the main process, saved to ``path`` and read by every other
    process; with ``reuse`` (a run that :func:`continues`) the saved file is read: the statistics its
    checkpoints were trained with are never recomputed."""
    from latentda.data.statistics import Statistics

    if reuse and not path.is_file():  # deleted: computing them again from this data would change what the weights mean
        raise LatentdaError(f"{path}: missing, and the run's checkpoints were trained with it: restore it to --resume, "
                            "or train into another output")
    if not reuse:
        def compute_and_save() -> None:
            statistics = compute()  # before creating the run folder: bad data leaves nothing behind
            path.parent.mkdir(parents=True, exist_ok=True)
            statistics.save(path)

        run_on_main(compute_and_save, accelerator.is_main_process)  # bad data stops every process with its message
    return Statistics.load(path)


class _StepBatches(torch.utils.data.Sampler):
    """Yields, for steps start..stop−1, this rank's slice of each global batch (× accumulation)."""

    def __init__(self, size: int, config: TrainingConfig, start: int, rank: int, world: int) -> None:
        self.size, self.config, self.start, self.rank, self.world = size, config, start, rank, world
        self.local = config.batch_size // world

    def __len__(self) -> int:
        return (self.config.steps - self.start) * self.config.gradient_accumulation

    def __iter__(self):
        accumulation = self.config.gradient_accumulation
        for step in range(self.start, self.config.steps):
            for micro in range(accumulation):
                indices = batch_indices(self.size, self.config.batch_size, step * accumulation + micro, self.config.seed)
                yield indices[self.rank * self.local : (self.rank + 1) * self.local].tolist()


class Trainer:
    """Trains ``model`` on ``dataset`` minimising ``loss_fn(model, batch, random)`` (a :class:`BatchRandom`).

    ``validate_fn(model)`` (optional) is called with the EMA weights and returns a dict of metrics.
    The run folder holds ``checkpoints/`` and ``log.jsonl``. A run folder that already has
    checkpoints is an error unless ``resume`` (nothing of a finished run is overwritten by mistake).
    ``fingerprints`` (name → sha256 of what the run trains on that its config does not say, e.g.
    train-ldm's autoencoder) are saved with every checkpoint: resuming with others is refused.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: LossFn,
        dataset: Dataset,
        config: TrainingConfig,
        run_dir: str | Path,
        validate_fn: ValidateFn | None = None,
        accelerator: Accelerator | None = None,
        progress: bool = True,
        description: str = "training",
        resume: bool = False,
        fingerprints: dict[str, str] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        check_run_dir(self.run_dir, resume)
        self.resume, self.fingerprints = resume, dict(fingerprints or {})
        self.accelerator = accelerator or make_accelerator(config)
        world = self.accelerator.num_processes
        check_batch_split(config, world)
        self.model, self.loss_fn, self.dataset, self.config = model, loss_fn, dataset, config
        self.validate_fn = validate_fn
        self.progress = progress
        self.description = description
        if config.gradient_checkpointing and hasattr(model, "enable_gradient_checkpointing"):
            model.enable_gradient_checkpointing()
        # FSDP only when there is something to shard; one process trains the same way either way
        self.sharded = config.strategy == "fsdp" and world > 1
        if config.warmup_steps >= config.steps and self.accelerator.is_main_process:
            warnings.warn(f"training.warmup_steps {config.warmup_steps} ≥ training.steps {config.steps}: the learning rate "
                          f"never reaches training.learning_rate {config.learning_rate:g} (it rises linearly over the whole "
                          f"run); set warmup_steps below steps, e.g. {max(config.steps // 10, 0)}", stacklevel=2)
        self.plain_model = None  # fsdp: an unsharded copy (main process) that receives the final weights
        self._mixed_forward = None  # bf16: Accelerate's autocast forward, set aside while the EMA model validates
        self.step = 0
        self.config_text: str | None = None  # config.yaml, written by fit once the checkpoint (if any) has loaded

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _build(self, checkpoint: tuple | None) -> None:
        """Weights from ``checkpoint`` (if any: one that fits the model, :func:`load_latest`), sharding
        (fsdp), then the optimizer, learning-rate schedule and EMA over the (possibly sharded)
        parameters, with their checkpointed states. A checkpoint past ``config.steps`` or of other
        ``fingerprints`` is refused."""
        from latentda.training import sharding

        model, config = self.model, self.config
        if checkpoint is not None:
            model_state, ema_state, optimizer_state, state, path = checkpoint
            if state["step"] > config.steps:  # it would write the final model of a longer run as this one's
                raise LatentdaError(f"{path}: the run is at step {state['step']}, past training.steps {config.steps}: "
                                    f"resume with training.steps of at least {state['step']}")
            for name, fingerprint in self.fingerprints.items():
                trained = state.get("fingerprints", {}).get(name, fingerprint)  # not recorded by older versions: accepted
                if trained != fingerprint:
                    raise LatentdaError(f"{path}: the run was trained with another {name} (sha256 {trained[:12]}…, now "
                                        f"{fingerprint[:12]}…): resume with the inputs it used, or start a new run")
            model.load_state_dict(model_state)
        model.to(self.accelerator.device)
        if self.sharded:
            if self.accelerator.is_main_process:
                import copy

                self.plain_model = copy.deepcopy(model)
            sharding.shard_model(model)
        if config.compile:
            from latentda.nn.compilation import compile_blocks

            compile_blocks(model, backend=config.compile_backend)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        if config.schedule == "cosine":
            self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, config.warmup_steps, config.steps)
        else:
            self.scheduler = get_constant_schedule_with_warmup(self.optimizer, config.warmup_steps)
        self.ema = EMAModel(model.parameters(), decay=config.ema_decay)  # decay min(ema_decay, (1 + k)/(10 + k)) at update k
        if checkpoint is None:
            return
        if self.sharded:
            sharding.load_optimizer_state(model, self.optimizer, optimizer_state)
        else:
            self.optimizer.load_state_dict(optimizer_state)
        self.scheduler.load_state_dict(state["scheduler"])
        # the optimizer's saved rate is the old schedule's: a run resumed with more steps follows the
        # stretched schedule from its first step (LambdaLR's rate at step s: base · λ(s))
        rates = [base * factor(self.scheduler.last_epoch) for base, factor in zip(self.scheduler.base_lrs, self.scheduler.lr_lambdas)]
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["lr"] = rate
        names = [name for name, _ in model.named_parameters()]
        self.ema.shadow_params = [sharding.shard_like(ema_state[name], p) for name, p in zip(names, model.parameters())]
        self.ema.optimization_step = state["ema_step"]
        self.step = state["step"]

    def _load_latest(self) -> tuple | None:
        return load_latest(self.checkpoint_dir, self.model) if self.resume else None

    def _ema_state(self) -> dict[str, torch.Tensor]:
        """The EMA weights by name, gathered whole (a collective under fsdp: every rank calls it)."""
        from latentda.training.sharding import full_tensor

        names = [name for name, _ in self.model.named_parameters()]
        return {name: full_tensor(p).detach().cpu() for name, p in zip(names, self.ema.shadow_params)}

    def _save(self) -> None:
        from latentda.training import sharding

        self.accelerator.wait_for_everyone()
        if self.sharded:  # gathering is a collective: every rank takes part, the main process writes
            model_state = sharding.full_model_state(self.model)
            optimizer_state = sharding.full_optimizer_state(self.model, self.optimizer)
        else:
            model_state = self.accelerator.get_state_dict(self.model_prepared)
            optimizer_state = self.optimizer.state_dict()
        ema_state = self._ema_state()
        if self.accelerator.is_main_process:
            scheduler_state = self.scheduler.state_dict()  # lr_lambdas are functions: stored as None
            save_checkpoint(
                self.checkpoint_dir,
                self.step,
                model_state,
                ema_state,
                optimizer_state,
                {"scheduler": scheduler_state, "ema_step": self.ema.optimization_step, "strategy": self.config.strategy,
                 "processes": self.accelerator.num_processes, "fingerprints": self.fingerprints},
                keep=self.config.keep_checkpoints,
            )
        self.accelerator.wait_for_everyone()

    def _log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with open(self.run_dir / "log.jsonl", "a") as log:
                log.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ validation
    def ema_model(self) -> torch.nn.Module:
        """The unwrapped model holding the EMA weights, its forward in full precision (until
        :meth:`restore_weights`): under ``mixed_precision: bf16`` Accelerate wraps the forward in
        autocast, which validation — and the representation error saved with the model — must not use."""
        model = self.accelerator.unwrap_model(self.model_prepared)
        self._training_weights = [p.detach().clone() for p in model.parameters()]  # shards stay shards
        self.ema.copy_to(model.parameters())
        self._mixed_forward = model.__dict__.get("forward") if "_original_forward" in model.__dict__ else None
        if self._mixed_forward is not None:
            model.forward = model._original_forward
        return model

    def restore_weights(self) -> None:
        model = self.accelerator.unwrap_model(self.model_prepared)
        if self.sharded:  # FSDP keeps the root's parameters gathered after a forward without backward
            model.reshard()
        with torch.no_grad():
            for p, weights in zip(model.parameters(), self._training_weights):
                p.copy_(weights)
        self._training_weights = None
        if self._mixed_forward is not None:  # training goes on under autocast
            model.forward, self._mixed_forward = self._mixed_forward, None

    def _validate(self) -> dict:
        if self.validate_fn is None:
            return {}
        model = self.ema_model()
        model.eval()
        try:
            with torch.no_grad():
                metrics = self.validate_fn(model)
        finally:  # the training weights and forward back, also when validation fails (an API caller may go on)
            model.train()
            self.restore_weights()
        self._log({"step": self.step, "valid": metrics})
        return metrics

    # ------------------------------------------------------------------ a whole run
    def run(self, config_data: dict, save_outputs: Callable[[torch.nn.Module, dict], dict]) -> dict:
        """Write ``config.yaml`` (resuming: the caller has checked ``config_data`` against the first run's with
        :func:`check_resumed_config`, before its statistics pass), train,
        then (main process) hand the EMA model and the final metrics to ``save_outputs``, which writes
        the run's artefacts and returns extra summary entries for ``metrics.json``. Returns the final
        validation metrics."""
        import yaml

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_text = yaml.safe_dump(config_data, sort_keys=False)  # written once the weights load (fit)
        metrics = self.fit()
        ema_state = self._ema_state() if self.sharded else None  # a collective: before the main-only part
        if self.accelerator.is_main_process:
            if self.sharded:
                final = self.plain_model
                final.load_state_dict(ema_state)
            else:
                final = self.ema_model()
            extra = save_outputs(final, metrics)
            if not self.sharded:
                self.restore_weights()
            summary = {"steps": self.step, "valid": metrics, "train_samples_per_second": self.throughput,
                       "parameters": sum(p.numel() for p in final.parameters()), **extra}
            write_text_atomic(self.run_dir / "metrics.json", json.dumps(summary, indent=1))
        self.accelerator.wait_for_everyone()
        return metrics

    # ------------------------------------------------------------------ the loop
    def _next_batch(self, batches):
        """The next batch of ``batches``. A read error (a corrupt chunk met mid-run) on any process stops
        every process with its one line (:func:`latentda.processes.raise_first`: without an error, one
        one-element all-reduce per step), rather than leaving the others to fail in the gradients' collective."""
        batch = error = None
        try:
            batch = next(batches)
        except Exception as caught:  # noqa: BLE001 — raised below, on every process
            error = caught
        try:
            raise_first(error)
        finally:
            error = None  # see latentda.processes.raise_first: no reference cycle keeps the trainer alive
        return batch

    def fit(self) -> dict:
        """Train until ``config.steps``; when resuming, continue from the last checkpoint."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._build(self._load_latest())
        self.accelerator.wait_for_everyone()  # every process has loaded before the main one replaces the record
        if self.config_text is not None and self.accelerator.is_main_process:
            write_text_atomic(self.run_dir / "config.yaml", self.config_text)
        accelerator, config = self.accelerator, self.config
        if self.sharded:  # sharded in place by _build; Accelerate would wrap it in DDP again
            self.model_prepared, self.optimizer = self.model, accelerator.prepare(self.optimizer)
        else:
            self.model_prepared, self.optimizer = accelerator.prepare(self.model, self.optimizer)
        self.ema.to(accelerator.device)
        rank, world = accelerator.process_index, accelerator.num_processes
        sampler = _StepBatches(len(self.dataset), config, self.step, rank, world)
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=config.num_workers)
        batches = iter(loader)
        bar = tqdm(total=config.steps, initial=self.step, desc=self.description,
                   disable=not (self.progress and accelerator.is_main_process), dynamic_ncols=True)
        metrics: dict = {}
        started, first_step = time.perf_counter(), self.step
        self.model_prepared.train()
        try:  # the bar closed (its line ended) also when interrupted: messages start on their own line
            while self.step < config.steps:
                total_loss = 0.0
                for micro in range(config.gradient_accumulation):
                    batch = self._next_batch(batches)
                    batch = tuple(b.to(accelerator.device) for b in batch) if isinstance(batch, (list, tuple)) else batch.to(accelerator.device)
                    size = len(batch[0]) if isinstance(batch, tuple) else len(batch)
                    random = batch_random(config.seed, self.step * config.gradient_accumulation + micro, rank, size)
                    with accelerator.autocast():
                        loss = self.loss_fn(self.model_prepared, batch, random) / config.gradient_accumulation
                    last = micro == config.gradient_accumulation - 1
                    if self.sharded:  # reduce-scatter the gradients only after the last micro-batch
                        self.model_prepared.set_requires_gradient_sync(last)
                        accelerator.backward(loss)
                    elif not last:
                        with accelerator.no_sync(self.model_prepared):
                            accelerator.backward(loss)
                    else:
                        accelerator.backward(loss)
                    total_loss += loss.item()
                if world > 1:  # the global batch's loss (each process has an equal share), the same on every process
                    total_loss = accelerator.reduce(torch.tensor(total_loss, dtype=torch.float64, device=accelerator.device),
                                                    "mean").item()
                if not math.isfinite(total_loss):  # on every process at once: none is left waiting at a collective
                    raise LatentdaError(f"loss became {total_loss} at step {self.step}: lower the learning rate")
                accelerator.clip_grad_norm_(self.model_prepared.parameters(), config.grad_clip)
                rate = self.optimizer.param_groups[0]["lr"]  # the rate of this step (logged with its loss)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.ema.step(accelerator.unwrap_model(self.model_prepared).parameters())
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{total_loss:.4g}", lr=f"{rate:.2e}")
                if self.step % 10 == 0 or self.step == config.steps:
                    self._log({"step": self.step, "loss": total_loss, "lr": rate})
                if self.step % config.validate_every == 0 or self.step == config.steps:
                    metrics = self._validate()
                    if metrics and accelerator.is_main_process:
                        bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in _flat(metrics).items()))
                if self.step % config.checkpoint_every == 0 or self.step == config.steps:
                    self._save()
        finally:
            bar.close()
        if not metrics:  # resumed after the last step: report the final weights' metrics again
            metrics = self._validate()
        elapsed = time.perf_counter() - started
        self.throughput = (self.step - first_step) * config.batch_size * config.gradient_accumulation / max(elapsed, 1e-9)
        return metrics


def _flat(metrics: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and math.isfinite(value):
            out[f"{prefix}{key}"] = value
    return out

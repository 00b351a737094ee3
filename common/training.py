"""The one training loop shared by TRAIN_SALIENCY, TRAIN_SEED and TRAIN_DEEPLAB.

What every training gets from :func:`fit`:

* Step-deterministic batches (:class:`StepBatches`): the global batch of step k depends only on
  (seed, k), and each sample's augmentation only on (seed, its stream position), so a resumed run,
  any number of DataLoader workers and any number of processes see the same batches.
* Resume from ``checkpoints/<name>/last.pt`` with the settings check *before* any weights load: a
  checkpoint trained with other settings is refused with one message naming them (no raw
  "size mismatch" traceback from ``load_state_dict``). A longer ``steps`` resumes a finished
  training; a checkpoint whose poly schedule was built for another length says so when it resumes.
* ``last.pt`` every ``runtime.checkpoint_every`` steps, at every validation, at the end and on
  SIGINT/SIGTERM (then the process exits with a message); ``best.pt`` whenever validation improves.
* A stop at the first non-finite loss (:class:`TrainingError` naming the step and the checkpoint
  kept), before that step's update touches the weights; and, should a finite loss still leave
  non-finite weights, a stop before they are validated or saved.
* ``runtime.precision``: autocast (bf16 / fp16) with a grad scaler for fp16.
* Optionally (``TrainingSpec.average_decay``) an exponential moving average of the weights, which
  validation scores and every checkpoint delivers as its ``model``; ``last.pt`` then also holds the
  trained weights themselves (``trained_model``), which a resume continues from.
* Data parallelism under torchrun: each rank trains on its slice of the global batch, gradients
  are averaged by DistributedDataParallel, rank 0 alone validates and writes checkpoints and logs.

BatchNorm under several processes: each rank normalises with its own slice's statistics (the
running statistics kept are rank 0's, broadcast by DDP at every forward). On CUDA the layers that
still learn statistics are converted to SyncBatchNorm, so the statistics are the global batch's as
in one process; gloo (CPU) has no SyncBatchNorm, and there the per-rank statistics are the
documented difference from one process. Frozen BatchNorm (eval mode) is exact everywhere.
"""

from __future__ import annotations

import copy
import math
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from common import checkpoint, distributed, runtime
from common.layout import Layout


class TrainingError(RuntimeError):
    """A training cannot go on (non-finite loss, unusable settings); the message is one line that
    says what happened and what was kept."""


class SettingsMismatch(TrainingError, ValueError):
    """``last.pt`` was trained with other settings than the current configuration."""


# ---- batches ---------------------------------------------------------------------------------------


class StepBatches(Sampler):
    """Batches for steps ``start`` .. ``total - 1`` of an endless shuffled stream of ``num_items``
    training items.

    Step k's global batch holds stream positions k*B .. k*B + B - 1, and epoch e's order is a
    permutation drawn from (seed, e). Each item is (item index, stream position); the position
    seeds that sample's augmentation. So a batch depends only on (seed, k): resuming at step k gives
    the batches an uninterrupted run would have seen, with any number of workers. With ``world``
    processes, rank r takes positions r*B/world .. (r+1)*B/world - 1 of each global batch.
    """

    def __init__(
        self, num_items: int, batch_size: int, *, seed: int, start: int, total: int, rank: int = 0, world: int = 1
    ) -> None:
        if num_items <= 0:
            raise ValueError("no training items")
        if batch_size % world:
            raise ValueError(f"the batch size {batch_size} does not split evenly over {world} processes")
        self.num_items, self.batch_size = num_items, batch_size
        self.seed, self.start, self.total = seed, start, total
        self.rank, self.world = rank, world
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.num_items)}
        return self._orders[epoch]

    def positions(self, step: int) -> range:
        """The stream positions this rank trains on at ``step``."""
        share = self.batch_size // self.world
        first = step * self.batch_size + self.rank * share
        return range(first, first + share)

    def __iter__(self):
        for step in range(self.start, self.total):
            batch = []
            for position in self.positions(step):
                epoch, offset = divmod(position, self.num_items)
                batch.append((int(self._order(epoch)[offset]), position))
            yield batch

    def __len__(self) -> int:
        return max(0, self.total - self.start)


def sample_rng(seed: int, stream: int, item) -> np.random.Generator:
    """The augmentation generator of one training sample: depends on (seed, stream, position)
    only, never on the process, the worker or how often training was restarted. ``item`` is what
    :class:`StepBatches` yields, (index, position), or a bare index (position = index)."""
    position = item[1] if isinstance(item, tuple) else int(item)
    return np.random.default_rng([seed, stream, position])


def split_item(item) -> tuple[int, int]:
    """(index, position) of a sampler item; a bare index is its own position."""
    return (int(item[0]), int(item[1])) if isinstance(item, tuple) else (int(item), int(item))


def eval_loader(
    samples: Dataset, *, batch_size: int, num_workers: int, device: torch.device, seed: int = 0, collate_fn=None
) -> DataLoader:
    """A validation loader in item order. It has its own generator so iterating it draws nothing
    from the global random stream that checkpoints carry."""
    return DataLoader(
        samples,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
    )


# ---- schedules -------------------------------------------------------------------------------------

# the training length a schedule was built for (poly: it reaches 0 there; a step schedule has none).
# Left out of the settings a resume must share, so a longer ``steps`` extends a finished training;
# but then a poly schedule is stretched mid-way (from near 0 back up), and the result is not what a
# fresh run of the new length gives, so resuming says so
PLANNED_STEPS = "planned_steps"
# last.pt's training weights when its "model" holds their moving average (TrainingSpec.average_decay)
TRAINED_MODEL = "trained_model"


def poly_schedule(optimizer, total_steps: int, power: float = 0.9):
    """Learning rate x (1 - step / total) ** power, reaching 0 at ``total_steps``."""
    total = max(1, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total) ** power)
    setattr(scheduler, PLANNED_STEPS, total_steps)  # a resume with another length says so (fit)
    return scheduler


def step_schedule(optimizer, step_size: int, gamma: float = 0.1):
    """Learning rate x ``gamma`` every ``step_size`` steps."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


# ---- checkpoints and settings ----------------------------------------------------------------------


def schedule_warning(stage: str, path: Path, step: int, planned: int, steps: int) -> str:
    """The notice printed when ``path`` (at ``step``) resumes with another training length."""
    if step >= steps:
        change = "it stops there, short of the end of its schedule" if step < planned else "it is kept as it is"
    else:
        change = f"its learning-rate schedule is stretched from step {step} to end at {steps}"
    return (
        f"warning: {stage}: {path} was trained toward {planned} steps and is at step {step}; with "
        f"{steps} steps {change}, which is not the network a fresh {steps}-step training gives. Set "
        f"runtime.overwrite=true (or another paths.checkpoints) to train {steps} steps from the start"
    )


def check_settings(path: Path, saved: dict, current: dict, keys: Sequence[str]) -> None:
    """Refuse to resume ``path`` when any of ``keys`` differs between the checkpoint's saved
    settings and the current ones. Called before any weights load, so a setting that changes a
    network's shape is reported by name, not as a size mismatch."""
    different = [k for k in keys if saved.get(k) != current.get(k)]
    if different:
        listed = ", ".join(f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now" for k in different)
        raise SettingsMismatch(
            f"{path} was trained with other settings ({listed}): set "
            f"runtime.overwrite=true to start again, or use another paths.checkpoints"
        )


# ---- the loop --------------------------------------------------------------------------------------


@dataclass
class TrainingSpec:
    """What one training is: its network, optimiser, data, loss and validation.

    ``loss(network, batch, device)`` returns the scalar loss of this rank's part of a batch;
    ``network`` is the model, or its DistributedDataParallel wrapper under torchrun (call it for
    the forward pass; use the model itself for anything else). ``validate(model, step)`` runs on
    rank 0 only and returns a dict holding ``metric`` (higher is better; NaN when nothing can be
    scored, which keeps the latest network as best); it may log to ``writer``. ``train_mode(model)``
    puts the model in training mode (with any BatchNorm freezing); it is called at the start and
    after every validation.
    """

    stage: str  # tensorboard folder (runs/<stage>/) and progress label
    checkpoints: str  # checkpoints/<checkpoints>/{best,last}.pt
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    steps: int
    val_every: int
    batch_size: int  # the global batch; under torchrun each rank takes batch_size / world
    samples: Dataset  # items are StepBatches' (index, position) pairs
    loss: Callable[[torch.nn.Module, Any, torch.device], torch.Tensor]
    metric: str
    describe: dict  # saved with every checkpoint (what rebuilds the network, and the settings)
    resume_keys: Sequence[str]  # the keys of ``describe`` a checkpoint must share to be resumed
    validate: Callable[[torch.nn.Module, int, Any], dict] | None = None
    train_mode: Callable[[torch.nn.Module], None] | None = None
    grad_clip: float = 0.0  # max gradient norm; 0 = none
    # runtime.memory_format (resolved) of the model: the stages whose networks gain set it from the
    # config; contiguous (the model as built) for the others
    memory_format: str = "contiguous"
    collate_fn: Callable | None = None
    log_every: int = 10
    writer: Any = None  # a tensorboard writer (rank 0) or None to open runs/<stage>/
    # decay of the weights' moving average (WeightAverage); 0 = the trained weights themselves
    average_decay: float = 0.0


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics, updated after
    each optimiser step: ``average = d * average + (1 - d) * weights``, with d = min(decay, (1 + k)
    / (10 + k)) at step k so that the first steps' random-ish weights fade fast. Late in a training
    the weights still jump from batch to batch around where they are heading; their average sits
    nearer to it (the EMA of Polyak averaging, as in timm's ModelEmaV2)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"a weight average's decay must lie in (0, 1), not {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        # state_dict tensors share the parameters' storage: pairs made once stay current
        own, source = self.model.state_dict(), model.state_dict()
        floats = [name for name in own if own[name].is_floating_point()]
        self._averages, self._weights = [own[name] for name in floats], [source[name] for name in floats]
        self._others = [(own[name], source[name]) for name in own if not own[name].is_floating_point()]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the average towards the model's weights after optimiser step ``step`` (1-based)."""
        keep = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self._averages, self._weights, 1.0 - keep)
        for average, value in self._others:
            average.copy_(value)


@dataclass
class Outcome:
    step: int  # steps done
    best: dict  # the best validation result (with its "step"), or {metric: -inf} before any
    resumed_from: int  # 0 for a fresh start
    trained: bool = field(default=True)  # False when the checkpoint had already reached ``steps``


class _NullWriter:
    """Tensorboard stand-in for ranks other than 0: they log nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class _StopSignals:
    """SIGINT/SIGTERM set a flag (checked after each step) instead of killing a half-done step; a
    second signal while the first is being handled interrupts at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _convert_batchnorm_for_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def fit(cfg, spec: TrainingSpec, *, device: torch.device, stop_after: int | None = None) -> Outcome:
    """Train ``spec`` to ``spec.steps`` (or ``stop_after``), resuming from last.pt unless
    ``runtime.overwrite``; returns what was reached. See the module docstring for what it does."""
    layout = Layout(cfg)
    last_path = layout.checkpoint(spec.checkpoints, "last")
    best_path = layout.checkpoint(spec.checkpoints, "best")
    rank, world, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    if spec.batch_size % world:
        raise TrainingError(
            f"{spec.stage}: the batch size {spec.batch_size} does not split evenly over "
            f"{world} processes; choose a multiple of {world}"
        )
    model, optimizer, scheduler = spec.model, spec.optimizer, spec.scheduler
    metric = spec.metric
    start, best = 0, {metric: float("-inf")}
    state = None
    averaged_weights = None  # a resumed average's own weights
    planned_now = getattr(scheduler, PLANNED_STEPS, None)
    planned_extra = {} if planned_now is None else {PLANNED_STEPS: planned_now}
    if not starts_fresh(cfg, spec.checkpoints):
        state = checkpoint.read_state(last_path)
        check_settings(last_path, state.get("extra", {}), spec.describe, spec.resume_keys)
        # with an average, "model" is the average and "trained_model" the weights training goes on from
        if TRAINED_MODEL in state:
            averaged_weights = state["model"]
        model.load_state_dict(state.get(TRAINED_MODEL, state["model"]))
        if state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        if state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        start, best = state["step"], state["extra"].get("best", best)
        if main:
            print(f"resuming {spec.stage} at step {start} of {spec.steps} ({last_path})", flush=True)
            planned = state["extra"].get(PLANNED_STEPS)
            if planned is not None and planned_now is not None and planned != planned_now:
                print(schedule_warning(spec.stage, last_path, start, planned, spec.steps), file=sys.stderr, flush=True)
    if start >= spec.steps:
        return Outcome(step=start, best=best, resumed_from=start, trained=False)
    _restore_random_state(state, cfg.runtime.seed, rank, world)

    end = spec.steps if stop_after is None else max(start, min(spec.steps, stop_after))
    batches = StepBatches(
        len(spec.samples), spec.batch_size, seed=cfg.runtime.seed, start=start, total=end, rank=rank, world=world
    )
    # the loader's own generator keeps its draws out of the global stream (dropout) that resuming restores
    workers = cfg.runtime.num_workers
    loader = DataLoader(
        spec.samples,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=spec.collate_fn,
        worker_init_fn=runtime.worker_seed,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.runtime.seed),
    )
    train_mode = spec.train_mode or (lambda m: m.train())
    # before DDP's wrapper records which parameters learn (freezing may switch some off)
    train_mode(model)
    runtime.to_memory_format(model, spec.memory_format)
    # a resumed average continues from the checkpoint's; switched on later, it starts at the weights
    average = WeightAverage(model, spec.average_decay) if spec.average_decay else None
    if average is not None and averaged_weights is not None:
        average.model.load_state_dict(averaged_weights)
    network: torch.nn.Module = model
    delivered = average.model if average is not None else model  # what validation scores and files hold
    if world > 1:
        network = torch.nn.parallel.DistributedDataParallel(
            _convert_batchnorm_for_ddp(model, device), device_ids=[device.index] if device.type == "cuda" else None
        )
    precision = cfg.runtime.precision
    scaler = runtime.grad_scaler(device, precision)
    own_writer = spec.writer is None and main
    writer = (
        spec.writer
        if spec.writer is not None
        else (_open_writer(cfg, spec.stage, state is None) if main else _NullWriter())
    )
    if not main:
        writer = _NullWriter()

    saved = {"step": start if state is not None else None}

    def save_last(done: int) -> None:
        rng_ranks = distributed.all_gather_object(runtime.rng_state()) if world > 1 else None
        if main and saved["step"] != done:
            extra = {**spec.describe, "best": best, **planned_extra}
            if rng_ranks is not None:
                extra["rng_ranks"] = rng_ranks
            checkpoint.save_training_state(
                last_path,
                model=delivered,
                optimizer=optimizer,
                scheduler=scheduler,
                step=done,
                extra=extra,
                **({TRAINED_MODEL: model.state_dict()} if average is not None else {}),
            )
        saved["step"] = done

    def kept() -> str:
        if saved["step"] is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint {last_path} (step {saved['step']}) is kept"

    progress = tqdm(total=end, initial=start, desc=spec.stage, unit="step", disable=not main)
    done = start
    every = cfg.runtime.checkpoint_every
    try:
        with _StopSignals() as signals:
            for batch in loader:
                with runtime.autocast(device, precision):
                    loss = spec.loss(network, batch, device)
                # one all-reduce per step: the mean loss (NaN anywhere stops everyone) and any stop signal
                # on the training device: NCCL all-reduces CUDA tensors only
                shared = torch.tensor(
                    [loss.detach().float().item(), float(signals.received is not None)], device=device
                )
                distributed.all_reduce_sum_(shared)
                mean_loss = shared[0].item() / world
                if not math.isfinite(mean_loss):
                    raise TrainingError(
                        f"{spec.stage}: the loss is {mean_loss} at step {done + 1}; training stopped before "
                        f"that step's update and {kept()}. Lower the learning rate, or use "
                        f"runtime.precision=fp32 if it is {precision}"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if spec.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                with warnings.catch_warnings():
                    # fp16: the scaler skips the update of a step with inf gradients (its first ones,
                    # while it finds its scale); the schedule still counts that step, on purpose
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
                    scheduler.step()
                done += 1
                if average is not None:
                    average.update(done)
                progress.update(1)
                if done % spec.log_every == 0 or done == end:
                    writer.add_scalar("train/loss", mean_loss, done)
                    for index, group in enumerate(optimizer.param_groups):
                        writer.add_scalar(f"train/lr_group{index}", group["lr"], done)
                    progress.set_postfix(loss=f"{mean_loss:.3f}")
                validating = bool(spec.val_every) and (done % spec.val_every == 0 or done == spec.steps)
                stopping = shared[1].item() > 0
                saving = validating or (every and done % every == 0) or done == end or stopping
                if saving and not (_weights_finite(model) and (average is None or _weights_finite(average.model))):
                    # a finite loss can still come with non-finite gradients; such weights must
                    # never replace a good checkpoint
                    raise TrainingError(
                        f"{spec.stage}: the weights hold NaN or infinity after step {done} although its loss "
                        f"was finite; nothing of that step was saved and {kept()}. Lower the learning rate, "
                        f"or use runtime.precision=fp32 if it is {precision}"
                    )
                validated = False
                if validating:
                    result = _validate(spec, delivered, done, writer)
                    train_mode(model)
                    validated = True
                    if not (result[metric] <= best[metric]):  # NaN (nothing to score): keep the latest
                        best = {**result, "step": done}
                        if main:
                            checkpoint.save_training_state(
                                best_path,
                                model=delivered,
                                step=done,
                                extra={**spec.describe, "best": best, **planned_extra},
                            )
                if validated or (every and done % every == 0) or done == end:
                    save_last(done)
                if stopping:
                    save_last(done)
                    name = signal.Signals(signals.received).name if signals.received else "a stop signal"
                    message = f"{spec.stage}: {name} received: saved step {done} to {last_path}; run again to resume"
                    if main:
                        progress.write(message, file=sys.stderr)
                    raise SystemExit(128 + (signals.received or signal.SIGTERM))
    finally:
        progress.close()
        if own_writer:
            writer.close()
    return Outcome(step=done, best=best, resumed_from=start)


def _weights_finite(model: torch.nn.Module) -> bool:
    """Every parameter and buffer (BatchNorm statistics too) is finite."""
    return all(
        bool(torch.isfinite(tensor).all())
        for tensor in (*model.parameters(), *model.buffers())
        if tensor.is_floating_point()
    )


def _open_writer(cfg, stage: str, fresh: bool):
    from common import board

    return board.open_writer(cfg, stage, fresh=fresh)


def starts_fresh(cfg, checkpoints: str) -> bool:
    """Whether a training saved under checkpoints/<checkpoints>/ starts from step 0 (what
    :func:`fit` decides): no last checkpoint to resume from, or ``runtime.overwrite``."""
    return bool(cfg.runtime.overwrite) or not Layout(cfg).checkpoint(checkpoints, "last").exists()


def _validate(spec: TrainingSpec, model, done: int, writer) -> dict:
    """Rank 0 validates; the others wait for its result, so every rank keeps the same ``best``."""
    result = None
    if distributed.is_main():
        if spec.validate is None:
            result = {spec.metric: float("nan")}
        else:
            result = spec.validate(model, done, writer)
    return distributed.broadcast_object(result)


def _restore_random_state(state: dict | None, seed: int, rank: int, world: int) -> None:
    """The global random streams (dropout) where the checkpoint left them. Under several processes
    each rank has its own stream (rank 0 keeps the single-process one) and its own saved state."""
    if state is not None:
        ranks = state.get("extra", {}).get("rng_ranks")
        if ranks is not None and len(ranks) == world:
            runtime.set_rng_state(ranks[rank])
            return
        if state.get("rng") is not None and rank == 0:  # rank 0's stream is the single-process one
            runtime.set_rng_state(state["rng"])
            return
    if rank > 0:
        runtime.seed_everything(seed + 1_000_003 * rank)

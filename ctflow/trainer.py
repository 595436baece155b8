"""One training loop for every model of ctflow: density flows, sequence models and image flows.

A :class:`Trainer` minimises an objective over shuffled minibatches of ``range(n_items)`` with
Adam, gradient clipping and an injected learning-rate schedule (:func:`cosine`,
:class:`LinearWarmup`). What is trained is only seen through two things: the module whose
parameters are optimised and an ``objective(batch)`` that returns the loss of a
:class:`Minibatch`. Around the step it keeps

* **validation and early stopping**: ``validate()`` after every epoch; ``patience`` epochs
  without improvement stop training and the best weights are restored (``keep_best``);
* **faults**: a step whose loss or gradient is not finite never updates the weights; after
  ``nonfinite_patience`` such steps in a row the learning rate is halved; an epoch without a
  single update ends training;
* **budgets**: epochs, ``max_steps`` and a wall-clock ``time_limit`` per call of :meth:`fit`
  (checked after each step, so every call makes progress);
* **checkpoints and resumption** (one rule for every model): the weights, optimizer, the loop's
  :class:`TrainerState`, the data order and every RNG are written atomically at each epoch's end,
  every ``checkpoint_every`` steps and when a budget stops the run. ``resume=True`` continues
  from the checkpoint when it exists (else starts afresh), exactly as the uninterrupted run would
  have on CPU, also in the middle of an epoch; a run stopped by ``time_limit`` continues, one
  stopped by ``max_steps``, early stopping or faults is finished, and one that ran out of epochs
  continues when asked for more. A checkpoint made for other settings (``identity``) is refused
  with the differing settings named;
* **a log**: one record per epoch (JSON list at ``log_path``, rewritten atomically);
* **data parallelism** under ``torchrun`` (``dist``): each rank takes its part of every global
  batch, the objective is wrapped in DistributedDataParallel and each rank's loss is weighted by
  its share of the batch's units, so an update equals that of one process on the whole batch;
  skip decisions are taken on all-reduced values and rank 0's clock, so every rank ends with the
  same weights; rank 0 alone validates (its value is broadcast), logs and writes checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .checkpoint import (
    atomic_write_json,
    capture_rng_state,
    load_checkpoint,
    output_folder,
    restore_rng_state,
    save_checkpoint,
)
from .distributed import DistContext
from .ode import NFECounter

__all__ = [
    "LinearWarmup",
    "Minibatch",
    "Schedule",
    "StepLoss",
    "Trainer",
    "TrainerState",
    "constant",
    "cosine",
]

logger = logging.getLogger("ctflow.training")
CHECKPOINT_KIND = "ctflow.training"


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------


class Schedule(Protocol):
    """A learning-rate multiplier from the run's progress in [0, 1] and the updates made so far."""

    def __call__(self, progress: float, updates: int) -> float: ...


def cosine(progress: float, updates: int) -> float:
    """Cosine decay from 1 to 0 over the run (Loshchilov & Hutter 2017, "SGDR")."""
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def constant(progress: float, updates: int) -> float:
    """The learning rate as given, throughout."""
    return 1.0


@dataclass(frozen=True)
class LinearWarmup:
    """Linear warm-up over the first ``steps`` updates, then constant: ``min(1, (updates+1)/steps)``."""

    steps: int

    def __call__(self, progress: float, updates: int) -> float:
        return min(1.0, (updates + 1) / max(1, self.steps))


# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainerState:
    """Everything the loop counts; with the weights, optimizer and RNGs it resumes a run exactly."""

    epoch: int = 0  # epochs completed
    position: int = 0  # steps taken in the current epoch
    attempted: int = 0  # steps attempted, skipped ones included
    n_steps: int = 0  # weight updates
    skipped: int = 0
    consecutive_skips: int = 0
    lr_factor: float = 1.0
    lr_reductions: int = 0
    best_val: float = math.inf
    best_epoch: int | None = None  # index into the records with a validation value
    bad_epochs: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    loss_sum: float = 0.0
    loss_count: float = 0.0
    reg_sum: float = 0.0
    reg_count: float = 0.0
    epoch_attempts: int = 0
    running: float = math.nan
    elapsed: float = 0.0  # wall seconds over every call
    step_seconds: float = 0.0  # of them, inside steps (validation, logging and checkpoints excluded)
    items_seen: int = 0
    nfe_forward: int = 0
    nfe_backward: int = 0
    backward_steps: int = 0
    stop_reason: str = "epochs"
    finished: bool = False

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(state) - names)
        if unknown:
            raise ValueError(f"not a trainer state: unknown entries {unknown}")
        for key, value in state.items():
            setattr(self, key, value)


@dataclass(frozen=True)
class Minibatch:
    """The items of one step: this rank's ``indices``, the whole global batch, and ``shard``
    (which cuts a tensor over the global batch to this rank's part)."""

    indices: Tensor
    global_indices: Tensor
    shard: Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class StepLoss:
    """An objective's value: the loss to log, an optional penalty added to it for the gradient,
    and the units the loss averages over (None: the batch's items)."""

    loss: Tensor
    penalty: Tensor | None = None
    weight: Tensor | float | None = None


def _as_step_loss(out: Any) -> StepLoss:
    if isinstance(out, StepLoss):
        return out
    if isinstance(out, tuple):
        return StepLoss(*out)
    return StepLoss(out)


class _ObjectiveModule(nn.Module):
    """``forward(batch)`` = the objective, so that DistributedDataParallel sees the module."""

    def __init__(self, module: nn.Module, objective: Callable[[Minibatch], Any]):
        super().__init__()
        self.module = module
        self.objective = objective

    def forward(self, batch: Minibatch) -> StepLoss:
        return _as_step_loss(self.objective(batch))


def data_order(n_items: int, n_passes: int, pass_length: int, generator: torch.Generator) -> Tensor:
    """``n_passes`` shuffles of ``range(n_items)`` end to end, each padded with -1 to
    ``pass_length`` (whole batches), so that no batch mixes two passes (and repeats an item)."""
    if n_passes == 1:
        return torch.randperm(n_items, generator=generator)
    pad = torch.full((max(pass_length - n_items, 0),), -1, dtype=torch.long)
    passes = [
        torch.cat([torch.randperm(n_items, generator=generator), pad])[:pass_length] for _ in range(n_passes)
    ]
    return torch.cat(passes)


def _finite_parameters(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


class Trainer:
    """Minimise ``objective(batch)`` of ``module`` over minibatches of ``range(n_items)``.

    Args:
        module: the model; its trainable parameters are optimised, its ``state_dict`` checkpointed.
        objective: ``objective(Minibatch)`` returns the loss, ``(loss, penalty)`` or ``(loss,
            penalty, weight)`` (a :class:`StepLoss`): the sum of loss and penalty is minimised,
            the two are logged apart, ``weight`` (default: the batch's items) is the number of
            units the loss averages over, used to weight ranks exactly.
        n_items: the number of training items; batches are drawn from a shuffle of them.
        batch_size: items per step and process.
        epochs, max_steps: budgets (an epoch is ``steps_per_epoch`` steps, default one pass).
        lr, weight_decay, grad_clip: Adam and gradient-norm clipping (None: no clipping).
        schedule: learning-rate multiplier (default :func:`cosine` over the step budget, or over
            ``time_limit`` when that runs out first).
        validate: the validation loss of the current weights (lower is better), after each epoch.
        patience: epochs without improvement of ``validate`` before stopping.
        keep_best: restore the weights of the best validation at the end.
        time_limit: wall-clock seconds of one :meth:`fit` call.
        seed: seeds the data order (None: drawn from torch's generator).
        checkpoint, checkpoint_every, resume, identity: see the module docstring.
        log_path: JSON list of the epoch records.
        on_epoch_end: called on rank 0 with each new record (it may add entries) before it is logged.
        on_update: called after each update with the step's loss and its gradient norm before
            clipping.
        dist: the process group (default: one process).
        loss_name, val_name: names of the loss and the validation value in records and history.
        verbose, desc: tqdm progress bar.

    >>> import torch
    >>> from torch import nn
    >>> x = torch.linspace(-1, 1, 64).unsqueeze(1)
    >>> line = nn.Linear(1, 1)
    >>> def objective(batch):
    ...     return ((line(x[batch.indices]) - 3 * x[batch.indices]) ** 2).mean()
    >>> history = Trainer(line, objective, n_items=64, batch_size=16, epochs=60, lr=0.1, seed=0).fit()
    >>> history["n_steps"], round(line.weight.item(), 1)
    (240, 3.0)
    """

    def __init__(
        self,
        module: nn.Module,
        objective: Callable[[Minibatch], Any],
        *,
        n_items: int,
        batch_size: int,
        epochs: int = 1,
        max_steps: int | None = None,
        steps_per_epoch: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        grad_clip: float | None = 5.0,
        schedule: Schedule = cosine,
        validate: Callable[[], float] | None = None,
        patience: int | None = None,
        keep_best: bool = True,
        time_limit: float | None = None,
        seed: int | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
        identity: dict[str, Any] | None = None,
        log_path: str | os.PathLike | None = None,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        on_update: Callable[[float, float], None] | None = None,
        dist: DistContext | None = None,
        loss_name: str = "loss",
        val_name: str | None = None,
        verbose: bool = False,
        desc: str = "fit",
        nonfinite_patience: int = 3,
        nonfinite_lr_factor: float = 0.5,
    ):
        self.module, self.objective = module, objective
        self.params = [p for p in module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        if patience is not None and validate is None:
            raise ValueError("patience needs a validation set: pass val")
        if resume and checkpoint is None:
            raise ValueError("resume=True needs a checkpoint path")
        self.dist = dist or DistContext()
        self.device = self.params[0].device
        self.optimizer = torch.optim.Adam(self.params, lr=lr, weight_decay=weight_decay)
        self.lr, self.schedule, self.clip = lr, schedule, (math.inf if grad_clip is None else grad_clip)
        self.epochs, self.validate, self.patience, self.keep_best = epochs, validate, patience, keep_best
        self.time_limit, self.on_epoch_end, self.on_update = time_limit, on_epoch_end, on_update
        self.loss_name, self.val_name = loss_name, val_name or f"val_{loss_name}"
        self.verbose, self.desc = verbose, desc
        self.nonfinite_patience, self.nonfinite_lr_factor = nonfinite_patience, nonfinite_lr_factor
        self.global_batch = batch_size * self.dist.world_size
        self.batches_per_pass = self.dist.batches_per_epoch(n_items, batch_size)
        self.n_items, self.n_passes = n_items, 1
        self.steps_per_epoch = steps_per_epoch or self.batches_per_pass
        if steps_per_epoch is not None:
            self.n_passes = math.ceil(steps_per_epoch / self.batches_per_pass)
        self.total_steps = epochs * self.steps_per_epoch
        self.max_steps = max_steps
        if max_steps is not None:
            self.total_steps = min(self.total_steps, max_steps)
        self.generator = torch.Generator().manual_seed(self._seed(seed))
        self.counters = [m for m in module.modules() if isinstance(m, NFECounter)]
        self.checkpoint_path = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every, self.identity = checkpoint_every, dict(identity or {})
        self.log_path = Path(log_path) if log_path is not None else None
        for path in (self.checkpoint_path, self.log_path):  # before any training, not at the first save
            if path is not None:
                output_folder(path)
        self.state = TrainerState()
        self.best_weights: dict[str, Tensor] | None = None
        self.order: Tensor | None = None
        self._wrapped: nn.Module | None = None
        self._call_start, self._elapsed_before = time.perf_counter(), 0.0
        if resume and self.dist.world_size > 1:
            # Rank 0 writes the checkpoint that every rank resumes from: none may look for it
            # before rank 0 is done writing (a rank that missed it would start afresh, alone).
            self.dist.barrier()
        if resume and self.checkpoint_path is not None and self.checkpoint_path.is_file():
            self.load(self.checkpoint_path)

    def _seed(self, seed: int | None) -> int:
        if seed is None:
            seed = int(torch.randint(2**62, ()).item())
            if self.dist.world_size > 1:  # every rank must draw the same data order
                seed = int(self.dist.from_main(seed))
        return int(seed)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimizer, loop state, best weights, data order and RNG states."""
        state = {
            "kind": CHECKPOINT_KIND,
            "identity": self.identity,
            "global_batch": self.global_batch,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trainer": self.state.state_dict(),
            "best_state": self.best_weights,
            "order": self.order,
            "generator": self.generator.get_state(),
            "rng": capture_rng_state(),
        }
        if self.device.type == "cuda":
            state["device_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load(self, path: Path) -> None:
        """Continue from the checkpoint at ``path`` (see the module docstring)."""
        saved = load_checkpoint(path, map_location=self.device)
        if saved.get("kind") != CHECKPOINT_KIND:
            raise ValueError(f"{path} is not a ctflow training checkpoint")
        if saved.get("identity", {}) != self.identity:
            differing = "; ".join(_differences(saved.get("identity", {}), self.identity))
            raise ValueError(
                f"checkpoint {path} was made for {saved.get('identity')}, not {self.identity} "
                f"(differing: {differing})"
            )
        trainer = saved["trainer"]
        if trainer["position"] and saved["global_batch"] != self.global_batch:
            raise ValueError(
                f"checkpoint {path} stopped mid-epoch with global batches of {saved['global_batch']} "
                f"items; resume with batch_size x processes = {saved['global_batch']}, "
                f"not {self.global_batch}"
            )
        self.module.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.state.load_state_dict(trainer)
        self.best_weights, self.order = saved.get("best_state"), saved.get("order")
        s = self.state
        if s.stop_reason == "epochs" and not trainer["position"] and 0 < s.epoch < self.epochs:
            logger.warning(
                "continuing a run that ended after %d epochs to %d epochs: the learning rate follows its "
                "schedule over the new total of %d steps from step %d (%.0f%% of the way), so it rises "
                "again from where the shorter schedule had brought it",
                s.epoch,
                self.epochs,
                self.total_steps,
                s.attempted,
                100.0 * s.attempted / max(1, self.total_steps),
            )
        self.generator.set_state(saved["generator"])
        restore_rng_state(saved["rng"])
        if self.device.type == "cuda" and "device_rng" in saved:
            torch.cuda.set_rng_state(saved["device_rng"].cpu(), self.device)

    def save(self) -> None:
        """Write the checkpoint (rank 0; never while a weight is not finite)."""
        if self.checkpoint_path is None or not self.dist.is_main:
            return
        if not _finite_parameters(self.module):
            logger.warning("not writing a checkpoint: some weights are not finite")
            return
        self.state.elapsed = self._elapsed()
        save_checkpoint(self.checkpoint_path, self.state_dict())

    # ------------------------------------------------------------------ data and time

    def upcoming_batch(self) -> Tensor:
        """The global batch of the next step (draws the epoch's order if not drawn yet)."""
        if self.order is None:
            pass_length = self.batches_per_pass * self.global_batch
            self.order = data_order(self.n_items, self.n_passes, pass_length, self.generator)
        i = self.state.position
        idx = self.order[i * self.global_batch : (i + 1) * self.global_batch]
        return idx[idx >= 0]

    def _call_seconds(self) -> float:
        return time.perf_counter() - self._call_start

    def _elapsed(self) -> float:
        return self._elapsed_before + self._call_seconds()

    def _progress(self) -> float:
        frac = self.state.attempted / self.total_steps
        if self.time_limit is not None:
            frac = max(frac, self._call_seconds() / self.time_limit if self.time_limit > 0 else 1.0)
        return min(frac, 1.0)

    def _over_time(self) -> bool:
        over = self.time_limit is not None and self._call_seconds() >= self.time_limit
        if self.dist.world_size > 1:  # rank 0's clock decides for everyone
            over = bool(self.dist.from_main(float(over)) > 0)
        return over

    # ------------------------------------------------------------------ one step

    def _objective_module(self) -> nn.Module:
        if self._wrapped is None:
            self._wrapped = _ObjectiveModule(self.module, self.objective)
            if self.dist.world_size > 1:
                from torch.nn.parallel import DistributedDataParallel

                self._wrapped = DistributedDataParallel(
                    self._wrapped,
                    device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    find_unused_parameters=True,
                )
        return self._wrapped

    def _nfe(self) -> tuple[int, int]:
        return sum(c.nfe_forward for c in self.counters), sum(c.nfe_backward for c in self.counters)

    def step(self) -> bool:
        """One step on the next batch; returns whether the weights were updated."""
        t0 = time.perf_counter()
        try:
            return self._step()
        finally:
            self.state.step_seconds += time.perf_counter() - t0

    def _step(self) -> bool:
        s, world = self.state, self.dist.world_size
        factor = float(self.schedule(self._progress(), s.n_steps))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * s.lr_factor * factor
        global_idx = self.upcoming_batch()
        s.items_seen += len(global_idx)
        s.position += 1
        s.attempted += 1
        s.epoch_attempts += 1
        batch = Minibatch(self.dist.shard(global_idx).to(self.device), global_idx, self.dist.shard)
        self.optimizer.zero_grad(set_to_none=True)
        fwd0, bwd0 = self._nfe()
        out: StepLoss = self._objective_module()(batch)
        units = float(out.weight) if out.weight is not None else float(len(batch.indices))
        objective = out.loss if out.penalty is None else out.loss + out.penalty
        if world > 1:
            objective = objective * (world * units / float(self.dist.all_sum(units)))
        s.nfe_forward += self._nfe()[0] - fwd0
        ok, grad_norm = bool(torch.isfinite(objective)), math.nan
        if ok or world > 1:  # every rank joins the gradient all-reduce
            objective.backward()
            s.backward_steps += 1
            s.nfe_backward += self._nfe()[1] - bwd0
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.clip))
            ok = ok and math.isfinite(grad_norm)
        n = float(len(batch.indices))
        value = float(out.loss.detach()) if ok else 0.0
        penalty = float(out.penalty.detach()) if ok and out.penalty is not None else 0.0
        total = [value * n, penalty * n, n, float(not ok)]
        if world > 1:
            total = self.dist.all_sum(torch.tensor(total, dtype=torch.float64)).tolist()
        if total[3] > 0:
            self._skip()
            return False
        self.optimizer.step()
        if world > 1:  # the global batch's means
            value, penalty = total[0] / total[2], total[1] / total[2]
        self._record_update(value, penalty if out.penalty is not None else None, total[2])
        if self.on_update is not None:
            self.on_update(value, grad_norm)
        return True

    def _skip(self) -> None:
        s = self.state
        self.optimizer.zero_grad(set_to_none=True)
        s.skipped += 1
        s.consecutive_skips += 1
        logger.warning("%s: step %d skipped (non-finite loss or gradient)", self.desc, s.attempted)
        if s.consecutive_skips >= self.nonfinite_patience:
            s.lr_factor *= self.nonfinite_lr_factor
            s.lr_reductions += 1
            s.consecutive_skips = 0
            logger.warning(
                "%s: %d non-finite steps in a row, learning rate scaled to %.3g x",
                self.desc,
                self.nonfinite_patience,
                s.lr_factor,
            )

    def _record_update(self, loss: float, penalty: float | None, units: float) -> None:
        s = self.state
        s.consecutive_skips = 0
        s.n_steps += 1
        s.loss_sum += loss * units
        s.loss_count += units
        if penalty is not None:
            s.reg_sum += penalty * units
            s.reg_count += units
        s.running = loss if math.isnan(s.running) else 0.95 * s.running + 0.05 * loss
        if self.checkpoint_every is not None and s.attempted % self.checkpoint_every == 0:
            self.save()

    # ------------------------------------------------------------------ end of an epoch

    def end_epoch(self, stop: str | None) -> dict[str, Any]:
        """Close the epoch (or the part of it run before ``stop``): validate, keep the best
        weights, record, log, decide whether training is over, checkpoint."""
        s = self.state
        complete = s.position >= self.steps_per_epoch
        record: dict[str, Any] = {
            "epoch": s.epoch + 1,
            "complete": complete,
            "step": s.attempted,
            f"train_{self.loss_name}": s.loss_sum / s.loss_count if s.loss_count else math.nan,
        }
        if s.reg_count:
            record["train_regularization"] = s.reg_sum / s.reg_count
        if self.validate is not None:
            record[self.val_name] = self._validation()
        record.update(seconds=self._elapsed(), skipped_steps=s.skipped, lr_reductions=s.lr_reductions)
        if self.on_epoch_end is not None and self.dist.is_main:
            self.on_epoch_end(record)
        s.records.append(record)
        self._write_log()
        updates = s.loss_count
        s.loss_sum = s.loss_count = s.reg_sum = s.reg_count = 0.0
        s.epoch_attempts = 0
        if complete:
            s.epoch, s.position, self.order = s.epoch + 1, 0, None
        self._decide(stop, updates)
        self.save()
        return record

    def _validation(self) -> float:
        s = self.state
        v = float(self.dist.from_main(self.validate() if self.dist.is_main else 0.0))
        n_validations = sum(self.val_name in r for r in s.records) + 1
        if math.isfinite(v) and v < s.best_val:
            s.best_val, s.best_epoch, s.bad_epochs = v, n_validations - 1, 0
            if self.keep_best:
                self.best_weights = {k: t.detach().clone() for k, t in self.module.state_dict().items()}
        else:
            s.bad_epochs += 1
        return v

    def _decide(self, stop: str | None, updates: float) -> None:
        s = self.state
        if stop == "time_limit":
            s.stop_reason = stop
        elif stop is not None:
            s.stop_reason, s.finished = stop, True
        elif updates == 0:
            s.stop_reason, s.finished = "non_finite", True
        elif self.patience is not None and s.bad_epochs >= self.patience:
            s.stop_reason, s.finished = "early_stopping", True
        else:
            s.stop_reason = "epochs"

    def _write_log(self) -> None:
        if self.log_path is None or not self.dist.is_main:
            return
        atomic_write_json(self.log_path, self.state.records)

    # ------------------------------------------------------------------ the loop

    def _run_epoch(self, bar: tqdm) -> str | None:
        """Steps until the epoch ends (None) or a budget stops the run (its reason)."""
        s = self.state
        while s.position < self.steps_per_epoch:
            if s.attempted >= self.total_steps:
                return "max_steps"
            self.step()
            bar.update(1)
            if self.verbose and s.n_steps % 10 == 0:
                bar.set_postfix({self.loss_name: f"{s.running:.4f}"}, refresh=False)
            if self._over_time():
                return "time_limit"
        return None

    def fit(self) -> dict[str, Any]:
        """Train until a budget, early stopping or faults end the run; returns :meth:`history`."""
        s = self.state
        self._elapsed_before, self._call_start = s.elapsed, time.perf_counter()
        was_training = self.module.training
        self.module.train()
        bar = tqdm(
            total=self.total_steps,
            initial=min(s.attempted, self.total_steps),
            desc=self.desc,
            disable=not (self.verbose and self.dist.is_main),
            leave=True,
            dynamic_ncols=True,
        )
        try:
            while not s.finished and s.epoch < self.epochs:
                stop = self._run_epoch(bar)
                if s.epoch_attempts == 0:
                    s.stop_reason = stop or s.stop_reason
                    break  # the budget ran out at an epoch boundary
                record = self.end_epoch(stop)
                if self.verbose and self.val_name in record:
                    bar.set_postfix({self.val_name: f"{record[self.val_name]:.4f}"})
                if stop is not None:
                    break
            if s.stop_reason == "epochs" and self.max_steps is not None and s.attempted >= self.max_steps:
                s.stop_reason = "max_steps"
        finally:
            bar.close()
            self.module.train(was_training)
            s.elapsed = self._elapsed()
        if self.best_weights is not None and self.keep_best:
            self.module.load_state_dict(self.best_weights)
        return self.history()

    def history(self) -> dict[str, Any]:
        """Per-epoch lists (``train_<loss>``, ``train_regularization``, ``val_<loss>``), the best
        validation and its epoch, counters, ``seconds``, ``stop_reason``, ``world_size`` and, for
        models with ODE solves (:class:`ctflow.ode.NFECounter`), function evaluations per step."""
        s, records = self.state, self.state.records
        vals = [r[self.val_name] for r in records if self.val_name in r]
        with_counters = bool(self.counters)
        return {
            f"train_{self.loss_name}": [r[f"train_{self.loss_name}"] for r in records],
            "train_regularization": [
                r["train_regularization"] for r in records if "train_regularization" in r
            ],
            self.val_name: vals,
            f"best_{self.val_name}": s.best_val if s.best_epoch is not None else None,
            "best_epoch": s.best_epoch,
            "epochs": len(records),
            "n_steps": s.n_steps,
            "skipped_steps": s.skipped,
            "lr_reductions": s.lr_reductions,
            "seconds": s.elapsed,
            "stop_reason": s.stop_reason,
            "world_size": self.dist.world_size,
            "nfe_forward_per_step": s.nfe_forward / s.attempted if with_counters and s.attempted else None,
            "nfe_backward_per_step": (
                s.nfe_backward / s.backward_steps if with_counters and s.backward_steps else None
            ),
        }

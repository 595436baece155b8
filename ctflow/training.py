"""Training loops: maximum-likelihood fitting of flows and of sequence models.

:func:`fit_density` minimises the mean negative log-likelihood of a :class:`ctflow.flows.Flow`;
:func:`fit_model` minimises ``model.loss(batch)`` of a sequence model over minibatches of series
of an :class:`~ctflow.data.IrregularBatch`, with early stopping on the NLL per observed value of
held-out series. Both use one loop (:func:`_train_loop`): Adam, a cosine learning-rate schedule,
gradient clipping, early stopping that restores the best weights, a wall-clock budget, a tqdm
bar, and steps with a non-finite loss or gradient skipped. The loop only needs a module and a
function giving the loss of a minibatch, so any model with a loss can reuse it.

Penalties that layers compute during a forward pass (e.g. the kinetic-energy and Jacobian
regularisers of a :class:`ctflow.flows.CNF`) enter the training loss through
:func:`collect_regularization`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import numbers
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from .checkpoint import (
    atomic_write,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .data.irregular import IrregularBatch
from .distributed import DistContext, launched_by_torchrun, setup
from .flows.base import set_validation, validation_enabled
from .ode import NFECounter

__all__ = [
    "collect_regularization",
    "evaluate_forecast_nll",
    "evaluate_nll",
    "evaluate_sequence_nll",
    "fit_density",
    "fit_model",
]

ArrayLike = Tensor | np.ndarray
logger = logging.getLogger("ctflow.training")


# ---------------------------------------------------------------------------------------------
# Argument checks and conversion
# ---------------------------------------------------------------------------------------------


def _positive_int(value: Any, name: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def _real(value: Any, name: str, *, positive: bool, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    what = "a positive" if positive else "a non-negative"
    suffix = " or None" if allow_none else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {what} number{suffix}, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {what} finite number{suffix}, got {value!r}")
    return value


def _loop_options(
    epochs: Any,
    max_steps: Any,
    batch_size: Any,
    lr: Any,
    weight_decay: Any,
    grad_clip: Any,
    patience: Any,
    time_limit: Any,
    seed: Any,
    has_val: bool,
) -> dict[str, Any]:
    """The checked optimisation options shared by :func:`fit_density` and :func:`fit_model`."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    patience = _positive_int(patience, "patience", allow_none=True)
    if patience is not None and not has_val:
        raise ValueError("patience needs a validation set: pass val")
    return {
        "epochs": _positive_int(epochs, "epochs"),
        "max_steps": _positive_int(max_steps, "max_steps", allow_none=True),
        "batch_size": _positive_int(batch_size, "batch_size"),
        "lr": _real(lr, "lr", positive=True),
        "weight_decay": _real(weight_decay, "weight_decay", positive=False),
        "grad_clip": _real(grad_clip, "grad_clip", positive=True, allow_none=True),
        "patience": patience,
        "time_limit": _real(time_limit, "time_limit", positive=True, allow_none=True),
        "seed": seed,
    }


def _check_flow(flow: Any) -> None:
    if not isinstance(flow, nn.Module) or not callable(getattr(flow, "log_prob", None)):
        raise TypeError(
            f"flow must be a torch.nn.Module with a log_prob method (e.g. a ctflow.flows.Flow), "
            f"got {type(flow).__name__}"
        )


def _dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of a module's first floating-point parameter or buffer."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.get_default_dtype(), torch.device("cpu")


def _as_tensor(value: Any, name: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``value`` (tensor or numpy array) as a finite tensor of ``dtype`` on ``device``."""
    if isinstance(value, Tensor):
        t = value.detach()
    elif isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.number) or np.issubdtype(value.dtype, np.complexfloating):
            raise TypeError(f"{name} must hold real numbers, got numpy dtype {value.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(value))
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    t = t.to(dtype=dtype, device=device)
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} has NaN or infinite entries")
    return t


def _data(flow: nn.Module, value: Any, name: str) -> Tensor:
    dtype, device = _dtype_device(flow)
    x = _as_tensor(value, name, dtype, device)
    event_shape = getattr(flow, "event_shape", None)
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, ...) with n >= 1 rows, got {tuple(x.shape)}")
    if event_shape is not None and tuple(x.shape[1:]) != tuple(event_shape):
        expected = ", ".join(map(str, event_shape))
        raise ValueError(f"{name} must have shape (n, {expected}) for this flow, got {tuple(x.shape)}")
    return x


@dataclass
class _Context:
    """A context that is either one row per sample (``per_row``) or shared by all samples."""

    value: Tensor | None
    per_row: bool = False

    def rows(self, idx: Tensor | slice) -> Tensor | None:
        if self.value is None or not self.per_row:
            return self.value
        return self.value[idx]


def _context(flow: nn.Module, value: Any, n: int, name: str, data_name: str) -> _Context:
    if value is None:
        return _Context(None)
    dtype, device = _dtype_device(flow)
    c = _as_tensor(value, name, dtype, device)
    if c.dim() == 1 or (c.dim() == 2 and c.shape[0] == 1):
        return _Context(c, per_row=False)
    if c.dim() == 2 and c.shape[0] == n:
        return _Context(c, per_row=True)
    raise ValueError(
        f"{name} must have shape (context_dim,), (1, context_dim) or ({n}, context_dim) to match "
        f"{data_name}, got {tuple(c.shape)}"
    )


@contextlib.contextmanager
def _finiteness_checks_off() -> Iterator[None]:
    """Let ``Flow.log_prob`` return non-finite values instead of raising (inputs are checked here)."""
    previous = validation_enabled()
    set_validation(False)
    try:
        yield
    finally:
        set_validation(previous)


def collect_regularization(module: nn.Module) -> Tensor | None:
    """Sum of the penalties that ``module`` and its submodules hold from their last forward pass.

    Calls ``regularization()`` once on every module in ``module.modules()`` (the module itself
    included) that has such a method; each returns a scalar tensor or ``None`` when it has nothing
    to add. A :class:`ctflow.flows.CNF` returns the weighted kinetic and Jacobian integrals of its
    last training-mode forward solve and forgets them, so call this once after each loss
    evaluation. Returns ``None`` when no module contributed.
    """
    total: Tensor | None = None
    for m in module.modules():
        method = getattr(m, "regularization", None)
        if not callable(method):
            continue
        reg = method()
        if reg is None:
            continue
        if not isinstance(reg, Tensor) or reg.numel() != 1:
            raise TypeError(
                f"{type(m).__name__}.regularization() must return a scalar tensor or None, "
                f"got {type(reg).__name__}{tuple(reg.shape) if isinstance(reg, Tensor) else ''}"
            )
        reg = reg.reshape(())
        total = reg if total is None else total + reg
    return total


def _nfe_counts(counters: list[NFECounter]) -> tuple[int, int]:
    """Total forward and backward function evaluations counted so far by ``counters``."""
    return sum(c.nfe_forward for c in counters), sum(c.nfe_backward for c in counters)


def _batch_nll(flow: nn.Module, x: Tensor, context: Tensor | None) -> Tensor:
    lp = flow.log_prob(x) if context is None else flow.log_prob(x, context)
    return -lp.mean()


def _mean_nll(flow: nn.Module, x: Tensor, context: _Context, batch_size: int) -> float:
    """Mean NLL of all rows of ``x`` in eval mode without gradients (restores the module's mode)."""
    was_training = flow.training
    flow.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                sl = slice(start, start + batch_size)
                lp = flow.log_prob(x[sl]) if context.value is None else flow.log_prob(x[sl], context.rows(sl))
                total += float(lp.double().sum())
    finally:
        flow.train(was_training)
    return -total / x.shape[0]


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def evaluate_nll(
    flow: nn.Module, x: ArrayLike, context: ArrayLike | None = None, batch_size: int = 8192
) -> float:
    """Mean negative log-likelihood of the rows of ``x`` in nats, without gradients.

    The flow is evaluated in eval mode (its mode is restored afterwards). ``x`` and ``context`` may
    be tensors or numpy arrays; they are converted to the flow's dtype and device. ``context`` is
    one row per sample or a single shared row. A non-finite log-density of some point gives a
    non-finite result rather than an error.
    """
    _check_flow(flow)
    batch_size = _positive_int(batch_size, "batch_size")
    xt = _data(flow, x, "x")
    ctx = _context(flow, context, xt.shape[0], "context", "x")
    with _finiteness_checks_off():
        return _mean_nll(flow, xt, ctx, batch_size)


def fit_density(
    flow: nn.Module,
    train: ArrayLike,
    val: ArrayLike | None = None,
    *,
    context: ArrayLike | None = None,
    val_context: ArrayLike | None = None,
    epochs: int = 100,
    max_steps: int | None = None,
    batch_size: int = 512,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    grad_clip: float | None = 5.0,
    patience: int | None = None,
    time_limit: float | None = None,
    seed: int | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Fit ``flow`` to the rows of ``train`` by maximum likelihood (minimise the mean ``-log_prob``).

    Adam (``weight_decay`` is its L2 penalty) with a cosine learning-rate schedule from ``lr`` to 0.
    The schedule follows whichever budget is used up fastest: the steps (``epochs`` times the
    batches per epoch, capped by ``max_steps``) or the wall-clock ``time_limit``; so a time-limited
    fit still ends at a small learning rate. Gradients are clipped to norm ``grad_clip`` (``None``:
    no clipping). A batch whose loss or gradient is not finite never updates the weights: the
    step is skipped and counted; an epoch in which every step is skipped ends training.

    Regularisation: the loss of a batch is its mean NLL plus :func:`collect_regularization` of
    ``flow``, i.e. the sum of ``regularization()`` over every submodule that has that method and
    returned a tensor for this batch's forward pass. So a :class:`ctflow.flows.CNF` built with
    ``kinetic=`` / ``jacobian=`` weights is trained with its kinetic-energy and Jacobian-Frobenius
    penalties (Finlay et al. 2020); without such modules the loss is the NLL alone. Validation and
    ``best_val_nll`` use the NLL only (penalties are computed in training mode only).

    With ``val``, the validation NLL is computed after every epoch and the best weights are
    restored at the end; with ``patience`` as well, training stops after ``patience`` epochs
    without improvement. ``time_limit`` (seconds) stops training once the budget is spent,
    validation included.

    Args:
        flow: a :class:`ctflow.flows.Flow` (any module with ``log_prob(x[, context])`` works).
        train, val: data ``(n, *event_shape)`` as tensors or numpy arrays, converted to the dtype
            and device of the flow's parameters.
        context, val_context: conditioning for a conditional flow: one row per sample or a single
            row shared by all.
        epochs: passes over ``train``; ``max_steps`` caps the number of batches processed.
        batch_size: rows per step (the last batch of an epoch may be smaller).
        seed: seeds the shuffling (the flow's initial weights are not touched).
        verbose: show a tqdm progress bar with the running loss and the validation NLL.

    Returns:
        A history dict: ``train_nll`` (per epoch, mean minibatch NLL over the updates of that
        epoch, penalties excluded), ``train_regularization`` (per epoch, mean penalty over the
        updates; empty when no module returned one), ``val_nll`` (per epoch, empty without
        ``val``), ``best_val_nll`` and ``best_epoch`` (index into ``val_nll``; ``None`` without
        ``val``), ``epochs`` (epochs started), ``n_steps`` (weight updates made),
        ``skipped_steps``, ``seconds``, ``stop_reason`` (``"epochs"``, ``"max_steps"``,
        ``"time_limit"``, ``"early_stopping"`` or ``"non_finite"``), and for flows with ODE
        solves (any :class:`ctflow.ode.NFECounter` submodule, e.g. in a CNF)
        ``nfe_forward_per_step`` (mean function evaluations of the forward solves per training
        step, all counters summed) and ``nfe_backward_per_step`` (mean per step that ran
        backpropagation); both are ``None`` for flows without counters. The counters are read
        before and after each step, not reset, and validation solves are not included.
    """
    _check_flow(flow)
    options = _loop_options(
        epochs,
        max_steps,
        batch_size,
        lr,
        weight_decay,
        grad_clip,
        patience,
        time_limit,
        seed,
        val is not None,
    )
    if val is None and val_context is not None:
        raise ValueError("val_context was given without val")
    if val is not None and context is not None and val_context is None:
        raise ValueError("the flow is trained with a context: pass val_context for val as well")

    x = _data(flow, train, "train")
    ctx = _context(flow, context, x.shape[0], "context", "train")
    xv = _data(flow, val, "val") if val is not None else None
    ctx_v = _context(flow, val_context, xv.shape[0], "val_context", "val") if xv is not None else None

    def batch_loss(idx: Tensor) -> tuple[Tensor, Tensor | None]:
        nll = _batch_nll(flow, x[idx], ctx.rows(idx))
        return nll, collect_regularization(flow)

    val_loss = None
    if xv is not None:

        def val_loss() -> float:
            return _mean_nll(flow, xv, ctx_v, max(options["batch_size"], 8192))

    with _finiteness_checks_off():
        return _train_loop(
            flow,
            n_train=x.shape[0],
            batch_loss=batch_loss,
            val_loss=val_loss,
            **options,
            verbose=bool(verbose),
            desc="fit_density",
            loss_name="nll",
        )


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for method in ("loss", "nll_terms"):
        if not callable(getattr(model, method, None)):
            raise TypeError(f"model must have a {method}(batch) method ({type(model).__name__} has none)")


def _check_batch(batch: Any, name: str) -> IrregularBatch:
    if not isinstance(batch, IrregularBatch):
        raise TypeError(f"{name} must be an IrregularBatch, got {type(batch).__name__}")
    if len(batch) == 0:
        raise ValueError(f"{name} has no series")
    return batch


def _dist_context(distributed: bool | None, device: torch.device) -> DistContext:
    """The process group to train in: joined when launched by torchrun (or asked for)."""
    if distributed is None:
        distributed = launched_by_torchrun()
    if not distributed:
        return DistContext()
    if not launched_by_torchrun():
        raise ValueError(
            "distributed=True needs a torchrun launch (RANK and WORLD_SIZE > 1 in the environment)"
        )
    return setup(device)


def evaluate_sequence_nll(model: nn.Module, data: IrregularBatch, batch_size: int = 256) -> float:
    """NLL per observed value (nats) of ``model.nll_terms`` over all series of ``data``.

    The model runs in eval mode without gradients (its mode is restored afterwards); ``data`` is
    moved to the model's device chunk by chunk.
    """
    _check_model(model)
    _check_batch(data, "data")
    batch_size = _positive_int(batch_size, "batch_size")
    dtype, device = _dtype_device(model)

    def terms(part: slice) -> tuple[Tensor, Tensor]:
        return model.nll_terms(data.select(part, trim=True).to(device, dtype))

    return _mean_over_chunks(model, len(data), batch_size, terms)


def _mean_over_chunks(
    model: nn.Module, n: int, batch_size: int, terms: Callable[[slice], tuple[Tensor, Tensor]]
) -> float:
    """Sum of ``terms(chunk)[0]`` over chunks of ``range(n)`` divided by the sum of ``[1]``, with
    the model in eval mode and no gradients (its mode restored afterwards)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                value, weight = terms(slice(start, start + batch_size))
                total += float(value.double())
                count += float(weight)
    finally:
        model.train(was_training)
    return total / count if count else math.nan


def evaluate_forecast_nll(
    model: nn.Module, context: IrregularBatch, target: IrregularBatch, batch_size: int = 256
) -> float:
    """NLL per observed target value (nats) of forecasts from each series' context.

    Every target value is scored by the model's marginal predictive density at its time given
    the whole context (``model.predict(model.filter(context), target.times)``), not updated by
    earlier targets: the density that forecasts use. ``target`` has the same series as
    ``context``, each with at least one row after its context.
    """
    _check_model(model)
    for method in ("filter", "predict"):
        if not callable(getattr(model, method, None)):
            raise TypeError(f"model must have a {method} method ({type(model).__name__} has none)")
    _check_batch(context, "context")
    _check_batch(target, "target")
    if len(context) != len(target):
        raise ValueError(f"context has {len(context)} series, target has {len(target)}")
    dtype, device = _dtype_device(model)

    def terms(part: slice) -> tuple[Tensor, Tensor]:
        ctx = context.select(part, trim=True).to(device, dtype)
        tgt = target.select(part, trim=True).to(device, dtype)
        predictive = model.predict(model.filter(ctx), tgt.times)
        return -predictive.log_prob(tgt.values, tgt.mask).sum(), tgt.mask.sum()

    return _mean_over_chunks(model, len(context), batch_size, terms)


def fit_model(
    model: nn.Module,
    train: IrregularBatch,
    val: IrregularBatch | None = None,
    *,
    epochs: int = 100,
    max_steps: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    grad_clip: float | None = 5.0,
    patience: int | None = None,
    time_limit: float | None = None,
    seed: int | None = None,
    verbose: bool = False,
    desc: str = "fit",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    log_path: str | os.PathLike | None = None,
    distributed: bool | None = None,
    eval_every: int | None = None,
    validate: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Fit a sequence model (anything with ``loss(batch)`` and ``nll_terms(batch)``) to series.

    Each step draws ``batch_size`` whole series of ``train`` (shuffled each epoch), trims them to
    their longest series, moves them to the model's device and minimises ``model.loss(batch)``
    plus :func:`collect_regularization`. After each epoch the NLL per observed value of ``val``
    (:func:`evaluate_sequence_nll`) is recorded; training stops after ``patience`` epochs without
    improvement and the best weights are restored. Other arguments and the returned history are
    as in :func:`fit_density` (history keys ``train_loss``, ``val_loss``, ``best_val_loss``).

    Checkpoints, ``resume``, the JSON ``log_path`` and fault handling are described in
    :func:`_train_loop`. ``distributed`` (default: when launched by ``torchrun`` with more than
    one process) trains data-parallel: ``batch_size`` series per process and step, gradients
    averaged with DistributedDataParallel, every rank ending with the same weights.

    ``eval_every``: steps between validations (and the unit of ``epochs`` and ``patience``),
    instead of one pass over ``train``; with few series a pass is a step or two, too short to
    judge improvement. ``validate()``: the validation loss of the current weights, used instead
    of ``val``'s NLL (e.g. the forecast NLL of held-out last observations).
    """
    _check_model(model)
    if val is not None and validate is not None:
        raise ValueError("pass either val or validate, not both")
    train = _check_batch(train, "train")
    if val is not None:
        val = _check_batch(val, "val")
        if val.n_variables != train.n_variables:
            raise ValueError(f"val has {val.n_variables} variables, train has {train.n_variables}")
    options = _loop_options(
        epochs,
        max_steps,
        batch_size,
        lr,
        weight_decay,
        grad_clip,
        patience,
        time_limit,
        seed,
        val is not None or validate is not None,
    )
    eval_every = _positive_int(eval_every, "eval_every", allow_none=True)
    dtype, device = _dtype_device(model)
    data = train.to(device, dtype)

    def batch_loss(idx: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        batch = data.select(idx, trim=True)
        return model.loss(batch), collect_regularization(model), batch.mask.sum()

    val_loss = validate
    if val is not None:

        def val_loss() -> float:
            return evaluate_sequence_nll(model, val, batch_size=max(options["batch_size"], 256))

    return _train_loop(
        model,
        n_train=len(data),
        batch_loss=batch_loss,
        val_loss=val_loss,
        **options,
        verbose=bool(verbose),
        desc=desc,
        loss_name="loss",
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume=resume,
        log_path=log_path,
        dist_ctx=_dist_context(distributed, device),
        steps_per_epoch=eval_every,
    )


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


class _Objective(nn.Module):
    """``forward(indices)`` = the minibatch loss, so that DistributedDataParallel can wrap it."""

    def __init__(self, module: nn.Module, batch_loss: Callable[[Tensor], Any]):
        super().__init__()
        self.module = module
        self.batch_loss = batch_loss

    def forward(self, idx: Tensor) -> tuple[Tensor, Tensor | None, Any]:
        out = self.batch_loss(idx)
        if not isinstance(out, tuple):
            return out, None, None
        if len(out) == 2:
            return out[0], out[1], None
        return out


def _data_order(n_train: int, n_passes: int, pass_length: int, generator: torch.Generator) -> Tensor:
    """``n_passes`` shuffles of ``range(n_train)`` end to end, each padded with -1 to
    ``pass_length`` (whole batches), so that no batch mixes two passes (and repeats a series)."""
    if n_passes == 1:
        return torch.randperm(n_train, generator=generator)
    pad = torch.full((max(pass_length - n_train, 0),), -1, dtype=torch.long)
    passes = [
        torch.cat([torch.randperm(n_train, generator=generator), pad])[:pass_length] for _ in range(n_passes)
    ]
    return torch.cat(passes)


def _finite_parameters(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, default=float)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _train_loop(
    module: nn.Module,
    *,
    n_train: int,
    batch_loss: Callable[[Tensor], Any],
    val_loss: Callable[[], float] | None,
    epochs: int,
    max_steps: int | None,
    batch_size: int,
    lr: float,
    weight_decay: float,
    grad_clip: float | None,
    patience: int | None,
    time_limit: float | None,
    seed: int | None,
    verbose: bool,
    desc: str,
    loss_name: str,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    log_path: str | os.PathLike | None = None,
    dist_ctx: DistContext | None = None,
    nonfinite_patience: int = 3,
    nonfinite_lr_factor: float = 0.5,
    steps_per_epoch: int | None = None,
) -> dict[str, Any]:
    """Minimise ``batch_loss(indices)`` over shuffled minibatches of ``range(n_train)``.

    ``batch_loss`` returns the loss of a minibatch, or ``(loss, penalty)``, or ``(loss, penalty,
    weight)`` (penalty ``None`` or a scalar tensor; ``weight`` the number of units the loss
    averages over, e.g. observed values, used to combine ranks exactly); the sum of loss and
    penalty is minimised while the two are logged apart. ``val_loss()`` returns the validation
    loss of the current weights (lower is better); history keys use ``loss_name``.
    ``steps_per_epoch`` (default: one pass over the data) sets the steps between validations;
    longer than a pass, the data order is several shuffles end to end.

    Faults: a step whose objective or gradient is not finite is skipped (the weights and the
    optimizer state stay as they were) and logged; after ``nonfinite_patience`` consecutive
    skipped steps the learning rate is multiplied by ``nonfinite_lr_factor``.

    Checkpoints (``checkpoint``: a file path): every ``checkpoint_every`` steps (default: each
    epoch) and at the end, the weights, optimizer state, loop counters, histories, best weights,
    the epoch's data order and the RNG states are written atomically; a checkpoint is never
    written while a weight is not finite. ``resume=True`` continues from the file if it exists
    and reproduces the uninterrupted run exactly on CPU (a wall-clock ``time_limit`` makes the
    schedule depend on timing, so then the continuation is faithful but not bit-identical).

    Distributed (``dist_ctx`` with ``world_size > 1``): each rank takes its part of every global
    batch of ``batch_size * world_size`` indices, the objective is wrapped in
    DistributedDataParallel (rank 0's weights broadcast at the start, gradients averaged), each
    rank's loss is weighted by its share of the batch's units so that the update equals that of
    one process on the whole global batch, and rank 0 alone validates (the value is broadcast),
    logs and writes checkpoints.
    """
    dist_ctx = dist_ctx or DistContext()
    world = dist_ctx.world_size
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    _, device = _dtype_device(module)
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    global_batch = batch_size * world
    batches_per_pass = dist_ctx.batches_per_epoch(n_train, batch_size)
    n_passes = 1
    if steps_per_epoch is None:
        steps_per_epoch = batches_per_pass
    else:
        n_passes = math.ceil(steps_per_epoch / batches_per_pass)
    total_steps = epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    if seed is None:
        seed = int(torch.randint(2**62, ()).item())
        if world > 1:  # every rank must draw the same data order
            seed = int(dist_ctx.from_main(seed))
    generator = torch.Generator().manual_seed(int(seed))
    clip = grad_clip if grad_clip is not None else math.inf
    counters = [m for m in module.modules() if isinstance(m, NFECounter)]
    objective_module: nn.Module = _Objective(module, batch_loss)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        objective_module = DistributedDataParallel(
            objective_module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    checkpoint_path = Path(checkpoint) if checkpoint is not None else None
    if checkpoint_every is not None:
        checkpoint_every = _positive_int(checkpoint_every, "checkpoint_every")
    if resume and checkpoint_path is None:
        raise ValueError("resume=True needs a checkpoint path")
    log_file = Path(log_path) if log_path is not None else None

    loop: dict[str, Any] = {
        "epoch": 0,
        "i": 0,
        "attempted": 0,
        "n_steps": 0,
        "skipped": 0,
        "consecutive_skips": 0,
        "lr_factor": 1.0,
        "lr_reductions": 0,
        "best_val": math.inf,
        "best_epoch": None,
        "bad_epochs": 0,
        "train_hist": [],
        "reg_hist": [],
        "val_hist": [],
        "loss_sum": 0.0,
        "loss_count": 0.0,
        "reg_sum": 0.0,
        "reg_count": 0.0,
        "epoch_attempts": 0,
        "running": math.nan,
        "elapsed": 0.0,
        "nfe_forward": 0,
        "nfe_backward": 0,
        "backward_steps": 0,
        "stop_reason": "epochs",
        "finished": False,
    }
    best_state: dict[str, Tensor] | None = None
    perm: Tensor | None = None
    if resume and checkpoint_path is not None and checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path, map_location=device)
        if state.get("kind") != "ctflow.training":
            raise ValueError(f"{checkpoint_path} is not a ctflow training checkpoint")
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loop.update(state["loop"])
        best_state = state.get("best_state")
        perm = state.get("perm")
        generator.set_state(state["generator"])
        restore_rng_state(state["rng"])

    def write_checkpoint() -> None:
        if checkpoint_path is None or not dist_ctx.is_main:
            return
        if not _finite_parameters(module):
            logger.warning("not writing a checkpoint: some weights are not finite")
            return
        save_checkpoint(
            checkpoint_path,
            {
                "kind": "ctflow.training",
                "model": module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "loop": dict(loop),
                "best_state": best_state,
                "perm": perm,
                "generator": generator.get_state(),
                "rng": capture_rng_state(),
            },
        )

    was_training = module.training
    start = time.perf_counter() - float(loop["elapsed"])

    def progress() -> float:
        frac = loop["attempted"] / total_steps
        if time_limit is not None:
            frac = max(frac, (time.perf_counter() - start) / time_limit)
        return min(frac, 1.0)

    postfix: dict[str, str] = {}
    module.train()
    bar = tqdm(
        total=total_steps,
        initial=min(loop["attempted"], total_steps),
        desc=desc,
        disable=not (verbose and dist_ctx.is_main),
        leave=True,
        dynamic_ncols=True,
    )
    try:
        while not loop["finished"] and loop["epoch"] < epochs:
            if perm is None or loop["i"] == 0:
                perm = _data_order(n_train, n_passes, batches_per_pass * global_batch, generator)
                loop["i"] = 0
            stop = None
            while loop["i"] < steps_per_epoch:
                frac = progress()
                over_time = time_limit is not None and time.perf_counter() - start >= time_limit
                if world > 1:  # rank 0's clock decides for everyone
                    synced = dist_ctx.from_main(torch.tensor([frac, float(over_time)]))
                    frac, over_time = float(synced[0]), bool(synced[1] > 0)
                if loop["attempted"] >= total_steps:
                    stop = "max_steps"
                    break
                if over_time:
                    stop = "time_limit"
                    break
                for group in optimizer.param_groups:
                    group["lr"] = lr * loop["lr_factor"] * 0.5 * (1.0 + math.cos(math.pi * frac))
                i = loop["i"]
                loop["i"] += 1
                loop["attempted"] += 1
                loop["epoch_attempts"] += 1
                bar.update(1)
                idx = perm[i * global_batch : (i + 1) * global_batch]
                idx = dist_ctx.shard(idx[idx >= 0]).to(device)
                optimizer.zero_grad(set_to_none=True)
                fwd0, bwd0 = _nfe_counts(counters)
                loss, penalty, weight = objective_module(idx)
                objective = loss if penalty is None else loss + penalty
                if world > 1:
                    w = float(weight) if weight is not None else float(len(idx))
                    objective = objective * (world * w / float(dist_ctx.all_sum(w)))
                fwd1, _ = _nfe_counts(counters)
                loop["nfe_forward"] += fwd1 - fwd0
                finite = bool(torch.isfinite(objective))
                if finite or world > 1:  # every rank joins the gradient all-reduce
                    objective.backward()
                    loop["backward_steps"] += 1
                    loop["nfe_backward"] += _nfe_counts(counters)[1] - bwd0
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
                    finite = bool(torch.isfinite(grad_norm))
                if not finite:
                    optimizer.zero_grad(set_to_none=True)
                    loop["skipped"] += 1
                    loop["consecutive_skips"] += 1
                    logger.warning(
                        "%s: step %d skipped (non-finite loss or gradient)", desc, loop["attempted"]
                    )
                    if loop["consecutive_skips"] >= nonfinite_patience:
                        loop["lr_factor"] *= nonfinite_lr_factor
                        loop["lr_reductions"] += 1
                        loop["consecutive_skips"] = 0
                        logger.warning(
                            "%s: %d non-finite steps in a row, learning rate scaled to %.3g x",
                            desc,
                            nonfinite_patience,
                            loop["lr_factor"],
                        )
                    continue
                optimizer.step()
                loop["consecutive_skips"] = 0
                loop["n_steps"] += 1
                value = float(loss.detach())
                units = len(idx)
                loop["loss_sum"] += value * units
                loop["loss_count"] += units
                if penalty is not None:
                    loop["reg_sum"] += float(penalty.detach()) * units
                    loop["reg_count"] += units
                running = loop["running"]
                loop["running"] = value if math.isnan(running) else 0.95 * running + 0.05 * value
                if verbose and loop["n_steps"] % 10 == 0:
                    postfix[loss_name] = f"{loop['running']:.4f}"
                    bar.set_postfix(postfix, refresh=False)
                if checkpoint_every is not None and loop["attempted"] % checkpoint_every == 0:
                    loop["elapsed"] = time.perf_counter() - start
                    write_checkpoint()
            if loop["epoch_attempts"] == 0:
                loop["stop_reason"] = stop or loop["stop_reason"]
                break  # the budget ran out at an epoch boundary
            count = loop["loss_count"]
            loop["train_hist"].append(loop["loss_sum"] / count if count else math.nan)
            if loop["reg_count"]:
                loop["reg_hist"].append(loop["reg_sum"] / loop["reg_count"])
            if val_loss is not None:
                v = float(dist_ctx.from_main(val_loss() if dist_ctx.is_main else 0.0))
                loop["val_hist"].append(v)
                if math.isfinite(v) and v < loop["best_val"]:
                    loop["best_val"], loop["best_epoch"], loop["bad_epochs"] = v, len(loop["val_hist"]) - 1, 0
                    best_state = {k: t.detach().clone() for k, t in module.state_dict().items()}
                else:
                    loop["bad_epochs"] += 1
                if verbose:
                    postfix[f"val_{loss_name}"] = f"{v:.4f}"
                    bar.set_postfix(postfix)
            if log_file is not None and dist_ctx.is_main:
                _write_json(
                    log_file,
                    {
                        "epochs": len(loop["train_hist"]),
                        f"train_{loss_name}": loop["train_hist"],
                        f"val_{loss_name}": loop["val_hist"],
                        "skipped_steps": loop["skipped"],
                        "lr_reductions": loop["lr_reductions"],
                        "seconds": time.perf_counter() - start,
                    },
                )
            epoch_count = loop["loss_count"]
            loop.update(
                epoch=loop["epoch"] + 1,
                i=0,
                loss_sum=0.0,
                loss_count=0.0,
                reg_sum=0.0,
                reg_count=0.0,
                epoch_attempts=0,
            )
            if stop is not None:
                loop["stop_reason"] = stop
                loop["finished"] = True
            elif epoch_count == 0:
                loop["stop_reason"] = "non_finite"
                loop["finished"] = True
            elif patience is not None and loop["bad_epochs"] >= patience:
                loop["stop_reason"] = "early_stopping"
                loop["finished"] = True
            loop["elapsed"] = time.perf_counter() - start
            if checkpoint_every is None or loop["finished"] or loop["epoch"] >= epochs:
                write_checkpoint()
        if loop["stop_reason"] == "epochs" and max_steps is not None and loop["attempted"] >= max_steps:
            loop["stop_reason"] = "max_steps"
    finally:
        bar.close()
        module.train(was_training)
    if best_state is not None:
        module.load_state_dict(best_state)
    attempted, backward_steps = loop["attempted"], loop["backward_steps"]
    return {
        f"train_{loss_name}": loop["train_hist"],
        "train_regularization": loop["reg_hist"],
        f"val_{loss_name}": loop["val_hist"],
        f"best_val_{loss_name}": loop["best_val"] if best_state is not None else None,
        "best_epoch": loop["best_epoch"],
        "epochs": len(loop["train_hist"]),
        "n_steps": loop["n_steps"],
        "skipped_steps": loop["skipped"],
        "lr_reductions": loop["lr_reductions"],
        "seconds": time.perf_counter() - start,
        "stop_reason": loop["stop_reason"],
        "world_size": world,
        "nfe_forward_per_step": loop["nfe_forward"] / attempted if counters and attempted else None,
        "nfe_backward_per_step": (
            loop["nfe_backward"] / backward_steps if counters and backward_steps else None
        ),
    }

"""Training loops: maximum-likelihood fitting of flows and of sequence models.

:func:`fit_density` minimises the mean negative log-likelihood of a :class:`ctflow.flows.Flow`;
:func:`fit_model` minimises ``model.loss(batch)`` of a sequence model over minibatches of series
of an :class:`~ctflow.data.IrregularBatch`, with early stopping on the NLL per observed value of
held-out series. Both run :class:`ctflow.trainer.Trainer` (Adam, a cosine learning-rate
schedule, gradient clipping, early stopping that restores the best weights, budgets,
checkpoints, steps with a non-finite loss or gradient skipped), which only needs a module and
the loss of a minibatch; image flows train with the same loop.

Penalties that layers compute during a forward pass (e.g. the kinetic-energy and Jacobian
regularisers of a :class:`ctflow.flows.CNF`) enter the training loss through
:func:`collect_regularization`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .checks import integer, positive_int, real_number
from .data.irregular import IrregularBatch
from .distributed import DistContext, launched_by_torchrun, setup
from .flows.base import set_validation, validation_enabled
from .models.base import SequenceModel
from .trainer import Minibatch, Trainer

__all__ = [
    "collect_regularization",
    "evaluate_forecast_nll",
    "evaluate_nll",
    "evaluate_sequence_nll",
    "fit_density",
    "fit_model",
]

ArrayLike = Tensor | np.ndarray


# ---------------------------------------------------------------------------------------------
# Argument checks and conversion
# ---------------------------------------------------------------------------------------------


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
) -> dict[str, Any]:
    """The checked optimisation options shared by :func:`fit_density` and :func:`fit_model`."""
    seed = integer(seed, "seed", allow_none=True)
    patience = positive_int(patience, "patience", allow_none=True)
    return {
        "epochs": positive_int(epochs, "epochs"),
        "max_steps": positive_int(max_steps, "max_steps", allow_none=True),
        "batch_size": positive_int(batch_size, "batch_size"),
        "lr": real_number(lr, "lr", positive=True),
        "weight_decay": real_number(weight_decay, "weight_decay", positive=False),
        "grad_clip": real_number(grad_clip, "grad_clip", positive=True, allow_none=True),
        "patience": patience,
        "time_limit": real_number(time_limit, "time_limit", positive=True, allow_none=True),
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
    batch_size = positive_int(batch_size, "batch_size")
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

    Runs :class:`ctflow.trainer.Trainer`: Adam (``weight_decay`` its L2 penalty), a cosine
    learning-rate schedule over whichever budget runs out first (``epochs`` passes capped by
    ``max_steps``, or ``time_limit`` seconds), gradients clipped to norm ``grad_clip``, steps with
    a non-finite loss or gradient skipped. The loss of a batch is its mean NLL plus
    :func:`collect_regularization` of ``flow`` (e.g. the kinetic and Jacobian penalties of a
    :class:`ctflow.flows.CNF`, Finlay et al. 2020); validation uses the NLL alone. With ``val``
    the best weights are restored at the end, and ``patience`` epochs without improvement stop.

    Args:
        flow: a :class:`ctflow.flows.Flow` (any module with ``log_prob(x[, context])`` works).
        train, val: data ``(n, *event_shape)`` as tensors or numpy arrays, converted to the dtype
            and device of the flow's parameters.
        context, val_context: conditioning for a conditional flow: one row per sample or a single
            row shared by all.
        seed, verbose: seed of the shuffling (not of the weights); a tqdm progress bar.

    Returns:
        :meth:`Trainer.history <ctflow.trainer.Trainer.history>` with the loss named ``nll``:
        ``train_nll`` (per epoch, penalties excluded), ``train_regularization``, ``val_nll``,
        ``best_val_nll``, ``best_epoch``, ``epochs``, ``n_steps``, ``skipped_steps``,
        ``seconds``, ``stop_reason`` and, for flows with ODE solves, ``nfe_forward_per_step`` /
        ``nfe_backward_per_step`` (validation solves not included).

    >>> import torch
    >>> from ctflow.flows import build
    >>> from ctflow.training import fit_density
    >>> x = torch.randn(128, 2, generator=torch.Generator().manual_seed(0)) + 1.0
    >>> flow = build("realnvp", dim=2, n_layers=2, hidden=(16,), seed=0)
    >>> history = fit_density(flow, x, epochs=5, batch_size=64, lr=1e-2, seed=0)
    >>> history["n_steps"], history["train_nll"][-1] < history["train_nll"][0]
    (10, True)
    """
    _check_flow(flow)
    options = _loop_options(
        epochs, max_steps, batch_size, lr, weight_decay, grad_clip, patience, time_limit, seed
    )
    x, ctx, xv, ctx_v = _density_data(flow, train, val, context, val_context)
    objective = _density_objective(flow, x, ctx)
    validate = None if xv is None else _density_validation(flow, xv, ctx_v, options)
    trainer = _trainer(
        flow,
        objective,
        x.shape[0],
        options,
        validate,
        desc="fit_density",
        loss_name="nll",
        verbose=bool(verbose),
    )
    with _finiteness_checks_off():
        return trainer.fit()


def _density_objective(
    flow: nn.Module, x: Tensor, ctx: _Context
) -> Callable[[Minibatch], tuple[Tensor, Tensor | None]]:
    """The objective of :func:`fit_density`: mean NLL and regularization of a minibatch."""

    def objective(batch: Minibatch) -> tuple[Tensor, Tensor | None]:
        idx = batch.indices
        return _batch_nll(flow, x[idx], ctx.rows(idx)), collect_regularization(flow)

    return objective


def _density_validation(
    flow: nn.Module, xv: Tensor, ctx_v: _Context, options: dict[str, Any]
) -> Callable[[], float]:
    """The validation of :func:`fit_density`: the mean NLL of the validation rows."""

    def validate() -> float:
        return _mean_nll(flow, xv, ctx_v, max(options["batch_size"], 8192))

    return validate


def _density_data(
    flow: nn.Module, train: Any, val: Any, context: Any, val_context: Any
) -> tuple[Tensor, _Context, Tensor | None, _Context | None]:
    """Checked training and validation rows with their contexts."""
    if val is None and val_context is not None:
        raise ValueError("val_context was given without val")
    if val is not None and context is not None and val_context is None:
        raise ValueError("the flow is trained with a context: pass val_context for val as well")
    x = _data(flow, train, "train")
    ctx = _context(flow, context, x.shape[0], "context", "train")
    xv = _data(flow, val, "val") if val is not None else None
    ctx_v = _context(flow, val_context, xv.shape[0], "val_context", "val") if xv is not None else None
    return x, ctx, xv, ctx_v


def _check_model(model: Any) -> None:
    if not isinstance(model, SequenceModel):
        raise TypeError(
            "model must be a ctflow.models.SequenceModel (loss, nll_terms, filter, predict, "
            f"sample_paths), got {type(model).__name__}"
        )


def _check_batch(batch: Any, name: str) -> IrregularBatch:
    if not isinstance(batch, IrregularBatch):
        raise TypeError(f"{name} must be an IrregularBatch, got {type(batch).__name__}")
    if len(batch) == 0:
        raise ValueError(f"{name} has no series")
    return batch


def _check_sequence_data(
    train: Any, val: Any, validate: Callable[[], float] | None
) -> tuple[IrregularBatch, IrregularBatch | None]:
    if val is not None and validate is not None:
        raise ValueError("pass either val or validate, not both")
    train = _check_batch(train, "train")
    if val is not None:
        val = _check_batch(val, "val")
        if val.n_variables != train.n_variables:
            raise ValueError(f"val has {val.n_variables} variables, train has {train.n_variables}")
    return train, val


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


def evaluate_sequence_nll(model: SequenceModel, data: IrregularBatch, batch_size: int = 256) -> float:
    """NLL per observed value (nats) of ``model.nll_terms`` over all series of ``data``.

    The model runs in eval mode without gradients (its mode is restored afterwards); ``data`` is
    moved to the model's device chunk by chunk.
    """
    _check_model(model)
    _check_batch(data, "data")
    batch_size = positive_int(batch_size, "batch_size")
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
    model: SequenceModel, context: IrregularBatch, target: IrregularBatch, batch_size: int = 256
) -> float:
    """NLL per observed target value (nats) of forecasts from each series' context.

    Every target value is scored by the model's marginal predictive density at its time given
    the whole context (``model.predict(model.filter(context), target.times)``), not updated by
    earlier targets: the density that forecasts use. ``target`` has the same series as
    ``context``, each with at least one row after its context.
    """
    _check_model(model)
    _check_batch(context, "context")
    _check_batch(target, "target")
    if len(context) != len(target):
        raise ValueError(f"context has {len(context)} series, target has {len(target)}")
    dtype, device = _dtype_device(model)

    def terms(part: slice) -> tuple[Tensor, Tensor]:
        ctx = context.select(part, trim=True).to(device, dtype)
        tgt = target.select(part, trim=True).to(device, dtype)
        predictive = model.predict(model.filter(ctx), tgt.times, model.known_inputs(tgt))
        return -predictive.log_prob(tgt.values, tgt.mask).sum(), tgt.mask.sum()

    return _mean_over_chunks(model, len(context), batch_size, terms)


def fit_model(
    model: SequenceModel,
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
    """Fit a sequence model (``loss(batch)`` and ``nll_terms(batch)``) to the series of ``train``.

    Each step draws ``batch_size`` whole series (shuffled each epoch), trims them to their longest
    series, moves them to the model's device and minimises ``model.loss(batch)`` plus
    :func:`collect_regularization`, with :class:`ctflow.trainer.Trainer` (options and history as
    in :func:`fit_density`, the loss named ``loss``). After each epoch the NLL per observed value
    of ``val`` (:func:`evaluate_sequence_nll`), or ``validate()`` when given instead (e.g. the
    forecast NLL of held-out last observations), decides early stopping and the weights kept.

    ``eval_every``: steps between validations (the unit of ``epochs`` and ``patience``) instead
    of one pass over ``train``; with few series a pass is a step or two, too short to judge
    improvement. ``checkpoint``, ``checkpoint_every``, ``resume`` and ``log_path``: see
    :mod:`ctflow.trainer`. ``distributed`` (default: when launched by ``torchrun`` with more than
    one process) trains data-parallel with ``batch_size`` series per process and step.

    >>> from ctflow.data import from_dataframe, load_double_ou
    >>> from ctflow.models import GRUODEBayes
    >>> from ctflow.training import fit_model
    >>> train = from_dataframe(load_double_ou(8, seed=0, t_max=2.0, min_obs=3, max_obs=6))
    >>> model = GRUODEBayes(2, hidden_size=8, p_hidden=8, prep_hidden=4)
    >>> history = fit_model(model, train, max_steps=3, batch_size=4, seed=0)
    >>> history["n_steps"], history["stop_reason"]
    (3, 'max_steps')
    """
    _check_model(model)
    train, val = _check_sequence_data(train, val, validate)
    options = _loop_options(
        epochs, max_steps, batch_size, lr, weight_decay, grad_clip, patience, time_limit, seed
    )
    eval_every = positive_int(eval_every, "eval_every", allow_none=True)
    dtype, device = _dtype_device(model)
    data = train.to(device, dtype)

    objective = _sequence_objective(model, data)
    if val is not None:
        validate = _sequence_validation(model, val, options)
    trainer = _trainer(
        model,
        objective,
        len(data),
        options,
        validate,
        desc=desc,
        loss_name="loss",
        steps_per_epoch=eval_every,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume=resume,
        log_path=log_path,
        dist=_dist_context(distributed, device),
        verbose=bool(verbose),
    )
    return trainer.fit()


def _sequence_objective(
    model: SequenceModel, data: IrregularBatch
) -> Callable[[Minibatch], tuple[Tensor, Tensor | None, Tensor]]:
    """The objective of :func:`fit_model`: loss, regularization and observed count of a minibatch."""

    def objective(minibatch: Minibatch) -> tuple[Tensor, Tensor | None, Tensor]:
        batch = data.select(minibatch.indices, trim=True)
        return model.loss(batch), collect_regularization(model), batch.mask.sum()

    return objective


def _sequence_validation(
    model: SequenceModel, val: IrregularBatch, options: dict[str, Any]
) -> Callable[[], float]:
    """The validation of :func:`fit_model`: the NLL per observed value of ``val``."""

    def validate() -> float:
        return evaluate_sequence_nll(model, val, batch_size=max(options["batch_size"], 256))

    return validate


def _trainer(
    module: nn.Module,
    objective: Callable[[Minibatch], Any],
    n_items: int,
    options: dict[str, Any],
    validate: Callable[[], float] | None,
    **kwargs: Any,
) -> Trainer:
    """The :class:`~ctflow.trainer.Trainer` of a fit with checked ``options`` (cosine schedule)."""
    return Trainer(module, objective, n_items=n_items, validate=validate, **options, **kwargs)

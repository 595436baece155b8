"""Training an image flow: minibatch bits/dim, held-out evaluation, samples and exact resumption.

:func:`train` runs the loop described by a :class:`TrainConfig` and writes into ``config.out``:

* ``log.json``: one record per epoch (step, train and held-out bits/dim, wall time, skipped steps);
* ``samples.png``: a grid of samples at ``config.temperature`` after every epoch;
* ``checkpoint.pt``: model, optimizer, scheduler, RNG states, epoch, step and position in the
  epoch, written atomically. With ``resume=True`` training continues from it exactly: the batch
  order of an epoch is a fixed function of ``(seed, epoch)`` and evaluation and sampling run on
  forked RNG streams, so an interrupted and resumed run takes the same steps as an uninterrupted one.

A step whose loss or gradient norm is not finite is skipped: the weights are not updated.

Under ``torchrun --nproc_per_node=N`` the run is data-parallel (:mod:`ctflow.distributed`: gloo on
CPU, NCCL with ``cuda:LOCAL_RANK``). Every global batch of ``N * batch_size`` images is split into
contiguous per-rank parts; every rank draws the dequantization noise of the whole global batch and
uses its part, data-dependent initialisation (ActNorm) runs on the whole first global batch on
every rank before the objective is wrapped in DistributedDataParallel, and each rank's loss is
weighted by its share of the images, so the updates are those of one process with
``batch_size * N``. Skipping decisions are taken on all-reduced values and time-limit stops by
rank 0, so all ranks stay in step and end with the same weights; rank 0 alone evaluates (the value
is broadcast), writes the log, samples and checkpoints, and every rank reads the checkpoint on
``resume``.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ctflow.checkpoint import atomic_write, atomic_write_json, rng_scope
from ctflow.checks import choice, positive_int
from ctflow.distributed import resolve_device, setup
from ctflow.flows.glow import ActNorm
from ctflow.trainer import LinearWarmup, Minibatch, Trainer

from . import MODELS, ImageFlow, bits_per_dim, build_image_flow
from .data import ImageData, load_image_data

__all__ = ["TrainConfig", "evaluate_bpd", "resolve_device", "save_sample_grid", "train"]

CHECKPOINT = "checkpoint.pt"
LOG = "log.json"
SAMPLES = "samples.png"


@dataclass
class TrainConfig:
    """Options of :func:`train` (the command line mirrors them)."""

    model: str = "realnvp"
    data: str = "digits"
    out: str = "runs/image"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    resume: bool = False
    device: str = "auto"
    bf16: bool = False
    time_limit: float | None = None
    levels: int | None = None
    steps: int | None = None
    hidden: int | None = None
    warmup: int = 100
    grad_clip: float = 100.0
    eval_batch_size: int = 256
    n_samples: int = 64
    temperature: float = 0.8
    progress: bool = True
    model_options: dict[str, Any] = field(default_factory=dict)

    def architecture(self) -> dict[str, Any]:
        arch = dict(self.model_options)
        for key, name in (("levels", "n_levels"), ("steps", "steps"), ("hidden", "hidden")):
            value = getattr(self, key)
            if value is not None:
                arch[name] = value
        return arch


def _autocast(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_bpd(
    model: ImageFlow, images: Tensor, levels: int, batch_size: int = 256, seed: int = 0, bf16: bool = False
) -> float:
    """Mean bits/dim of ``images`` (one dequantization draw each, from a fixed seed)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        with rng_scope(seed, device, always_fork=True):
            for start in range(0, images.shape[0], batch_size):
                x = images[start : start + batch_size].to(device)
                with _autocast(device, bf16):
                    total += float(bits_per_dim(model, x, levels=levels).float().sum())
    finally:
        model.train(was_training)
    return total / images.shape[0]


def save_sample_grid(images: Tensor, path: str | os.PathLike, levels: int, ncol: int = 8) -> Path:
    """Save ``(N, C, H, W)`` images in ``[0, 1]`` as a PNG grid, quantized to ``levels`` values."""
    from matplotlib.figure import Figure

    x = torch.clamp(torch.floor(images.float().cpu() * levels), max=levels - 1) / (levels - 1)
    n, c, h, w = x.shape
    nrow = math.ceil(n / ncol)
    grid = torch.ones(c, nrow * (h + 1) + 1, ncol * (w + 1) + 1)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = x[i]
    arr = grid.permute(1, 2, 0).numpy()
    fig = Figure(figsize=(ncol * 0.8, nrow * 0.8))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(arr[..., 0] if c == 1 else arr[..., :3], cmap="gray" if c == 1 else None, vmin=0, vmax=1)
    ax.axis("off")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _identity(config: TrainConfig) -> dict[str, Any]:
    return {"model": config.model, "data": str(config.data), "architecture": config.architecture()}


class _MeanBitsPerDim(nn.Module):
    """The training objective: mean bits/dim of this rank's part of a batch, with its part of
    the dequantization noise drawn for the whole global batch (so any number of ranks draws the
    noise one process would)."""

    def __init__(self, model: ImageFlow, images: Tensor, levels: int, bf16: bool):
        super().__init__()
        self.model, self.images, self.levels, self.bf16 = model, images, levels, bf16

    def forward(self, batch: Minibatch) -> Tensor:
        device = next(self.model.parameters()).device
        x = self.images[batch.indices.to(self.images.device)].to(device, non_blocking=True)
        noise = batch.shard(self.model.dequantization_noise(len(batch.global_indices)))
        with _autocast(device, self.bf16):
            return bits_per_dim(self.model, x, levels=self.levels, noise=noise).float().mean()


def _needs_data_init(model: nn.Module) -> bool:
    return any(isinstance(m, ActNorm) and not bool(m.initialized) for m in model.modules())


def _initialise_on_global_batch(
    model: ImageFlow, data: ImageData, first: Tensor, config: TrainConfig
) -> None:
    """Data-dependent initialisation (ActNorm) on the whole first global batch, with the noise the
    first step will draw, on every rank: the parameters one process would get."""
    device = next(model.parameters()).device
    model.train()
    with rng_scope(None, device, always_fork=True), torch.no_grad(), _autocast(device, config.bf16):
        noise = model.dequantization_noise(len(first))
        model.log_prob(data.train[first].to(device), data.levels, noise=noise)


def _check_config(config: TrainConfig) -> None:
    choice(config.model, "image model", MODELS)
    positive_int(config.epochs, "epochs")
    positive_int(config.batch_size, "batch_size")


def train(config: TrainConfig, data: ImageData | None = None) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data`` (or the given ``data``); returns a summary dict."""
    _check_config(config)
    device = resolve_device(config.device)
    ctx = setup(device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    out = Path(config.out)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else load_image_data(config.data)
    _seed_all(config.seed)
    model = build_image_flow(config.model, data.shape, data.levels, **config.architecture()).to(device)

    def evaluate() -> float:
        return evaluate_bpd(model, data.test, data.levels, config.eval_batch_size, bf16=config.bf16)

    def write_samples(record: dict[str, Any]) -> None:
        with rng_scope(config.seed + 1, device, always_fork=True):
            samples = model.sample(config.n_samples, temperature=config.temperature)
        save_sample_grid(samples, out / SAMPLES, data.levels)

    trainer = Trainer(
        model,
        _MeanBitsPerDim(model, data.train, data.levels, config.bf16),
        n_items=data.train.shape[0],
        batch_size=config.batch_size,
        epochs=config.epochs,
        lr=config.lr,
        grad_clip=config.grad_clip,
        schedule=LinearWarmup(config.warmup),
        validate=evaluate,
        keep_best=False,
        time_limit=config.time_limit,
        seed=config.seed,
        checkpoint=out / CHECKPOINT,
        resume=config.resume,
        identity=_identity(config),
        log_path=out / LOG,
        on_epoch_end=write_samples,
        dist=ctx,
        loss_name="bpd",
        val_name="test_bpd",
        verbose=config.progress,
        desc=config.model,
    )
    if ctx.enabled and trainer.state.epoch < config.epochs and _needs_data_init(model):
        _initialise_on_global_batch(model, data, trainer.upcoming_batch(), config)
    trainer.fit()
    if ctx.is_main:
        atomic_write_json(
            out / "config.json", {**asdict(config), "device": str(device), "levels_data": data.levels}
        )
    ctx.barrier()  # the files are written when train returns on any rank
    return _summary(trainer, model, ctx)


def _summary(trainer: Trainer, model: ImageFlow, ctx: Any) -> dict[str, Any]:
    s = trainer.state
    records = s.records
    return {
        "epoch": s.epoch,
        "step": s.attempted,
        "test_bpd": records[-1]["test_bpd"] if records else float("nan"),
        "skipped_steps": s.skipped,
        "seconds": s.elapsed,
        "train_seconds": s.step_seconds,
        "images_per_second": s.items_seen / s.step_seconds if s.step_seconds else float("nan"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "model": model,
        "optimizer": trainer.optimizer,
    }

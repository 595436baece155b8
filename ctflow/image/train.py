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
import json
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ctflow.checkpoint import (
    atomic_write,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from ctflow.distributed import resolve_device, setup
from ctflow.flows.glow import ActNorm

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


@contextlib.contextmanager
def _forked_rng(device: torch.device, seed: int | None) -> Iterator[None]:
    """Run a block on its own RNG stream (seeded, or a copy of the current one for ``None``),
    leaving the training stream untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield


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
        with _forked_rng(device, seed):
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
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def _identity(config: TrainConfig) -> dict[str, Any]:
    return {"model": config.model, "data": str(config.data), "architecture": config.architecture()}


class _MeanBitsPerDim(nn.Module):
    """The training objective as a module (mean bits/dim of a batch), so that DistributedDataParallel
    sees the model's forward pass and averages its gradients."""

    def __init__(self, model: ImageFlow, levels: int):
        super().__init__()
        self.model = model
        self.levels = levels

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        return bits_per_dim(self.model, x, levels=self.levels, noise=noise).float().mean()


def _needs_data_init(model: nn.Module) -> bool:
    return any(isinstance(m, ActNorm) and not bool(m.initialized) for m in model.modules())


def train(config: TrainConfig, data: ImageData | None = None) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data`` (or the given ``data``); returns a summary dict."""
    if config.model not in MODELS:
        raise ValueError(f"unknown image model {config.model!r}; valid: {', '.join(MODELS)}")
    if config.epochs < 1 or config.batch_size < 1:
        raise ValueError("epochs and batch_size must be positive")
    device = resolve_device(config.device)
    ctx = setup(device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    world = ctx.world_size
    out = Path(config.out)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else load_image_data(config.data)
    train_x = data.train
    n = train_x.shape[0]
    global_batch = config.batch_size * world
    n_batches = ctx.batches_per_epoch(n, config.batch_size, "images")
    _seed_all(config.seed)
    model = build_image_flow(config.model, data.shape, data.levels, **config.architecture()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    warmup = max(1, config.warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))

    epoch, batch_start, step, log = 0, 0, 0, []
    if config.resume:
        state = load_checkpoint(out / CHECKPOINT, map_location=device)
        if state["identity"] != _identity(config):
            raise ValueError(f"checkpoint in {out} was made for {state['identity']}, not {_identity(config)}")
        saved_batch = state.get("global_batch", config.batch_size)
        if state["batch"] and saved_batch != global_batch:
            raise ValueError(
                f"checkpoint in {out} stopped mid-epoch with global batches of {saved_batch} images; "
                f"resume with batch_size x processes = {saved_batch}, not {global_batch}"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        if device.type == "cuda" and "device_rng" in state:
            torch.cuda.set_rng_state(state["device_rng"].cpu(), device)
        epoch, batch_start, step = state["epoch"], state["batch"], state["step"]
        if ctx.is_main and (out / LOG).is_file():
            log = json.loads((out / LOG).read_text())

    def checkpoint(epoch_: int, batch_: int) -> None:
        state = {
            "identity": _identity(config),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": capture_rng_state(),
            "epoch": epoch_,
            "batch": batch_,
            "step": step,
            "global_batch": global_batch,
        }
        if device.type == "cuda":  # the generator that draws the noise (the same on every rank)
            state["device_rng"] = torch.cuda.get_rng_state(device)
        save_checkpoint(out / CHECKPOINT, state)

    objective: nn.Module = _MeanBitsPerDim(model, data.levels)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        if epoch < config.epochs and _needs_data_init(model):
            # Data-dependent initialisation on the whole first global batch, with the noise the
            # first step will draw, on every rank: the parameters one process would get.
            first = _epoch_order(n, config.seed, epoch)[batch_start * global_batch :][:global_batch]
            model.train()
            with _forked_rng(device, None), torch.no_grad(), _autocast(device, config.bf16):
                noise = model.dequantization_noise(len(first))
                model.log_prob(train_x[first].to(device), data.levels, noise=noise)
        objective = DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None
        )

    params = [p for p in model.parameters() if p.requires_grad]
    t0 = time.perf_counter()
    stopped = False
    skipped, images_seen, train_seconds = 0, 0, 0.0
    test_bpd = float("nan")
    model.train()
    while epoch < config.epochs and not stopped:
        order = _epoch_order(n, config.seed, epoch)
        running, counted = 0.0, 0
        bar = tqdm(
            range(batch_start, n_batches),
            desc=f"{config.model} epoch {epoch + 1}/{config.epochs}",
            disable=not (config.progress and ctx.is_main),
            leave=False,
        )
        for b in bar:
            t_step = time.perf_counter()
            batch = order[b * global_batch : (b + 1) * global_batch]
            idx = ctx.shard(batch)
            x = train_x[idx].to(device, non_blocking=True)
            noise = ctx.shard(model.dequantization_noise(len(batch)))
            with _autocast(device, config.bf16):
                loss = objective(x, noise)
            optimizer.zero_grad(set_to_none=True)
            ok = bool(torch.isfinite(loss))
            if ok or world > 1:  # every rank joins the gradient all-reduce
                # DDP averages over ranks: weighting by the rank's share gives the global mean.
                (loss * (world * len(idx) / len(batch)) if world > 1 else loss).backward()
                norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                ok = ok and bool(torch.isfinite(norm))
            total, failed = ctx.all_sum([float(loss.detach()) * len(idx), float(not ok)], device).tolist()
            if failed == 0:
                optimizer.step()
                scheduler.step()
                running += total / len(batch)
                counted += 1
            else:
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
            images_seen += len(batch)
            train_seconds += time.perf_counter() - t_step
            step += 1
            if counted:
                bar.set_postfix(bpd=f"{running / counted:.3f}")
            over = config.time_limit is not None and time.perf_counter() - t0 > config.time_limit
            if config.time_limit is not None and bool(ctx.from_main(float(over), device)):
                stopped = b + 1 < n_batches
                batch_start = b + 1
                break
        bar.close()
        finished_epoch = batch_start >= n_batches or not stopped
        test_bpd = (
            evaluate_bpd(model, data.test, data.levels, config.eval_batch_size, bf16=config.bf16)
            if ctx.is_main
            else 0.0
        )
        test_bpd = float(ctx.from_main(test_bpd, device))  # rank 0's value on every rank
        if ctx.is_main:
            log.append(
                {
                    "epoch": epoch + 1,
                    "complete": finished_epoch,
                    "step": step,
                    "train_bpd": running / counted if counted else None,
                    "test_bpd": test_bpd,
                    "seconds": time.perf_counter() - t0,
                    "skipped_steps": skipped,
                }
            )
            _write_json(out / LOG, log)
            with _forked_rng(device, config.seed + 1):
                samples = model.sample(config.n_samples, temperature=config.temperature)
            save_sample_grid(samples, out / SAMPLES, data.levels)
        if finished_epoch:
            epoch, batch_start = epoch + 1, 0
        if ctx.is_main:
            checkpoint(epoch, batch_start)
        over = config.time_limit is not None and time.perf_counter() - t0 > config.time_limit
        if config.time_limit is not None and bool(ctx.from_main(float(over), device)):
            stopped = True
    if ctx.is_main:
        _write_json(
            out / "config.json", {**asdict(config), "device": str(device), "levels_data": data.levels}
        )
    ctx.barrier()  # the files are written when train returns on any rank
    return {
        "epoch": epoch,
        "step": step,
        "test_bpd": test_bpd,
        "skipped_steps": skipped,
        "seconds": time.perf_counter() - t0,
        "train_seconds": train_seconds,
        "images_per_second": images_seen / train_seconds if train_seconds else float("nan"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "rank": ctx.rank,
        "world_size": world,
        "model": model,
        "optimizer": optimizer,
    }

"""Data-parallel training under ``torchrun``: launch detection, process group, sharding.

``torchrun --nproc_per_node=N`` starts ``N`` processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`setup` reads them, joins the
process group (``gloo`` on CPU, ``nccl`` when every process has its own GPU) and returns a
:class:`DistContext`; without them (a plain ``python`` run) it returns the single-process
context and touches nothing. Training code then

* splits each global batch into one part per rank (:meth:`DistContext.shard`), so that ``N``
  processes with ``batch_size`` each see the same examples per step as one process with
  ``N * batch_size``;
* wraps the model in :class:`torch.nn.parallel.DistributedDataParallel`, which broadcasts rank 0's
  weights at the start and averages gradients in the backward pass;
* logs, writes checkpoints and saves models on rank 0 only (:attr:`DistContext.is_main`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "launched_by_torchrun", "resolve_device", "setup", "teardown"]


@dataclass(frozen=True)
class DistContext:
    """Rank and world size of this process (``world_size == 1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of a global batch of ``indices`` (``np.array_split`` sizes)."""
        if not self.enabled:
            return indices
        n = indices.shape[0]
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return indices[start : start + base + (1 if self.rank < extra else 0)]

    def batches_per_epoch(self, n_items: int, batch_size: int, what: str = "items") -> int:
        """Global batches of ``batch_size * world_size`` items per epoch: a last batch too small to
        give every rank a part is dropped; too few items for the ranks is a ValueError."""
        global_batch = batch_size * self.world_size
        n_batches = math.ceil(n_items / global_batch)
        if self.enabled and 0 < n_items % global_batch < self.world_size:
            n_batches = n_items // global_batch
        if n_batches < 1:
            raise ValueError(f"{n_items} training {what} are too few for {self.world_size} processes")
        return n_batches

    def all_sum(self, value: float | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
        """Sum of a scalar over ranks (the value itself when not distributed)."""
        t = torch.as_tensor(value, dtype=torch.float64, device=device).clone()
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def from_main(self, value: float | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
        """Rank 0's ``value`` (float64) on every rank: one clock, one seed, one validation score."""
        t = torch.as_tensor(value, dtype=torch.float64, device=device).clone()
        if self.enabled:
            dist.broadcast(t, src=0)
        return t

    def any(self, flag: bool, device: torch.device | None = None) -> bool:
        """True on every rank when ``flag`` is true on some rank (keeps control flow in step)."""
        if not self.enabled:
            return bool(flag)
        return bool(self.all_sum(1.0 if flag else 0.0, device) > 0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def launched_by_torchrun() -> bool:
    """Whether the environment of a ``torchrun`` worker with more than one process is present."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def resolve_device(device: Any) -> torch.device:
    """``"auto"`` (or ``None``) is CUDA when available, else CPU; a CUDA device without a GPU is a
    ValueError; under ``torchrun`` a CUDA device without an index is ``cuda:LOCAL_RANK``."""
    if device is None or (isinstance(device, str) and device == "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or a torch.device, got {device!r}") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available")
    if resolved.type == "cuda" and resolved.index is None and launched_by_torchrun():
        resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return resolved


def setup(device: torch.device | str | None = None) -> DistContext:
    """Join the process group described by the ``torchrun`` environment (idempotent).

    ``device`` is where the model will live: ``nccl`` is used for CUDA devices, ``gloo`` otherwise.
    With CUDA, each process is pinned to ``cuda:LOCAL_RANK``.
    """
    if not launched_by_torchrun():
        return DistContext()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda" if device is not None else False
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world, local_rank=local, backend=dist.get_backend())


def teardown() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

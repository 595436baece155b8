"""Shared helpers: random parameter perturbation and brute-force Jacobian log-determinants."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor, nn

# The tests run many small tensor ops, which one thread does fastest (and CI has two cores).
torch.set_num_threads(1)


def perturb(module: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    """Add Gaussian noise to every parameter so that no layer sits at its identity initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
    return module


def brute_force_logabsdet(fn, x: Tensor) -> Tensor:
    """``log|det d fn(x)_b / d x_b|`` per sample from the full autograd Jacobian of a batched map."""
    batch = x.shape[0]
    jac = torch.autograd.functional.jacobian(fn, x)  # (B, *event, B, *event)
    d = x[0].numel()
    jac = jac.reshape(batch, d, batch, d)
    blocks = torch.stack([jac[b, :, b, :] for b in range(batch)])
    return torch.linalg.slogdet(blocks).logabsdet


def linear_growth_panel(
    n_series: int = 24, n_obs: int = 10, seed: int = 0, falling: bool = True
) -> pd.DataFrame:
    """Series at random times in [0, 10] with their own level and slope plus noise: column ``a``
    rising and, with ``falling``, ``b`` falling from the same level."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_series):
        t = np.sort(rng.uniform(0, 10, n_obs))
        level, slope = rng.normal(0, 1), rng.normal(0.5, 0.2)
        for tt in t:
            row = (f"s{i}", tt, level + slope * tt + rng.normal(0, 0.3))
            rows.append((*row, level - 0.2 * tt + rng.normal(0, 0.3)) if falling else row)
    return pd.DataFrame(rows, columns=["unique_id", "ds", "a", "b"][: 4 if falling else 3])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def run_torchrun(script, nproc: int = 2, timeout: float = 300):
    """Run ``script`` under ``torchrun --nproc_per_node=nproc`` on a free local port (one thread
    per process, the repository on PYTHONPATH); fail with the tail of stderr if it fails."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        str(script),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=timeout)
    if done.returncode != 0:
        err = done.stderr.decode()
        ranks = [line for line in err.splitlines() if line.lstrip().startswith("[rank")]
        pytest.fail("\n".join(ranks[-60:]) + "\n" + err[-3000:])
    return done

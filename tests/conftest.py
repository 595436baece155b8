"""Shared helpers: random parameter perturbation and brute-force Jacobian log-determinants."""

from __future__ import annotations

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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)

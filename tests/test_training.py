"""fit_density: regularisation penalties in the loss, non-finite steps, early stopping, NFE records."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from ctflow.flows import CNF, build
from ctflow.training import collect_regularization, evaluate_nll, fit_density

# A fixed-step solver keeps the CNF tests fast and their NFE exact: 4 rk4 steps of 4 evaluations.
RK4 = {"method": "rk4", "step_size": 0.25}


def _shifted_blob(n: int, seed: int = 0) -> Tensor:
    """A blob far from the origin: a flow must move it a long way to reach its standard normal base."""
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(n, 2, generator=g) + torch.tensor([3.0, -2.0])


def _kinetic_energy(flow: nn.Module, x: Tensor) -> float:
    """Mean over ``x`` of ``int |f(z(t), t)|^2 dt`` along the flow's trajectories (its CNF's field)."""
    (cnf,) = [m for m in flow.modules() if isinstance(m, CNF)]
    weights = cnf.kinetic, cnf.jacobian
    cnf.kinetic, cnf.jacobian = 1.0, 0.0
    flow.train()
    try:
        with torch.no_grad():
            flow.log_prob(x)
        return float(cnf.regularization())
    finally:
        cnf.kinetic, cnf.jacobian = weights


def _fit_cnf(kinetic: float, x: Tensor) -> tuple[nn.Module, dict]:
    flow = build("cnf", 2, n_layers=1, hidden=(16, 16), trace="exact", solver=RK4, kinetic=kinetic, seed=0)
    history = fit_density(flow, x, max_steps=30, epochs=100, batch_size=64, lr=1e-2, seed=0)
    return flow, history


class _Penalised(nn.Module):
    def __init__(self, value: float | None):
        super().__init__()
        self.value, self.calls = value, 0

    def regularization(self) -> Tensor | None:
        self.calls += 1
        return None if self.value is None else torch.tensor(self.value)


def test_collect_regularization_sums_every_submodule_once():
    root = _Penalised(1.0)
    root.a = _Penalised(2.0)
    root.b = nn.Sequential(_Penalised(None), _Penalised(0.5))
    total = collect_regularization(root)
    assert total is not None and float(total) == pytest.approx(3.5)
    assert [m.calls for m in root.modules() if isinstance(m, _Penalised)] == [1, 1, 1, 1]
    assert collect_regularization(nn.Sequential(nn.Linear(2, 2), _Penalised(None))) is None
    bad = _Penalised(0.0)
    bad.regularization = lambda: torch.ones(3)
    with pytest.raises(TypeError, match="scalar tensor"):
        collect_regularization(bad)


def test_fit_density_trains_with_the_cnf_regularisers():
    x = _shifted_blob(512)
    plain, hist_plain = _fit_cnf(0.0, x)
    regularised, hist_reg = _fit_cnf(100.0, x)
    ke_plain, ke_reg = _kinetic_energy(plain, x), _kinetic_energy(regularised, x)
    # Reaching N(0, I) from the blob costs a kinetic energy of order |mean|^2 = 13; the heavy
    # penalty keeps the field nearly still instead (and the NLL is worse for it).
    assert ke_plain > 3.0
    assert ke_reg < 0.1 * ke_plain
    assert evaluate_nll(regularised, x) > evaluate_nll(plain, x) + 1.0
    assert hist_plain["train_regularization"] == []
    assert len(hist_reg["train_regularization"]) == hist_reg["epochs"]
    assert all(v > 0 for v in hist_reg["train_regularization"])
    # NFE records: 4 rk4 steps x 4 evaluations per forward solve, backpropagated through each.
    assert hist_plain["nfe_forward_per_step"] == 16
    assert hist_plain["nfe_backward_per_step"] == 16
    maf = build("maf", 2, n_layers=1, hidden=(8,), seed=0)
    hist_maf = fit_density(maf, x, max_steps=2, batch_size=64)
    assert hist_maf["nfe_forward_per_step"] is None and hist_maf["nfe_backward_per_step"] is None


class _Poisoned(nn.Module):
    """A Gaussian with a learned mean whose loss, gradient or penalty is broken by marked rows.

    ``x[:, 0]`` of 100 makes the log-density NaN, 200 makes its gradient NaN (with a finite
    value) and 300 makes the penalty NaN. Records the mean at every training-mode call.
    """

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(2))
        self.calls: list[tuple[str, Tensor]] = []
        self._penalty: Tensor | None = None

    def log_prob(self, x: Tensor) -> Tensor:
        marker = float(x[0, 0])
        kind = {100.0: "nan_loss", 200.0: "nan_grad", 300.0: "nan_penalty"}.get(marker, "ok")
        if self.training:
            self.calls.append((kind, self.loc.detach().clone()))
        if kind == "ok":
            lp = -0.5 * (x - self.loc).square().sum(1)
        else:
            lp = -0.5 * self.loc.square().sum().expand(x.shape[0])
        if kind == "nan_loss":
            lp = lp + math.nan
        elif kind == "nan_grad":
            lp = lp - (self.loc - self.loc.detach()).abs().sqrt().sum()  # value 0, gradient inf
        self._penalty = torch.tensor(math.nan) if kind == "nan_penalty" else None
        return lp

    def regularization(self) -> Tensor | None:
        penalty, self._penalty = self._penalty, None
        return penalty


def test_non_finite_loss_gradient_or_penalty_never_updates_weights():
    g = torch.Generator().manual_seed(0)
    good = torch.randn(12, 2, generator=g) + 3.0
    bad = torch.tensor([[100.0, 0.0], [200.0, 0.0], [300.0, 0.0]]).repeat(3, 1)
    model = _Poisoned()
    history = fit_density(model, torch.cat([good, bad]), epochs=3, batch_size=1, lr=0.1, seed=0)
    kinds = [kind for kind, _ in model.calls]
    assert sorted(set(kinds)) == ["nan_grad", "nan_loss", "nan_penalty", "ok"]
    assert history["skipped_steps"] == 3 * len(bad) and history["n_steps"] == 3 * len(good)
    for (kind, before), (_, after) in zip(model.calls, model.calls[1:], strict=False):
        if kind == "ok":
            assert not torch.equal(before, after)  # a good batch does move the mean
        else:
            assert torch.equal(before, after)
    assert torch.isfinite(model.loc).all()
    assert all(math.isfinite(v) for v in history["train_nll"])


def test_all_steps_non_finite_stops_training():
    model = _Poisoned()
    history = fit_density(model, torch.tensor([[100.0, 0.0]]).repeat(8, 1), epochs=5, batch_size=4)
    assert history["stop_reason"] == "non_finite" and history["n_steps"] == 0
    assert history["skipped_steps"] == 2 and history["epochs"] == 1
    assert torch.equal(model.loc.detach(), torch.zeros(2))


class _Gaussian(nn.Module):
    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(2))

    def log_prob(self, x: Tensor) -> Tensor:
        return -0.5 * (x - self.loc).square().sum(1) - math.log(2 * math.pi)


def test_early_stopping_restores_the_best_weights():
    # Training data around 3, validation data around 1.5: the mean walks from 0 towards 3 in
    # small steps, so the validation NLL falls, bottoms out mid-way and rises again.
    g = torch.Generator().manual_seed(0)
    train = torch.randn(320, 2, generator=g) * 0.1 + 3.0
    val = torch.randn(200, 2, generator=g) * 0.1 + 1.5
    model = _Gaussian()
    history = fit_density(model, train, val, epochs=200, batch_size=32, lr=0.02, patience=3, seed=0)
    assert history["stop_reason"] == "early_stopping"
    best, vals = history["best_epoch"], history["val_nll"]
    assert 0 < best < len(vals) - 1
    assert len(vals) == best + 1 + 3  # stopped after `patience` epochs without improvement
    assert history["best_val_nll"] == min(vals)
    assert vals[-1] > min(vals) + 0.01
    assert evaluate_nll(model, val) == pytest.approx(history["best_val_nll"], abs=1e-6)
    assert abs(float(model.loc.detach().mean()) - 1.5) < 0.3

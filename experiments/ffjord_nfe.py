"""Function evaluations of FFJORD with and without the regularisers of Finlay et al. (2020).

Finlay, Jacobsen, Nurbekyan & Oberman (2020), "How to train your neural ODE: the world of
Jacobian and kinetic regularization". The same CNF (one block, concat-squash layers 64-64-64,
softplus, Hutchinson trace with Gaussian noise, dopri5 at rtol = atol = 1e-5 as in FFJORD) is
trained on a 2-D toy density for a fixed number of Adam steps (lr 1e-2, cosine decay, batch
512), without and with the kinetic-energy and Jacobian-Frobenius penalties. The log-density and
penalty integrals are left out of the solver's error control (``aux_atol = inf``) in both, so the
step sizes follow the dynamics alone and the NFE comparison is about the learned vector fields.

Every ``--eval-every`` steps: the held-out NLL (10,000 points, one Hutchinson draw) and the NFE of
that forward solve. At the end: the reference NLL (exact trace, dopri5 at 1e-7). Target: the
regularised model needs at most half the test NFE of the unregularised one at a held-out NLL at
most 0.05 nats worse.

    python -m experiments.ffjord_nfe --dataset two_moons --model ffjord   # one fit, writes its JSON
    python -m experiments.ffjord_nfe --report                             # table of all saved fits
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import torch

from ctflow.data import load_toy2d
from ctflow.flows import build
from ctflow.ode import SolverOptions
from ctflow.training import collect_regularization
from experiments.results_io import RESULTS, write_result

OUT = RESULTS / "ffjord_nfe"
TOL = 1e-5
MODELS: dict[str, dict[str, float]] = {
    "ffjord": {"kinetic": 0.0, "jacobian": 0.0},
    "ffjord_reg": {"kinetic": 0.05, "jacobian": 0.05},
    "ffjord_reg_x2": {"kinetic": 0.1, "jacobian": 0.1},
    "ffjord_reg_x4": {"kinetic": 0.2, "jacobian": 0.2},
}
TARGET_RATIO, TARGET_GAP = 0.5, 0.05


def _cnf(flow: torch.nn.Module) -> torch.nn.Module:
    return next(m for m in flow.modules() if hasattr(m, "reset_nfe"))


def evaluate(flow: torch.nn.Module, x: torch.Tensor, seed: int) -> tuple[float, int]:
    cnf = _cnf(flow)
    flow.eval()
    cnf.reset_nfe()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        nll = -float(flow.log_prob(x).mean())
    flow.train()
    return nll, int(cnf.nfe_forward)


def reference_nll(flow: torch.nn.Module, x: torch.Tensor) -> float:
    cnf = _cnf(flow)
    saved_solver, saved_trace = cnf.solver, cnf.trace
    cnf.solver, cnf.trace = SolverOptions(method="dopri5", rtol=1e-7, atol=1e-7), "exact"
    try:
        flow.eval()
        with torch.no_grad():
            return -float(flow.log_prob(x).mean())
    finally:
        cnf.solver, cnf.trace = saved_solver, saved_trace
        flow.train()


def fit(dataset: str, model: str, steps: int, eval_every: int, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    train = torch.tensor(load_toy2d(dataset, 20_000, seed=seed), dtype=torch.float32)
    test = torch.tensor(load_toy2d(dataset, 10_000, seed=seed + 2), dtype=torch.float32)
    solver = {"method": "dopri5", "rtol": TOL, "atol": TOL, "aux_atol": math.inf}
    flow = build(
        "cnf",
        2,
        n_layers=1,
        hidden=(64, 64, 64),
        trace="hutchinson",
        solver=solver,
        seed=seed,
        **MODELS[model],
    )
    cnf = _cnf(flow)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    curve, t0 = [], time.perf_counter()
    nfe_fwd = nfe_bwd = 0
    gen = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(train), (512,), generator=gen)
        cnf.reset_nfe()
        loss = -flow.log_prob(train[idx]).mean()
        reg = collect_regularization(flow)
        total = loss if reg is None else loss + reg
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
        opt.step()
        sched.step()
        nfe_fwd += cnf.nfe_forward
        nfe_bwd += cnf.nfe_backward
        if step % eval_every == 0 or step == steps:
            nll, nfe = evaluate(flow, test, seed=123)
            curve.append(
                {"step": step, "seconds": time.perf_counter() - t0, "test_nll": nll, "test_nfe": nfe}
            )
            print(f"{dataset} {model} step {step}: test NLL {nll:.4f}, test NFE {nfe}", flush=True)
    return {
        "dataset": dataset,
        "model": model,
        "weights": MODELS[model],
        "steps": steps,
        "seconds": time.perf_counter() - t0,
        "nfe_forward_per_step": nfe_fwd / steps,
        "nfe_backward_per_step": nfe_bwd / steps,
        "test_nll": curve[-1]["test_nll"],
        "test_nfe": curve[-1]["test_nfe"],
        "reference_nll": reference_nll(flow, test),
        "curve": curve,
    }


def report() -> str:
    runs = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    by = {(r["dataset"], r["model"]): r for r in runs}
    lines = [
        "# FFJORD with and without kinetic + Jacobian regularisation: function evaluations",
        "",
        f"One CNF (concat-squash 64-64-64, Hutchinson trace), dopri5 at rtol = atol = {TOL:g} with the "
        "log-density and penalty integrals outside error control, Adam 1e-2 with cosine decay, batch 512. "
        "Test NFE: one forward solve of 10,000 held-out points; reference NLL: exact trace, dopri5 at 1e-7.",
        "",
        "| dataset | model | steps | train s | NFE fwd | NFE bwd | test NLL | ref. NLL | test NFE |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['dataset']} | {r['model']} ({r['weights']['kinetic']:g}, {r['weights']['jacobian']:g}) | "
            f"{r['steps']} | {r['seconds']:.0f} | {r['nfe_forward_per_step']:.1f} | "
            f"{r['nfe_backward_per_step']:.1f} | {r['test_nll']:.3f} | {r['reference_nll']:.3f} | "
            f"{r['test_nfe']} |"
        )
    lines += [
        "",
        "| dataset | model | test NFE ratio (reg / unreg) | ref. NLL difference | target met |",
        "|---|---|---:|---:|:---:|",
    ]
    for (dataset, model), r in sorted(by.items()):
        base = by.get((dataset, "ffjord"))
        if model == "ffjord" or base is None:
            continue
        ratio = r["test_nfe"] / base["test_nfe"]
        gap = r["reference_nll"] - base["reference_nll"]
        met = ratio <= TARGET_RATIO and gap <= TARGET_GAP
        lines.append(f"| {dataset} | {model} | {ratio:.2f} | {gap:+.3f} | {'yes' if met else 'no'} |")
    lines += ["", "Test NFE along training (every evaluation):", ""]
    for r in runs:
        lines.append(f"- {r['dataset']} {r['model']}: " + ", ".join(str(c["test_nfe"]) for c in r["curve"]))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="two_moons")
    p.add_argument("--model", choices=sorted(MODELS), default="ffjord")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", action="store_true", help="only write the table of the saved fits")
    args = p.parse_args()
    torch.set_num_threads(1)
    if not args.report:
        result = fit(args.dataset, args.model, args.steps, args.eval_every, args.seed)
        OUT.mkdir(parents=True, exist_ok=True)
        write_result(OUT / f"{args.dataset}_{args.model}.json", json.dumps(result, indent=2))
    text = report()
    print(text)
    write_result(RESULTS / "ffjord_nfe.md", text)


if __name__ == "__main__":
    main()

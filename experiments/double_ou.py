"""Double Ornstein-Uhlenbeck forecasting with GRU-ODE-Bayes (the protocol of De Brouwer et al. 2019).

10,000 generated series, 80/20 split by series; after each epoch, every validation series is
observed until t = 4 and the next observation is scored: NLL per observed value (with the
log(2 pi)/2 constant) and MSE of the predictive mean. Writes ``experiments/results/double_ou.json``
and ``.md``.

    python -m experiments.double_ou --emission gaussian --epochs 30
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ctflow.data import (
    IrregularBatch,
    from_dataframe,
    iterate_batches,
    load_double_ou,
    split_series,
    truncate,
)
from ctflow.models import GRUODEBayes
from experiments.results_io import RESULTS, write_result


def evaluate(model: GRUODEBayes, val: IrregularBatch, t_obs: float = 4.0) -> dict[str, float]:
    """NLL per observed value and MSE of the next observation after ``t_obs``."""
    context, target = truncate(val, t_obs)
    with torch.no_grad():
        state = model.filter(context)
        pred = model.predict(state, target.times[:, :1])
        y, m = target.values[:, :1], target.mask[:, :1]
        nll = -pred.log_prob(y, m).sum() / m.sum()
        mse = ((pred.mean() - y).square() * m).sum() / m.sum()
    return {"nll": nll.item(), "mse": mse.item()}


def run(
    emission: str = "gaussian",
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 5e-4,
    batch_size: int = 500,
    method: str = "euler",
    step_size: float = 0.05,
    hidden_size: int = 50,
    post_jump_weight: float = 0.1,
    target_nll: float | None = None,
    time_budget: float | None = None,
    stop_at_target: bool = False,
    seed: int = 0,
    n_series: int = 10_000,
    threads: int = 2,
    verbose: bool = True,
) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    data = from_dataframe(load_double_ou(n_series, seed=seed))
    train, val = split_series(data, 0.2, seed=seed)
    model = GRUODEBayes(
        2,
        hidden_size,
        25,
        25,
        emission=emission,
        solver={"method": method, "step_size": step_size},
        post_jump_weight=post_jump_weight,
    )
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    history, train_seconds, reached_at = [], 0.0, None
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        total, n = 0.0, 0
        for batch in iterate_batches(train, batch_size, shuffle=True, generator=gen):
            opt.zero_grad()
            loss = model.loss(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            total += loss.item()
            n += 1
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds
        model.eval()
        scores = evaluate(model, val)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / n,
                "epoch_seconds": epoch_seconds,
                "train_seconds": train_seconds,
                **scores,
            }
        )
        if verbose:
            print(
                f"epoch {epoch:3d}  loss {total / n:8.4f}  val NLL {scores['nll']:8.4f}  "
                f"MSE {scores['mse']:.5f}  {epoch_seconds:5.2f} s  (total {train_seconds:6.1f} s)",
                flush=True,
            )
        if target_nll is not None and reached_at is None and scores["nll"] <= target_nll:
            reached_at = {"epoch": epoch, "train_seconds": train_seconds}
        if time_budget is not None and train_seconds > time_budget:
            break
        if stop_at_target and reached_at is not None:
            break
    return {
        "emission": emission,
        "method": method,
        "step_size": step_size,
        "lr": lr,
        "batch_size": batch_size,
        "hidden_size": hidden_size,
        "post_jump_weight": post_jump_weight,
        "seed": seed,
        "threads": threads,
        "history": history,
        "best_val_nll": min(h["nll"] for h in history),
        "final": history[-1],
        "reached_target": reached_at,
        "target_nll": target_nll,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--emission", default="gaussian", choices=["gaussian", "mixlogistic", "maf"])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--method", default="euler")
    p.add_argument("--step-size", type=float, default=0.05)
    p.add_argument("--post-jump-weight", type=float, default=0.1)
    p.add_argument("--target-nll", type=float, default=-1.20)
    p.add_argument("--time-budget", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default=None, help="name of the result files (default: the emission)")
    args = p.parse_args()
    result = run(
        args.emission,
        args.epochs,
        args.lr,
        5e-4,
        args.batch_size,
        args.method,
        args.step_size,
        post_jump_weight=args.post_jump_weight,
        target_nll=args.target_nll,
        time_budget=args.time_budget,
        seed=args.seed,
        threads=args.threads,
    )
    tag = args.tag or f"double_ou_{args.emission}"
    write_result(RESULTS / f"{tag}.json", json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()

"""Seconds per training epoch of GRU-ODE-Bayes on the double-OU data: lockstep vs timestamp loop.

Both run the same model (same modules, same parameters) with the paper's sizes (hidden 50,
p_hidden 25, prep_hidden 25, batch 500, Adam 1e-3, weight decay 5e-4) on 2 CPU threads:

* ``timestamps``: the original algorithm (De Brouwer et al. 2019): walk the sorted distinct
  observation times of the batch, take Euler steps of ``dt`` up to each, then update the rows
  observed there (gathered and scattered back).
* ``lockstep``: ctflow's algorithm: loop over observation *indices*, every series advancing over
  its own interval at once (per-series time rescaling), with the same Euler ``dt`` as the largest step.
* ``lockstep-fast``: the same with the settings used to reach the accuracy target (largest step 0.5).

    python -m experiments.benchmarks.gru_ode_bayes_speed [--epochs 2] [--n-series 10000]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ctflow.data import IrregularBatch, from_dataframe, iterate_batches, load_double_ou, split_series
from ctflow.models import GRUODEBayes
from ctflow.ode import SolverOptions
from experiments.results_io import RESULTS, write_result


def timestamp_loop_loss(model: GRUODEBayes, batch: IrregularBatch, dt: float) -> torch.Tensor:
    """The original algorithm: Euler steps of ``dt`` between the batch's distinct timestamps."""
    ref = model._reference()
    times, values, mask = batch.times.to(ref), batch.values.to(ref), batch.mask.to(ref)
    valid = batch.pad_mask.to(ref.device)
    h = model.h0.expand(times.shape[0], -1)
    t = 0.0
    nll_pre, nll_post = ref.new_zeros(()), ref.new_zeros(())
    for obs_time in torch.unique(times[valid]).tolist():
        while t < obs_time - 1e-9:
            step = min(dt, obs_time - t)
            h = h + step * model.ode(h)
            t += step
        rows, cols = torch.nonzero((times == obs_time) & valid, as_tuple=True)
        y, m = values[rows, cols], mask[rows, cols]
        h_obs = h[rows]
        nll_pre = nll_pre - model.emission.log_prob(y, m, h_obs).sum()
        h_obs = model._jump(h_obs, y, m)
        nll_post = nll_post - model.emission.log_prob(y, m, h_obs).sum()
        h = h.index_copy(0, rows, h_obs)
    return (nll_pre + model.post_jump_weight * nll_post) / mask.sum()


def epoch_seconds(model: GRUODEBayes, train: IrregularBatch, loss_fn, batch_size: int, seed: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for b in iterate_batches(train, batch_size, shuffle=True, generator=gen):
        opt.zero_grad()
        loss_fn(b).backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per algorithm (median reported)")
    p.add_argument("--n-series", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = from_dataframe(load_double_ou(args.n_series, seed=0))
    train, _ = split_series(data, 0.2, seed=0)
    device = torch.device(args.device)
    train = train.to(device)
    dt = 0.05
    runs = {
        "timestamps (Euler dt 0.05)": ({"method": "euler", "step_size": dt}, "loop"),
        "lockstep (Euler, step <= 0.05)": ({"method": "euler", "step_size": dt}, "lockstep"),
        "lockstep-fast (Euler, step <= 0.5)": ({"method": "euler", "step_size": 0.5}, "lockstep"),
    }
    results = {}
    for name, (solver, algorithm) in runs.items():
        torch.manual_seed(0)
        model = GRUODEBayes(2, 50, 25, 25, solver=SolverOptions(**solver)).to(device)
        fn = (lambda b, m=model: timestamp_loop_loss(m, b, dt)) if algorithm == "loop" else model.loss
        times = [epoch_seconds(model, train, fn, 500, seed) for seed in range(args.epochs)]
        results[name] = sorted(times)[len(times) // 2]
        print(
            f"{name:40s} {results[name]:7.2f} s/epoch  (runs: {', '.join(f'{x:.2f}' for x in times)})",
            flush=True,
        )
    base = results["timestamps (Euler dt 0.05)"]
    ratios = {k: base / v for k, v in results.items()}
    for k, r in ratios.items():
        print(f"speed-up of {k:40s} over the timestamp loop: {r:5.2f}x")
    out = {
        "device": args.device,
        "threads": args.threads,
        "n_train_series": len(train),
        "seconds_per_epoch": results,
        "speedup_vs_timestamp_loop": ratios,
    }
    write_result(RESULTS / f"gru_ode_bayes_speed_{args.device}.json", json.dumps(out, indent=2))
    lines = [
        f"# GRU-ODE-Bayes training epoch on double OU ({args.device}, {args.threads} threads)",
        "",
        f"{len(train)} training series, batch 500, hidden 50, Adam 1e-3, weight decay 5e-4; median of "
        f"{args.epochs} epochs.",
        "",
        "| algorithm | s/epoch | speed-up vs timestamp loop |",
        "|---|---:|---:|",
        *[f"| {k} | {v:.2f} | {ratios[k]:.2f}x |" for k, v in results.items()],
    ]
    write_result(RESULTS / f"gru_ode_bayes_speed_{args.device}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Seconds per training epoch of GRU-ODE-Bayes on the double-OU data: lockstep vs timestamp loop.

Both run the same model (same modules, same parameters) with the paper's sizes (hidden 50,
p_hidden 25, prep_hidden 25, batch 500, Adam 1e-3, weight decay 5e-4) on one CPU thread (more threads
slow the timestamp loop down: its operations are too small to share):

* ``timestamps``: the original algorithm (De Brouwer et al. 2019): walk the sorted distinct
  observation times of the batch, take Euler steps of ``dt`` up to each, then update the rows
  observed there (gathered and scattered back).
* ``lockstep by index``: a loop over observation *indices*, every series advancing over its own
  interval at once (per-series time rescaling) in as many steps as the batch's longest gap at that
  index needs, with the same Euler ``dt`` as the largest step.
* ``lockstep planned``: ctflow's default (:mod:`ctflow.models.lockstep`): blocks of Euler steps
  sized to the series' own gaps, each series updated when a block reaches its next observation;
  no step longer than ``dt``.
* ``lockstep planned, step <= 0.5``: the same with a 10x larger largest step.

Accuracy at equal step: every algorithm's held-out NLL/value with one set of parameters (those
the timestamp loop trained), against a reference solve (RK4, step <= 0.005); the difference is the
integration error the algorithm's steps make.

    python -m experiments.benchmarks.gru_ode_bayes_speed [--epochs 2] [--n-series 10000]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ctflow.data import IrregularBatch, from_dataframe, iterate_batches, load_double_ou, split_series
from ctflow.models import GRUODEBayes
from ctflow.ode import SolverOptions, steps_for
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
        while t < obs_time - 1e-3 * dt:  # the paper's tolerance: no sliver steps from rounding
            step = min(dt, obs_time - t)
            h = h + step * model.ode(h)
            t += step
        rows, cols = torch.nonzero((times == obs_time) & valid, as_tuple=True)
        y, m = values[rows, cols], mask[rows, cols]
        h_obs = h[rows]
        log_prob, stats = model.emission.log_prob_and_statistics(y, m, h_obs)
        nll_pre = nll_pre - log_prob.sum()
        h_obs = model.bayes(h_obs, stats, m)
        nll_post = nll_post - model.emission.log_prob(y, m, h_obs).sum()
        h = h.index_copy(0, rows, h_obs)
    return (nll_pre + model.post_jump_weight * nll_post) / mask.sum()


def held_out_nll(model: GRUODEBayes, loss_fn, test: IrregularBatch, batch_size: int) -> float:
    """Mean held-out NLL/value (pre- and weighted post-jump, as trained) in evaluation mode."""
    model.eval()
    total, count = 0.0, 0.0
    with torch.no_grad():
        for b in iterate_batches(test, batch_size, shuffle=False):
            n = float(b.mask.sum())
            total, count = total + float(loss_fn(b)) * n, count + n
    model.train()
    return total / count


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
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per algorithm (median reported)")
    p.add_argument("--n-series", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = from_dataframe(load_double_ou(args.n_series, seed=0))
    train, test = split_series(data, 0.2, seed=0)
    device = torch.device(args.device)
    train, test = train.to(device), test.to(device)
    dt = 0.05
    runs = {
        "timestamps (Euler dt 0.05)": ({"method": "euler", "step_size": dt}, "loop"),
        "lockstep by index (Euler, step <= 0.05)": ({"method": "euler", "step_size": dt}, "index"),
        "lockstep planned (Euler, step <= 0.05)": ({"method": "euler", "step_size": dt}, "auto"),
        "lockstep planned (Euler, step <= 0.5)": ({"method": "euler", "step_size": 0.5}, "auto"),
    }

    def build(solver: dict, algorithm: str) -> tuple[GRUODEBayes, object]:
        planning = "index" if algorithm == "loop" else algorithm
        model = GRUODEBayes(2, 50, 25, 25, solver=SolverOptions(**solver), planning=planning).to(device)
        step = solver["step_size"]
        fn = (lambda b, m=model: timestamp_loop_loss(m, b, step)) if algorithm == "loop" else model.loss
        return model, fn

    results, blocks = {}, {}
    built = {}
    for name, (solver, algorithm) in runs.items():
        torch.manual_seed(0)
        built[name] = (*build(solver, algorithm), [])
    # Epochs interleaved (one of each algorithm in turn), so that the machine's drift hits all alike.
    for seed in range(args.epochs):
        for model, fn, times in built.values():
            times.append(epoch_seconds(model, train, fn, 500, seed))
    trained = {k: v.detach().clone() for k, v in built["timestamps (Euler dt 0.05)"][0].state_dict().items()}
    for name, (_, algorithm) in runs.items():
        model, _, times = built[name]
        results[name] = sorted(times)[len(times) // 2]
        first = next(
            iter(iterate_batches(train, 500, shuffle=True, generator=torch.Generator().manual_seed(0)))
        )
        if algorithm == "loop":
            stamps = torch.unique(first.times[first.pad_mask]).tolist()
            gaps = [b - a for a, b in zip([0.0, *stamps[:-1]], stamps, strict=True)]
            blocks[name] = (len(stamps), sum(steps_for(g - 1e-3 * dt, dt) for g in gaps if g > 1e-3 * dt))
        else:
            dts = model._intervals(model.initial_state(first).time, first.times.to(model.h0))
            plan = model._schedule(dts, first.lengths)
            blocks[name] = (len(plan), plan.total_steps)
        print(
            f"{name:45s} {results[name]:7.2f} s/epoch  (runs: {', '.join(f'{x:.2f}' for x in times)})",
            flush=True,
        )
    reference_model, reference_fn = build({"method": "rk4", "step_size": 0.005}, "auto")
    reference_model.load_state_dict(trained)
    reference = held_out_nll(reference_model, reference_fn, test, 500)
    errors = {}
    for name, (solver, algorithm) in runs.items():
        model, fn = build(solver, algorithm)
        model.load_state_dict(trained)
        errors[name] = held_out_nll(model, fn, test, 500) - reference
        print(f"{name:45s} held-out NLL - reference: {errors[name]:+.5f}", flush=True)
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
        "blocks_and_steps_first_batch": blocks,
        "reference_nll": reference,
        "nll_minus_reference": errors,
    }
    write_result(RESULTS / f"gru_ode_bayes_speed_{args.device}.json", json.dumps(out, indent=2))
    lines = [
        f"# GRU-ODE-Bayes training epoch on double OU ({args.device}, {args.threads} threads)",
        "",
        f"{len(train)} training series, batch 500, hidden 50, Adam 1e-3, weight decay 5e-4; median of "
        f"{args.epochs} epochs. Updates and solver steps: of the first training batch (the timestamp "
        "loop makes one update per distinct time). NLL error: held-out NLL/value with the timestamp "
        f"loop's trained parameters minus that of an RK4 solve with step <= 0.005 ({reference:.5f}).",
        "",
        "| algorithm | s/epoch | speed-up vs timestamp loop | updates | solver steps | NLL error |",
        "|---|---:|---:|---:|---:|---:|",
        *[
            f"| {k} | {v:.2f} | {ratios[k]:.2f}x | {blocks.get(k, ('-', '-'))[0]} | "
            f"{blocks.get(k, ('-', '-'))[1]} | {errors[k]:+.5f} |"
            for k, v in results.items()
        ],
    ]
    write_result(RESULTS / f"gru_ode_bayes_speed_{args.device}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

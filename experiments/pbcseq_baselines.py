"""Classical forecasters on the pbcseq protocol of ``experiments.forecast_study``.

How far below persistence can the held-out CRPS of the PBC labs go without a learned sequence
model? For each random split (``--seeds``), :class:`ctflow.baselines.SmoothedLevelBaseline`
(continuous-time exponential smoothing shrunk to the training mean, with empirical residuals per
horizon) is fitted over a grid of decay times and shrinkage weights. The grid point with the best
one-step-ahead log-likelihood on the training patients is the selected model; the grid point with
the best held-out CRPS is reported too, as an optimistic bound for this family. Scores as in the
forecast study (standardised units, 500 samples) against :class:`ctflow.baselines.LastValueBaseline`.

    python -m experiments.pbcseq_baselines [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np

from ctflow.baselines import LastValueBaseline, SmoothedLevelBaseline
from experiments.forecast_study import load, scores
from experiments.results_io import RESULTS, write_result

TIME_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)  # years
SHRINKAGE = (0.0, 0.3, 1.0)


def run(seed: int) -> dict:
    train, context, target = load("pbcseq", seed)
    variables = [c for c in train.columns if c not in ("unique_id", "ds")]
    scale = train[variables].std().to_numpy()
    queries = target[["unique_id", "ds"]]
    naive = LastValueBaseline(random_state=seed).fit(train)
    naive_crps = scores(naive.forecast(context, times=queries), target, variables, scale)["crps"]
    grid = []
    for time_scale, shrinkage in itertools.product(TIME_SCALES, SHRINKAGE):
        model = SmoothedLevelBaseline(time_scale, shrinkage, random_state=seed).fit(train)
        s = scores(model.forecast(context, times=queries), target, variables, scale)
        grid.append(
            {
                "time_scale": time_scale,
                "shrinkage": shrinkage,
                "train_score": model.score(train),
                "crps": s["crps"],
                "coverage_80": s["coverage_80"],
                "coverage_95": s["coverage_95"],
                "crps_reduction": 1 - s["crps"] / naive_crps,
            }
        )
    selected = max(grid, key=lambda g: g["train_score"])
    best = min(grid, key=lambda g: g["crps"])
    return {"seed": seed, "naive_crps": naive_crps, "selected": selected, "best_on_test": best, "grid": grid}


def report(results: list[dict]) -> str:
    lines = [
        "# Classical forecasters on pbcseq (second half of each held-out patient's visits)",
        "",
        "CRPS in standardised units; reduction relative to the last-value baseline of the same split.",
        "",
        "| split | naive CRPS | selected (decay, shrinkage) | CRPS | reduction | best on test | CRPS "
        "| reduction |",
        "|---|---:|---|---:|---:|---|---:|---:|",
    ]
    for r in results:
        s, b = r["selected"], r["best_on_test"]
        lines.append(
            f"| {r['seed']} | {r['naive_crps']:.4f} | ({s['time_scale']:g} y, {s['shrinkage']:g}) | "
            f"{s['crps']:.4f} | {100 * s['crps_reduction']:.1f}% | ({b['time_scale']:g} y, "
            f"{b['shrinkage']:g}) | {b['crps']:.4f} | {100 * b['crps_reduction']:.1f}% |"
        )
    sel = np.mean([r["selected"]["crps_reduction"] for r in results])
    best = np.mean([r["best_on_test"]["crps_reduction"] for r in results])
    lines += ["", f"Mean reduction: selected {100 * sel:.1f}%, best on test {100 * best:.1f}%."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = p.parse_args()
    results = []
    for seed in args.seeds:
        results.append(run(seed))
        print(f"split {seed}: selected {results[-1]['selected']}", flush=True)
    text = report(results)
    print(text)
    for path, content in (
        (RESULTS / "pbcseq_baselines.json", json.dumps(results, indent=2)),
        (RESULTS / "pbcseq_baselines.md", text),
    ):
        write_result(path, content)


if __name__ == "__main__":
    main()

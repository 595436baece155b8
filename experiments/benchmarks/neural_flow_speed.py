"""GRU-ODE-Bayes between observations: the GRU-ODE (exponential Euler, the default step) against
neural flows (Biloš et al. 2021), at equal wall time on double OU.

Each dynamics trains the default ``Forecaster`` model (only ``dynamics`` differs) on the same
double-OU series for ``--seconds`` of wall time (no validation, one thread), then scores 200
held-out series: mean NLL per value of one-step-ahead predictions (``Forecaster.score``, negated)
and the CRPS and MSE of forecasts of each held-out series' last time unit from before it
(``ctflow.cross_validation``). Time per epoch is the measured time per optimizer step times the
steps of one pass over the training series. The ratio column is the ODE's time per epoch over
each one's.

    python -m experiments.benchmarks.neural_flow_speed [--series 1000] [--seconds 60] [--tag NAME]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math

import torch

from ctflow import Forecaster, cross_validation
from ctflow.data import load_double_ou
from ctflow.metrics import evaluate
from experiments.results_io import RESULTS, write_result

DYNAMICS = ("ode", "gru_flow", "resnet_flow", "coupling_flow")


def run(dynamics: str, train, test, seconds: float, batch_size: int) -> dict:
    model = Forecaster(
        model={"name": "gru_ode_bayes", "dynamics": dynamics},
        max_steps=10**6,
        val_fraction=0.0,
        batch_size=batch_size,
        time_limit=seconds,
        random_state=0,
    ).fit(train)
    history = model.history_
    steps = history["n_steps"]
    per_step = history["seconds"] / max(1, steps)
    per_epoch = per_step * math.ceil(train["unique_id"].nunique() / batch_size)
    scores = evaluate(cross_validation(model, test, horizon=1.0, n_samples=200), by=()).iloc[0]
    return {
        "dynamics": dynamics,
        "steps": steps,
        "seconds_per_epoch": per_epoch,
        "nll": -model.score(test),
        "crps": float(scores["crps"]),
        "mse": float(scores["mse"]),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    train, test = load_double_ou(args.series, seed=0), load_double_ou(200, seed=1)
    rows = [run(d, train, test, args.seconds, args.batch_size) for d in DYNAMICS]
    base = rows[0]["seconds_per_epoch"]
    lines = [
        "# GRU-ODE-Bayes dynamics at equal wall time (double OU)",
        "",
        f"{args.series} training series, batch {args.batch_size}, {args.seconds:.0f} s of training each, "
        "one thread, CPU; 200 held-out series.",
        "",
        "| dynamics | steps | s / epoch | speed-up vs ODE | held-out NLL/value | CRPS (last unit) | MSE |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dynamics']} | {r['steps']} | {r['seconds_per_epoch']:.2f} | "
            f"{base / r['seconds_per_epoch']:.2f}x | {r['nll']:.4f} | {r['crps']:.4f} | {r['mse']:.4f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    stem = "neural_flow_speed" + (f"_{args.tag}" if args.tag else "")
    write_result(RESULTS / f"{stem}.md", text)
    write_result(RESULTS / f"{stem}.json", json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

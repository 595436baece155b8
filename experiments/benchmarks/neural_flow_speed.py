"""GRU-ODE-Bayes between observations: the GRU-ODE against neural flows (Biloš et al. 2021), at
equal wall time, on double OU or PhysioNet 2012.

Each dynamics trains the default ``Forecaster`` model (only the dynamics differ) on the same
training series for ``--seconds`` of wall time (no validation, no refit, one thread). The GRU-ODE
runs twice: with the default solver (exponential Euler, at most two steps per gap, each at most
the median gap) and with the paper's (Euler, steps of at most 0.05 time units on double OU, a
twentieth of the median gap on PhysioNet). Time per epoch is the measured time per optimizer
step times the steps of one pass over the training series; the ratio columns are each ODE's
time per epoch over each one's.

* double OU: 200 held-out series: mean NLL per value of one-step-ahead predictions
  (``Forecaster.score``, negated) and the CRPS and MSE of forecasts of each held-out series' last
  time unit from before it (``ctflow.cross_validation``).
* ``--physionet PATH``: the protocol of ``experiments.physionet2012`` (training stays; test stays
  cut at 36 hours, the next three hourly observations): MSE of the forecast mean, NLL per value of
  the marginal predictives, CRPS.

    python -m experiments.benchmarks.neural_flow_speed [--series 1000] [--seconds 60] [--tag NAME]
    python -m experiments.benchmarks.neural_flow_speed --physionet ../shared/data/physionet2012 --seconds 300
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
from pathlib import Path

import pandas as pd
import torch

from ctflow import Forecaster, cross_validation
from ctflow.data import load_double_ou
from ctflow.metrics import evaluate
from experiments.results_io import RESULTS, write_result

DYNAMICS = ("ode", "ode_paper", "gru_flow", "resnet_flow", "coupling_flow")


def median_gap(frame: pd.DataFrame) -> float:
    """The median gap between a series' consecutive rows (the Forecaster's unit of ``step_size``)."""
    return float(frame.groupby("unique_id")["ds"].diff().dropna().median())


def model_settings(dynamics: str, paper_step: float) -> dict:
    """The default GRU-ODE-Bayes settings with the given dynamics; ``ode_paper``: Euler steps of at
    most ``paper_step`` median gaps."""
    if dynamics == "ode_paper":
        solver = {"solver": "euler", "step_size": paper_step, "max_steps_per_interval": 10**4}
        return {"name": "gru_ode_bayes", **solver}
    return {"name": "gru_ode_bayes", "dynamics": dynamics}


def fit(dynamics: str, train: pd.DataFrame, seconds: float, batch_size: int, paper_step: float) -> tuple:
    model = Forecaster(
        model=model_settings(dynamics, paper_step),
        max_steps=10**6,
        val_fraction=0.0,
        refit=False,
        batch_size=batch_size,
        time_limit=seconds,
        random_state=0,
    ).fit(train)
    history = model.history_
    steps = history["n_steps"]
    per_step = history["seconds"] / max(1, steps)
    per_epoch = per_step * math.ceil(train["unique_id"].nunique() / batch_size)
    return model, {"dynamics": dynamics, "steps": steps, "seconds_per_epoch": per_epoch}


def run_double_ou(dynamics: str, data: dict, seconds: float, batch_size: int) -> dict:
    paper_step = 0.05 / median_gap(data["train"])
    model, row = fit(dynamics, data["train"], seconds, batch_size, paper_step)
    test = data["test"]
    scores = evaluate(cross_validation(model, test, horizon=1.0, n_samples=200), by=()).iloc[0]
    return {**row, "nll": -model.score(test), "crps": float(scores["crps"]), "mse": float(scores["mse"])}


def run_physionet(dynamics: str, data: dict, seconds: float, batch_size: int) -> dict:
    from experiments.physionet2012 import marginal_nll, score_forecast

    model, row = fit(dynamics, data["train"], seconds, batch_size, 1 / 20)
    context, targets = data["context"], data["targets"]
    forecast = model.forecast(context, times=targets[["unique_id", "ds"]], n_samples=200, seed=0)
    scores = score_forecast(forecast, targets)
    torch.manual_seed(0)
    nll = marginal_nll(model, context, targets)
    return {**row, "nll": nll, "crps": float(scores["crps"]), "mse": float(scores["mse"])}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--physionet", default=None, help="PhysioNet 2012 folder: run on its protocol")
    p.add_argument("--dynamics", nargs="+", default=list(DYNAMICS), choices=DYNAMICS)
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.physionet:
        from experiments.physionet2012 import prepare

        data = prepare(Path(args.physionet))
        run, title = run_physionet, "PhysioNet 2012"
        n_train, n_test = data["train"]["unique_id"].nunique(), data["context"]["unique_id"].nunique()
        held_out = (
            f"{n_train} training stays, batch {args.batch_size}, {args.seconds:.0f} s of training each, "
            f"one thread, CPU; {n_test} test stays, the next three hourly observations after 36 hours "
            "(z units)."
        )
        columns = "NLL/value (marginal) | CRPS | MSE"
    else:
        data = {"train": load_double_ou(args.series, seed=0), "test": load_double_ou(200, seed=1)}
        run, title = run_double_ou, "double OU"
        held_out = (
            f"{args.series} training series, batch {args.batch_size}, {args.seconds:.0f} s of training "
            "each, one thread, CPU; 200 held-out series."
        )
        columns = "held-out NLL/value | CRPS (last unit) | MSE"
    rows = []
    for dynamics in args.dynamics:
        rows.append(run(dynamics, data, args.seconds, args.batch_size))
        print(json.dumps(rows[-1]), flush=True)
    per_epoch = {r["dynamics"]: r["seconds_per_epoch"] for r in rows}
    base, paper = per_epoch.get("ode"), per_epoch.get("ode_paper")

    def ratio(reference: float | None, r: dict) -> str:
        return "-" if reference is None else f"{reference / r['seconds_per_epoch']:.2f}x"

    lines = [
        f"# GRU-ODE-Bayes dynamics at equal wall time ({title})",
        "",
        held_out,
        "ode: the default solver (exponential Euler, at most two steps per gap); ode_paper: Euler with "
        "steps of at most 0.05 time units (double OU) or a twentieth of the median gap (PhysioNet).",
        "",
        f"| dynamics | steps | s / epoch | speed-up vs ode | speed-up vs ode_paper | {columns} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dynamics']} | {r['steps']} | {r['seconds_per_epoch']:.2f} | {ratio(base, r)} | "
            f"{ratio(paper, r)} | {r['nll']:.4f} | {r['crps']:.4f} | {r['mse']:.4f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    stem = "neural_flow_speed" + ("_physionet" if args.physionet else "")
    stem += f"_{args.tag}" if args.tag else ""
    write_result(RESULTS / f"{stem}.md", text)
    write_result(RESULTS / f"{stem}.json", json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

"""Compare the sequence models of ctflow on held-out series of double OU and pbcseq.

Models (all through :class:`ctflow.Forecaster`, same data, split and scores as
``experiments/forecast_study.py``): GRU-ODE-Bayes with a Gaussian and with a flow
(mixture-of-logistics) emission, LatentODE with a diagonal-Gaussian and with an IAF posterior,
LatentSDE, and the naive last-value baseline. Each fit has the same wall-clock budget
(``--budget`` seconds, early stopping on a fifth of the training series).

Scores on the held-out series: NLL = ``-Forecaster.score`` of the whole held-out series (one-step-
ahead log-likelihood per observed value in the data's units; for the latent models the IWAE
estimate of ``log p(x)`` per observed value, equal to it by the chain rule), and for the
forecasts after each held-out series' cut: CRPS (500 samples), coverage of the 80%/95% intervals
and MSE of the mean, in units of each variable's training standard deviation.

    python -m experiments.model_comparison [--datasets double_ou pbcseq] [--budget 150]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import pandas as pd
import torch

from ctflow import Forecaster
from ctflow.baselines import LastValueBaseline
from experiments.forecast_study import load, scores
from experiments.results_io import RESULTS, write_result

MODELS: dict[str, dict[str, Any]] = {  # the Forecaster's ``model``: a name and its settings
    "GRU-ODE-Bayes, Gaussian": {"name": "gru_ode_bayes", "emission": "gaussian"},
    "GRU-ODE-Bayes, flow emission": {"name": "gru_ode_bayes", "emission": "mixlogistic"},
    "LatentODE, Gaussian posterior": {"name": "latent_ode", "posterior": "gaussian"},
    "LatentODE, IAF posterior": {"name": "latent_ode", "posterior": "iaf"},
    "LatentSDE": {"name": "latent_sde", "posterior": "gaussian"},
}
COMMON: dict[str, dict[str, Any]] = {
    "double_ou": {"max_epochs": 200, "patience": 8, "batch_size": 64},
    "pbcseq": {"max_epochs": 400, "patience": 25, "batch_size": 32},
}


def run(dataset: str, budget: float, seed: int) -> list[dict[str, Any]]:
    train, context, target = load(dataset, seed)
    variables = [c for c in train.columns if c not in ("unique_id", "ds")]
    scale = train[variables].std().to_numpy()
    held_out = pd.concat([context, target]).sort_values(["unique_id", "ds"])
    queries = target[["unique_id", "ds"]]
    rows = []
    naive = LastValueBaseline(random_state=seed)
    t0 = time.perf_counter()
    naive.fit(train)
    naive_seconds = time.perf_counter() - t0
    s = scores(naive.forecast(context, times=queries, n_samples=500), target, variables, scale)
    rows.append(
        {"model": "naive last value", "nll": -naive.score(held_out), "fit_seconds": naive_seconds, **s}
    )
    for label, model in MODELS.items():
        est = Forecaster(model=model, random_state=seed, time_limit=budget, **COMMON[dataset])
        t0 = time.perf_counter()
        est.fit(train)
        seconds = time.perf_counter() - t0
        torch.manual_seed(seed)
        nll = -est.score(held_out)
        s = scores(est.forecast(context, times=queries, n_samples=500), target, variables, scale)
        rows.append(
            {
                "model": label,
                "nll": nll,
                "fit_seconds": seconds,
                "epochs": est.history_["epochs"],
                "stop_reason": est.history_["stop_reason"],
                **s,
            }
        )
        print(f"{dataset} | {label}: NLL {nll:.3f}, CRPS {s['crps']:.4f}, fit {seconds:.0f} s", flush=True)
    for r in rows:
        r["dataset"] = dataset
    return rows


def report(rows: list[dict[str, Any]], budget: float) -> str:
    lines = [
        "# Sequence models on held-out series",
        "",
        f"Same split and protocol as the forecast study; every fit had at most {budget:.0f} s on one CPU "
        "thread (early stopping on a fifth of the training series). NLL: one-step-ahead negative "
        "log-likelihood per observed value of the held-out series, in the data's units (latent models: "
        "IWAE estimate of -log p(x)). CRPS, coverage and MSE: forecasts after each held-out series' cut, "
        "standardised units.",
        "",
        "| dataset | model | NLL | CRPS | cov 80% | cov 95% | MSE | fit s (epochs) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        epochs = f" ({r['epochs']})" if "epochs" in r else ""
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['nll']:.3f} | {r['crps']:.4f} | {r['coverage_80']:.3f} | "
            f"{r['coverage_95']:.3f} | {r['mse']:.4f} | {r['fit_seconds']:.0f}{epochs} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["double_ou", "pbcseq"], choices=sorted(COMMON))
    p.add_argument("--budget", type=float, default=150.0, help="seconds per fit")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for dataset in args.datasets:
        rows += run(dataset, args.budget, args.seed)
    text = report(rows, args.budget)
    print(text)
    suffix = "_".join(args.datasets)
    write_result(RESULTS / f"model_comparison_{suffix}.json", json.dumps(rows, indent=2, default=str))
    write_result(RESULTS / f"model_comparison_{suffix}.md", text)


if __name__ == "__main__":
    main()

"""Demo: probabilistic forecasts of the labs of held-out PBC patients (``make demo`` runs it).

Fits a :class:`ctflow.Forecaster` (GRU-ODE-Bayes with a mixture-of-logistics flow emission of
the change since each lab's last value; the forecast study's configuration) to four fifths of the
built-in pbcseq patients (seven labs at irregular visits, many missing; the five skewed labs on a
log scale, time in years) within a short CPU budget, then on the held-out patients prints

* the one-step-ahead NLL per observed value (``-Forecaster.score``), and
* for forecasts of the second half of each patient's visits from the first half: CRPS and the
  coverage of the 80% and 95% intervals (standardised units),

each next to the naive baseline (last observed value with training residuals per horizon).
Writes the forecasts as a long CSV and a PNG of three patients under ``experiments/results/``.

    python -m experiments.demo [--time-limit 90] [--out-dir experiments/results]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch

from ctflow import Forecaster
from ctflow.baselines import LastValueBaseline
from ctflow.checkpoint import atomic_write
from experiments.forecast_study import CONFIGS, load, scores
from experiments.results_io import RESULTS


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.demo", description=__doc__.split("\n")[0])
    p.add_argument("--time-limit", type=float, default=90.0, help="training budget in seconds")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    train, context, target = load("pbcseq", args.seed)
    variables = [c for c in train.columns if c not in ("unique_id", "ds")]
    print(
        f"pbcseq: {train['unique_id'].nunique()} training patients, {context['unique_id'].nunique()} "
        f"held-out patients, labs {variables}",
        flush=True,
    )
    t0 = time.perf_counter()
    params = {**CONFIGS["pbcseq"]["params"], "time_limit": args.time_limit}
    model = Forecaster(**params, random_state=args.seed, verbose=True).fit(train)
    print(f"fitted in {time.perf_counter() - t0:.0f} s ({model.history_['epochs']} epochs)", flush=True)
    naive = LastValueBaseline(random_state=args.seed).fit(train)

    held_out = pd.concat([context, target]).sort_values(["unique_id", "ds"])
    nll, nll_naive = -model.score(held_out), -naive.score(held_out)
    fc = model.forecast(context, times=target[["unique_id", "ds"]], n_samples=500)
    fc_naive = naive.forecast(context, times=target[["unique_id", "ds"]], n_samples=500)
    scale = train[variables].std().to_numpy()
    ours, base = scores(fc, target, variables, scale), scores(fc_naive, target, variables, scale)

    print(f"\n{'held-out patients':26s}{'NLL':>8s}{'CRPS':>8s}{'cov80':>8s}{'cov95':>8s}")
    for name, value, s in (("Forecaster", nll, ours), ("naive last value", nll_naive, base)):
        print(f"{name:26s}{value:8.3f}{s['crps']:8.3f}{s['coverage_80']:8.3f}{s['coverage_95']:8.3f}")
    print("(NLL: one-step-ahead, nats per observed value, original units of the log labs;")
    print(" CRPS and coverage: second half of each patient's visits from the first half, standardised)")

    csv = args.out_dir / "demo_forecast.csv"
    table = fc.to_frame(quantiles=(0.025, 0.1, 0.5, 0.9, 0.975))
    atomic_write(csv, lambda tmp: table.to_csv(tmp, index=False), parents=True)
    ids = target["unique_id"].value_counts().index[:3]
    fig, axes = plt.subplots(3, 3, figsize=(12, 7), sharex="col")
    for col, sid in enumerate(ids):
        for row, lab in enumerate(("bili", "albumin", "protime")):
            fc.plot(sid, ax=axes[row, col], variables=[lab])
            truth = target[target["unique_id"] == sid]
            axes[row, col].plot(truth["ds"], truth[lab], "x", color="C3", label="held out")
            axes[0, col].set_title(f"patient {sid}")
    for ax in axes[-1]:
        ax.set_xlabel("years since registration")
    fig.tight_layout()
    png = args.out_dir / "demo_forecast.png"
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    print(f"\nwrote {csv} and {png}")


if __name__ == "__main__":
    main()

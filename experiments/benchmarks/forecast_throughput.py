"""Forecast throughput of ``ctflow.Forecaster``: series per second on CPU.

A Forecaster (the default GRU-ODE-Bayes with a Gaussian emission, hidden size 32) is fitted
briefly on double-OU series, then forecasts 10,000 series (about 20 observations each as context)
at 3 horizons with 200 samples per query, end to end from the DataFrame to the ``Forecast``
(validation, conversion, filtering through the context, sampling, back to original units). Both
independent marginal draws and joint sample paths (sample, update, continue) are timed; the
median of ``--repeats`` runs is reported.

    python -m experiments.benchmarks.forecast_throughput [--n-series 10000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ctflow import Forecaster
from ctflow.data import load_double_ou
from experiments.results_io import RESULTS, write_result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-series", type=int, default=10_000)
    p.add_argument("--n-samples", type=int, default=200)
    p.add_argument("--horizon", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    train = load_double_ou(1000, seed=1)
    model = Forecaster(max_epochs=3, random_state=0, device=args.device).fit(train)
    context = load_double_ou(args.n_series, seed=2)

    results = {}
    for paths in (False, True):
        seconds = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            fc = model.forecast(context, horizon=args.horizon, n_samples=args.n_samples, paths=paths, seed=r)
            if args.device != "cpu":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - t0)
        med = statistics.median(seconds)
        key = "paths" if paths else "marginal"
        results[key] = {
            "seconds": med,
            "series_per_second": args.n_series / med,
            "all_seconds": seconds,
            "samples_shape": list(fc.samples.shape),
        }
        print(
            f"{key:8s}: {args.n_series} series x {len(args.horizon)} horizons x {args.n_samples} samples "
            f"in {med:.2f} s -> {args.n_series / med:,.0f} series/s",
            flush=True,
        )
    out = {
        "n_series": args.n_series,
        "n_samples": args.n_samples,
        "horizon": args.horizon,
        "threads": args.threads,
        "device": args.device,
        "observations_per_series": float(len(context) / args.n_series),
        "results": results,
    }
    tag = f"{args.device}_{args.threads}threads" if args.device == "cpu" else args.device
    write_result(RESULTS / f"forecast_throughput_{tag}.json", json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

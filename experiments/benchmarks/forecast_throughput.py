"""Forecast throughput of ``ctflow.Forecaster`` for every model and emission, on CPU or GPU.

Each model is fitted briefly (throughput does not depend on how well; the sizes are those of the
studies: hidden 32, emission width 32), then times, end to end from the DataFrame to the result
(validation, conversion, filtering through the context, the predictive, back to original units):

* ``predict``: predictive means;
* ``quantiles``: ``predict_quantiles`` at (0.1, 0.9);
* ``samples``: ``forecast`` with ``--n-samples`` independent marginal draws per query;
* ``paths``: ``forecast(paths=True)``, joint sample paths over each series' queries.

Data: double OU (``--n-series`` series as context, about 20 observations each, 3 horizons) and
the PhysioNet 2012 protocol test set (1,788 stays observed up to hour 36, their next 3 observed
hours; ``--physionet PATH``, skipped when the data are absent). Every row prints series per
second and the ratio of its time to the Gaussian GRU-ODE-Bayes on the same work.

    python -m experiments.benchmarks.forecast_throughput [--datasets double_ou physionet]
        [--models gru_gaussian gru_mixlogistic gru_maf latent_ode latent_sde]
        [--n-series 10000] [--n-samples 200] [--threads 2] [--repeats 1] [--max-stays N] [--tag T]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ctflow import Forecaster
from ctflow.data import load_double_ou
from experiments.physionet2012 import machine
from experiments.results_io import RESULTS, write_result

MODELS: dict[str, dict[str, Any]] = {  # the Forecaster's ``model``: a name and its settings
    "gru_gaussian": {"name": "gru_ode_bayes"},
    "gru_mixlogistic": {"name": "gru_ode_bayes", "emission": "mixlogistic"},
    "gru_maf": {"name": "gru_ode_bayes", "emission": "maf"},
    "latent_ode": {"name": "latent_ode"},
    "latent_sde": {"name": "latent_sde"},
}
REFERENCE = "gru_gaussian"
OPERATIONS = ("predict", "quantiles", "samples", "paths")


def double_ou_work(n_series: int) -> dict[str, Any]:
    context = load_double_ou(n_series, seed=2)
    last = context.groupby("unique_id", sort=False)["ds"].max()
    queries = pd.DataFrame(
        {
            "unique_id": last.index.repeat(3),
            "ds": (last.to_numpy()[:, None] + [[0.5, 1.0, 2.0]]).reshape(-1),
        }
    )
    return {"train": load_double_ou(1000, seed=1), "context": context, "queries": queries}


def physionet_work(path: Path | None, max_stays: int | None) -> dict[str, Any] | None:
    from experiments.physionet2012 import default_data_path, prepare

    data_path = path or default_data_path()
    if not data_path.is_dir():
        print(f"PhysioNet 2012 data not found at {data_path}: skipped", flush=True)
        return None
    data = prepare(data_path)
    context, targets = data["context"], data["targets"]
    if max_stays is not None:
        keep = pd.unique(context["unique_id"])[:max_stays]
        context = context[context["unique_id"].isin(keep)]
        targets = targets[targets["unique_id"].isin(keep)]
    train_ids = pd.unique(data["train"]["unique_id"])[:1000]
    train = data["train"][data["train"]["unique_id"].isin(train_ids)]
    return {"train": train, "context": context, "queries": targets[["unique_id", "ds"]].drop_duplicates()}


def operations(est: Forecaster, context: pd.DataFrame, queries: pd.DataFrame, n: int) -> dict[str, Callable]:
    return {
        "predict": lambda seed: est.predict(context, times=queries),
        "quantiles": lambda seed: est.predict_quantiles(context, times=queries, quantiles=(0.1, 0.9)),
        "samples": lambda seed: est.forecast(context, times=queries, n_samples=n, seed=seed),
        "paths": lambda seed: est.forecast(context, times=queries, n_samples=n, paths=True, seed=seed),
    }


def time_once(fn: Callable, seed: int, device: str) -> float:
    t0 = time.perf_counter()
    fn(seed)
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for dataset in args.datasets:
        work = (
            double_ou_work(args.n_series)
            if dataset == "double_ou"
            else physionet_work(args.physionet, args.max_stays)
        )
        if work is None:
            continue
        n_series = work["context"]["unique_id"].nunique()
        results[dataset] = {"n_series": n_series, "n_queries": len(work["queries"]), "models": {}}
        for name in args.models:
            model = {"p_hidden": 32, "hidden_size": 32, **MODELS[name]}
            est = Forecaster(
                model=model,
                max_steps=args.fit_steps,
                eval_every=args.fit_steps,
                refit=False,
                random_state=0,
                device=args.device,
            )
            est.fit(work["train"])
            timings = {}
            for op, fn in operations(est, work["context"], work["queries"], args.n_samples).items():
                if op not in args.operations:
                    continue
                seconds = [time_once(fn, r, args.device) for r in range(args.repeats)]
                med = statistics.median(seconds)
                timings[op] = {"seconds": med, "series_per_second": n_series / med, "all_seconds": seconds}
                print(
                    f"{dataset:9s} {name:16s} {op:9s} {med:8.2f} s  {n_series / med:10,.0f} series/s",
                    flush=True,
                )
            results[dataset]["models"][name] = timings
        reference = results[dataset]["models"].get(REFERENCE, {})
        for timings in results[dataset]["models"].values():
            for op, t in timings.items():
                if op in reference:
                    t["ratio_to_gaussian"] = t["seconds"] / reference[op]["seconds"]
    return results


def report(out: dict[str, Any]) -> str:
    lines = [
        "# Forecast throughput: every model and emission",
        "",
        "`python -m experiments.benchmarks.forecast_throughput` (see its docstring). Seconds for the "
        "whole work (median of the repeats), series per second, and in brackets the time relative "
        f"to the Gaussian GRU-ODE-Bayes on the same work. {out['n_samples']} samples per query for "
        "`samples` and `paths`; `quantiles` are at 0.1 and 0.9.",
        "",
    ]
    for dataset, res in out["results"].items():
        lines += [
            f"## {dataset}: {res['n_series']} series, {res['n_queries']} query times",
            "",
            "| model | " + " | ".join(OPERATIONS) + " |",
            "|---|" + "---:|" * len(OPERATIONS),
        ]
        for name, timings in res["models"].items():
            cells = []
            for op in OPERATIONS:
                t = timings.get(op)
                if t is None:
                    cells.append("-")
                    continue
                ratio = t.get("ratio_to_gaussian")
                extra = f" ({ratio:.2f}x)" if ratio is not None else ""
                cells.append(f"{t['seconds']:.2f} s, {t['series_per_second']:,.0f}/s{extra}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    m = out["machine"]
    lines.append(
        f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), GPU: {m['gpu'] or 'none'}, torch {m['torch']} "
        f"with {out['threads']} threads, device {out['device']}."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--datasets", nargs="+", default=["double_ou", "physionet"], choices=["double_ou", "physionet"]
    )
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--operations", nargs="+", default=list(OPERATIONS), choices=list(OPERATIONS))
    p.add_argument("--n-series", type=int, default=10_000)
    p.add_argument("--n-samples", type=int, default=200)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--fit-steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--physionet", type=Path, default=None, help="folder of set-{a,b,c}.tar.gz")
    p.add_argument("--max-stays", type=int, default=None, help="PhysioNet test stays to forecast")
    p.add_argument("--tag", default="")
    p.add_argument("--report", type=Path, default=None, help="rewrite the Markdown table of a saved JSON")
    args = p.parse_args()
    if args.report:
        write_result(args.report.with_suffix(".md"), report(json.loads(args.report.read_text())))
        return
    torch.set_num_threads(args.threads)
    out = {
        "n_samples": args.n_samples,
        "threads": args.threads,
        "device": args.device,
        "repeats": args.repeats,
        "fit_steps": args.fit_steps,
        "machine": machine(),
        "results": run(args),
    }
    tag = f"{args.device}_{args.threads}threads" if args.device == "cpu" else args.device
    tag += f"_{args.tag}" if args.tag else ""
    write_result(RESULTS / f"forecast_throughput_{tag}.json", json.dumps(out, indent=2))
    write_result(RESULTS / f"forecast_throughput_{tag}.md", report(out))


if __name__ == "__main__":
    main()

"""Forecasting on PhysioNet 2012: the next three hourly observations after the first 36 hours.

The protocol of GRU-ODE-Bayes (De Brouwer et al. 2019), LinODEnet (Scholz et al. 2022) and GraFITi
(Yalavarthi et al. 2024) on the PhysioNet/CinC Challenge 2012 ICU data (Silva et al. 2012):

1. Load sets a, b and c (12,000 stays, 37 time-series variables) at one-hour resolution
   (:func:`ctflow.data.load_physionet2012` with ``resolution="1h"``: values averaged per hour).
2. Standardise every variable with the mean and standard deviation of all its observed values
   over all stays (a constant variable is only centred), then drop values with ``|z| >= 5`` and
   the rows left empty. All scores below are in these z units. MechVent is only ever recorded as
   1, so it is 0 wherever observed: its predictive density may grow without bound, which lowers
   every NLL that counts it (all of them here; persistence gives it a spread of 1e-8).
3. Split the stays with an observation (sets a, b, c, files by name) with scikit-learn:
   ``train_test_split(ids, test_size=0.15, random_state=0)`` for test stays, then
   ``train_test_split(train, test_size=0.2, random_state=0)`` for validation stays.
4. For each test stay, the context is its observations before hour 36 and the targets its next
   three observed hourly buckets at or after hour 36; stays without context or without targets
   are dropped.
5. Fit ``ctflow.Forecaster(**params, random_state=seed, time_limit=...)`` on the training stays'
   whole series (the validation stays go to ``fit(val_df=...)`` when ``fit`` takes it; otherwise
   they are left out) and score the targets given the context, over every observed target value:
   MSE of the predictive mean; mean NLL per value under the marginal predictive of each target
   time (the model's filter state after the context, propagated to that time, without the
   earlier targets); the joint NLL of each stay's target set per value, from
   ``Forecaster.score``: ``-(score(context + targets) n(context + targets) - score(context)
   n(context)) / n(targets)`` over all test stays together (the one-step-ahead chain rule); CRPS
   and the coverage of central 80% and 95% intervals from marginal samples.
6. Persistence: :class:`ctflow.baselines.LastValueBaseline` fitted on the training stays (MSE of
   its forecast mean, CRPS and coverage of its samples, joint NLL from its Gaussian one-step
   score), and the MSE of the last context value itself (0, the overall mean, for a variable the
   context never observed).

7. With ``--static``, the admission descriptors (age, gender, height, ICU type, weight) go to the
   Forecaster as ``static_df`` (:func:`static_covariates`: a missing number is set to the
   training stays' median beside a 0/1 missing-indicator; ICU type is a category), in fitting
   and in every score.

Published test MSEs on this protocol are listed for reference. Results go to
``experiments/results/physionet2012[_TAG].md`` and ``.json``.

``--params`` is a JSON object of ``Forecaster`` arguments (default ``{}``: the default
Forecaster), the model and its options nested under ``"model"``. The best configuration so far:

    {"model": {"name": "gru_ode_bayes", "hidden_size": 64, "p_hidden": 64, "prep_hidden": 32,
               "post_jump_weight": 0.1, "emission_options": {"linear_skip": true},
               "solver": "exp_euler", "step_size": 1.0, "max_steps_per_interval": 4},
     "refit": "ensemble", "max_steps": 1500, "patience": 8}

Each run records the Forecaster's parameters in this form, every model setting included.

    python -m experiments.physionet2012 [--seeds 0 1 2 3 4] [--params '{"max_epochs": 50}']
        [--time-limit 3600] [--n-samples 200] [--data PATH] [--baseline-only] [--static]
        [--max-train-stays N] [--tag NAME] [--threads N]
    python -m experiments.physionet2012 --merge experiments/results/a.json ... --tag NAME
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from ctflow import Forecast, Forecaster
from ctflow.baselines import LastValueBaseline
from ctflow.data import PHYSIONET2012_VARIABLES, load_physionet2012
from experiments.forecast_study import forecaster_params, scores
from experiments.results_io import RESULTS, write_result

ROOT = Path(__file__).resolve().parents[1]
VARIABLES = list(PHYSIONET2012_VARIABLES)
OBSERVE_UNTIL, N_TARGETS, MAX_ABS_Z = 36.0, 3, 5.0
PUBLISHED_MSE = {
    "GraFITi": 0.286,
    "LinODEnet": 0.299,
    "mTAN": 0.315,
    "Neural Flow": 0.326,
    "GRU-ODE-Bayes": 0.329,
    "CRU": 0.379,
}
METRICS = ("mse", "nll", "joint_nll", "crps", "coverage_80", "coverage_95", "fit_seconds")


def default_data_path() -> Path:
    """``../shared/data/physionet2012`` from the repository root (or ``shared/`` inside it)."""
    candidates = [
        ROOT.parent / "shared" / "data" / "physionet2012",
        ROOT / "shared" / "data" / "physionet2012",
    ]
    return next((p for p in candidates if p.is_dir()), candidates[0])


# ---------------------------------------------------------------------------------- protocol
def standardise(
    frame: pd.DataFrame, variables: Sequence[str], max_abs_z: float = MAX_ABS_Z
) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """z-scores over all observed values of each variable, values with ``|z| >= max_abs_z`` set
    to NaN and rows left empty dropped; also the means and standard deviations used."""
    values = frame[list(variables)]
    mean = values.mean()
    std = values.std(ddof=0)
    std = std.where(std > 0, 1.0).fillna(1.0)  # constant or unobserved: centre only
    z = (values - mean) / std
    z = z.mask(z.abs() >= max_abs_z)
    out = pd.concat([frame[["unique_id", "ds"]], z], axis=1)
    out = out[z.notna().any(axis=1).to_numpy()].reset_index(drop=True)
    return out, mean, std


def protocol_split(ids: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training, validation and test ids: 15% test, then 20% of the rest for validation."""
    train, test = train_test_split(np.asarray(ids), test_size=0.15, random_state=0)
    train, val = train_test_split(train, test_size=0.2, random_state=0)
    return train, val, test


def cut_context_targets(
    frame: pd.DataFrame, observe_until: float = OBSERVE_UNTIL, n_targets: int = N_TARGETS
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Context (rows with ``ds < observe_until``) and targets (each stay's first ``n_targets``
    distinct times at or after it) of the stays that have both, with counts of those dropped."""
    before = frame[frame["ds"] < observe_until]
    after = frame[frame["ds"] >= observe_until]
    rank = after.groupby("unique_id", sort=False)["ds"].rank(method="dense")
    targets = after[(rank <= n_targets).to_numpy()]
    ids = pd.unique(frame["unique_id"])
    with_context = np.isin(ids, before["unique_id"].unique())
    with_targets = np.isin(ids, targets["unique_id"].unique())
    keep = ids[with_context & with_targets]
    counts = {
        "stays": len(ids),
        "no_context": int((~with_context).sum()),
        "no_targets": int((~with_targets).sum()),
        "kept": len(keep),
    }
    context = before[before["unique_id"].isin(keep)].reset_index(drop=True)
    targets = targets[targets["unique_id"].isin(keep)].reset_index(drop=True)
    return context, targets, counts


def value_columns(frame: pd.DataFrame) -> list[str]:
    """The variables of a long frame: every column but ``unique_id`` and ``ds``."""
    return [c for c in frame.columns if c not in ("unique_id", "ds")]


def n_values(frame: pd.DataFrame) -> int:
    """Number of observed values."""
    return int(frame[value_columns(frame)].notna().to_numpy().sum())


# ---------------------------------------------------------------------------------- scores
def score_forecast(forecast: Forecast, targets: pd.DataFrame) -> dict[str, Any]:
    """MSE of the forecast mean, CRPS and 80/95% coverage over the observed target values, in the
    frame's units (the targets' rows must match the forecast's queries)."""
    return scores(forecast, targets, forecast.variables, np.ones(len(forecast.variables)))


def joint_nll(model: Any, context: pd.DataFrame, targets: pd.DataFrame, **static: Any) -> float:
    """NLL per target value of the targets given the context, jointly, from the model's mean
    one-step-ahead log-likelihood per value (``model.score``) with and without the targets."""
    full = pd.concat([context, targets]).sort_values(["unique_id", "ds"], kind="stable")
    n_context, n_targets = n_values(context), n_values(targets)
    total = model.score(full, **static) * (n_context + n_targets) - model.score(context, **static) * n_context
    return -total / n_targets


def marginal_nll(est: Forecaster, context: pd.DataFrame, targets: pd.DataFrame, **static: Any) -> float:
    """NLL per target value under the marginal predictive density of each target time (the
    fitted model's filter state after the context, propagated to that time; the other targets
    unseen), in the frame's units: ``Forecaster.predictive_log_prob``."""
    return -float(est.predictive_log_prob(context, targets, **static).sum()) / n_values(targets)


def static_covariates(static: pd.DataFrame, train_ids: Sequence[Any]) -> pd.DataFrame:
    """The admission descriptors as a complete ``static_df``: age, gender (0/1), height and weight
    filled with the training stays' median where missing, each beside a 0/1 missing-indicator
    (numbers, so that a pattern unseen in training is still encoded); ICU type as a category."""
    out = pd.DataFrame({"unique_id": static["unique_id"]})
    train = static["unique_id"].isin(train_ids)
    for col in ("Age", "Gender", "Height", "Weight"):
        values = static[col].astype("float64")
        out[col] = values.fillna(values[train].median())
        out[f"{col}_missing"] = values.isna().astype("float64")
    icu = static["ICUType"].fillna(static.loc[train, "ICUType"].mode().iloc[0])
    out["ICUType"] = icu.astype("int64").astype(str)
    return out


def last_value_mse(context: pd.DataFrame, targets: pd.DataFrame) -> float:
    """MSE of each variable's last context value as the forecast (0 where never observed)."""
    cols = value_columns(targets)
    last = context.sort_values(["unique_id", "ds"], kind="stable").groupby("unique_id")[cols].last()
    guess = last.reindex(targets["unique_id"].to_numpy()).fillna(0.0).to_numpy()
    y = targets[cols].to_numpy(dtype=np.float64)
    observed = ~np.isnan(y)
    return float(((guess - y)[observed] ** 2).mean())


# ---------------------------------------------------------------------------------- runs
def prepare(data: Path, max_train_stays: int | None = None) -> dict[str, Any]:
    """Load, standardise, split and cut the data."""
    t0 = time.perf_counter()
    long, static = load_physionet2012(data, sets="abc", resolution="1h")
    load_seconds = time.perf_counter() - t0
    frame, mean, std = standardise(long, VARIABLES)
    ids = pd.unique(frame["unique_id"])
    train_ids, val_ids, test_ids = protocol_split(ids)
    if max_train_stays is not None:
        train_ids, val_ids = train_ids[:max_train_stays], val_ids[: max(1, max_train_stays // 4)]
    by_id = frame["unique_id"]
    context, targets, counts = cut_context_targets(frame[by_id.isin(test_ids)])
    return {
        "static": static_covariates(static, train_ids),
        "train": frame[by_id.isin(train_ids)].reset_index(drop=True),
        "val": frame[by_id.isin(val_ids)].reset_index(drop=True),
        "context": context,
        "targets": targets,
        "info": {
            "load_seconds": load_seconds,
            "n_stays": len(static),
            "n_stays_observed": len(ids),
            "n_values_raw": n_values(long),
            "n_values_dropped_outliers": n_values(long) - n_values(frame),
            "n_train": len(train_ids),
            "n_val": len(val_ids),
            "n_test": len(test_ids),
            "test_cut": counts,
            "n_target_values": n_values(targets),
            "n_target_rows": len(targets),
            "mean": mean.to_dict(),
            "std": std.to_dict(),
        },
    }


def fit_forecaster(est: Forecaster, train: pd.DataFrame, val: pd.DataFrame, **static: Any) -> bool:
    """Fit on ``train``, passing ``val`` as ``val_df`` when ``fit`` accepts it; whether it did."""
    if "val_df" in inspect.signature(est.fit).parameters:
        est.fit(train, val_df=val, **static)
        return True
    est.fit(train, **static)
    return False


def run_model(
    data: dict[str, Any],
    seed: int,
    params: dict[str, Any],
    time_limit: float,
    n_samples: int,
    use_static: bool = False,
) -> dict[str, Any]:
    context, targets = data["context"], data["targets"]
    static = {"static_df": data["static"]} if use_static else {}
    est = Forecaster(**{**params, "random_state": seed, "time_limit": time_limit})
    t0 = time.perf_counter()
    used_val = fit_forecaster(est, data["train"], data["val"], **static)
    fit_seconds = time.perf_counter() - t0
    queries = targets[["unique_id", "ds"]]
    t0 = time.perf_counter()
    fc = est.forecast(context, times=queries, n_samples=n_samples, seed=seed, **static)
    out = score_forecast(fc, targets)
    torch.manual_seed(seed)
    out["nll"] = marginal_nll(est, context, targets, **static)
    torch.manual_seed(seed)
    out["joint_nll"] = joint_nll(est, context, targets, **static)
    return {
        **out,
        "seed": seed,
        "static_covariates": use_static,
        "fit_seconds": fit_seconds,
        "score_seconds": time.perf_counter() - t0,
        "fitted_with_val_df": used_val,
        "epochs": est.history_.get("epochs"),
        "stop_reason": est.history_.get("stop_reason"),
        "params": forecaster_params(est),
        "device": str(est.device_),
    }


def run_persistence(data: dict[str, Any], n_samples: int) -> dict[str, Any]:
    context, targets = data["context"], data["targets"]
    t0 = time.perf_counter()
    naive = LastValueBaseline(random_state=0).fit(data["train"])
    fit_seconds = time.perf_counter() - t0
    fc = naive.forecast(context, times=targets[["unique_id", "ds"]], n_samples=n_samples)
    out = score_forecast(fc, targets)
    out["joint_nll"] = joint_nll(naive, context, targets)
    out["nll"] = None
    out["last_value_mse"] = last_value_mse(context, targets)
    out["fit_seconds"] = fit_seconds
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation (ddof 1; 0 for one run) of each metric over seeds."""
    out = {}
    for key in METRICS:
        x = np.array([r[key] for r in runs], dtype=np.float64)
        out[key] = {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0}
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        cpu = names[0].strip() if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------- report
def _cell(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(name: str, split: str, r: dict[str, Any]) -> str:
    cells = [_cell(r.get(k)) for k in METRICS[:-1]] + [_cell(r.get("fit_seconds"), 0)]
    return f"| {name} | {split} | " + " | ".join(cells) + " |"


def model_label(params: dict[str, Any]) -> str:
    """``"<model>, <emission>"`` of a run's parameters (also of results written before the
    model's options were nested under ``"model"``)."""
    model = params.get("model", "gru_ode_bayes")
    if isinstance(model, dict):
        return f"{model.get('name')}, {model.get('emission', 'gaussian')}"
    return f"{model}, {params.get('emission', 'gaussian')}"


def report(result: dict[str, Any]) -> str:
    info, mach = result["data"], result["machine"]
    cut = info["test_cut"]
    lines = [
        "# PhysioNet 2012: the next three hourly observations after 36 hours",
        "",
        "Protocol of GRU-ODE-Bayes / LinODEnet / GraFITi (`python -m experiments.physionet2012`; "
        "see its docstring). Scores over every observed target value in z units (lower is better, "
        "coverage should match 0.80 / 0.95). NLL/value: marginal predictive of each target time; "
        "joint NLL/value: the three targets of a stay jointly (one-step-ahead chain rule), over "
        "all test stays together.",
        "",
        f"Data: {info['n_stays']} stays ({info['n_stays_observed']} with an observation), loaded in "
        f"{info['load_seconds']:.1f} s; {info['n_values_dropped_outliers']} of {info['n_values_raw']} "
        f"hourly values dropped as |z| >= {MAX_ABS_Z:g}. Split: {info['n_train']} training, "
        f"{info['n_val']} validation, {info['n_test']} test stays; {cut['kept']} test stays scored "
        f"({cut['no_context']} without context, {cut['no_targets']} without targets dropped), "
        f"{info['n_target_values']} target values in {info['n_target_rows']} target rows.",
        "",
        "| model | seed | MSE | NLL/value | joint NLL/value | CRPS | cov80 | cov95 | fit s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    runs = result["runs"]
    if runs:
        name = f"Forecaster ({model_label(runs[0]['params'])})"
        lines += [_row(name, str(r["seed"]), r) for r in runs]
        summary = result["summary"]
        cells = [f"{summary[k]['mean']:.4f} ± {summary[k]['std']:.4f}" for k in METRICS[:-1]]
        cells.append(f"{summary['fit_seconds']['mean']:.0f}")
        lines.append(f"| {name} | mean ± std ({len(runs)}) | " + " | ".join(cells) + " |")
    p = result["persistence"]
    lines.append(_row("persistence (LastValueBaseline)", "-", p))
    lines.append(f"| persistence (last context value) | - | {p['last_value_mse']:.4f} |  |  |  |  |  |  |")
    lines += [f"| {m} (published) | - | {mse:.3f} |  |  |  |  |  |  |" for m, mse in PUBLISHED_MSE.items()]
    lines += [
        "",
        f"Machine: {mach['cpu']} ({mach['cpu_count']} CPUs), GPU: {mach['gpu'] or 'none'}, torch "
        f"{mach['torch']} with {mach['torch_threads']} threads.",
    ]
    if runs:
        r = runs[0]
        lines += [
            f"Forecaster parameters (seed {r['seed']}): `{json.dumps(r['params'], default=str)}`; "
            f"device {r['device']}; validation stays passed to fit: "
            f"{'yes' if r['fitted_with_val_df'] else 'no'}.",
            *(
                [
                    "The model is a deep ensemble: its joint NLL is its members' mean (Forecaster.score "
                    "of an ensemble), an upper bound of the mixture's."
                ]
                if r["params"].get("n_members", 1) > 1 or r["params"].get("refit") == "ensemble"
                else []
            ),
            "Epochs and stop reasons: "
            + ", ".join(f"seed {q['seed']}: {q['epochs']} ({q['stop_reason']})" for q in runs)
            + ".",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="one Forecaster fit per seed")
    p.add_argument("--params", type=json.loads, default={}, help="Forecaster parameters as JSON")
    p.add_argument("--time-limit", type=float, default=3600.0, help="seconds per fit")
    p.add_argument("--n-samples", type=int, default=200, help="marginal samples per target")
    p.add_argument("--data", type=Path, default=None, help="folder of set-{a,b,c}.tar.gz")
    p.add_argument("--baseline-only", action="store_true", help="score persistence only")
    p.add_argument("--max-train-stays", type=int, default=None, help="subsample training stays")
    p.add_argument("--tag", default="", help="suffix of the results files")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--static", action="store_true", help="give the admission descriptors as static_df")
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        help="combine these result JSON files (runs of one configuration) into one report",
    )
    args = p.parse_args(argv)
    if not isinstance(args.params, dict):
        p.error("--params must be a JSON object")
    if args.tag and not re.fullmatch(r"[A-Za-z0-9_.-]+", args.tag):
        p.error("--tag may only hold letters, digits, '_', '.' and '-'")
    if args.merge:
        write_report(merge_results(args.merge), args.tag or "merged")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    data = prepare(args.data or default_data_path(), args.max_train_stays)
    info = data["info"]
    print(
        f"loaded in {info['load_seconds']:.1f} s; train/val/test {info['n_train']}/{info['n_val']}/"
        f"{info['n_test']} stays; test cut {info['test_cut']}",
        flush=True,
    )
    persistence = run_persistence(data, args.n_samples)
    print(
        f"persistence: MSE {persistence['mse']:.4f} (last value {persistence['last_value_mse']:.4f}), "
        f"CRPS {persistence['crps']:.4f}",
        flush=True,
    )
    runs = []
    if not args.baseline_only:
        for seed in args.seeds:
            r = run_model(data, seed, args.params, args.time_limit, args.n_samples, args.static)
            runs.append(r)
            print(
                f"seed {seed}: MSE {r['mse']:.4f}, NLL {r['nll']:.4f}, joint NLL {r['joint_nll']:.4f}, "
                f"CRPS {r['crps']:.4f}, fit {r['fit_seconds']:.0f} s",
                flush=True,
            )
    result = {
        "protocol": {
            "resolution": "1h",
            "max_abs_z": MAX_ABS_Z,
            "observe_until": OBSERVE_UNTIL,
            "n_targets": N_TARGETS,
            "n_samples": args.n_samples,
            "time_limit": args.time_limit,
            "max_train_stays": args.max_train_stays,
            "static_covariates": args.static,
        },
        "data": info,
        "machine": machine(),
        "runs": runs,
        "summary": summarise(runs) if runs else None,
        "persistence": persistence,
        "published_mse": PUBLISHED_MSE,
    }
    write_report(result, args.tag)


def write_report(result: dict[str, Any], tag: str) -> None:
    text = report(result)
    print(text)
    name = "physionet2012" + (f"_{tag}" if tag else "")
    write_result(RESULTS / f"{name}.json", json.dumps(result, indent=2, default=str))
    write_result(RESULTS / f"{name}.md", text)


def merge_results(paths: Sequence[Path]) -> dict[str, Any]:
    """One result from the runs of several result files of the same protocol and configuration
    (e.g. one seed per process); refuses files that differ in protocol, data or parameters."""
    results = [json.loads(Path(p).read_text()) for p in paths]
    first = results[0]
    runs = [r for res in results for r in res["runs"]]
    if not runs:
        raise ValueError("the files hold no model runs to merge")
    reference = {k: v for k, v in runs[0]["params"].items() if k not in ("random_state", "time_limit")}
    for path, res in zip(paths, results, strict=True):
        if res["protocol"] | {"time_limit": None} != first["protocol"] | {"time_limit": None}:
            raise ValueError(f"{path} was run under a different protocol")
        if res["data"]["n_target_values"] != first["data"]["n_target_values"]:
            raise ValueError(f"{path} scored different targets")
        for r in res["runs"]:
            params = {k: v for k, v in r["params"].items() if k not in ("random_state", "time_limit")}
            if params != reference:
                raise ValueError(f"{path} holds a run with other parameters")
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat across the files: {seeds}")
    return {**first, "runs": runs, "summary": summarise(runs), "merged_from": [str(p) for p in paths]}


if __name__ == "__main__":
    main()

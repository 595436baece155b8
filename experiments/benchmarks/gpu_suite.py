"""The figures users care about, in one run: on one GPU in at most eight minutes; on a CPU at a
reduced size, which the table says.

1. MAF ``log_prob`` + backward and sampling, ctflow against zuko (the same flow as
   ``flows_vs_zuko``: 8 features, 16 context features, 5 transforms, hidden (64, 64)).
2. A CNF training step (exact trace, dopri5 at zuko's tolerances, two moons), ctflow against zuko
   with the same weights (``cnf_vs_zuko``).
3. A GRU-ODE-Bayes training epoch on double OU (the paper's sizes: hidden 50, batch 500, Adam;
   the model's default solver and planning) and the same with the GRU flow between observations.
4. A PhysioNet 2012 training epoch of the default ``Forecaster`` (its training stays), when the
   data folder is there (``--physionet``).
5. Glow on MNIST (the shipped 10,000 test images): training images per second and peak memory.

Reference figures for the same work on an H100: zuko MAF 7.6 ms (B = 4096) and 8.7 ms
(B = 65536); the paper's GRU-ODE-Bayes code 18 s per double-OU epoch; rosinality/glow-pytorch about
2,100 MNIST images/s. Targets on a GPU: MAF <= 0.5x zuko, GRU-ODE-Bayes epoch <= 1 s, GRU flow
faster still.

    python -m experiments.benchmarks.gpu_suite [--device cuda] [--physionet ../shared/data/physionet2012]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ctflow.data import from_dataframe, load_double_ou, split_series
from ctflow.models import GRUODEBayes
from experiments.benchmarks.gru_ode_bayes_speed import epoch_seconds
from experiments.results_io import RESULTS, write_result

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
# Work per section: the GPU size, and the reduced CPU size.
SIZES = {
    "cuda": {"maf_batches": (4096, 65536), "cnf_batch": 1024, "ou_series": 10_000, "stays": None, "glow": 64},
    "cpu": {"maf_batches": (4096, 16384), "cnf_batch": 256, "ou_series": 10_000, "stays": 2_000, "glow": 16},
}
GLOW = {"cuda": {"n_levels": 2, "steps": 8, "hidden": 128}, "cpu": {"n_levels": 2, "steps": 2, "hidden": 32}}
REFERENCE = {
    "maf log_prob+backward B=4096": "zuko 7.6 ms (H100)",
    "maf log_prob+backward B=65536": "zuko 8.7 ms (H100)",
    "gru_ode_bayes epoch": "paper's code 18 s (H100)",
    "glow mnist": "glow-pytorch ~2,100 images/s (H100)",
}


def timed(fn: Callable[[], Any], sync: Callable[[], None], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in ms."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def maf_rows(dev: torch.device, sync: Callable[[], None], batches: tuple[int, ...]) -> list[dict]:
    from experiments.benchmarks import flows_vs_zuko as f

    torch.manual_seed(0)
    flows = {"ctflow": f.make_ctflow().to(dev), "zuko": f.make_zuko().to(dev)}
    rows = []
    for batch in batches:
        x, c = torch.randn(batch, f.DIM, device=dev), torch.randn(batch, f.CONTEXT, device=dev)
        calls = {name: f.workloads(name, flow, x, c) for name, flow in flows.items()}
        for workload in f.WORKLOADS:
            ms = {name: timed(calls[name][workload], sync, 10) for name in flows}
            rows.append(
                {
                    "work": f"maf {workload} B={batch}",
                    "ctflow": f"{ms['ctflow']:.2f} ms",
                    "peer": f"zuko {ms['zuko']:.2f} ms",
                    "ratio": ms["ctflow"] / ms["zuko"],
                }
            )
    return rows


def cnf_rows(dev: torch.device, sync: Callable[[], None], batch: int) -> list[dict]:
    from ctflow.data import two_moons
    from experiments.benchmarks import cnf_vs_zuko as c

    torch.manual_seed(0)
    scale = c.zuko_trace_scale()
    zflow = c.make_zuko("exact").to(dev)
    cflow = c.make_ctflow("exact", scale).to(dev)
    c.copy_weights(zflow, cflow)
    x = torch.from_numpy(two_moons(batch, seed=0)).to(dev)
    steps = {"ctflow": c.step_fn("ctflow", cflow, x), "zuko": c.step_fn("zuko", zflow, x)}
    ms = {name: timed(step, sync, 5, warmup=1) for name, step in steps.items()}
    return [
        {
            "work": f"cnf training step B={batch}",
            "ctflow": f"{ms['ctflow']:.1f} ms",
            "peer": f"zuko {ms['zuko']:.1f} ms",
            "ratio": ms["ctflow"] / ms["zuko"],
        }
    ]


def ou_rows(dev: torch.device, sync: Callable[[], None], n_series: int) -> list[dict]:
    train, _ = split_series(from_dataframe(load_double_ou(n_series, seed=0)), 0.2, seed=0)
    train = train.to(dev)
    rows = []
    for dynamics in ("ode", "gru_flow"):
        torch.manual_seed(0)
        model = GRUODEBayes(2, 50, 25, 25, dynamics=dynamics).to(dev)

        def epoch(model: GRUODEBayes = model) -> None:
            epoch_seconds(model, train, model.loss, 500, seed=0)

        seconds = timed(epoch, sync, 2, warmup=1) / 1e3
        name = "gru_ode_bayes epoch" if dynamics == "ode" else "gru_flow epoch"
        solver = f"{model.solver.method} <= {model.solver.step_size}" if dynamics == "ode" else "no solver"
        rows.append(
            {
                "work": f"{name} ({len(train)} double-OU series, batch 500, {solver})",
                "ctflow": f"{seconds:.2f} s",
                "peer": REFERENCE.get(name, "-"),
                "ratio": None,
                "seconds": seconds,
            }
        )
    return rows


def physionet_rows(device: str, folder: Path, stays: int | None) -> list[dict]:
    from ctflow import Forecaster
    from experiments.physionet2012 import prepare

    data = prepare(folder, max_train_stays=stays)
    n = data["train"]["unique_id"].nunique()
    est = Forecaster(
        max_epochs=1, max_steps=None, val_fraction=0.0, refit=False, device=device, random_state=0
    )
    est.fit(data["train"])
    seconds = est.history_["seconds"]
    return [
        {
            "work": f"physionet epoch (default Forecaster, {n} stays, {est.history_['n_steps']} steps)",
            "ctflow": f"{seconds:.1f} s",
            "peer": "-",
            "ratio": None,
        }
    ]


def glow_rows(dev: torch.device, sync: Callable[[], None], batch: int, arch: dict) -> list[dict]:
    from ctflow.image import bits_per_dim, build_image_flow
    from ctflow.image.data import load_mnist

    images = load_mnist().train[: 16 * batch].to(dev)
    torch.manual_seed(0)
    model = build_image_flow("glow", (1, 28, 28), levels=256, **arch).to(dev)
    with torch.no_grad():
        bits_per_dim(model, images[:batch])  # data-dependent initialisation of ActNorm
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    position = [0]

    def step() -> None:
        start = position[0] % len(images)
        position[0] += batch
        opt.zero_grad()
        bits_per_dim(model, images[start : start + batch]).mean().backward()
        opt.step()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    ms = timed(step, sync, 10)
    if dev.type == "cuda":
        memory = f"peak {torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MiB"
    else:
        memory = f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB"
    shape = ", ".join(f"{k} {v}" for k, v in arch.items())
    return [
        {
            "work": f"glow mnist training ({shape}; batch {batch})",
            "ctflow": f"{1e3 * batch / ms:.0f} images/s, {memory}",
            "peer": REFERENCE["glow mnist"],
            "ratio": None,
        }
    ]


def ratio_cell(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--physionet", default=str(Path(__file__).resolve().parents[3] / "shared/data/physionet2012")
    )
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but CUDA is not available")
    torch.set_num_threads(args.threads)
    size = SIZES["cuda" if dev.type == "cuda" else "cpu"]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    folder = Path(args.physionet)
    sections: dict[str, Callable[[], list[dict]]] = {
        "maf": lambda: maf_rows(dev, sync, size["maf_batches"]),
        "cnf": lambda: cnf_rows(dev, sync, size["cnf_batch"]),
        "double_ou": lambda: ou_rows(dev, sync, size["ou_series"]),
        "physionet": lambda: physionet_rows(args.device, folder, size["stays"]),
        "glow": lambda: glow_rows(dev, sync, size["glow"], GLOW["cuda" if dev.type == "cuda" else "cpu"]),
    }
    rows, notes, started = [], [], time.perf_counter()
    for name, run in sections.items():
        if name == "physionet" and not folder.is_dir():
            notes.append(f"physionet: no data folder at {folder}; section left out")
            continue
        t0 = time.perf_counter()
        try:
            new = run()
        except Exception as error:  # one failing section must not lose the others' figures
            notes.append(f"{name}: failed ({type(error).__name__}: {error})")
            continue
        rows += new
        for r in new:
            ratio = "" if r["ratio"] is None else f"  ratio {r['ratio']:.2f}"
            print(f"{r['work']}: {r['ctflow']} | {r['peer']}{ratio}", flush=True)
        notes.append(f"{name}: {time.perf_counter() - t0:.0f} s")
    total = time.perf_counter() - started
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    reduced = "" if dev.type == "cuda" else " at the reduced CPU size (not the GPU work)"
    lines = [
        f"# GPU suite: {device_name}{reduced}",
        "",
        f"torch {torch.__version__}, {args.threads} threads; whole run {total:.0f} s. "
        "Reference figures were measured on an H100 for the full-size work.",
        "",
        "| work | ctflow | peer / reference | ctflow / peer |",
        "|---|---|---|---:|",
        *[f"| {r['work']} | {r['ctflow']} | {r['peer']} | {ratio_cell(r['ratio'])} |" for r in rows],
        "",
        "Sections: " + "; ".join(notes) + ".",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    stem = f"gpu_suite_{dev.type}"
    write_result(RESULTS / f"{stem}.md", text)
    report = {"device": device_name, "threads": args.threads, "seconds": total, "rows": rows, "notes": notes}
    write_result(RESULTS / f"{stem}.json", json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

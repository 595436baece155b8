"""Seconds per training epoch of GRU-ODE-Bayes with 1 and 2 data-parallel processes (torchrun).

The same global batch (``--global-batch`` series per step) and the same data: with ``N``
processes each one takes ``global_batch / N`` series per step and gradients are averaged with
DistributedDataParallel (gloo on CPU), so every configuration makes the same updates. Each
process uses one CPU thread; the table gives the median seconds per epoch over ``--epochs``
epochs after a warm-up epoch, and the speed-up over one process.

    python -m experiments.benchmarks.ddp_scaling [--procs 1 2] [--n-series 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from experiments.results_io import RESULTS, write_result

ROOT = Path(__file__).resolve().parents[2]


def worker(args: argparse.Namespace) -> None:
    import torch

    from ctflow.data import from_dataframe, load_double_ou
    from ctflow.models import GRUODEBayes
    from ctflow.training import fit_model

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    data = from_dataframe(load_double_ou(args.n_series, seed=0))
    torch.manual_seed(0)
    model = GRUODEBayes(
        2, hidden_size=32, p_hidden=32, prep_hidden=16, solver={"method": "euler", "step_size": 0.1}
    )
    times = []
    for epoch in range(args.epochs + 1):
        t0 = time.perf_counter()
        fit_model(model, data, epochs=1, batch_size=args.global_batch // world, lr=1e-3, seed=epoch)
        times.append(time.perf_counter() - t0)
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps({"world": world, "epoch_seconds": times[1:]}), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--n-series", type=int, default=4000)
    p.add_argument("--global-batch", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for n in args.procs:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={n}",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
            "-m",
            "experiments.benchmarks.ddp_scaling",
            "--worker",
            f"--n-series={args.n_series}",
            f"--global-batch={args.global_batch}",
            f"--epochs={args.epochs}",
        ]
        out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
        line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
        result = json.loads(line[len("RESULT ") :])
        result["median_epoch_seconds"] = statistics.median(result["epoch_seconds"])
        rows.append(result)
        print(f"{n} process(es): {result['median_epoch_seconds']:.2f} s per epoch", flush=True)
    base = rows[0]["median_epoch_seconds"]
    for r in rows:
        r["speedup"] = base / r["median_epoch_seconds"]
    lines = [
        "# Data-parallel scaling (CPU, gloo, one thread per process)",
        "",
        f"GRU-ODE-Bayes (hidden 32) on {args.n_series} double-OU series, global batch "
        f"{args.global_batch} series per step; median seconds per epoch over {args.epochs} epochs.",
        "",
        "| processes | s / epoch | speed-up |",
        "|---:|---:|---:|",
    ] + [f"| {r['world']} | {r['median_epoch_seconds']:.2f} | {r['speedup']:.2f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    write_result(RESULTS / "ddp_scaling_cpu.json", json.dumps(rows, indent=2))
    write_result(RESULTS / "ddp_scaling_cpu.md", text)


if __name__ == "__main__":
    main()

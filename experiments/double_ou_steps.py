"""Which solver step reaches the paper's accuracy on double OU fastest.

The double-OU protocol of ``experiments.double_ou`` (10,000 series, batch 500, hidden 50, Adam
with learning rate 5e-3, the validation NLL of the next observation after t = 4) for GRU-ODE-Bayes
with each solver setting below, the filter loop planned per series' gaps (the default): the
training time until the validation NLL first reaches the target (-1.20 nats per value, below the
paper's figure), the epochs it took, the time per epoch and the best NLL and MSE. One thread.

    python -m experiments.double_ou_steps [--epochs 25] [--threads 1]
"""

from __future__ import annotations

import argparse
import json

from experiments.double_ou import run
from experiments.results_io import RESULTS, write_result

SETTINGS = (
    ("euler", 0.05),
    ("euler", 0.1),
    ("euler", 0.25),
    ("euler", 0.5),
    ("exp_euler", 0.5),
    ("exp_euler", 1.0),
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--target-nll", type=float, default=-1.20)
    args = p.parse_args(argv)
    rows = []
    for method, step in SETTINGS:
        result = run(
            method=method,
            step_size=step,
            lr=5e-3,
            epochs=args.epochs,
            target_nll=args.target_nll,
            stop_at_target=True,
            threads=args.threads,
            verbose=False,
        )
        history = result["history"]
        reached = result["reached_target"]
        row = {
            "method": method,
            "step_size": step,
            "seconds_to_target": None if reached is None else reached["train_seconds"],
            "epochs_to_target": None if reached is None else reached["epoch"],
            "seconds_per_epoch": sum(h["epoch_seconds"] for h in history) / len(history),
            "best_nll": result["best_val_nll"],
            "best_mse": min(h["mse"] for h in history),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    reached = [r for r in rows if r["seconds_to_target"] is not None]
    fastest = min(reached, key=lambda r: r["seconds_to_target"]) if reached else None
    lines = [
        "# GRU-ODE-Bayes on double OU: solver steps against time to the target NLL",
        "",
        f"Target: validation NLL <= {args.target_nll} (nats per value); at most {args.epochs} epochs; "
        f"{args.threads} thread(s), CPU; the filter loop planned per series' gaps.",
        "",
        "| solver | largest step | s to target | epochs to target | s / epoch | best NLL | best MSE |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        to_target = "not reached" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.0f}"
        epochs = "-" if r["epochs_to_target"] is None else str(r["epochs_to_target"])
        lines.append(
            f"| {r['method']} | {r['step_size']} | {to_target} | {epochs} | {r['seconds_per_epoch']:.2f} | "
            f"{r['best_nll']:.4f} | {r['best_mse']:.5f} |"
        )
    if fastest is not None:
        lines += ["", f"Fastest to the target: {fastest['method']} with steps <= {fastest['step_size']}."]
    text = "\n".join(lines) + "\n"
    print(text)
    write_result(RESULTS / "double_ou_steps.md", text)
    write_result(RESULTS / "double_ou_steps.json", json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

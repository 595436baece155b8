"""Seconds to build and convert the data of the studies: DataFrame to padded batch and back.

Three operations, each on one fixed piece of work (best of ``--repeats`` runs):

* ``from_dataframe``: a shuffled long frame of ``--n-series`` series of ``--length`` rows, two
  variables (one missing half the time), to an :class:`~ctflow.data.IrregularBatch`. It is timed
  against a per-series loop over a pandas ``groupby`` producing the same tensors (checked equal),
  the conversion one writes first.
* ``to_dataframe``: that batch back to a long frame.
* ``load_double_ou``: generating the double-OU data set (``--n-series`` series with their latent
  paths).

Every row prints seconds, rows per second, and the ratio of its time to a target: 1 s for the
conversion and 2 s for the generation of 10,000 series (scaled with ``--n-series``), the times
these should stay under on a two-core CI machine. The conversion also prints its speed-up over
the loop. Results are written under ``experiments/results/`` only with ``--save``.

    python -m experiments.benchmarks.data_conversion [--n-series 10000] [--length 20]
        [--repeats 3] [--threads 2] [--save] [--tag T]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from ctflow.data import IrregularBatch, from_dataframe, load_double_ou, to_dataframe
from experiments.physionet2012 import machine
from experiments.results_io import RESULTS, write_result

VALUE_COLS = ["y1", "y2"]
# Seconds each operation should take for 10,000 series of 20 rows (generation: of the double-OU set).
TARGETS = {"from_dataframe": 1.0, "to_dataframe": 1.0, "load_double_ou": 2.0}


def shuffled_frame(n_series: int, length: int, seed: int = 0) -> pd.DataFrame:
    """``n_series`` series of ``length`` rows at jittered integer times, rows in random order."""
    rng = np.random.default_rng(seed)
    n = n_series * length
    df = pd.DataFrame(
        {
            "unique_id": np.repeat(np.arange(n_series), length),
            "ds": np.tile(np.arange(length, dtype=np.float64), n_series) + rng.uniform(0, 0.5, n),
            "y1": rng.normal(size=n),
            "y2": np.where(rng.random(n) < 0.5, np.nan, 1.0),
        }
    )
    return df.sample(frac=1.0, random_state=seed)


def per_series_loop(df: pd.DataFrame, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The padded tensors of :func:`from_dataframe`, series by series from a pandas ``groupby``."""
    df = df.dropna(how="all", subset=VALUE_COLS).sort_values(["unique_id", "ds"], kind="stable")
    groups = [g for _, g in df.groupby("unique_id", sort=True)]
    lengths = np.array([len(g) for g in groups])
    n_rows = int(lengths.max())
    times = np.zeros((len(groups), n_rows))
    values = np.zeros((len(groups), n_rows, len(VALUE_COLS)))
    mask = np.zeros_like(values)
    for i, g in enumerate(groups):
        t, v = g["ds"].to_numpy(), g[VALUE_COLS].to_numpy()
        times[i, : len(t)], times[i, len(t) :] = t, t[-1]
        values[i, : len(t)] = np.nan_to_num(v)
        mask[i, : len(t)] = ~np.isnan(v)
    out = {"times": times, "values": values, "mask": mask}
    return {
        **{k: torch.as_tensor(v, dtype=dtype) for k, v in out.items()},
        "lengths": torch.as_tensor(lengths),
    }


def best_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The shortest of ``repeats`` timed calls, and the result of the last one."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def check_same(batch: IrregularBatch, tensors: dict[str, torch.Tensor]) -> None:
    """Fail unless the batch holds exactly the loop's tensors (so both did the same work)."""
    for name, expected in tensors.items():
        if not torch.equal(getattr(batch, name), expected):
            raise AssertionError(f"from_dataframe and the per-series loop disagree on {name}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    df = shuffled_frame(args.n_series, args.length)
    scale = args.n_series * args.length / 200_000  # targets are for 10,000 series of 20 rows
    rows: dict[str, dict[str, Any]] = {}

    seconds, batch = best_seconds(lambda: from_dataframe(df), args.repeats)
    loop_seconds, tensors = best_seconds(lambda: per_series_loop(df), args.loop_repeats)
    check_same(batch, tensors)
    rows["from_dataframe"] = {"seconds": seconds, "rows": len(df), "loop_seconds": loop_seconds}
    seconds, back = best_seconds(lambda: to_dataframe(batch), args.repeats)
    rows["to_dataframe"] = {"seconds": seconds, "rows": len(back)}
    seconds, (ou, _) = best_seconds(
        lambda: load_double_ou(args.n_series, seed=0, return_latent=True), args.repeats
    )
    rows["load_double_ou"] = {"seconds": seconds, "rows": len(ou)}
    for name, row in rows.items():
        row["target_seconds"] = TARGETS[name] * (
            args.n_series / 10_000 if name == "load_double_ou" else scale
        )
        row["ratio_to_target"] = row["seconds"] / row["target_seconds"]
        row["rows_per_second"] = row["rows"] / row["seconds"]
        if "loop_seconds" in row:
            row["speedup_vs_loop"] = row["loop_seconds"] / row["seconds"]
    return rows


def table(out: dict[str, Any]) -> str:
    lines = [
        "| operation | rows | seconds | rows/s | target (s) | time / target | speed-up vs loop |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in out["results"].items():
        speedup = f"{r['speedup_vs_loop']:.1f}x" if "speedup_vs_loop" in r else "-"
        lines.append(
            f"| {name} | {r['rows']:,} | {r['seconds']:.3f} | {r['rows_per_second']:,.0f} | "
            f"{r['target_seconds']:.2f} | {r['ratio_to_target']:.2f} | {speedup} |"
        )
    return "\n".join(lines)


def report(out: dict[str, Any]) -> str:
    m = out["machine"]
    return (
        "# Data conversion and generation\n\n"
        "`python -m experiments.benchmarks.data_conversion` (see its docstring): "
        f"{out['n_series']:,} series of {out['length']} rows, the best of {out['repeats']} timed "
        f"run{'s' if out['repeats'] > 1 else ''}. The targets are scaled from 1 s (conversions) and "
        "2 s (generation) for 10,000 series of 20 rows.\n\n"
        f"{table(out)}\n\n"
        f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), torch {m['torch']} with {out['threads']} threads.\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-series", type=int, default=10_000)
    p.add_argument("--length", type=int, default=20, help="rows per series of the conversion frame")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--loop-repeats", type=int, default=1, help="timed runs of the per-series loop")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save", action="store_true", help="write JSON and Markdown under experiments/results")
    p.add_argument("--tag", default="")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = {
        "n_series": args.n_series,
        "length": args.length,
        "repeats": args.repeats,
        "threads": args.threads,
        "machine": machine(),
        "results": run(args),
    }
    print(table(out), flush=True)
    if args.save:
        stem = RESULTS / f"data_conversion_cpu_{args.threads}threads{f'_{args.tag}' if args.tag else ''}"
        write_result(stem.with_suffix(".json"), json.dumps(out, indent=2) + "\n")
        write_result(stem.with_suffix(".md"), report(out))


if __name__ == "__main__":
    main()

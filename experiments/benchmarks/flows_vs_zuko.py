"""Speed of the same conditional MAF in ctflow, zuko and nflows.

The flow: D=8, context 16, 5 affine autoregressive transforms with MADE conditioners of hidden
sizes (64, 64) and ReLU, orders alternating sequential/reverse (nflows: a reverse permutation
between transforms), standard normal base.

Workloads, each with a per-row context of shape (batch, 16):

* ``log_prob+backward``: ``flow.log_prob(x, c).mean().backward()``;
* ``sample``: draw one sample per context row under ``torch.no_grad()``.

Every library is warmed up, then timed ``--repeats`` times with the libraries interleaved in each
repetition (in a rotating order) so that machine noise hits all of them alike; the median is
reported. Results go to ``experiments/results/flows_vs_zuko_<device>.json`` and ``.md``.

Run from the repository root::

    python -m experiments.benchmarks.flows_vs_zuko [--device cpu|cuda] [--batch 4096 65536] [--repeats 20]

Timings are wall-clock with 2 torch threads by default (``--threads``); other work on the machine
inflates them, which is why the load average is recorded with the results.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ctflow.flows import build
from experiments.results_io import write_result

DIM = 8
CONTEXT = 16
N_TRANSFORMS = 5
HIDDEN = (64, 64)
WARMUP = 5
LIBRARIES = ("ctflow", "zuko", "nflows")
WORKLOADS = ("log_prob+backward", "sample")
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def make_ctflow() -> nn.Module:
    return build("maf", dim=DIM, context_dim=CONTEXT, n_layers=N_TRANSFORMS, hidden=HIDDEN)


def make_zuko() -> nn.Module:
    import zuko

    return zuko.flows.MAF(features=DIM, context=CONTEXT, transforms=N_TRANSFORMS, hidden_features=HIDDEN)


def make_nflows() -> nn.Module:
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.permutations import ReversePermutation

    if len(set(HIDDEN)) != 1:
        raise ValueError("nflows' MADE has equal hidden sizes")
    layers = []
    for i in range(N_TRANSFORMS):
        if i > 0:
            layers.append(ReversePermutation(features=DIM))
        layers.append(
            MaskedAffineAutoregressiveTransform(
                features=DIM,
                hidden_features=HIDDEN[0],
                context_features=CONTEXT,
                num_blocks=len(HIDDEN) - 1,  # input layer + blocks = len(HIDDEN) hidden layers
                use_residual_blocks=False,
                activation=torch.relu,
            )
        )
    return Flow(CompositeTransform(layers), StandardNormal([DIM]))


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def workloads(library: str, flow: nn.Module, x: torch.Tensor, c: torch.Tensor) -> dict[str, Callable]:
    """Zero-argument callables for each workload, written the way each library is meant to be used."""
    params = [p for p in flow.parameters() if p.requires_grad]

    def clear_grads() -> None:
        for p in params:
            p.grad = None

    if library == "ctflow":

        def log_prob() -> None:
            clear_grads()
            flow.log_prob(x, context=c).mean().backward()

        def sample() -> torch.Tensor:
            with torch.no_grad():
                return flow.sample(context=c)

    elif library == "zuko":

        def log_prob() -> None:
            clear_grads()
            flow(c).log_prob(x).mean().backward()

        def sample() -> torch.Tensor:
            with torch.no_grad():
                return flow(c).sample()

    elif library == "nflows":

        def log_prob() -> None:
            clear_grads()
            flow.log_prob(x, context=c).mean().backward()

        def sample() -> torch.Tensor:
            with torch.no_grad():
                return flow.sample(1, context=c)

    else:
        raise ValueError(library)
    return {"log_prob+backward": log_prob, "sample": sample}


def check_shapes(calls: dict[str, dict[str, Callable]], batch: int) -> None:
    for library, fns in calls.items():
        s = fns["sample"]()
        if s.numel() != batch * DIM or not torch.isfinite(s).all():
            raise RuntimeError(f"{library}: bad sample of shape {tuple(s.shape)}")


def time_all(
    calls: dict[str, dict[str, Callable]], repeats: int, sync: Callable[[], None]
) -> dict[str, dict[str, list[float]]]:
    """Per workload and library, ``repeats`` wall times in ms (libraries interleaved per repetition)."""
    times: dict[str, dict[str, list[float]]] = {w: {lib: [] for lib in calls} for w in WORKLOADS}
    libraries = list(calls)
    for workload in WORKLOADS:
        for lib in libraries:
            for _ in range(WARMUP):
                calls[lib][workload]()
            sync()
        for r in range(repeats):
            k = r % len(libraries)
            for lib in libraries[k:] + libraries[:k]:
                fn = calls[lib][workload]
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[workload][lib].append(1e3 * (time.perf_counter() - t0))
    return times


def run(device: str, batches: list[int], repeats: int, threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but CUDA is not available")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    flows = {"ctflow": make_ctflow(), "zuko": make_zuko(), "nflows": make_nflows()}
    for f in flows.values():
        f.to(dev)
    counts = {lib: n_params(f) for lib, f in flows.items()}
    print("parameters:", ", ".join(f"{lib} {n}" for lib, n in counts.items()))
    if counts["ctflow"] != counts["zuko"]:
        print("  WARNING: ctflow and zuko differ in parameter count")
    if counts["nflows"] != counts["ctflow"]:
        extra = counts["nflows"] - counts["ctflow"]
        print(
            f"  nflows has {extra} more ({extra // N_TRANSFORMS} per transform): its MADE feeds the context "
            "through a separate linear layer whose bias duplicates the first layer's"
        )

    load_before = _load_average()
    results = []
    for batch in batches:
        x = torch.randn(batch, DIM, device=dev)
        c = torch.randn(batch, CONTEXT, device=dev)
        calls = {lib: workloads(lib, f, x, c) for lib, f in flows.items()}
        check_shapes(calls, batch)
        t0 = time.perf_counter()
        times = time_all(calls, repeats, sync)
        elapsed = time.perf_counter() - t0
        for workload in WORKLOADS:
            med = {lib: statistics.median(ts) for lib, ts in times[workload].items()}
            results.append(
                {
                    "batch": batch,
                    "workload": workload,
                    "median_ms": med,
                    "min_ms": {lib: min(ts) for lib, ts in times[workload].items()},
                    "ctflow/zuko": med["ctflow"] / med["zuko"],
                    "ctflow/nflows": med["ctflow"] / med["nflows"],
                }
            )
        print(f"batch {batch}: timed in {elapsed:.1f} s")

    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if dev.type == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "warmup": WARMUP,
        "config": {"dim": DIM, "context": CONTEXT, "transforms": N_TRANSFORMS, "hidden": list(HIDDEN)},
        "parameters": counts,
        # Other work on the machine distorts the timings (interleaving shares it out, but only
        # in part): the 1-minute load average before and after, next to the thread count.
        "load_average": {"before": load_before, "after": _load_average()},
        "versions": {
            "torch": torch.__version__,
            **{name: _version(name) for name in LIBRARIES},
            "python": platform.python_version(),
        },
        "results": results,
    }


def table(report: dict) -> str:
    lines = [
        "| batch | workload | ctflow (ms) | zuko (ms) | nflows (ms) | ctflow/zuko | ctflow/nflows |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        m = r["median_ms"]
        lines.append(
            f"| {r['batch']} | {r['workload']} | {m['ctflow']:.2f} | {m['zuko']:.2f} | {m['nflows']:.2f} "
            f"| {r['ctflow/zuko']:.2f} | {r['ctflow/nflows']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[4096])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads (1 is less disturbed by other load)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1 or any(b < 1 for b in args.batch):
        parser.error("--repeats, --threads and --batch must be positive")

    report = run(args.device, args.batch, args.repeats, args.threads)

    print()
    print(f"{'batch':>7}  {'workload':<18} " + " ".join(f"{lib:>10}" for lib in LIBRARIES) + "   (median ms)")
    for r in report["results"]:
        m = r["median_ms"]
        print(f"{r['batch']:>7}  {r['workload']:<18} " + " ".join(f"{m[lib]:>10.2f}" for lib in LIBRARIES))
    print()
    for r in report["results"]:
        print(
            f"batch {r['batch']:>6} {r['workload']:<18} ctflow/zuko = {r['ctflow/zuko']:.2f}   "
            f"ctflow/nflows = {r['ctflow/nflows']:.2f}"
        )

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = RESULTS_DIR / f"flows_vs_zuko_{args.device}"
    write_result(stem.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    header = (
        f"# MAF speed: ctflow vs zuko vs nflows ({report['device_name']}, {report['threads']} threads)\n\n"
        f"D={DIM}, context {CONTEXT}, {N_TRANSFORMS} transforms, hidden {HIDDEN}; median of "
        f"{report['repeats']} calls after {WARMUP} warm-up calls. Versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + f". Load average before/after: {report['load_average']['before']} / "
        f"{report['load_average']['after']}.\n\nParameters: "
        + ", ".join(f"{k} {v}" for k, v in report["parameters"].items())
        + ".\n\n"
    )
    write_result(stem.with_suffix(".md"), header + table(report) + "\n")
    load = report["load_average"]
    print(f"\nload average before/after: {load['before']} / {load['after']} ({os.cpu_count()} CPUs)")
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()

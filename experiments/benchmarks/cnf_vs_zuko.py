"""Speed of the same continuous normalizing flow (FFJORD) in ctflow and zuko: one training step.

The flow, identical in both libraries (checked: parameter count, and the vector field after the
weights are copied across): D=2, an MLP vector field ``[cos(k pi t), sin(k pi t)]_{k=1..3}`` and
``x`` concatenated at the input, ELU hidden layers (64, 64), integration time [0, 1], standard
normal base.

* zuko: ``zuko.flows.CNF(2, freqs=3, atol=1e-6, rtol=1e-5, exact=..., hidden_features=(64, 64))``.
* ctflow: ``CNF(2, hidden=(64, 64), layer="input", time_embedding="fourier", activation="elu",
  trace=..., solver=SolverOptions(atol=1e-6, rtol=1e-5, norm="max", aux_atol=1e-4))``.

Solver and error control: both integrate with adaptive Dormand-Prince 5(4) and accept a step when
``max_i err_i / (atol + rtol * max(|y0_i|, |y1_i|)) <= 1`` over every element of the state. zuko
integrates the log-determinant scaled by its ``trace_scale`` (1e-2), which is the same as holding
the log-determinant to ``atol / trace_scale`` (1e-4) with the same ``rtol``; ctflow is given
exactly that criterion (``norm="max"``, ``aux_atol=atol/trace_scale``). What still differs is
each library's own machinery: torchdiffeq picks the first step by Hairer's heuristic and reuses
the last stage of an accepted step (6 evaluations per step), zuko starts with the whole interval
and makes 7 evaluations per attempt; ctflow backpropagates through the solver's operations,
zuko re-integrates each accepted step (adaptive checkpoint adjoint, 6 evaluations per step).

Workload: ``loss = -flow.log_prob(x).mean(); loss.backward()`` on a batch of two-moons points, with
the exact trace and with the Hutchinson estimate (Gaussian noise, one draw per solve). Each
library is warmed up, then timed ``--repeats`` times with the libraries interleaved in each
repetition (rotating order) so that machine noise hits both alike; the median is reported.
NFE (vector-field evaluations) is counted in every timed step: ctflow's own counters, and for
zuko a wrapper around its vector field that counts calls before and during ``backward()``.

Also checked: the log-densities of the two flows (same weights, same points, exact trace, no
gradient) agree to about the solver tolerance, and each is compared with a float64 solve at
tolerance 1e-9; once at the initial weights (a nearly trivial flow) and once with every weight
multiplied by 3 (log-determinants of order 1).

Results go to ``experiments/results/cnf_vs_zuko_<device>.json`` and ``.md`` (with ``--ablation``,
which also times ctflow variants, to ``cnf_vs_zuko_<device>_ablation.*``; a ``--threads`` other
than 2 adds ``_<n>threads``). Run from the repository root::

    python -m experiments.benchmarks.cnf_vs_zuko [--device cpu|cuda] [--batch 1024] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import ctflow
from ctflow.data import two_moons
from ctflow.flows import CNF, Flow
from ctflow.ode import SolverOptions
from experiments.results_io import write_result

DIM = 2
HIDDEN = (64, 64)
FREQS = 3
ATOL, RTOL = 1e-6, 1e-5  # zuko's defaults
THREADS = 2
WARMUP = 3
TRACES = ("exact", "hutchinson")
REFERENCE_TOL = 1e-9
CHECK_WEIGHT_SCALES = (1.0, 3.0)
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"

# ctflow variants timed with --ablation (besides the main configuration), to show what each
# choice is worth: reverse-mode Jacobian products, torchdiffeq's default RMS error norm, and the
# adjoint method with a seminorm for the backward pass.
ABLATIONS: dict[str, dict] = {
    "ctflow reverse-mode products": {"jacobian_products": "reverse"},
    "ctflow rms norm (default error control)": {"solver": {"norm": "rms", "aux_atol": None}},
    "ctflow adjoint + seminorm": {"solver": {"adjoint": True, "adjoint_seminorm": True}},
}


def zuko_trace_scale() -> float:
    """The factor zuko multiplies the trace by inside its solve (its log-det error weighting)."""
    import zuko

    transform = zuko.flows.CNF(DIM, freqs=FREQS, hidden_features=HIDDEN).transform()
    return float(getattr(transform, "trace_scale", 1.0))


def solver_options(trace_scale: float, **overrides) -> SolverOptions:
    kw = {"method": "dopri5", "atol": ATOL, "rtol": RTOL, "norm": "max", "aux_atol": ATOL / trace_scale}
    kw.update(overrides)
    return SolverOptions(**kw)


def make_zuko(trace: str) -> nn.Module:
    import zuko

    return zuko.flows.CNF(
        DIM, freqs=FREQS, atol=ATOL, rtol=RTOL, exact=trace == "exact", hidden_features=HIDDEN
    )


def make_ctflow(trace: str, trace_scale: float, variant: dict | None = None) -> Flow:
    variant = variant or {}
    cnf = CNF(
        DIM,
        hidden=HIDDEN,
        layer="input",
        time_embedding="fourier",
        activation="elu",
        trace=trace,
        jacobian_products=variant.get("jacobian_products", "auto"),
        solver=solver_options(trace_scale, **variant.get("solver", {})),
    )
    return Flow(cnf, DIM)


def zuko_linears(zflow: nn.Module) -> list[nn.Module]:
    return [m for m in zflow.transform.ode if hasattr(m, "weight")]


def copy_weights(zflow: nn.Module, cflow: Flow) -> None:
    """zuko's first layer reads ``[time features, x]``; ctflow's reads ``[x, time features]``."""
    zl = zuko_linears(zflow)
    cl = [layer.linear for layer in cflow.transform.field.layers]
    if len(zl) != len(cl):
        raise RuntimeError(f"zuko has {len(zl)} linear layers, ctflow {len(cl)}")
    with torch.no_grad():
        w = zl[0].weight
        cl[0].weight.copy_(torch.cat([w[:, 2 * FREQS :], w[:, : 2 * FREQS]], dim=1))
        cl[0].bias.copy_(zl[0].bias)
        for c, z in zip(cl[1:], zl[1:], strict=True):
            c.weight.copy_(z.weight)
            c.bias.copy_(z.bias)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def field_difference(zflow: nn.Module, cflow: Flow, dev: torch.device) -> float:
    """Largest |f_zuko(t, x) - f_ctflow(t, x)| over random points and times."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, DIM, generator=g).to(dev)
    worst = 0.0
    with torch.no_grad():
        for t in torch.linspace(0, 1, 7):
            t = t.to(dev)
            fz = zflow.transform.f(t, x)
            fc = cflow.transform.field(t, x)
            worst = max(worst, (fz - fc).abs().max().item())
    return worst


class CallCounter:
    """Wraps zuko's vector field and counts its calls."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def step_fn(library: str, flow: nn.Module, x: torch.Tensor) -> Callable[[], tuple[int, int]]:
    """One training step; returns (forward NFE, backward NFE) of that step."""
    params = [p for p in flow.parameters() if p.requires_grad]

    def clear() -> None:
        for p in params:
            p.grad = None

    if library == "zuko":
        counter = flow.transform.f
        if not isinstance(counter, CallCounter):
            counter = flow.transform.f = CallCounter(flow.transform.f)

        def step() -> tuple[int, int]:
            clear()
            counter.calls = 0
            loss = -flow().log_prob(x).mean()
            forward = counter.calls
            loss.backward()
            return forward, counter.calls - forward

    else:
        cnf = flow.transform

        def step() -> tuple[int, int]:
            clear()
            cnf.reset_nfe()
            loss = -flow.log_prob(x).mean()
            loss.backward()
            return cnf.nfe_forward, cnf.nfe_backward

    return step


def time_steps(
    steps: dict[str, Callable[[], tuple[int, int]]], repeats: int, sync: Callable[[], None]
) -> tuple[dict[str, list[float]], dict[str, list[tuple[int, int]]]]:
    names = list(steps)
    for name in names:
        for _ in range(WARMUP):
            steps[name]()
        sync()
    times: dict[str, list[float]] = {n: [] for n in names}
    nfes: dict[str, list[tuple[int, int]]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            sync()
            t0 = time.perf_counter()
            nfe = steps[name]()
            sync()
            times[name].append(1e3 * (time.perf_counter() - t0))
            nfes[name].append(nfe)
    return times, nfes


def log_density_check(zflow: nn.Module, x: torch.Tensor, trace_scale: float, weight_scale: float) -> dict:
    """Exact-trace log-densities of both flows and of a tight float64 reference, same weights.

    The weights are ``zflow``'s times ``weight_scale``, on fresh copies (``zflow`` is untouched).
    """
    z = make_zuko("exact").to(x.device)
    z.load_state_dict(zflow.state_dict())
    with torch.no_grad():
        for p in z.parameters():
            p.mul_(weight_scale)
    c = make_ctflow("exact", trace_scale).to(x.device)
    copy_weights(z, c)
    ref = make_ctflow("exact", trace_scale).to(x.device)
    ref.load_state_dict(c.state_dict())
    ref.transform.solver = SolverOptions(atol=REFERENCE_TOL, rtol=REFERENCE_TOL)
    ref = ref.double()
    for m in (z, c, ref):
        m.eval()
    with torch.no_grad():
        lz = z().log_prob(x)
        lc = c.log_prob(x)
        lr = ref.log_prob(x.double())
        _, ladj = ref.transform(x.double())
    return {
        "weight_scale": weight_scale,
        "max_abs_diff_ctflow_zuko": (lc - lz).abs().max().item(),
        "max_abs_err_ctflow": (lc.double() - lr).abs().max().item(),
        "max_abs_err_zuko": (lz.double() - lr).abs().max().item(),
        "max_abs_logdet": ladj.abs().max().item(),
        "mean_log_prob": lr.mean().item(),
    }


def run(device: str, batch: int, repeats: int, threads: int, ablation: bool) -> dict:
    torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but CUDA is not available")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    trace_scale = zuko_trace_scale()
    x = torch.from_numpy(two_moons(batch, seed=0)).to(dev)

    report: dict = {"checks": {}, "results": []}
    models = {}
    for trace in TRACES:
        torch.manual_seed(0)
        zflow = make_zuko(trace).to(dev)
        flows = {"ctflow": make_ctflow(trace, trace_scale).to(dev), "zuko": zflow}
        if ablation:
            flows.update({name: make_ctflow(trace, trace_scale, v).to(dev) for name, v in ABLATIONS.items()})
        for name, flow in flows.items():
            if name != "zuko":
                copy_weights(zflow, flow)
        counts = {name: n_params(flow) for name, flow in flows.items()}
        if len(set(counts.values())) != 1:
            raise RuntimeError(f"parameter counts differ: {counts}")
        diff = field_difference(zflow, flows["ctflow"], dev)
        if diff > 1e-5:
            raise RuntimeError(f"the two vector fields differ by {diff:.2e} with the same weights")
        report["checks"][trace] = {"parameters": counts["ctflow"], "max_abs_field_diff": diff}
        models[trace] = flows
    report["checks"]["log_density"] = [
        log_density_check(models["exact"]["zuko"], x, trace_scale, scale) for scale in CHECK_WEIGHT_SCALES
    ]

    load_before = os.getloadavg()
    t_start = time.perf_counter()
    for trace, flows in models.items():
        steps = {name: step_fn("zuko" if name == "zuko" else "ctflow", f, x) for name, f in flows.items()}
        times, nfes = time_steps(steps, repeats, sync)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        for name in flows:
            fwd = [n[0] for n in nfes[name]]
            bwd = [n[1] for n in nfes[name]]
            report["results"].append(
                {
                    "trace": trace,
                    "library": name,
                    "median_ms": med[name],
                    "min_ms": min(times[name]),
                    "times_ms": times[name],
                    "nfe_forward": statistics.median(fwd),
                    "nfe_backward": statistics.median(bwd),
                    "nfe_per_step": nfes[name],
                    "ratio_to_zuko": med[name] / med["zuko"],
                }
            )
    elapsed = time.perf_counter() - t_start
    load_after = os.getloadavg()

    import torchdiffeq
    import zuko

    report.update(
        {
            "device": device,
            "device_name": torch.cuda.get_device_name()
            if dev.type == "cuda"
            else platform.processor() or "cpu",
            "threads": torch.get_num_threads(),
            "batch": batch,
            "repeats": repeats,
            "warmup": WARMUP,
            "elapsed_s": elapsed,
            "loadavg_before": list(load_before),
            "loadavg_after": list(load_after),
            "cpu_count": os.cpu_count(),
            "config": {
                "dim": DIM,
                "hidden": list(HIDDEN),
                "freqs": FREQS,
                "atol": ATOL,
                "rtol": RTOL,
                "zuko_trace_scale": trace_scale,
                "ctflow_solver": solver_options(trace_scale).to_dict(),
            },
            "versions": {
                "torch": torch.__version__,
                "ctflow": getattr(ctflow, "__version__", "?"),
                "zuko": zuko.__version__,
                "torchdiffeq": torchdiffeq.__version__,
                "python": platform.python_version(),
            },
        }
    )
    return report


def ratio(report: dict, trace: str, library: str = "ctflow") -> float:
    for r in report["results"]:
        if r["trace"] == trace and r["library"] == library:
            return r["ratio_to_zuko"]
    raise KeyError((trace, library))


def table(report: dict) -> str:
    lines = [
        "| trace | library | median (ms) | min (ms) | NFE forward | NFE backward | / zuko |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['trace']} | {r['library']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} "
            f"| {r['nfe_forward']:g} | {r['nfe_backward']:g} | {r['ratio_to_zuko']:.2f} |"
        )
    return "\n".join(lines)


def density_table(report: dict) -> str:
    lines = [
        "| weights | max abs(log-det) | max diff ctflow-zuko | ctflow error | zuko error |",
        "|---|---:|---:|---:|---:|",
    ]
    for ld in report["checks"]["log_density"]:
        lines.append(
            f"| initial x {ld['weight_scale']:g} | {ld['max_abs_logdet']:.3f} | "
            f"{ld['max_abs_diff_ctflow_zuko']:.1e} | {ld['max_abs_err_ctflow']:.1e} "
            f"| {ld['max_abs_err_zuko']:.1e} |"
        )
    return "\n".join(lines)


def markdown(report: dict) -> str:
    cfg = report["config"]
    load = ", ".join(f"{v:.2f}" for v in report["loadavg_before"])
    load_after = ", ".join(f"{v:.2f}" for v in report["loadavg_after"])
    return (
        f"# CNF training step: ctflow vs zuko ({report['device_name']}, {report['threads']} threads)\n\n"
        f"D={cfg['dim']}, MLP field with Fourier time features (k=1..{cfg['freqs']}) at the input, ELU "
        f"hidden {tuple(cfg['hidden'])}, {report['checks']['exact']['parameters']} parameters in both. "
        f"Step: `-log_prob(x).mean().backward()` on {report['batch']} two-moons points; median of "
        f"{report['repeats']} interleaved steps after {report['warmup']} warm-up steps. Versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + ".\n\n"
        "Solver: adaptive Dormand-Prince 5(4) in both, same error control: every element's error "
        f"over `atol + rtol*|y|` with atol={cfg['atol']:g}, rtol={cfg['rtol']:g}, max norm; the "
        f"log-determinant held to atol/{cfg['zuko_trace_scale']:g} = "
        f"{cfg['atol'] / cfg['zuko_trace_scale']:g} "
        "(zuko: its trace scaling; ctflow: `SolverOptions(norm='max', aux_atol=...)`). Backward: "
        "ctflow backpropagates through the solver, zuko uses its adaptive checkpoint adjoint.\n\n"
        + table(report)
        + "\n\n"
        f"ctflow/zuko: exact {ratio(report, 'exact'):.2f}, Hutchinson {ratio(report, 'hutchinson'):.2f}.\n\n"
        f"Checks: vector fields with copied weights differ by at most "
        f"{report['checks']['exact']['max_abs_field_diff']:.1e}. Exact-trace log-densities of the batch "
        f"(same weights; reference: float64 solve at tol {REFERENCE_TOL:g}):\n\n"
        + density_table(report)
        + "\n\n"
        f"Machine load (1/5/15-min load average, {report['cpu_count']} CPUs): {load} before, "
        f"{load_after} after ({report['elapsed_s']:.0f} s of timing).\n"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads")
    parser.add_argument(
        "--ablation", action="store_true", help="also time ctflow variants (written to *_ablation.*)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch < 1 or args.threads < 1:
        parser.error("--repeats, --batch and --threads must be positive")

    report = run(args.device, args.batch, args.repeats, args.threads, args.ablation)

    print()
    header = ("median ms", "min ms", "NFE fwd", "NFE bwd", "/zuko")
    print(f"{'trace':<11} {'library':<42} " + " ".join(f"{h:>9}" for h in header))
    for r in report["results"]:
        print(
            f"{r['trace']:<11} {r['library']:<42} {r['median_ms']:>9.1f} {r['min_ms']:>9.1f} "
            f"{r['nfe_forward']:>9g} {r['nfe_backward']:>9g} {r['ratio_to_zuko']:>9.2f}"
        )
    print()
    print(
        f"ctflow/zuko time: exact {ratio(report, 'exact'):.2f}, hutchinson {ratio(report, 'hutchinson'):.2f}"
    )
    print(
        f"vector field max |diff| with copied weights: {report['checks']['exact']['max_abs_field_diff']:.1e}"
    )
    for ld in report["checks"]["log_density"]:
        print(
            f"weights x{ld['weight_scale']:g}: log-density max |ctflow - zuko| "
            f"{ld['max_abs_diff_ctflow_zuko']:.2e} "
            f"(vs float64 tol-{REFERENCE_TOL:g} solve: ctflow {ld['max_abs_err_ctflow']:.2e}, "
            f"zuko {ld['max_abs_err_zuko']:.2e}; max |log-det| {ld['max_abs_logdet']:.2f})"
        )
    print(f"load average {report['loadavg_before']} -> {report['loadavg_after']}")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    suffix = ("_ablation" if args.ablation else "") + (
        f"_{args.threads}threads" if args.threads != THREADS else ""
    )
    stem = RESULTS_DIR / f"cnf_vs_zuko_{args.device}{suffix}"
    write_result(stem.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    write_result(stem.with_suffix(".md"), markdown(report))
    print(f"\nwrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()

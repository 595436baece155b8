"""Held-out bits/dim of the four image flows after a fixed wall-clock training budget.

Run from the repository root::

    python -m experiments.image_bpd                          # 300 s per model on digits
    python -m experiments.image_bpd --budget 10              # a quick check of the script
    python -m experiments.image_bpd --models glow flowpp --data mnist --device cuda

Each model (Real NVP, Glow, Flow++, MintNet at their default sizes) is trained with
``ctflow.image.train`` for ``--budget`` seconds of wall time (evaluation included), then the
held-out bits/dim (one dequantization draw per image; for digits 17 levels, so the uniform
baseline is log2(17) = 4.09), training images per second, parameter count and, on CUDA, peak GPU
memory are reported. Writes ``experiments/results/image_bpd_<data>_<device>.json`` and ``.md`` and
a sample grid per model (``image_bpd_<data>_<device>_<model>.png``). Results depend on the
machine and its load.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from ctflow.image import MODELS
from ctflow.image.data import load_image_data
from ctflow.image.train import TrainConfig, resolve_device, train
from experiments.results_io import RESULTS, write_result


def run(
    models: list[str], data_spec: str, budget: float, device_name: str, batch_size: int, seed: int
) -> dict:
    device = resolve_device(device_name)
    if device.type == "cpu":
        torch.set_num_threads(1)
    data = load_image_data(data_spec)
    data_name = Path(data_spec).stem if data_spec not in ("digits", "mnist") else data_spec
    tag = f"image_bpd_{data_name}_{device.type}"
    rows = []
    for name in models:
        work = Path(tempfile.mkdtemp(prefix=f"{name}_"))
        config = TrainConfig(
            model=name,
            data=data_spec,
            out=str(work),
            epochs=1_000_000,
            batch_size=batch_size,
            seed=seed,
            device=str(device),
            time_limit=budget,
            progress=False,
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        summary = train(config, data=data)
        row = {
            "model": name,
            "test_bpd": summary["test_bpd"],
            "images_per_second": summary["images_per_second"],
            "parameters": summary["parameters"],
            "steps": summary["step"],
            "epochs": summary["epoch"],
            "seconds": summary["seconds"],
        }
        if device.type == "cuda":
            row["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "samples.png", RESULTS / f"{tag}_{name}.png")
        shutil.rmtree(work, ignore_errors=True)
        rows.append(row)
        rate = row["images_per_second"]
        print(f"{name:8s} bpd {row['test_bpd']:.3f}  {rate:.0f} img/s  {row['parameters']} params")
    result = {
        "data": data_name,
        "levels": data.levels,
        "shape": list(data.shape),
        "n_train": int(data.train.shape[0]),
        "n_test": int(data.test.shape[0]),
        "uniform_bpd": math.log2(data.levels),
        "budget_seconds": budget,
        "batch_size": batch_size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
    }
    write_result(RESULTS / f"{tag}.json", json.dumps(result, indent=2))
    write_result(RESULTS / f"{tag}.md", _markdown(result))
    return result


def _markdown(result: dict) -> str:
    gpu = result["device"].startswith("cuda")
    head = "| model | held-out bits/dim | images/s | parameters | steps |" + (
        " peak GPU MiB |" if gpu else ""
    )
    sep = "| --- | --- | --- | --- | --- |" + (" --- |" if gpu else "")
    lines = [
        f"# Image flows on {result['data']} ({result['budget_seconds']:g} s each, {result['device']})",
        "",
        f"{result['n_train']} training / {result['n_test']} held-out images of shape "
        f"{tuple(result['shape'])}, "
        f"{result['levels']} levels (uniform model: {result['uniform_bpd']:.3f} bits/dim); batch "
        f"{result['batch_size']}, {result['threads']} thread(s), torch {result['torch']}.",
        "",
        head,
        sep,
    ]
    for r in result["rows"]:
        line = (
            f"| {r['model']} | {r['test_bpd']:.3f} | {r['images_per_second']:.0f} | {r['parameters']:,} "
            f"| {r['steps']} |"
        )
        if gpu:
            line += f" {r['peak_gpu_memory_mib']:.0f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--data", default="digits", help="digits, mnist or a path")
    parser.add_argument("--budget", type=float, default=300.0, help="wall-clock seconds per model")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run(args.models, args.data, args.budget, args.device, args.batch_size, args.seed)


if __name__ == "__main__":
    main()

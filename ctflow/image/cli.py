"""Command line: ``python -m ctflow.image train --model glow --data digits --epochs 5 --out runs/glow``.

Under ``torchrun --nproc_per_node=N -m ctflow.image train ...`` training is data-parallel with
``--batch-size`` images per process (see :mod:`ctflow.image.train`).

:func:`add_image_parser` adds the ``image`` command (with its ``train`` subcommand) to any argparse
subparsers object, so a parent command can expose ``... image train ...``; :func:`main` is the
stand-alone entry point.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["add_image_parser", "add_train_arguments", "main", "run_train"]

MODEL_NAMES = ("realnvp", "glow", "flowpp", "mintnet")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``image train``."""
    parser.add_argument("--model", choices=MODEL_NAMES, required=True, help="image flow to train")
    parser.add_argument(
        "--data", default="digits", help="digits, mnist, or a path (IDX file, PNG folder, .npy)"
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", required=True, help="folder for log.json, samples.png and checkpoint.pt")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--levels", type=int, default=None, help="number of multi-scale levels")
    parser.add_argument("--steps", type=int, default=None, help="flow steps per level")
    parser.add_argument("--hidden", type=int, default=None, help="conditioner width")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature of the grid")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(image_func=run_train)


def add_image_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``image`` (with ``image train``) to ``subparsers``; returns the ``image`` parser."""
    image = subparsers.add_parser("image", help="multi-scale image flows", description=__doc__)
    commands = image.add_subparsers(dest="image_command", required=True)
    add_train_arguments(commands.add_parser("train", help="train an image flow"))
    return image


def run_train(args: argparse.Namespace) -> int:
    """Run ``image train`` from parsed arguments; prints a JSON summary (rank 0 under ``torchrun``)."""
    from ctflow.distributed import teardown

    from .train import TrainConfig, train

    config = TrainConfig(
        model=args.model,
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        resume=args.resume,
        device=args.device,
        bf16=args.bf16,
        time_limit=args.time_limit,
        levels=args.levels,
        steps=args.steps,
        hidden=args.hidden,
        temperature=args.temperature,
        progress=not args.no_progress,
    )
    try:
        summary = train(config)
    finally:
        teardown()
    if summary["rank"] == 0:
        keys = ("epoch", "step", "test_bpd", "skipped_steps", "seconds", "parameters", "world_size")
        print(json.dumps({k: summary[k] for k in keys}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ctflow.image train ...``."""
    parser = argparse.ArgumentParser(prog="python -m ctflow.image", description="Multi-scale image flows.")
    commands = parser.add_subparsers(dest="image_command", required=True)
    add_train_arguments(commands.add_parser("train", help="train an image flow"))
    args = parser.parse_args(argv)
    try:
        return args.image_func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

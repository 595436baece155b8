"""Training image flows: learning on digits, exact resumption, skipped non-finite steps, command line."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import ctflow.image.train as image_train
from ctflow.image import build_image_flow
from ctflow.image.cli import add_image_parser, main
from ctflow.image.data import ImageData, load_digits_images
from ctflow.image.train import TrainConfig, evaluate_bpd, train


@pytest.fixture(scope="module")
def digits() -> ImageData:
    d = load_digits_images()
    return ImageData(d.train[:192], d.test[:96], d.levels, "digits")


def _config(tmp_path, name, **kw):
    base = dict(model="glow", out=str(tmp_path / name), epochs=2, batch_size=32, lr=3e-3, steps=1, hidden=8)
    base.update(kw, progress=False, n_samples=4, warmup=5)
    return TrainConfig(**base)


def test_a_few_steps_lower_held_out_bits_per_dim(tmp_path, digits):
    config = _config(tmp_path, "learn", model="realnvp", epochs=3, batch_size=16)
    torch.manual_seed(config.seed)
    untrained = build_image_flow("realnvp", digits.shape, digits.levels, **config.architecture())
    before = evaluate_bpd(untrained, digits.test, digits.levels)
    summary = train(config, data=digits)
    log = json.loads((tmp_path / "learn" / "log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2, 3] and summary["step"] == 36
    assert log[-1]["test_bpd"] < before - 0.3, (before, log)
    assert (tmp_path / "learn" / "samples.png").stat().st_size > 0


def _assert_same_state(a, b):
    assert a["step"] == b["step"]
    for (ka, va), (kb, vb) in zip(
        a["model"].state_dict().items(), b["model"].state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb), ka
    sa, sb = a["optimizer"].state_dict(), b["optimizer"].state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i, st in sa["state"].items():
        assert int(st["step"]) == int(sb["state"][i]["step"])
        assert torch.equal(st["exp_avg"], sb["state"][i]["exp_avg"])
        assert torch.equal(st["exp_avg_sq"], sb["state"][i]["exp_avg_sq"])


def test_resume_continues_exactly(tmp_path, digits):
    full = train(_config(tmp_path, "full"), data=digits)
    train(_config(tmp_path, "split", epochs=1), data=digits)
    resumed = train(_config(tmp_path, "split", resume=True), data=digits)
    _assert_same_state(full, resumed)
    log = json.loads((tmp_path / "split" / "log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2]
    # Interrupted mid-epoch by the time limit after every step, then resumed until done.
    config = _config(tmp_path, "mid", time_limit=0.0)
    summary = train(config, data=digits)
    assert summary["step"] == 1
    for _ in range(20):
        if summary["epoch"] >= 2:
            break
        summary = train(_config(tmp_path, "mid", time_limit=0.0, resume=True), data=digits)
    _assert_same_state(full, summary)
    with pytest.raises(ValueError, match="was made for"):
        train(_config(tmp_path, "mid", model="realnvp", resume=True), data=digits)


def test_non_finite_steps_never_update_the_weights(tmp_path, digits, monkeypatch):
    real = image_train.bits_per_dim
    calls = {"n": 0}

    def sometimes_nan(model, x, **kw):
        calls["n"] += 1
        out = real(model, x, **kw)
        return out * float("nan") if model.training else out

    monkeypatch.setattr(image_train, "bits_per_dim", sometimes_nan)
    one_batch = ImageData(digits.train[:32], digits.test[:32], digits.levels, "digits")
    config = _config(tmp_path, "nan", model="realnvp", epochs=1)
    torch.manual_seed(config.seed)
    initial = build_image_flow("realnvp", digits.shape, digits.levels, **config.architecture()).state_dict()
    summary = train(config, data=one_batch)
    assert summary["skipped_steps"] == 1 and calls["n"] >= 1
    for k, v in summary["model"].state_dict().items():
        assert torch.equal(v, initial[k]), k


def test_command_line(tmp_path, capsys):
    npy = tmp_path / "imgs.npy"
    np.save(npy, np.random.default_rng(0).integers(0, 4, (40, 1, 4, 4)).astype(np.int64))
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            "mintnet",
            "--data",
            str(npy),
            "--epochs",
            "1",
            "--out",
            str(out),
            "--steps",
            "1",
            "--hidden",
            "2",
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2 and np.isfinite(summary["test_bpd"])
    assert {"log.json", "samples.png", "checkpoint.pt"} <= {p.name for p in out.iterdir()}
    assert main(["train", "--model", "glow", "--data", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "neither 'digits'" in capsys.readouterr().err

    parser = argparse.ArgumentParser(prog="ctflow")
    add_image_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["image", "train", "--model", "flowpp", "--out", "x", "--bf16", "--time-limit", "5"]
    )
    assert args.model == "flowpp" and args.bf16 and args.time_limit == 5.0 and callable(args.image_func)

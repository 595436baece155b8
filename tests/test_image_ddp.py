"""Data-parallel image training: 2 gloo processes with batch B == 1 process with batch 2B."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_torchrun

from ctflow.image.data import ImageData, load_digits_images
from ctflow.image.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16
OPTIONS: dict[str, Any] = dict(
    model="realnvp", epochs=2, lr=3e-3, steps=1, hidden=8, warmup=3, n_samples=4, progress=False
)
# Glow with lr = 0: the weights stay at their initialisation, ActNorm's data-dependent one included.
GLOW: dict[str, Any] = {**OPTIONS, "model": "glow", "epochs": 1, "lr": 0.0}


def tiny_digits() -> ImageData:
    d = load_digits_images()
    return ImageData(d.train[:123], d.test[:64], d.levels, "digits")


# Real NVP: rank 0's clock stops both ranks after one step (time limit 0), and every rank resumes
# from rank 0's checkpoint. Glow: only rank 1 sees a non-finite loss, at the first step.
SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    import ctflow.image.train as image_train
    from test_image_ddp import BATCH, GLOW, OPTIONS, tiny_digits
    from ctflow.image.train import TrainConfig, train

    data, out = tiny_digits(), {out!r}
    first = train(TrainConfig(out=out, batch_size=BATCH, time_limit=0.0, **OPTIONS), data=data)
    done = train(TrainConfig(out=out, batch_size=BATCH, resume=True, **OPTIONS), data=data)
    rank = done["rank"]
    real, calls = image_train.bits_per_dim, []

    def nan_once_on_rank_1(model, x, **kw):
        bpd = real(model, x, **kw)
        calls.append(model.training)
        return bpd * float("nan") if rank == 1 and model.training and calls.count(True) == 1 else bpd

    image_train.bits_per_dim = nan_once_on_rank_1
    glow = train(TrainConfig(out=out + "_glow", batch_size=BATCH, **GLOW), data=data)
    torch.save(
        {{
            "first_step": first["step"],
            "world": done["world_size"],
            "weights": done["model"].state_dict(),
            "test_bpd": done["test_bpd"],
            "glow_skipped": glow["skipped_steps"],
            "glow_weights": glow["model"].state_dict(),
        }},
        out + f".{{rank}}",
    )
    """
)


@pytest.mark.processes
def test_two_gloo_processes_train_like_one_process_with_the_doubled_batch(tmp_path):
    script = tmp_path / "ddp.py"
    out = str(tmp_path / "ddp")
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests"), out=out))
    run_torchrun(script)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["first_step"] == ranks[1]["first_step"] == 1
    for key in ("weights", "glow_weights"):
        a, b = ranks[0][key], ranks[1][key]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key
    assert ranks[0]["test_bpd"] == ranks[1]["test_bpd"]
    assert ranks[0]["glow_skipped"] == ranks[1]["glow_skipped"] == 1
    log = json.loads(Path(out, "log.json").read_text())  # rank 0's: the stop, then two epochs
    assert [(r["epoch"], r["complete"], r["step"]) for r in log] == [
        (1, False, 1),
        (1, True, 4),
        (2, True, 8),
    ]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = tiny_digits()
        single = train(TrainConfig(out=str(tmp_path / "one"), batch_size=2 * BATCH, **OPTIONS), data=data)
        glow = train(TrainConfig(out=str(tmp_path / "glow"), batch_size=2 * BATCH, **GLOW), data=data)
    finally:
        torch.set_num_threads(threads)
    assert single["step"] == 8
    for k, v in single["model"].state_dict().items():
        torch.testing.assert_close(ranks[0]["weights"][k], v, rtol=1e-5, atol=1e-6)
    assert ranks[0]["test_bpd"] == pytest.approx(single["test_bpd"], abs=1e-5)
    for k, v in glow["model"].state_dict().items():
        torch.testing.assert_close(ranks[0]["glow_weights"][k], v, rtol=1e-5, atol=1e-6)

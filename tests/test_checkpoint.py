"""Atomic checkpoints and RNG state capture."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ctflow.checkpoint import (
    atomic_write,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def test_round_trip_and_rng_restore(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    rng = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(2))
    (tmp_path / "sub").mkdir()
    path = save_checkpoint(
        tmp_path / "sub" / "ck.pt",
        {"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng, "step": 7},
    )
    state = load_checkpoint(path)
    assert state["step"] == 7 and torch.equal(state["model"]["weight"], model.weight)
    assert state["opt"]["state"][0]["exp_avg"].shape == (2, 3)
    restore_rng_state(state["rng"])
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert again[0] == expected[0] and again[1] == expected[1] and torch.equal(again[2], expected[2])
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["ck.pt"]  # no temporary left behind


def test_failed_save_keeps_the_old_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pt", {"step": 1})

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(path, {"step": 2, "bad": Unsaveable()})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none.pt")
    with pytest.raises(TypeError, match="dict"):
        save_checkpoint(tmp_path / "x.pt", [1, 2])
    torch.save(torch.zeros(2), tmp_path / "t.pt")
    with pytest.raises(ValueError, match="checkpoint dict"):
        load_checkpoint(tmp_path / "t.pt")


def test_atomic_write_replaces_whole_files_or_nothing(tmp_path):
    target = tmp_path / "sub" / "out.json"
    assert atomic_write(target, lambda tmp: tmp.write_text("first"), parents=True) == target
    assert target.read_text() == "first"

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]

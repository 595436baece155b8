"""Checkpoints, exact resumption (including after SIGKILL), non-finite steps and data-parallel
training of the shared training loop."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_torchrun

from ctflow.checkpoint import load_checkpoint
from ctflow.data import from_dataframe, load_double_ou
from ctflow.models import GRUODEBayes
from ctflow.training import evaluate_sequence_nll, fit_model

ROOT = Path(__file__).resolve().parents[1]


def _data(n: int = 24):
    return from_dataframe(load_double_ou(n, seed=0))


def _model(step_size: float = 0.5) -> GRUODEBayes:
    torch.manual_seed(0)
    solver = {"method": "euler", "step_size": step_size}
    return GRUODEBayes(2, hidden_size=8, p_hidden=8, prep_hidden=4, solver=solver)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


FIT = {"epochs": 3, "batch_size": 5, "lr": 1e-2, "seed": 3}


def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(tmp_path):
    data = _data()
    reference = _model()
    ref_hist = fit_model(reference, data, **FIT)

    model = _model()
    calls = {"n": 0}
    original = model.loss

    def failing_loss(batch):
        calls["n"] += 1
        if calls["n"] == 8:  # mid-epoch 2 (5 steps per epoch)
            raise KeyboardInterrupt
        return original(batch)

    model.loss = failing_loss
    ckpt = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        fit_model(model, data, checkpoint=ckpt, checkpoint_every=2, **FIT)
    assert load_checkpoint(ckpt)["trainer"]["attempted"] == 6

    resumed = _model()
    hist = fit_model(resumed, data, checkpoint=ckpt, checkpoint_every=2, resume=True, **FIT)
    _assert_same(_weights(resumed), _weights(reference))
    assert hist["n_steps"] == ref_hist["n_steps"] == 15
    np.testing.assert_allclose(hist["train_loss"], ref_hist["train_loss"], rtol=1e-12)


SIGKILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_training_faults import FIT, _data, _model
    from ctflow.training import fit_model

    data, model = _data(), _model()
    calls = {{"n": 0}}
    original = model.loss

    def loss(batch):
        calls["n"] += 1
        if calls["n"] == 12 and {kill}:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(batch)

    model.loss = loss
    fit_model(model, data, checkpoint={ckpt!r}, checkpoint_every=3, resume=True, **FIT)
    torch.save(model.state_dict(), {out!r})
    """
)


def _run_script(tmp_path: Path, kill: bool, out: Path, ckpt: Path) -> subprocess.CompletedProcess:
    script = tmp_path / f"train_{kill}.py"
    script.write_text(
        SIGKILL_SCRIPT.format(tests=str(ROOT / "tests"), kill=kill, ckpt=str(ckpt), out=str(out))
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=300)


@pytest.mark.processes
def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(tmp_path):
    ckpt = tmp_path / "state.pt"
    killed = _run_script(tmp_path, True, tmp_path / "never.pt", ckpt)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "never.pt").exists()
    assert load_checkpoint(ckpt)["trainer"]["attempted"] == 10  # the end of epoch 2, before the kill
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    resumed = _run_script(tmp_path, False, tmp_path / "resumed.pt", ckpt)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    reference = _model()
    fit_model(reference, _data(), **FIT)
    state = torch.load(tmp_path / "resumed.pt", weights_only=True)
    _assert_same(state, _weights(reference))


def test_non_finite_steps_never_reach_the_weights_and_reduce_the_learning_rate(tmp_path):
    data = _data()
    model = _model()
    original = model.loss
    calls = {"n": 0}

    def loss(batch):
        calls["n"] += 1
        value = original(batch)
        return value * float("nan") if 3 <= calls["n"] <= 8 else value

    model.loss = loss
    seen = []
    before = {}

    def spy_step(orig):
        def step(*a, **k):
            seen.append(calls["n"])
            return orig(*a, **k)

        return step

    torch.optim.Adam.step, saved = spy_step(torch.optim.Adam.step), torch.optim.Adam.step
    try:
        before = _weights(model)
        hist = fit_model(model, data, epochs=2, batch_size=5, lr=1e-2, seed=0)
    finally:
        torch.optim.Adam.step = saved
    assert hist["skipped_steps"] == 6
    assert hist["lr_reductions"] == 2  # 6 consecutive failures, a reduction every 3
    assert not set(seen) & set(range(3, 9))
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    data = _data()
    model = _model()
    with torch.no_grad():
        model.h0.fill_(float("nan"))
    ckpt = tmp_path / "state.pt"
    hist = fit_model(model, data, epochs=1, batch_size=5, seed=0, checkpoint=ckpt)
    assert hist["stop_reason"] == "non_finite"
    assert not ckpt.exists()


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_loading_a_checkpoint_never_runs_code_from_the_file(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"kind": "ctflow.training", "payload": _Boom()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


def test_log_path_gets_one_record_per_epoch(tmp_path):
    log = tmp_path / "log.json"
    fit_model(_model(), _data(), epochs=2, batch_size=8, seed=0, log_path=log, val=_data(8))
    records = json.loads(log.read_text())
    assert [r["epoch"] for r in records] == [1, 2] and all(r["complete"] for r in records)
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in records)


# ---------------------------------------------------------------------------------------------
# Data parallel: 2 processes (gloo) == 1 process with the doubled batch
# ---------------------------------------------------------------------------------------------
# One Euler step per interval whatever the batch: a lockstep batch takes as many steps per
# observation index as its longest interval needs, so a batch split across ranks would otherwise
# discretise some intervals differently from the whole batch.
ONE_STEP = 1e3

DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_training_faults import ONE_STEP, _data, _model
    from ctflow.training import fit_model

    model = _model(ONE_STEP)
    hist = fit_model(model, _data(), epochs=2, batch_size=4, lr=1e-2, seed=1)
    rank = int(os.environ["RANK"])
    torch.save({{"weights": model.state_dict(), "world": hist["world_size"]}}, {out!r} + f".{{rank}}")
    """
)


@pytest.mark.processes
def test_two_gloo_processes_train_like_one_process_with_the_doubled_batch(tmp_path):
    script = tmp_path / "ddp.py"
    out = tmp_path / "weights"
    script.write_text(DDP_SCRIPT.format(tests=str(ROOT / "tests"), out=str(out)))
    run_torchrun(script)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    _assert_same(ranks[0]["weights"], ranks[1]["weights"])

    single = _model(ONE_STEP)
    fit_model(single, _data(), epochs=2, batch_size=8, lr=1e-2, seed=1)
    for k, v in single.state_dict().items():
        torch.testing.assert_close(ranks[0]["weights"][k], v, rtol=1e-5, atol=1e-6)
    ddp_model = _model(ONE_STEP)
    ddp_model.load_state_dict(ranks[0]["weights"])
    data = _data()
    assert evaluate_sequence_nll(ddp_model, data) == pytest.approx(
        evaluate_sequence_nll(single, data), abs=1e-5
    )


def test_batches_per_epoch_drop_only_a_last_batch_too_small_to_share():
    from ctflow.distributed import DistContext

    assert DistContext().batches_per_epoch(10, 4) == 3
    two = DistContext(rank=1, world_size=2)
    assert two.batches_per_epoch(17, 4) == 2  # the last global batch of 1 item cannot feed 2 ranks
    assert two.batches_per_epoch(18, 4) == 3  # 2 items: one each
    assert two.batches_per_epoch(16, 4) == 2
    with pytest.raises(ValueError, match="1 training images are too few for 2 processes"):
        two.batches_per_epoch(1, 4, "images")

"""The one training loop: schedules, state, early stopping, budgets, faults and exact resumption."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from ctflow.checkpoint import load_checkpoint
from ctflow.trainer import LinearWarmup, Minibatch, Trainer, TrainerState, cosine

TARGET = torch.linspace(-1.0, 1.0, 40).unsqueeze(1) * torch.tensor([[2.0, -1.0, 0.5]])


class Regression(nn.Module):
    """Least squares on fixed inputs: a model whose optimum is known."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(1, 3)
        self.x = torch.linspace(-1.0, 1.0, 40).unsqueeze(1)

    def objective(self, batch: Minibatch) -> torch.Tensor:
        idx = batch.indices
        return ((self.linear(self.x[idx]) - TARGET[idx]) ** 2).mean()


def _trainer(model: Regression, **kw) -> Trainer:
    options = dict(n_items=40, batch_size=8, epochs=30, lr=0.05, seed=0)
    options.update(kw)
    return Trainer(model, model.objective, **options)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_schedules():
    assert cosine(0.0, 0) == 1.0 and abs(cosine(1.0, 99)) < 1e-12 and cosine(0.5, 3) == pytest.approx(0.5)
    warm = LinearWarmup(4)
    assert [warm(0.0, u) for u in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_state_round_trips_and_rejects_foreign_entries():
    state = TrainerState(epoch=3, position=2, records=[{"epoch": 1}], best_val=0.5)
    copy = TrainerState()
    copy.load_state_dict(state.state_dict())
    assert copy == state
    with pytest.raises(ValueError, match=r"unknown entries \['bogus'\]"):
        copy.load_state_dict({"bogus": 1})


def test_fits_a_known_optimum_and_records_each_epoch():
    model = Regression()
    history = _trainer(model).fit()
    assert history["epochs"] == 30 and history["n_steps"] == 150 and history["stop_reason"] == "epochs"
    slope = model.linear.weight.detach().squeeze(1)
    torch.testing.assert_close(slope, torch.tensor([2.0, -1.0, 0.5]), atol=0.05, rtol=0)
    assert history["train_loss"][-1] < 0.01 * history["train_loss"][0]


def test_early_stopping_restores_the_best_weights():
    model = Regression()
    scores = iter([3.0, 1.0, 2.0, 2.5, 4.0, 0.5])
    snapshots = []

    def validate() -> float:
        snapshots.append(_weights(model))
        return next(scores)

    history = _trainer(model, validate=validate, patience=3).fit()
    assert history["stop_reason"] == "early_stopping" and history["epochs"] == 5
    assert history["best_epoch"] == 1 and history["best_val_loss"] == 1.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[1][k]), k


def test_max_steps_and_steps_per_epoch():
    history = _trainer(Regression(), steps_per_epoch=12, max_steps=30).fit()
    # epochs of 12 steps (more than a pass of 5 batches), cut by the step budget
    assert history["n_steps"] == 30 and history["epochs"] == 3 and history["stop_reason"] == "max_steps"


def test_non_finite_steps_are_skipped_and_halve_the_learning_rate():
    model = Regression()
    calls = {"n": 0}

    def objective(batch: Minibatch) -> torch.Tensor:
        calls["n"] += 1
        loss = model.objective(batch)
        return loss * math.nan if 2 <= calls["n"] <= 7 else loss

    before = _weights(model)
    trainer = Trainer(model, objective, n_items=40, batch_size=8, epochs=1, lr=0.05, seed=0)
    steps_seen = []
    original = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (steps_seen.append(calls["n"]), original(*a, **k))[1]
    history = trainer.fit()
    assert history["skipped_steps"] == 4 and history["lr_reductions"] == 1  # steps 2-5 of 5
    assert steps_seen == [1] and trainer.state.lr_factor == 0.5
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_epoch_without_updates_ends_training():
    model = Regression()
    trainer = Trainer(
        model, lambda b: model.objective(b) * math.nan, n_items=40, batch_size=8, epochs=5, seed=0
    )
    history = trainer.fit()
    assert history["stop_reason"] == "non_finite" and history["epochs"] == 1 and history["n_steps"] == 0


def test_time_limit_stops_mid_epoch_and_resume_continues_exactly(tmp_path):
    # A constant rate: a cosine schedule would follow each call's clock under a time limit.
    constant = LinearWarmup(1)
    reference = Regression()
    ref_history = _trainer(reference, epochs=3, schedule=constant).fit()
    model, ckpt = Regression(), tmp_path / "run.pt"
    history = _trainer(model, epochs=3, time_limit=0.0, checkpoint=ckpt, schedule=constant).fit()
    assert history["stop_reason"] == "time_limit" and history["n_steps"] == 1  # one step per call
    assert load_checkpoint(ckpt)["trainer"]["position"] == 1
    for _ in range(40):
        model = Regression()
        history = _trainer(
            model, epochs=3, time_limit=0.0, checkpoint=ckpt, resume=True, schedule=constant
        ).fit()
        if history["n_steps"] == 15:
            break
    assert history["n_steps"] == ref_history["n_steps"] == 15
    for k, v in _weights(model).items():
        assert torch.equal(v, _weights(reference)[k]), k
    # A finished run stays finished; one that ran out of epochs continues when given more.
    again = _trainer(Regression(), epochs=3, checkpoint=ckpt, resume=True, schedule=constant).fit()
    assert again["n_steps"] == 15
    more = _trainer(Regression(), epochs=4, checkpoint=ckpt, resume=True, schedule=constant).fit()
    assert more["n_steps"] == 20


def test_continuing_a_finished_run_says_how_its_schedule_continues(tmp_path, caplog):
    ckpt = tmp_path / "run.pt"
    _trainer(Regression(), epochs=2, checkpoint=ckpt).fit()
    with caplog.at_level("WARNING", logger="ctflow"):
        history = _trainer(Regression(), epochs=4, checkpoint=ckpt, resume=True).fit()
    assert history["n_steps"] == 20
    assert (
        "continuing a run that ended after 2 epochs to 4 epochs: the learning rate follows its schedule "
        "over the new total of 20 steps from step 10 (50% of the way)"
    ) in caplog.text


def test_a_checkpoint_made_for_other_settings_is_refused_naming_them(tmp_path):
    ckpt = tmp_path / "run.pt"
    _trainer(Regression(), epochs=1, checkpoint=ckpt, identity={"hidden": 8, "lr": 0.05}).fit()
    with pytest.raises(ValueError, match=r"\(differing: hidden: 8 -> 16\)$"):
        _trainer(Regression(), checkpoint=ckpt, resume=True, identity={"hidden": 16, "lr": 0.05})
    with pytest.raises(ValueError, match="resume=True needs a checkpoint path"):
        _trainer(Regression(), resume=True)


def test_resume_without_a_checkpoint_starts_afresh(tmp_path):
    history = _trainer(Regression(), epochs=2, checkpoint=tmp_path / "new.pt", resume=True).fit()
    assert history["n_steps"] == 10 and (tmp_path / "new.pt").is_file()


def test_log_and_epoch_hook(tmp_path):
    log = tmp_path / "log.json"
    seen = []

    def hook(record: dict) -> None:
        record["extra"] = len(seen)
        seen.append(record["epoch"])

    _trainer(Regression(), epochs=2, log_path=log, on_epoch_end=hook, validate=lambda: 1.0).fit()
    records = json.loads(log.read_text())
    assert seen == [1, 2] and [r["extra"] for r in records] == [0, 1]
    assert [r["step"] for r in records] == [5, 10] and all(r["val_loss"] == 1.0 for r in records)


def test_arguments_are_checked():
    model = Regression()
    with pytest.raises(ValueError, match="patience needs a validation set"):
        _trainer(model, patience=2)
    frozen = nn.Linear(1, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Trainer(frozen, lambda b: frozen.weight.sum(), n_items=4, batch_size=2)

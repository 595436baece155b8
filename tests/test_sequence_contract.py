"""The sequence-model contract (``ctflow.models.base.SequenceModel``) and its shared helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctflow.data import IrregularBatch
from ctflow.models import DeepEnsemble, GRUODEBayes, LatentODE, SequenceModel
from ctflow.models.emissions import GaussianEmission, resolve_emission
from ctflow.models.registry import MODELS, build_model
from ctflow.ode import SolverOptions

CONTRACT = {"loss", "nll_terms", "filter", "predict", "sample_paths"}


def _batch() -> IrregularBatch:
    times = torch.tensor([[0.5, 1.0, 2.0], [0.2, 0.7, 0.7]])
    values = torch.randn(2, 3, 2)
    mask = torch.ones(2, 3, 2)
    mask[1, 2] = 0.0  # padding
    mask[1, 1, 0] = 0.0
    return IrregularBatch(times, values * mask, mask, torch.tensor([3, 2]))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_is_a_sequence_model(name):
    assert isinstance(build_model(name, 2), SequenceModel)


def test_the_ensemble_is_a_sequence_model():
    ensemble = DeepEnsemble([GRUODEBayes(2, hidden_size=4), LatentODE(2, latent_dim=2, hidden_size=4)])
    assert isinstance(ensemble, SequenceModel)


def test_the_contract_is_the_five_methods():
    assert SequenceModel.__abstractmethods__ == CONTRACT
    with pytest.raises(TypeError, match="abstract"):
        SequenceModel()


def _methods(names: set[str]) -> dict:
    def method(self, *args):
        raise NotImplementedError

    return {name: method for name in names}


@pytest.mark.parametrize("missing", sorted(CONTRACT))
def test_a_model_missing_a_method_cannot_be_instantiated(missing):
    incomplete = type("Incomplete", (SequenceModel,), _methods(CONTRACT - {missing}))
    with pytest.raises(TypeError, match=missing):
        incomplete()
    complete = type("Complete", (SequenceModel,), _methods(CONTRACT))
    assert isinstance(complete(), nn.Module)


@pytest.mark.parametrize(
    "model",
    [
        lambda: GRUODEBayes(2, hidden_size=4),
        lambda: LatentODE(2, latent_dim=2, hidden_size=4, n_particles=3),
        lambda: DeepEnsemble([GRUODEBayes(2, hidden_size=4) for _ in range(2)]),
    ],
)
def test_models_share_the_query_checks(model):
    model, batch = model(), _batch()
    with torch.no_grad():
        state = model.filter(batch)
        with pytest.raises(ValueError, match="non-decreasing within each series"):
            model.predict(state, torch.tensor([[3.0, 2.5], [3.0, 4.0]]))
        with pytest.raises(ValueError, match=r"shape \(n_series=2, n_queries\)"):
            model.predict(state, torch.tensor([3.0, 4.0]))
        with pytest.raises(ValueError, match="n must be a positive int, got 0"):
            model.sample_paths(state, torch.tensor([[3.0], [3.0]]), 0)
        assert model.sample_paths(state, torch.tensor([[3.0], [3.0]]), 2).shape == (2, 2, 1, 2)


def test_query_times_are_converted_and_checked():
    like = torch.zeros(1, dtype=torch.float64)
    times = SequenceModel._check_query_times([[1.0, 1.0, 2.0]], 1, like)
    assert times.dtype == torch.float64 and times.shape == (1, 3)
    assert SequenceModel._check_query_times(torch.zeros(2, 0), 2, like).shape == (2, 0)
    with pytest.raises(ValueError, match="query times must be non-decreasing within each series"):
        SequenceModel._check_query_times(torch.tensor([[1.0, 0.5]]), 1, like)
    with pytest.raises(ValueError, match=r"times must have shape \(n_series=2, n_queries\), got \(1, 2\)"):
        SequenceModel._check_query_times(torch.tensor([[1.0, 2.0]]), 2, like)


def test_intervals_and_the_start_check():
    dts = SequenceModel._intervals(torch.tensor([0.0, 1.0]), torch.tensor([[0.5, 2.0], [1.0, 1.5]]))
    torch.testing.assert_close(dts, torch.tensor([[0.5, 1.5], [0.0, 0.5]]))
    SequenceModel._check_start(dts, "0")
    SequenceModel._check_start(torch.zeros(2, 0), "0")
    late = SequenceModel._intervals(torch.tensor([1.0]), torch.tensor([[0.5]]))
    with pytest.raises(ValueError, match=r"observation times must be >= start_time=1.0"):
        SequenceModel._check_start(late, "start_time=1.0")


def test_last_times_and_counts():
    times = torch.tensor([[0.5, 1.0, 1.0], [0.2, 0.7, 0.7], [0.0, 0.0, 0.0]])
    default = torch.full((3,), -1.0)
    torch.testing.assert_close(
        SequenceModel._last_times(times, torch.tensor([2, 3, 0]), default), torch.tensor([1.0, 0.7, -1.0])
    )
    assert SequenceModel._last_times(torch.zeros(3, 0), torch.zeros(3, dtype=torch.long), default) is default
    batch = _batch()
    assert float(SequenceModel._per_observed_value(torch.tensor(18.0), batch)) == 2.0  # 9 observed values
    empty = IrregularBatch(
        torch.zeros(1, 0), torch.zeros(1, 0, 2), torch.zeros(1, 0, 2), torch.zeros(1, dtype=torch.long)
    )
    assert float(SequenceModel._per_observed_value(torch.tensor(3.0), empty)) == 3.0


def test_path_count_check_and_integration():
    SequenceModel._check_n_paths(1)
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        SequenceModel._check_n_paths(0)
    x = torch.ones(2, 3)
    euler = SolverOptions(method="euler", step_size=0.5)
    assert SequenceModel._integrate(lambda h: -h, x, torch.ones(2), euler, 0) is x
    torch.testing.assert_close(
        SequenceModel._integrate(lambda h: -h, x, torch.tensor([1.0, 0.5]), euler, 2)[:, 0],
        torch.tensor([0.25, 0.5625]),
    )


def test_reference_is_a_parameter():
    model = GRUODEBayes(2, hidden_size=4).double()
    assert model._reference().dtype == torch.float64
    empty = type("Empty", (SequenceModel,), _methods(CONTRACT))()
    with pytest.raises(RuntimeError, match="no parameters"):
        empty._reference()


def test_resolve_emission_builds_or_checks():
    built = resolve_emission("gaussian", 2, 4, {"hidden": (3,)})
    assert isinstance(built, GaussianEmission) and (built.dim, built.context_dim) == (2, 4)
    given = GaussianEmission(2, 4)
    assert resolve_emission(given, 2, 4, {}) is given
    with pytest.raises(TypeError, match="a name or a MaskedEmission"):
        resolve_emission(nn.Linear(2, 2), 2, 4, {})
    with pytest.raises(ValueError, match="context_dim must be 5, got 4"):
        resolve_emission(given, 2, 5, {})
    with pytest.raises(ValueError, match="dim must be 3"):
        resolve_emission(given, 3, 4, {})
    with pytest.raises(ValueError, match="context_dim must be 8"):
        LatentODE(2, latent_dim=8, emission=given)


def test_the_training_functions_check_the_contract():
    from ctflow.data import from_dataframe, load_double_ou
    from ctflow.training import evaluate_forecast_nll, evaluate_sequence_nll, fit_model

    class LooksLikeAModel(nn.Module):
        """Has the methods by name but does not declare the contract."""

        def loss(self, batch):
            return torch.zeros(())

        def nll_terms(self, batch):
            return torch.zeros(()), torch.ones(())

    data = from_dataframe(load_double_ou(4, seed=0))
    message = (
        r"model must be a ctflow.models.SequenceModel \(loss, nll_terms, filter, predict, sample_paths\)"
    )
    for call in (
        lambda m: fit_model(m, data, epochs=1),
        lambda m: evaluate_sequence_nll(m, data),
        lambda m: evaluate_forecast_nll(m, data, data),
    ):
        with pytest.raises(TypeError, match=message + ", got LooksLikeAModel"):
            call(LooksLikeAModel())

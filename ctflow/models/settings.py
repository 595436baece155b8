"""Per-model settings: scikit-learn-style parameter objects that build sequence models.

Each sequence model has one settings class whose constructor arguments are its user-facing
options with their defaults, written once here. They are scikit-learn estimators in the sense
of ``get_params`` / ``set_params``, so a :class:`ctflow.Forecaster` holding one as its ``model``
works with ``clone``, ``set_params(model__hidden_size=64)`` and ``GridSearchCV`` like sklearn's
nested estimators; :meth:`ModelSettings.model_kwargs` validates every option in one place and
returns the model constructor's arguments, and the command line reads the same definitions.

>>> from ctflow.models.settings import GRUODEBayesSettings
>>> settings = GRUODEBayesSettings(hidden_size=8, p_hidden=8, prep_hidden=4)
>>> model = settings.build(n_variables=2)
>>> type(model).__name__, model.hidden_size
('GRUODEBayes', 8)
>>> settings.set_params(emission="mixlogistic").emission
'mixlogistic'
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, ClassVar

from sklearn.base import BaseEstimator

from ..checks import choice, positive_int, probability, real_number
from ..dynamics.neural_flows import FLOWS
from ..ode import SOLVERS
from ..sde import SDE_METHODS
from .base import SequenceModel
from .emissions import EMISSION_ALIASES, EMISSIONS
from .gru_ode_bayes import GRUODEBayes
from .latent_ode import LatentODE
from .latent_sde import LatentSDE
from .posterior import POSTERIORS

__all__ = [
    "GRUODEBayesSettings",
    "LatentODESettings",
    "LatentSDESettings",
    "ModelSettings",
    "SETTINGS",
    "model_settings",
]


class ModelSettings(BaseEstimator):
    """The options of one sequence model; :meth:`build` makes the model over ``n_variables``."""

    name: ClassVar[str]
    model_class: ClassVar[type[SequenceModel]]

    def model_kwargs(self) -> dict[str, Any]:
        """The checked keyword arguments of the model's constructor."""
        raise NotImplementedError

    def build(self, n_variables: int) -> SequenceModel:
        """A freshly initialised model (draws from torch's generator)."""
        return self.model_class(positive_int(n_variables, "n_variables"), **self.model_kwargs())

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every parameter's default, read from the constructor's signature."""
        signature = inspect.signature(cls.__init__)
        return {k: p.default for k, p in signature.parameters.items() if k != "self"}

    def _solver(self) -> dict[str, Any]:
        method = choice(self.solver, "solver", SOLVERS)
        step = real_number(self.step_size, "step_size", positive=True)
        steps = positive_int(self.max_steps_per_interval, "max_steps_per_interval")
        return {"method": method, "step_size": step, "max_steps": steps}

    def _emission(self) -> dict[str, Any]:
        emission = choice(self.emission, "emission", [*EMISSIONS, *EMISSION_ALIASES])
        options = self.emission_options
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"emission_options must be a dict or None, got {type(options).__name__}")
        return {"emission": emission, "emission_options": copy.deepcopy(options)}


class GRUODEBayesSettings(ModelSettings):
    """Settings of :class:`ctflow.models.GRUODEBayes` (De Brouwer, Simm, Arany & Moreau 2019,
    "GRU-ODE-Bayes: Continuous modeling of sporadically-observed time series").

    Args:
        hidden_size, p_hidden, prep_hidden: widths of the hidden state, the emission network and
            the per-variable GRU-Bayes preprocessing.
        emission: ``"gaussian"``, ``"mixlogistic"`` or ``"maf"``; ``emission_options`` go to it
            (default for the Gaussian: a linear skip from the carried features).
        solver, step_size, max_steps_per_interval: integration between observations
            (``"exp_euler"``: each step relaxes the state exactly with its coefficients frozen,
            stable for any step); ``step_size`` is in units of the median gap between a series'
            consecutive training observations, and an interval takes at most
            ``max_steps_per_interval`` steps.
        dynamics: ``"ode"`` (the GRU-ODE and ``solver``) or a neural flow between observations
            (``"gru_flow"``, ``"resnet_flow"``, ``"coupling_flow"``): the state after an interval
            in one network call, no solver.
        post_jump_weight: weight of the post-jump likelihood in the loss (0: it adds little with
            the carried last values and costs an emission pass).
        carry_forward, trend: the emission models the change from each variable's last value,
            aware of its local slope: it starts from what persistence knows.
        forecast_cut, update_dropout: training also scores multi-step forecasts.
    """

    name = "gru_ode_bayes"
    model_class = GRUODEBayes

    def __init__(
        self,
        hidden_size: int = 32,
        p_hidden: int = 32,
        prep_hidden: int = 16,
        emission: str = "gaussian",
        emission_options: dict | None = None,
        solver: str = "exp_euler",
        step_size: float = 1.0,
        max_steps_per_interval: int = 2,
        post_jump_weight: float = 0.0,
        carry_forward: bool = True,
        trend: bool = True,
        forecast_cut: float = 0.5,
        update_dropout: float = 0.0,
        dynamics: str = "ode",
    ):
        self.hidden_size = hidden_size
        self.p_hidden = p_hidden
        self.prep_hidden = prep_hidden
        self.emission = emission
        self.emission_options = emission_options
        self.solver = solver
        self.step_size = step_size
        self.max_steps_per_interval = max_steps_per_interval
        self.post_jump_weight = post_jump_weight
        self.carry_forward = carry_forward
        self.trend = trend
        self.forecast_cut = forecast_cut
        self.update_dropout = update_dropout
        self.dynamics = dynamics

    def model_kwargs(self) -> dict[str, Any]:
        dynamics = choice(self.dynamics, "dynamics", ("ode", *FLOWS))
        kwargs = {
            "hidden_size": positive_int(self.hidden_size, "hidden_size"),
            "p_hidden": positive_int(self.p_hidden, "p_hidden"),
            "prep_hidden": positive_int(self.prep_hidden, "prep_hidden"),
            **self._emission(),
            "solver": self._solver(),
            "post_jump_weight": real_number(self.post_jump_weight, "post_jump_weight", positive=False),
            "carry_forward": _flag(self.carry_forward, "carry_forward"),
            "trend": _flag(self.trend, "trend"),
            "forecast_cut": probability(self.forecast_cut, "forecast_cut", include_one=True),
            "update_dropout": probability(self.update_dropout, "update_dropout"),
        }
        if kwargs["emission_options"] is None:  # the Gaussian's mean starts from the carried features
            gaussian = kwargs["emission"] == "gaussian"
            kwargs["emission_options"] = {"linear_skip": "features"} if gaussian else {}
        if kwargs["trend"] and not kwargs["carry_forward"]:
            raise ValueError("trend=True needs carry_forward=True")
        if dynamics != "ode":  # the GRU-ODE's models keep the arguments they were saved with
            kwargs["dynamics"] = dynamics
        return kwargs


class LatentODESettings(ModelSettings):
    """Settings of :class:`ctflow.models.LatentODE` (Rubanova, Chen & Duvenaud 2019, "Latent ODEs
    for Irregularly-Sampled Time Series").

    Args:
        latent_dim, hidden_size, ode_hidden, p_hidden: sizes of the latent state, the ODE-RNN
            encoder, the latent vector field and the emission network.
        emission, emission_options: the emission density ``p(y | z(t))``.
        posterior: ``q(z0 | x)``: ``"gaussian"`` or a flow (``"iaf"``, ``"planar"``, ``"radial"``,
            ``"sylvester"``, ``"realnvp"``, ...); ``posterior_layers`` its depth.
        objective, n_samples: ``"iwae"`` or ``"elbo"`` with that many posterior samples
            (``eval_samples`` when scoring).
        n_particles: posterior samples behind each forecast (a mixture over them).
        solver, step_size, max_steps_per_interval: integration, as for GRU-ODE-Bayes.
        dynamics: ``"ode"`` or a neural flow (``"gru_flow"``, ``"resnet_flow"``,
            ``"coupling_flow"``) as the decoder and between the encoder's observations: no solver.
    """

    name = "latent_ode"
    model_class = LatentODE
    objectives: ClassVar[tuple[str, ...]] = ("iwae", "elbo")

    def __init__(
        self,
        latent_dim: int = 16,
        hidden_size: int = 32,
        ode_hidden: int = 64,
        p_hidden: int = 32,
        emission: str = "gaussian",
        emission_options: dict | None = None,
        posterior: str = "gaussian",
        posterior_layers: int = 4,
        objective: str = "iwae",
        n_samples: int = 4,
        eval_samples: int = 32,
        n_particles: int = 64,
        solver: str = "euler",
        step_size: float = 1.0,
        max_steps_per_interval: int = 2,
        dynamics: str = "ode",
    ):
        self.latent_dim = latent_dim
        self.hidden_size = hidden_size
        self.ode_hidden = ode_hidden
        self.p_hidden = p_hidden
        self.emission = emission
        self.emission_options = emission_options
        self.posterior = posterior
        self.posterior_layers = posterior_layers
        self.objective = objective
        self.n_samples = n_samples
        self.eval_samples = eval_samples
        self.n_particles = n_particles
        self.solver = solver
        self.step_size = step_size
        self.max_steps_per_interval = max_steps_per_interval
        self.dynamics = dynamics

    def model_kwargs(self) -> dict[str, Any]:
        kwargs = {
            name: positive_int(getattr(self, name), name)
            for name in ("latent_dim", "hidden_size", "ode_hidden", "p_hidden", "posterior_layers")
        }
        kwargs.update(self._emission())
        if kwargs["emission_options"] is None:
            kwargs.pop("emission_options")
        kwargs["posterior"] = choice(self.posterior, "posterior", POSTERIORS)
        kwargs["objective"] = choice(self.objective, "objective", self.objectives)
        kwargs["n_samples"] = positive_int(self.n_samples, "n_samples")
        kwargs["eval_samples"] = positive_int(self.eval_samples, "eval_samples")
        kwargs["n_particles"] = positive_int(self.n_particles, "n_particles")
        kwargs["solver"] = self._solver()
        dynamics = choice(self.dynamics, "dynamics", ("ode", *FLOWS))
        if dynamics != "ode":  # models saved before keep their arguments
            kwargs["dynamics"] = dynamics
        return kwargs


class LatentSDESettings(LatentODESettings):
    """Settings of :class:`ctflow.models.LatentSDE` (Li, Wong, Chen & Duvenaud 2020, "Scalable
    Gradients for Stochastic Differential Equations"): those of the latent ODE, with the ELBO as
    objective, plus the diffusion (``diffusion`` its initial scale, ``learn_diffusion``) and the
    SDE scheme ``sde_method``.
    """

    name = "latent_sde"
    model_class = LatentSDE

    def __init__(
        self,
        latent_dim: int = 16,
        hidden_size: int = 32,
        ode_hidden: int = 64,
        p_hidden: int = 32,
        emission: str = "gaussian",
        emission_options: dict | None = None,
        posterior: str = "gaussian",
        posterior_layers: int = 4,
        objective: str = "elbo",
        n_samples: int = 4,
        eval_samples: int = 32,
        n_particles: int = 64,
        solver: str = "euler",
        step_size: float = 1.0,
        max_steps_per_interval: int = 2,
        diffusion: float = 0.1,
        learn_diffusion: bool = True,
        sde_method: str = "euler",
    ):
        super().__init__(
            latent_dim=latent_dim,
            hidden_size=hidden_size,
            ode_hidden=ode_hidden,
            p_hidden=p_hidden,
            emission=emission,
            emission_options=emission_options,
            posterior=posterior,
            posterior_layers=posterior_layers,
            objective=objective,
            n_samples=n_samples,
            eval_samples=eval_samples,
            n_particles=n_particles,
            solver=solver,
            step_size=step_size,
            max_steps_per_interval=max_steps_per_interval,
        )
        self.diffusion = diffusion
        self.learn_diffusion = learn_diffusion
        self.sde_method = sde_method

    def model_kwargs(self) -> dict[str, Any]:
        kwargs = super().model_kwargs()
        kwargs["diffusion"] = real_number(self.diffusion, "diffusion", positive=True)
        kwargs["learn_diffusion"] = _flag(self.learn_diffusion, "learn_diffusion")
        kwargs["sde_method"] = choice(self.sde_method, "sde_method", SDE_METHODS)
        return kwargs


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


SETTINGS: dict[str, type[ModelSettings]] = {
    cls.name: cls for cls in (GRUODEBayesSettings, LatentODESettings, LatentSDESettings)
}


def model_settings(model: str | dict | ModelSettings) -> ModelSettings:
    """The settings object for ``model``: a settings object, a model name (its defaults) or a
    JSON-able dict ``{"name": NAME, **parameters}`` (what command lines and study scripts pass).

    >>> model_settings({"name": "latent_ode", "latent_dim": 4})
    LatentODESettings(latent_dim=4)
    """
    if isinstance(model, ModelSettings):
        return model
    if isinstance(model, dict):
        params = dict(model)
        name = params.pop("name", None)
        unknown = sorted(set(params) - set(SETTINGS[name].defaults())) if name in SETTINGS else []
        if unknown:
            raise ValueError(
                f"{name} has no settings {unknown}; it takes {sorted(SETTINGS[name].defaults())}"
            )
        return model_settings(name).set_params(**params)
    if isinstance(model, str):
        if model not in SETTINGS:
            raise ValueError(f"unknown model {model!r}; valid: {', '.join(SETTINGS)}")
        return SETTINGS[model]()
    names, got = ", ".join(SETTINGS), type(model).__name__
    raise TypeError(f"model must be a model name ({names}) or a ModelSettings object, got {got}")

"""Sequence models (:class:`SequenceModel`): ``loss(batch)``, ``nll_terms``, ``filter``, ``predict``,
``sample_paths``."""

from .base import Predictive, SequenceModel
from .ensemble import DeepEnsemble, EnsemblePredictive
from .gru_ode_bayes import FilterState, GRUODEBayes, PredictiveDistribution
from .latent_ode import LatentODE, MixturePredictive, ParticleState
from .latent_sde import LatentSDE
from .posterior import Posterior

__all__ = [
    "DeepEnsemble",
    "EnsemblePredictive",
    "FilterState",
    "GRUODEBayes",
    "LatentODE",
    "LatentSDE",
    "MixturePredictive",
    "ParticleState",
    "Posterior",
    "Predictive",
    "PredictiveDistribution",
    "SequenceModel",
]

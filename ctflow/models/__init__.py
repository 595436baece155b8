"""Sequence models: ``loss(batch)``, ``filter``, ``predict``, ``sample_paths``."""

from .gru_ode_bayes import FilterState, GRUODEBayes, PredictiveDistribution

__all__ = ["FilterState", "GRUODEBayes", "PredictiveDistribution"]

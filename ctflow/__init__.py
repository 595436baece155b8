"""ctflow: probabilistic forecasting of irregularly sampled time series with continuous-time
models and normalizing flows."""

__version__ = "0.1.0"

from . import flows
from .estimator import Forecaster
from .forecast import Forecast

__all__ = ["Forecast", "Forecaster", "__version__", "flows"]

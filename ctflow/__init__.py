"""ctflow: probabilistic forecasting of irregularly sampled time series with continuous-time
models and normalizing flows."""

__version__ = "0.1.0"

from . import flows

__all__ = ["flows", "__version__"]

"""ctflow: probabilistic forecasting of irregularly sampled time series with continuous-time
models and normalizing flows."""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Names loaded on first access (module, attribute), so that importing one layer, e.g.
# ``import ctflow.flows``, does not import the layers above it.
_LAZY: dict[str, tuple[str, str | None]] = {
    "Forecast": (".forecast", "Forecast"),
    "Forecaster": (".estimator", "Forecaster"),
    "SeriesSplit": (".evaluation", "SeriesSplit"),
    "cross_validation": (".evaluation", "cross_validation"),
    "flows": (".flows", None),
}

__all__ = ["Forecast", "Forecaster", "SeriesSplit", "__version__", "cross_validation", "flows"]

if TYPE_CHECKING:
    from . import flows
    from .estimator import Forecaster
    from .evaluation import SeriesSplit, cross_validation
    from .forecast import Forecast


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module_name, attribute = _LAZY[name]
        module = importlib.import_module(module_name, __name__)
        value = module if attribute is None else getattr(module, attribute)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")  # any other subpackage, e.g. ctflow.models
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

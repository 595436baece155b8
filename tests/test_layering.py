"""Layering: the flow library imports nothing of the time-series layers above it, and the
top-level package loads its names on first access."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> Any:
    """The JSON that ``code`` prints, run in a fresh interpreter from the repository root."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fresh_imports() -> dict[str, Any]:
    """In one fresh interpreter: the ctflow modules that ``import ctflow.flows`` loads, whether
    the heavy layers are still unloaded, then every exported name imported from ``ctflow``."""
    return _run(
        """
import json, sys, ctflow.flows
flows_only = sorted(m for m in sys.modules if m.startswith("ctflow"))
lazy = "ctflow.estimator" not in sys.modules and "ctflow.models" not in sys.modules
exported = {}
for name in ctflow.__all__:
    exec(f"from ctflow import {name} as value")
    exported[name] = getattr(ctflow, name) is value
missing = sorted(set(ctflow.__all__) - set(dir(ctflow)))
print(json.dumps({"flows_only": flows_only, "lazy": lazy, "exported": exported, "missing": missing}))
"""
    )


def test_importing_flows_loads_no_time_series_layer(fresh_imports):
    loaded = fresh_imports["flows_only"]
    assert "ctflow.flows" in loaded
    above = ("ctflow.models", "ctflow.dynamics", "ctflow.data")
    assert [m for m in loaded if m.startswith(above)] == []


def test_flows_hold_no_emissions():
    import importlib.util

    import ctflow.flows

    assert importlib.util.find_spec("ctflow.flows.masked") is None
    for name in ("MaskedEmission", "GaussianEmission", "LastValueEmission", "make_emission", "EMISSIONS"):
        assert not hasattr(ctflow.flows, name)


def test_top_level_names_load_lazily(fresh_imports):
    assert fresh_imports["lazy"]
    assert fresh_imports["exported"] and all(fresh_imports["exported"].values())
    assert fresh_imports["missing"] == []


def test_top_level_attributes():
    import ctflow
    from ctflow.estimator import Forecaster
    from ctflow.forecast import Forecast
    from ctflow.models import SequenceModel

    assert ctflow.Forecaster is Forecaster and ctflow.Forecast is Forecast
    assert ctflow.flows.build is not None
    assert ctflow.models.SequenceModel is SequenceModel  # subpackages load on access too
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        ctflow.missing  # noqa: B018

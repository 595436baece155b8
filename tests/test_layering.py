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


def test_importing_flows_loads_no_time_series_layer():
    loaded = _run(
        """
import json, sys, ctflow.flows
print(json.dumps(sorted(m for m in sys.modules if m.startswith("ctflow"))))
"""
    )
    assert "ctflow.flows" in loaded
    above = ("ctflow.models", "ctflow.dynamics", "ctflow.data")
    assert [m for m in loaded if m.startswith(above)] == []


def test_flows_hold_no_emissions():
    import importlib.util

    import ctflow.flows

    assert importlib.util.find_spec("ctflow.flows.masked") is None
    for name in ("MaskedEmission", "GaussianEmission", "LastValueEmission", "make_emission", "EMISSIONS"):
        assert not hasattr(ctflow.flows, name)


def test_top_level_names_load_lazily():
    names = _run(
        """
import json, sys, ctflow
lazy = "ctflow.estimator" not in sys.modules and "ctflow.models" not in sys.modules
exported = {}
for name in ctflow.__all__:
    exec(f"from ctflow import {name} as value")
    exported[name] = getattr(ctflow, name) is value
missing = sorted(set(ctflow.__all__) - set(dir(ctflow)))
print(json.dumps({"lazy": lazy, "exported": exported, "missing": missing}))
"""
    )
    assert names["lazy"]
    assert names["exported"] and all(names["exported"].values())
    assert names["missing"] == []


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

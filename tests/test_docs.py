"""Documentation that runs: every docstring example in ctflow, and the README's Python examples."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import matplotlib
import pytest

import ctflow

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(ctflow.__path__, "ctflow.")
    if not info.name.endswith("__main__")
)


def _examples(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    return [t for t in doctest.DocTestFinder(exclude_empty=True).find(module) if t.examples]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in _examples(name):
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) of {name} failed (see output)"


def test_the_public_api_has_examples():
    """The classes and functions a user starts from show how they are called."""
    documented = {
        "ctflow.estimator": ["Forecaster"],
        "ctflow.trainer": ["Trainer"],
        "ctflow.models.settings": ["GRUODEBayesSettings", "model_settings"],
        "ctflow.baselines": ["LastValueBaseline"],
    }
    for module, names in documented.items():
        owners = {t.name.rsplit(".", 1)[-1] for t in _examples(module)}
        missing = [n for n in names if n not in owners and module.rsplit(".", 1)[-1] not in owners]
        assert not missing, f"{module}: no runnable example for {missing}"


def _readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    """The README's examples, in order and in one namespace, with tiny data and budgets."""
    import ctflow.data
    from ctflow.estimator import Forecaster

    matplotlib.use("Agg")
    real_loader = ctflow.data.load_double_ou

    def small_double_ou(n_series: int = 1000, *args, **kwargs):
        return real_loader(min(n_series, 40), *args, **kwargs)

    monkeypatch.setattr(ctflow.data, "load_double_ou", small_double_ou)
    real_pbcseq = ctflow.data.load_pbcseq

    def small_pbcseq(*args, **kwargs):
        df = real_pbcseq(*args, **kwargs)
        return df[df["unique_id"].isin(df["unique_id"].unique()[:270])]  # 20 test patients

    monkeypatch.setattr(ctflow.data, "load_pbcseq", small_pbcseq)
    code = Forecaster.__init__.__code__
    names = code.co_varnames[1 : code.co_argcount]  # every parameter after self has a default
    defaults = dict(zip(names, Forecaster.__init__.__defaults__, strict=True))
    defaults.update(max_steps=20, eval_every=10, n_samples=50)
    monkeypatch.setattr(Forecaster.__init__, "__defaults__", tuple(defaults.values()))
    monkeypatch.chdir(tmp_path)
    blocks = _readme_blocks()
    assert len(blocks) >= 5
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as err:  # name the block that failed
            raise AssertionError(f"README python block {i + 1} failed: {err!r}\n{block}") from err
    assert (tmp_path / "runs" / "ou" / "config.json").is_file()

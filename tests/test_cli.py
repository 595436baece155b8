"""The ``ctflow`` command, run in-process on small CSV files."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ctflow import Forecaster
from ctflow.cli import build_parser, main
from ctflow.data import load_double_ou
from ctflow.image.cli import MODEL_NAMES
from ctflow.models.settings import GRUODEBayesSettings

FIT = ["--set", "hidden_size=8", "--max-epochs", "1", "--seed", "0"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    df = load_double_ou(24, seed=0)
    df.to_csv(root / "train.csv", index=False)
    dated = df.assign(ds=pd.Timestamp("2021-03-01") + pd.to_timedelta(df["ds"], unit="D"))
    dated.to_csv(root / "train_dt.csv", index=False)
    assert main(["fit", str(root / "train.csv"), "--out", str(root / "model"), *FIT]) == 0
    return root, df, dated


def listing(path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_fit_forecast_evaluate(files, tmp_path, capsys):
    root, df, _ = files
    assert listing(root / "model") == ["config.json", "model.safetensors"]
    out = tmp_path / "forecast.csv"
    argv = ["forecast", str(root / "model"), str(root / "train.csv"), "--horizon", "1", "2", "5"]
    assert main([*argv, "--quantiles", "0.1", "0.5", "0.9", "-o", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["unique_id", "ds", "variable", "mean", "q10", "q50", "q90"]
    assert len(table) == 24 * 3 * 2
    assert (table["q10"] <= table["q90"]).all()
    last = df.groupby("unique_id")["ds"].max()
    offsets = table["ds"].to_numpy() - last.loc[table["unique_id"]].to_numpy()
    np.testing.assert_allclose(np.unique(offsets.round(9)), [1, 2, 5])
    assert listing(tmp_path) == ["forecast.csv"]  # no temporary file left

    capsys.readouterr()
    assert main(["evaluate", str(root / "model"), str(root / "train.csv"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["score"] == pytest.approx(Forecaster.load(root / "model").score(df), rel=1e-9)


def test_fit_passes_model_settings(files, tmp_path):
    root = files[0]
    settings = ["--set", "carry_forward=true", "--set", "forecast_cut=0.25", "--set", "emission=mixlogistic"]
    argv = ["fit", str(root / "train.csv"), "--out", str(tmp_path / "m"), *FIT, *settings]
    assert main(argv) == 0
    loaded = Forecaster.load(tmp_path / "m")
    assert loaded.model.get_params() == {
        **GRUODEBayesSettings.defaults(),
        "hidden_size": 8,
        "carry_forward": True,
        "forecast_cut": 0.25,
        "emission": "mixlogistic",
    }
    assert loaded.model_.carry_forward and loaded.model_.forecast_cut == 0.25


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("latent_dim=4", r"--set 'latent_dim=4': expected NAME=VALUE with NAME one of \['carry_forward'"),
        ("hidden_size", r"--set 'hidden_size': expected NAME=VALUE"),
        ("hidden_size=0", r"--set: hidden_size must be a positive int"),
        ("emission=nope", r"--set: unknown emission .nope.; valid: gaussian, mixlogistic, maf"),
    ],
)
def test_fit_rejects_bad_settings_before_reading_data(tmp_path, capsys, setting, message):
    argv = ["fit", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "m"), "--set", setting]
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "m").exists()


def test_fit_trains_a_deep_ensemble(files, tmp_path):
    root = files[0]
    assert main(["fit", str(root / "train.csv"), "--out", str(tmp_path / "m"), *FIT, "--members", "2"]) == 0
    loaded = Forecaster.load(tmp_path / "m")
    assert loaded.n_members == 2 and len(loaded.model_) == 2


def test_forecast_at_query_times_with_a_plot(files, tmp_path):
    root, df, _ = files
    last = df.groupby("unique_id")["ds"].max()
    queries = pd.DataFrame({"unique_id": [5, 2, 5], "ds": [last[5] + 2, last[2] + 1, last[5] + 0.5]})
    queries.to_csv(tmp_path / "queries.csv", index=False)
    out, png = tmp_path / "out.csv", tmp_path / "plot.png"
    argv = [
        "forecast",
        str(root / "model"),
        str(root / "train.csv"),
        "--times",
        str(tmp_path / "queries.csv"),
    ]
    assert (
        main([*argv, "-o", str(out), "--plot", str(png), "--plot-series", "5", "2", "--n-samples", "50"]) == 0
    )
    table = pd.read_csv(out)
    assert table["unique_id"].tolist() == [5, 5, 2, 2, 5, 5]
    np.testing.assert_allclose(table["ds"].to_numpy(), np.repeat(queries["ds"].to_numpy(), 2))
    assert list(table.columns)[-3:] == ["q10", "q50", "q90"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_datetime_csv_is_detected(files, tmp_path, capsys):
    root, _, dated = files
    model = tmp_path / "model"
    assert main(["fit", str(root / "train_dt.csv"), "--out", str(model), "--time-unit", "D", *FIT]) == 0
    assert json.loads((model / "config.json").read_text())["fitted"]["time_codec"]["kind"] == "datetime"
    out = tmp_path / "out.csv"
    assert (
        main(["forecast", str(model), str(root / "train_dt.csv"), "--horizon", "12h", "1", "-o", str(out)])
        == 0
    )
    table = pd.read_csv(out, parse_dates=["ds"])
    last = dated.groupby("unique_id")["ds"].max()
    offsets = sorted(set(table["ds"] - last.loc[table["unique_id"]].to_numpy()))
    assert offsets == [pd.Timedelta("12h"), pd.Timedelta("1D")]
    capsys.readouterr()
    assert main(["evaluate", str(model), str(root / "train_dt.csv"), "--horizon", "2"]) == 0
    lines = dict(line.split(": ") for line in capsys.readouterr().out.splitlines())
    assert {"score", "horizon", "crps", "mae", "coverage_80", "coverage_95", "crps_y1", "crps_y2"} <= set(
        lines
    )
    assert float(lines["crps"]) > 0 and 0 <= float(lines["coverage_80"]) <= 1


def test_evaluate_backtests_with_a_time_offset(files, tmp_path, capsys):
    """--horizon means a time offset in evaluate as in forecast: the scores are those of
    cross_validation's table, which --output writes."""
    from ctflow import cross_validation
    from ctflow.metrics import evaluate

    root, df, _ = files
    out = tmp_path / "cv.csv"
    argv = ["evaluate", str(root / "model"), str(root / "train.csv"), "--horizon", "1.5", "--windows", "2"]
    assert main([*argv, "--output", str(out), "--json", "--seed", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    table = pd.read_csv(out)
    assert result["targets"] == len(table) and result["windows"] == 2
    assert (table["horizon"] > 0).all() and (table["horizon"] <= 1.5 + 1e-9).all()
    model = Forecaster.load(root / "model")
    again = cross_validation(model, df, 1.5, n_windows=2, quantiles=[0.025, 0.1, 0.5, 0.9, 0.975], seed=3)
    assert result["crps"] == pytest.approx(evaluate(again, by=()).loc[0, "crps"], rel=1e-9)
    assert {"coverage_80", "coverage_95", "crps_y1", "crps_y2", "mae", "mse"} <= set(result)


@pytest.mark.parametrize("command", [[], ["fit"], ["forecast"], ["evaluate"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: ctflow {' '.join(command)}".strip() in capsys.readouterr().out


def test_image_command_is_wired_in(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["image", "--help"])
    assert exit_.value.code == 0
    assert "usage: ctflow image" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["image", "train", "--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert "usage: ctflow image train" in usage and f"{{{','.join(MODEL_NAMES)}}}" in usage


def test_broken_image_module_fails_loudly(monkeypatch):
    """A ``ctflow.image.cli`` that cannot be imported stops the parser from being built."""
    monkeypatch.setitem(sys.modules, "ctflow.image.cli", None)
    with pytest.raises(ImportError, match=r"ctflow\.image\.cli"):
        build_parser()


def test_python_dash_m():
    run = subprocess.run(
        [sys.executable, "-m", "ctflow", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0 and "fit" in run.stdout and "forecast" in run.stdout


def _bad_cases(root, tmp):
    model, train, dated = str(root / "model"), str(root / "train.csv"), str(root / "train_dt.csv")
    out = str(tmp / "out.csv")
    (tmp / "broken.csv").write_bytes(b'unique_id,ds,y1\n1,2\n\xff\xfe,\x00"')
    return {
        "missing-csv": (["fit", str(tmp / "nope.csv"), "--out", str(tmp / "m")], "nope.csv: no such file"),
        "bad-id-col": (
            ["fit", train, "--out", str(tmp / "m"), "--id-col", "series"],
            "no id column 'series'",
        ),
        "bad-value-col": (
            ["fit", train, "--out", str(tmp / "m"), "--value-cols", "y9"],
            "no value column 'y9'",
        ),
        "bad-epochs": (["fit", train, "--out", str(tmp / "m"), "--max-epochs", "0"], "max_epochs"),
        "bad-setting-value": (
            ["fit", train, "--out", str(tmp / "m"), "--set", "carry_forward=1"],
            "--set: carry_forward must be True or False, got 1",
        ),
        "setting-without-value": (
            ["fit", train, "--out", str(tmp / "m"), "--set", "carry_forward"],
            "--set 'carry_forward': expected NAME=VALUE",
        ),
        "unknown-setting": (
            ["fit", train, "--out", str(tmp / "m"), "--set", "nope=1"],
            "--set 'nope=1': expected NAME=VALUE with NAME one of",
        ),
        "not-dates": (["fit", train, "--out", str(tmp / "m"), "--datetime", "--time-col", "y1"], "y1"),
        "broken-csv": (["fit", str(tmp / "broken.csv"), "--out", str(tmp / "m")], "broken.csv"),
        "no-model": (
            ["forecast", str(tmp / "none"), train, "--horizon", "1", "-o", out],
            "not a saved model",
        ),
        "bad-horizon": (["forecast", model, train, "--horizon", "-1", "-o", out], "positive"),
        "bad-quantile": (
            ["forecast", model, train, "--horizon", "1", "--quantiles", "1.5", "-o", out],
            "quantiles",
        ),
        "wrong-times": (["forecast", model, dated, "--horizon", "1", "-o", out], "fitted on numeric times"),
        "unknown-plot-series": (
            [
                "forecast",
                model,
                train,
                "--horizon",
                "1",
                "-o",
                out,
                "--plot",
                str(tmp / "p.png"),
                "--plot-series",
                "x",
            ],
            "no forecast for series ['x']",
        ),
        "missing-test": (["evaluate", model, str(tmp / "test.csv")], "test.csv: no such file"),
        "bad-holdout": (["evaluate", model, train, "--horizon", "0"], "horizon must be a positive number"),
    }


CASES = [
    "missing-csv",
    "bad-id-col",
    "bad-value-col",
    "bad-epochs",
    "bad-setting-value",
    "setting-without-value",
    "unknown-setting",
    "not-dates",
    "broken-csv",
    "no-model",
    "bad-horizon",
    "bad-quantile",
    "wrong-times",
    "unknown-plot-series",
    "missing-test",
    "bad-holdout",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line(case, files, tmp_path, capsys):
    argv, match = _bad_cases(files[0], tmp_path)[case]
    before = listing(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ctflow ") and "Traceback" not in err
    assert match in err
    assert listing(tmp_path) == before


def test_usage_errors_exit_2(capsys):
    for argv in (
        [],
        ["fit"],
        ["forecast", "m", "c.csv", "-o", "x.csv"],
        ["forecast", "m", "c.csv", "--horizon", "x"],
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
    assert "error" in capsys.readouterr().err

"""The ``ctflow`` command: fit a forecaster on a CSV file, forecast, evaluate.

.. code-block:: text

    ctflow fit DATA.csv --out MODEL_DIR [--id-col unique_id --time-col ds --value-cols ...]
    ctflow forecast MODEL_DIR CONTEXT.csv --horizon 1 2 5 -o OUT.csv [--times QUERIES.csv]
    ctflow evaluate MODEL_DIR TEST.csv [--horizon K]
    ctflow image train ...            (multi-scale image flows, see ctflow.image.cli)

CSV files are long: one row per series and time, one column per variable, empty where a
variable was not measured. A time column that is not numeric is read as datetimes (ISO 8601 or
anything pandas parses); the saved model remembers the kind of time it was fitted on, and
``forecast``/``evaluate`` parse their files the same way. Errors in the input end the command
with a one-line message and exit status 2; output files are written only when everything
succeeded, each one atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .checkpoint import atomic_write, output_folder

__all__ = ["build_parser", "main"]

PROG = "ctflow"


class InputError(ValueError):
    """A problem with the command's input, reported in one line."""


# --------------------------------------------------------------------------- reading and writing
def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV file; a missing or unreadable file is an :class:`InputError`."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"{source}: no such file")
    try:
        return pd.read_csv(source)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise InputError(f"{source}: cannot read it as CSV ({str(err).strip().splitlines()[0]})") from err


STATIC_HELP = "static covariates: one row per series, the id column and covariate columns"


FUTURE_HELP = (
    "known-future inputs: rows of id, time and the model's known-future input columns after each "
    "series' context (planned doses)"
)


PARENTS_HELP = "create missing output folders (else a missing folder is an error, before any work)"


def _check_outputs(args: argparse.Namespace, *paths: str | None) -> None:
    """Every output's folder exists (or, with --parents, is created) before the work starts."""
    for path in paths:
        if path is not None:
            output_folder(path, parents=args.parents)


def _static(args: argparse.Namespace) -> pd.DataFrame | None:
    """The ``--static`` CSV, if given."""
    return read_csv(args.static) if getattr(args, "static", None) else None


def _check_column(df: pd.DataFrame, column: str, path: str | os.PathLike, role: str) -> None:
    if column not in df.columns:
        raise InputError(f"{path}: no {role} column {column!r}; columns are {list(map(str, df.columns))}")


def parse_datetimes(
    values: pd.Series, column: str, path: str | os.PathLike, tz: str | None = None
) -> pd.Series:
    """A column of date strings as datetimes (converted to ``tz`` when given)."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        parsed = values
    else:
        try:
            parsed = pd.to_datetime(values)
        except (ValueError, TypeError):
            try:
                parsed = pd.to_datetime(values, utc=True)  # mixed UTC offsets
            except (ValueError, TypeError) as err:
                raise InputError(f"{path}: column {column!r} does not parse as datetimes ({err})") from err
    if tz is not None and isinstance(parsed.dtype, pd.DatetimeTZDtype):
        parsed = parsed.dt.tz_convert(tz)
    return parsed


def _looks_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype)


def read_series(
    path: str | os.PathLike,
    id_col: str,
    time_col: str,
    kind: str | None = None,
    tz: str | None = None,
) -> pd.DataFrame:
    """Read a long CSV and convert its time column: ``kind`` ``"datetime"``, ``"timedelta"`` or
    ``"numeric"`` (the kind a model was fitted on); ``None`` parses non-numeric times as dates."""
    df = read_csv(path)
    _check_column(df, id_col, path, "id")
    _check_column(df, time_col, path, "time")
    times = df[time_col]
    if kind == "datetime" or (kind is None and not _looks_numeric(times)):
        df[time_col] = parse_datetimes(times, time_col, path, tz)
    elif kind == "timedelta":
        try:
            df[time_col] = pd.to_timedelta(times)
        except (ValueError, TypeError) as err:
            raise InputError(f"{path}: column {time_col!r} does not parse as time spans ({err})") from err
    return df


def parse_offset(text: str) -> float | pd.Timedelta:
    """A horizon offset: a number (in the model's time unit) or a time span such as ``12h``."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return pd.Timedelta(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a number or a time span: {text!r}") from err


# --------------------------------------------------------------------------- fit
def add_fit_parser(commands: argparse._SubParsersAction) -> None:
    from .estimator import Forecaster
    from .models.settings import SETTINGS, GRUODEBayesSettings

    DEFAULTS = Forecaster().get_params()
    p = commands.add_parser(
        "fit",
        help="fit a forecaster on a long CSV file and save it",
        description="Fit a Forecaster on DATA.csv (one row per series and time) and save it to --out "
        "(config.json and model.safetensors).",
    )
    p.add_argument("data", metavar="DATA.csv")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="directory to save the model in")
    p.add_argument("--id-col", default="unique_id", help="series id column (default: %(default)s)")
    p.add_argument("--time-col", default="ds", help="time column (default: %(default)s)")
    p.add_argument("--value-cols", nargs="+", metavar="COL", help="variables (default: all other columns)")
    p.add_argument("--datetime", action="store_true", help="parse the time column as datetimes")
    p.add_argument("--time-unit", help="unit of datetime times: W, D, h, min, s, ms, us (default: inferred)")
    p.add_argument(
        "--model",
        default=DEFAULTS["model"],
        choices=list(SETTINGS),
        help="sequence model (default: %(default)s)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the model (value as JSON, else text), e.g. --set hidden_size=64 "
        "--set emission=mixlogistic; the settings and defaults are those of "
        "ctflow.models.settings (GRU-ODE-Bayes: "
        + ", ".join(f"{k}={v}" for k, v in GRUODEBayesSettings.defaults().items())
        + ")",
    )
    p.add_argument(
        "--max-steps", type=int, default=DEFAULTS["max_steps"], help="optimizer steps (default: %(default)s)"
    )
    p.add_argument("--max-epochs", type=int, help="passes over the training series (default: no cap)")
    p.add_argument(
        "--members",
        type=int,
        default=DEFAULTS["n_members"],
        help="models in a deep ensemble, forecasting their mixture (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULTS["batch_size"],
        help="series per step (default: %(default)s)",
    )
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="learning rate (default: %(default)s)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=DEFAULTS["val_fraction"],
        help="series whose last observations are held out for early stopping (default: %(default)s)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=DEFAULTS["patience"],
        help="validations without improvement before stopping; 0: never stop early (default: %(default)s)",
    )
    p.add_argument("--time-limit", type=float, metavar="SECONDS", help="wall-clock budget of the fit")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--verbose", action="store_true", help="show a progress bar")
    p.add_argument("--checkpoint", help="training checkpoint file, written atomically after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    p.add_argument("--static", metavar="STATIC.csv", help=STATIC_HELP)
    p.add_argument("--parents", action="store_true", help=PARENTS_HELP)
    p.add_argument(
        "--support",
        nargs="+",
        metavar="COL=KIND",
        help="bounded targets: COL=positive or COL=LOW,HIGH (e.g. conc=positive frac=0,1); others real",
    )
    p.add_argument(
        "--exog-cols",
        nargs="+",
        metavar="NAME",
        help="columns that are inputs (doses, treatments) given at their rows' times: conditioned on, "
        "not forecast",
    )
    p.add_argument(
        "--future-exog-cols",
        nargs="*",
        metavar="NAME",
        help="those inputs known in advance, given to forecasts by --future (default: all of --exog-cols; "
        "the flag alone: none)",
    )
    p.set_defaults(func=run_fit)


def _support(texts: Sequence[str] | None) -> dict[str, Any] | None:
    """``{column: "positive" | (low, high) | "real"}`` from ``COL=KIND`` texts."""
    if not texts:
        return None
    out: dict[str, Any] = {}
    for text in texts:
        column, sep, kind = text.partition("=")
        if not sep or not column:
            raise InputError(f"--support {text!r}: expected COL=positive or COL=LOW,HIGH")
        if kind in ("positive", "real"):
            out[column] = kind
            continue
        try:
            low, high = (float(v) for v in kind.split(","))
        except ValueError:
            raise InputError(f"--support {text!r}: expected COL=positive or COL=LOW,HIGH") from None
        out[column] = (low, high)
    return out


def _model_from_settings(name: str, assignments: Sequence[str]) -> dict[str, Any]:
    """``{"name": name, **settings}`` from ``NAME=VALUE`` texts (values read as JSON when they
    parse, else as text); unknown names are an :class:`InputError` listing the valid ones."""
    from .models.settings import SETTINGS, model_settings

    settings: dict[str, Any] = {"name": name}
    valid = SETTINGS[name].defaults()
    for text in assignments:
        key, sep, value = text.partition("=")
        if not sep or key not in valid:
            raise InputError(f"--set {text!r}: expected NAME=VALUE with NAME one of {sorted(valid)}")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    try:
        model_settings(settings).model_kwargs()
    except (TypeError, ValueError) as err:
        raise InputError(f"--set: {err}") from err
    return settings


def run_fit(args: argparse.Namespace) -> int:
    from .estimator import Forecaster

    model = _model_from_settings(args.model, args.set)
    _check_outputs(args, args.out, args.checkpoint)
    kind = "datetime" if args.datetime else None
    df = read_series(args.data, args.id_col, args.time_col, kind=kind)
    if args.value_cols:
        for col in args.value_cols:
            _check_column(df, col, args.data, "value")
    for col in args.exog_cols or []:
        _check_column(df, col, args.data, "input")
    if args.future_exog_cols is not None and not args.exog_cols:
        raise InputError("--future-exog-cols needs --exog-cols")
    support = _support(args.support)
    est = Forecaster(
        model=model,
        max_steps=args.max_steps,
        max_epochs=args.max_epochs,
        n_members=args.members,
        batch_size=args.batch_size,
        lr=args.lr,
        val_fraction=args.val_fraction,
        patience=args.patience or None,
        time_limit=args.time_limit,
        random_state=args.seed,
        device=args.device,
        verbose=args.verbose,
        support=support,
    )
    est.fit(
        df,
        id_col=args.id_col,
        time_col=args.time_col,
        value_cols=args.value_cols,
        time_unit=args.time_unit,
        checkpoint=args.checkpoint,
        resume=args.resume,
        static_df=_static(args),
        exog_cols=args.exog_cols,
        future_exog_cols=args.future_exog_cols,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun every process holds the same model; rank 0 writes it
    path = est.save(args.out, parents=args.parents)
    history = est.history_ or {}
    summary = {
        "model_dir": str(path),
        "series": est.n_series_,
        "variables": est.value_cols_,
        "epochs": history.get("epochs"),
        "best_val_loss": history.get("best_val_loss"),
        "stop_reason": history.get("stop_reason"),
    }
    print(json.dumps(summary, default=str))
    return 0


# --------------------------------------------------------------------------- forecast
def add_forecast_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "forecast",
        help="forecast from a saved model",
        description="Forecast the series of CONTEXT.csv with a saved model and write the long forecast "
        "table (id, time, variable, mean, one column per quantile) to -o.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("context", metavar="CONTEXT.csv", help="observations to condition on")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument(
        "--horizon",
        nargs="+",
        type=parse_offset,
        metavar="H",
        help="offsets after each series' last observation: numbers in the time unit, or spans like 12h",
    )
    when.add_argument("--times", metavar="QUERIES.csv", help="CSV of (id, time) rows to forecast at")
    p.add_argument("--quantiles", nargs="+", type=float, default=[0.1, 0.5, 0.9], metavar="Q")
    p.add_argument("-o", "--output", required=True, metavar="OUT.csv")
    p.add_argument("--n-samples", type=int, help="samples behind the plot's bands (default: the model's)")
    p.add_argument("--seed", type=int, help="sampling seed (default: the model's)")
    p.add_argument("--plot", metavar="PNG", help="also plot forecasts to this image")
    p.add_argument("--plot-series", nargs="+", metavar="ID", help="series to plot (default: the first)")
    p.add_argument("--device", help="auto, cpu or cuda (default: as saved)")
    p.add_argument("--static", metavar="STATIC.csv", help=STATIC_HELP)
    p.add_argument("--future", metavar="FUTURE.csv", help=FUTURE_HELP)
    p.add_argument("--parents", action="store_true", help=PARENTS_HELP)
    p.set_defaults(func=run_forecast)


def _load(model_dir: str, device: str | None) -> Any:
    from .estimator import Forecaster

    return Forecaster.load(model_dir, device=device)


def _read_for(est: Any, path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV with its time column parsed like the model's training times."""
    codec = est.codec_
    return read_series(path, est.id_col_, est.time_col_, kind=codec.kind, tz=codec.tz)


def _pick_series(ids: pd.Series, wanted: Sequence[str] | None) -> list[Any]:
    unique = pd.unique(ids)
    if not wanted:
        return [unique[0]]
    by_text = {str(i): i for i in unique}
    missing = [w for w in wanted if w not in by_text]
    if missing:
        raise InputError(f"--plot-series: no forecast for series {missing}")
    return [by_text[w] for w in wanted]


def _plot(forecast: Any, series: list[Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = forecast.variables
    fig, axes = plt.subplots(
        len(series), len(names), figsize=(4.5 * len(names), 2.6 * len(series)), squeeze=False
    )
    for i, sid in enumerate(series):
        for j, name in enumerate(names):
            forecast.plot(sid, ax=axes[i][j], variables=[name])
            axes[i][j].set_title(f"{sid}: {name}", fontsize=9)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)


def run_forecast(args: argparse.Namespace) -> int:
    _check_outputs(args, args.output, args.plot)
    est = _load(args.model_dir, args.device)
    context = _read_for(est, args.context)
    times = _read_for(est, args.times) if args.times else None
    static = _static(args)
    future = _read_for(est, args.future) if args.future else None
    table = est.predict_table(
        context,
        times=times,
        horizon=args.horizon,
        quantiles=args.quantiles,
        static_df=static,
        future_df=future,
    )
    if args.plot:
        fc = est.forecast(
            context,
            times=times,
            horizon=args.horizon,
            n_samples=args.n_samples,
            seed=args.seed,
            static_df=static,
            future_df=future,
        )
        _plot(fc, _pick_series(fc.queries[est.id_col_], args.plot_series), Path(args.plot))
    n_vars = len(est.value_cols_)
    atomic_write(Path(args.output), lambda tmp: table.to_csv(tmp, index=False))
    print(f"wrote {len(table)} rows ({len(table) // n_vars} queries x {n_vars} variables) to {args.output}")
    return 0


# --------------------------------------------------------------------------- evaluate
def add_evaluate_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "evaluate",
        help="score a saved model on test series",
        description="Print the score of TEST.csv: the mean log-likelihood per observed value of each "
        "observation given the earlier ones in its series (higher is better). With --horizon H (a time "
        "offset, as in forecast), every series is also cut H before its end (--windows N: N such cuts, "
        "H apart), the observations after each cut are forecast from the rows before it, and the "
        "forecasts are scored: CRPS, MAE and MSE of the mean, and the coverage of central intervals, "
        "overall and per variable (ctflow.cross_validation and ctflow.metrics.evaluate).",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("test", metavar="TEST.csv")
    p.add_argument(
        "--horizon",
        type=parse_offset,
        metavar="H",
        help="forecast window after each cut: a number in the model's time unit, or a span like 12h",
    )
    p.add_argument("--windows", type=int, default=1, metavar="N", help="cuts per series (default: 1)")
    p.add_argument("--coverage", nargs="+", type=float, default=[0.8, 0.95], metavar="C")
    p.add_argument("--n-samples", type=int, help="forecast samples (default: the model's)")
    p.add_argument("--seed", type=int, help="sampling seed (default: the model's)")
    p.add_argument("--output", metavar="CV.csv", help="also write the forecast table of every cut")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", help="auto, cpu or cuda (default: as saved)")
    p.add_argument("--static", metavar="STATIC.csv", help=STATIC_HELP)
    p.add_argument("--parents", action="store_true", help=PARENTS_HELP)
    p.set_defaults(func=run_evaluate)


def evaluate_windows(est: Any, df: pd.DataFrame, args: argparse.Namespace, static: Any) -> tuple[dict, Any]:
    """Backtest scores of ``est`` on ``df`` (overall and per variable) and the forecast table."""
    from .evaluation import cross_validation
    from .forecast import check_coverage
    from .metrics import evaluate

    levels = check_coverage(args.coverage)
    quantiles = sorted({round(q, 12) for c in levels for q in ((1 - c) / 2, (1 + c) / 2)} | {0.5})
    if args.windows < 1:
        raise InputError(f"--windows must be a positive number of cuts, got {args.windows}")
    try:
        frame = cross_validation(
            est,
            df,
            horizon=args.horizon,
            n_windows=args.windows,
            quantiles=quantiles,
            n_samples=args.n_samples,
            seed=args.seed,
            static_df=static,
        )
    except TypeError as err:
        raise InputError(f"--horizon: {err}") from err
    overall = evaluate(frame, by=()).iloc[0].to_dict()
    out: dict[str, Any] = {"horizon": str(args.horizon), "windows": args.windows}
    out["series"] = int(frame[est.id_col_].nunique())
    out["targets"] = int(overall.pop("n"))
    out.update({k: float(v) for k, v in overall.items()})
    for row in evaluate(frame, by=("variable",)).to_dict("records"):
        out[f"crps_{row['variable']}"] = float(row["crps"])
    return out, frame


def run_evaluate(args: argparse.Namespace) -> int:
    _check_outputs(args, args.output)
    est = _load(args.model_dir, args.device)
    df = _read_for(est, args.test)
    static = _static(args)
    result: dict[str, Any] = {"score": est.score(df, static_df=static)}
    if args.horizon is not None:
        scores, frame = evaluate_windows(est, df, args, static)
        result.update(scores)
        if args.output:
            atomic_write(Path(args.output), lambda tmp: frame.to_csv(tmp, index=False))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            shown = f"{value:.6g}" if isinstance(value, float) and math.isfinite(value) else value
            print(f"{key}: {shown}")
    return 0


# --------------------------------------------------------------------------- image flows
def _add_image_parser(commands: argparse._SubParsersAction) -> None:
    """Wire in ``ctflow image`` from :mod:`ctflow.image.cli` (imported here, when the parser is built)."""
    from .image.cli import add_image_parser

    parser = add_image_parser(commands)
    parser.set_defaults(func=lambda args: args.image_func(args))


# --------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG, description="Probabilistic forecasting of irregularly sampled time series."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_fit_parser(commands)
    add_forecast_parser(commands)
    add_evaluate_parser(commands)
    _add_image_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ctflow``; returns the exit status (2 for bad input, with a one-line message)."""
    from sklearn.exceptions import NotFittedError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError, NotFittedError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2

"""The PhysioNet 2012 loader on hand-written records, and the forecasting protocol's helpers."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctflow import Forecaster
from ctflow.data import PHYSIONET2012_VARIABLES, load_physionet2012
from ctflow.models.settings import GRUODEBayesSettings
from experiments.physionet2012 import (
    cut_context_targets,
    joint_nll,
    last_value_mse,
    marginal_nll,
    merge_results,
    n_values,
    protocol_split,
    score_forecast,
    standardise,
)

HEADER = "Time,Parameter,Value\n"


def record(
    record_id: int, lines: str, age: str = "54", gender: str = "0", height: str = "-1", weight="80.5"
) -> str:
    head = (
        f"00:00,RecordID,{record_id}\n00:00,Age,{age}\n00:00,Gender,{gender}\n00:00,Height,{height}\n"
        f"00:00,ICUType,4\n00:00,Weight,{weight}\n"
    )
    return HEADER + head + lines


# 132001: duplicates at 00:07, a later Weight, both edges of the 48th hour.
STAY_1 = record(
    132001,
    "00:07,HR,73\n00:07,HR,75\n00:07,Temp,35.1\n00:37,HR,77\n00:37,MAP,90\n01:00,Weight,81\n"
    "47:59,HR,60\n48:00,HR,62\n",
)
# 132000 (sorts first): unknown Gender and Weight, a measurement among the descriptors at 00:00
# and an unnamed parameter.
STAY_0 = (
    HEADER + "00:00,RecordID,132000\n00:00,Age,70\n00:00,GCS,15\n00:00,Gender,-1\n00:00,Height,170.2\n"
    "00:00,ICUType,2\n00:00,Weight,-1\n00:00,,2.5\n02:30,pH,7.35\n02:45,pH,7.45\n"
)
STAY_B = record(140000, "", weight="-1")  # descriptors only
STAY_C = record(150000, "12:00,Na,140\n")


def write_tarball(root: Path, letter: str, files: dict[str, str]) -> Path:
    path = root / f"set-{letter}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"set-{letter}/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def write_folder(root: Path, letter: str, files: dict[str, str]) -> Path:
    folder = root / f"set-{letter}"
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Set a as a tarball (files out of name order), set b as a folder, set c as a tarball."""
    write_tarball(tmp_path, "a", {"132001.txt": STAY_1, "132000.txt": STAY_0})
    write_folder(tmp_path, "b", {"140000.txt": STAY_B})
    write_tarball(tmp_path, "c", {"150000.txt": STAY_C})
    return tmp_path


def rows(frame: pd.DataFrame, record_id: int) -> pd.DataFrame:
    return frame[frame["unique_id"] == record_id].set_index("ds")


def test_raw_times_values_and_duplicates(data: Path) -> None:
    long, _ = load_physionet2012(data, sets="a")
    assert list(long.columns) == ["unique_id", "ds", *PHYSIONET2012_VARIABLES]
    assert long["unique_id"].dtype == np.int64
    assert long["unique_id"].tolist() == [132000] * 3 + [132001] * 6
    s0, s1 = rows(long, 132000), rows(long, 132001)
    assert s0.index.tolist() == pytest.approx([0.0, 2.5, 2.75])
    assert s0.loc[0.0, "GCS"] == 15 and s0.loc[2.5, "pH"] == 7.35 and s0.loc[2.75, "pH"] == 7.45
    assert s1.index.tolist() == pytest.approx([0, 7 / 60, 37 / 60, 1, 47 + 59 / 60, 48])
    first = s1.iloc[1]
    assert first["HR"] == pytest.approx(74.0)  # 73 and 75 at 00:07
    assert first["Temp"] == pytest.approx(35.1)
    assert first.drop(["unique_id", "HR", "Temp"]).isna().all()
    assert s1.iloc[2][["HR", "MAP"]].tolist() == [77, 90]
    assert s1.iloc[4]["HR"] == 60 and s1.iloc[5]["HR"] == 62


def test_admission_weight_is_an_observation_unless_unknown(data: Path) -> None:
    long, _ = load_physionet2012(data, sets="a")
    weight = rows(long, 132001)["Weight"].dropna()
    assert weight.index.tolist() == [0.0, 1.0] and weight.tolist() == [80.5, 81.0]
    assert rows(long, 132000)["Weight"].isna().all()
    for name in ("Age", "Gender", "Height", "ICUType", "RecordID"):
        assert name not in long.columns


def test_resolution_buckets(data: Path) -> None:
    long, _ = load_physionet2012(data, sets="a", resolution="1h")
    s0, s1 = rows(long, 132000), rows(long, 132001)
    assert s0.index.tolist() == [0.0, 2.0]
    assert s0.loc[2.0, "pH"] == pytest.approx((7.35 + 7.45) / 2)
    assert s1.index.tolist() == [0.0, 1.0, 47.0, 48.0]  # 47:59 -> 47, 48:00 -> 48
    hour0 = s1.loc[0.0]
    assert hour0["HR"] == pytest.approx((73 + 75 + 77) / 3)
    assert hour0["Weight"] == 80.5 and hour0["Temp"] == pytest.approx(35.1) and hour0["MAP"] == 90
    assert s1.loc[1.0, "Weight"] == 81
    half, _ = load_physionet2012(data, sets="a", resolution="30min")
    pd.testing.assert_frame_equal(half, load_physionet2012(data, sets="a", resolution=0.5)[0])
    h1 = rows(half, 132001)
    assert h1.index.tolist() == [0.0, 0.5, 1.0, 47.5, 48.0]
    assert h1.loc[0.0, "HR"] == pytest.approx(74.0) and h1.loc[0.5, "HR"] == 77
    two, _ = load_physionet2012(data, sets="a", resolution="2h")
    assert rows(two, 132000).index.tolist() == [0.0, 2.0]
    assert rows(two, 132001).index.tolist() == [0.0, 46.0, 48.0]
    assert rows(two, 132001).loc[46.0, "HR"] == 60


def test_static_frame(data: Path) -> None:
    long, static = load_physionet2012(data)
    assert list(static.columns) == ["unique_id", "Age", "Gender", "Height", "ICUType", "Weight"]
    assert static["unique_id"].tolist() == [132000, 132001, 140000, 150000]
    s = static.set_index("unique_id")
    assert s.loc[132000, "Age"] == 70
    assert np.isnan(s.loc[132000, "Gender"]) and np.isnan(s.loc[132000, "Weight"])
    assert s.loc[132000, "Height"] == 170.2 and s.loc[132000, "ICUType"] == 2
    assert np.isnan(s.loc[132001, "Height"]) and s.loc[132001, "Weight"] == 80.5
    # A stay without measurements keeps its static row but has no long rows.
    assert 140000 not in set(long["unique_id"])
    assert long["unique_id"].unique().tolist() == [132000, 132001, 150000]


def test_sets_order_and_sources(data: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    long_ba, _ = load_physionet2012(data, sets="ba")
    long_ab, static_ab = load_physionet2012(data, sets="ab")
    pd.testing.assert_frame_equal(long_ba, long_ab)
    assert static_ab["unique_id"].tolist() == [132000, 132001, 140000]
    long_b, static_b = load_physionet2012(data, sets="b")
    assert len(long_b) == 0 and list(long_b.columns) == ["unique_id", "ds", *PHYSIONET2012_VARIABLES]
    assert static_b["unique_id"].tolist() == [140000]
    long_c, _ = load_physionet2012(str(data), sets="c")
    assert long_c["ds"].tolist() == [0.0, 12.0] and long_c["Na"].tolist()[1] == 140.0
    # The extracted folder reads as the tarball.
    other = tmp_path_factory.mktemp("extracted")
    write_folder(other, "a", {"132001.txt": STAY_1, "132000.txt": STAY_0})
    pd.testing.assert_frame_equal(
        load_physionet2012(other, sets="a")[0], load_physionet2012(data, sets="a")[0]
    )


@pytest.mark.parametrize("sets", ["", "ad", "aa", "A", 3, None])
def test_bad_sets(data: Path, sets) -> None:
    with pytest.raises(ValueError, match="sets must be a non-empty string of distinct letters"):
        load_physionet2012(data, sets=sets)


@pytest.mark.parametrize("resolution", ["abc", "2", -1, 0, float("nan"), True, "-1h", "0min", [1]])
def test_bad_resolution(data: Path, resolution) -> None:
    with pytest.raises(ValueError, match="resolution"):
        load_physionet2012(data, sets="a", resolution=resolution)


def test_bad_paths(tmp_path: Path, data: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_physionet2012(tmp_path / "nowhere")
    (tmp_path / "only_a").mkdir()
    write_tarball(tmp_path / "only_a", "a", {"132000.txt": STAY_0})
    with pytest.raises(ValueError, match=r"neither set-b\.tar\.gz nor a folder set-b/"):
        load_physionet2012(tmp_path / "only_a", sets="ab")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "set-a.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match=r"set-a\.tar\.gz: cannot read the tarball"):
        load_physionet2012(tmp_path / "broken", sets="a")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Time,Param,Value\n00:00,RecordID,1\n", r"1\.txt: line 1: expected the header"),
        ("", r"1\.txt: line 1: expected the header"),
        (HEADER + "00:00,RecordID,1\n00:07,HR\n", r"1\.txt: line 3: expected 3 comma-separated fields"),
        (
            HEADER + "00:00,RecordID,1\n00:07,HR,7,1\n",
            r"line 3: expected 3 comma-separated fields .*, got 4: '00:07,HR,7,1'",
        ),
        (HEADER + "00:00,RecordID,1\n7:5,HR,70\n", r"1\.txt: line 3: expected a time 'HH:MM', got '7:5'"),
        (HEADER + "00:00,RecordID,1\n01:60,HR,70\n", r"line 3: expected a time 'HH:MM', got '01:60'"),
        (HEADER + "00:00,RecordID,1\nab:00,HR,70\n", r"line 3: expected a time 'HH:MM'"),
        (HEADER + "00:00,RecordID,1\n00:07,HR,high\n", r"1\.txt: line 3: expected a finite number.*'high'"),
        (
            HEADER + "00:00,RecordID,1\n00:07,HR,nan\n",
            r"line 3: expected a finite number as value, got 'nan'",
        ),
        (HEADER + "00:00,Age,50\n00:07,HR,70\n", r"1\.txt: no RecordID line"),
        (HEADER + "00:00,RecordID,1.5\n00:07,HR,70\n", r"RecordID 1\.5 is not an integer"),
        (HEADER + "00:00,RecordID,1\n00:07,Pulse,70\n", r"1\.txt: line 3: unknown parameter 'Pulse'"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, match: str) -> None:
    write_tarball(tmp_path, "a", {"1.txt": text})
    with pytest.raises(ValueError, match=match):
        load_physionet2012(tmp_path, sets="a")
    folder = tmp_path / "extracted"
    write_folder(folder, "a", {"1.txt": text})
    with pytest.raises(ValueError, match=match):
        load_physionet2012(folder, sets="a")


def test_blank_lines_and_repeated_record_ids(tmp_path: Path) -> None:
    write_folder(tmp_path, "a", {"1.txt": record(1, "\n00:07,HR,70\n\n")})
    long, _ = load_physionet2012(tmp_path, sets="a")
    assert long["ds"].tolist() == pytest.approx([0, 7 / 60]) and long["HR"].tolist()[1] == 70
    write_folder(tmp_path, "b", {"2.txt": record(1, "00:07,HR,70\n")})
    with pytest.raises(ValueError, match=r"RecordID 1 is used by both .*1\.txt and .*2\.txt"):
        load_physionet2012(tmp_path, sets="ab")


# ------------------------------------------------------------------------------- protocol helpers
def synthetic(n_stays: int = 8, seed: int = 0) -> pd.DataFrame:
    """Hourly two-variable stays; stay 100 has no context (all at >= 6), stay 101 no targets."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n_stays):
        ds = np.arange(10.0) if k > 1 else (np.arange(6.0, 10.0) if k == 0 else np.arange(6.0))
        a = np.cumsum(rng.normal(size=len(ds)))
        b = np.where(rng.random(len(ds)) < 0.5, rng.normal(size=len(ds)), np.nan)
        frames.append(pd.DataFrame({"unique_id": 100 + k, "ds": ds, "a": a, "b": b}))
    return pd.concat(frames, ignore_index=True)


def test_standardise_drops_outliers_and_empty_rows() -> None:
    a = np.r_[np.zeros(50), 100.0]
    frame = pd.DataFrame({"unique_id": 1, "ds": np.arange(51.0), "a": a, "b": np.r_[np.ones(50), np.nan]})
    z, mean, std = standardise(frame, ["a", "b"])
    assert mean["a"] == pytest.approx(100 / 51) and std["a"] == pytest.approx(a.std())
    assert std["b"] == 1.0  # constant: centred only
    assert len(z) == 50 and z["ds"].max() == 49  # the outlier row is left empty and dropped
    assert z["a"].to_numpy() == pytest.approx((0 - 100 / 51) / a.std())
    assert (z["b"] == 0).all()


def test_protocol_split_is_the_published_one() -> None:
    ids = np.arange(1000, 1100)
    train, val, test = protocol_split(ids)
    assert len(test) == 15 and len(val) == 17 and len(train) == 68
    assert sorted(np.r_[train, val, test]) == ids.tolist()
    again = protocol_split(list(ids))
    assert all((x == y).all() for x, y in zip((train, val, test), again, strict=True))


def test_cut_context_targets() -> None:
    frame = synthetic()
    frame.loc[(frame["unique_id"] == 102) & (frame["ds"] == 7), ["a", "b"]] = np.nan
    frame = frame[frame[["a", "b"]].notna().any(axis=1)]  # stay 102 has no row at hour 7
    context, targets, counts = cut_context_targets(frame, observe_until=6.0, n_targets=3)
    assert counts == {"stays": 8, "no_context": 1, "no_targets": 1, "kept": 6}
    assert set(context["unique_id"]) == set(targets["unique_id"]) == set(range(102, 108))
    assert (context["ds"] < 6).all() and context.groupby("unique_id").size().eq(6).all()
    assert targets.groupby("unique_id")["ds"].apply(list).to_dict() == {
        k: ([6.0, 8.0, 9.0] if k == 102 else [6.0, 7.0, 8.0]) for k in range(102, 108)
    }


class _AdditiveModel:
    """score(df): mean of -y^2 over the observed values, so every value scores on its own."""

    def score(self, df: pd.DataFrame) -> float:
        y = df[["a", "b"]].to_numpy()
        return float(-np.nanmean(y**2))


def test_joint_nll_counts_each_target_value_once() -> None:
    context, targets, _ = cut_context_targets(synthetic(), observe_until=6.0)
    y = targets[["a", "b"]].to_numpy()
    assert n_values(targets) == np.isfinite(y).sum()
    assert joint_nll(_AdditiveModel(), context, targets) == pytest.approx(np.nanmean(y**2))


def test_last_value_mse_by_hand() -> None:
    context = pd.DataFrame(
        {"unique_id": [1, 1, 2], "ds": [0.0, 1.0, 0.0], "a": [1.0, 2.0, 5.0], "b": [3.0, np.nan, np.nan]}
    )
    targets = pd.DataFrame(
        {"unique_id": [1, 2, 2], "ds": [2.0, 1.0, 2.0], "a": [4.0, np.nan, 6.0], "b": [1.0, 2.0, np.nan]}
    )
    # stay 1: a 2 -> 4, b 3 -> 1; stay 2: b never seen -> 0 vs 2, a 5 -> 6
    assert last_value_mse(context, targets) == pytest.approx((4 + 4 + 4 + 1) / 4)


def test_forecaster_scores_on_the_protocol() -> None:
    frame = synthetic(12)
    context, targets, _ = cut_context_targets(frame, observe_until=6.0, n_targets=1)
    model = GRUODEBayesSettings(hidden_size=4, p_hidden=4, prep_hidden=4)
    est = Forecaster(model=model, max_epochs=1, val_fraction=0.0, random_state=0, device="cpu").fit(frame)
    fc = est.forecast(context, times=targets[["unique_id", "ds"]], n_samples=50, seed=0)
    out = score_forecast(fc, targets)
    y = targets[["a", "b"]].to_numpy()
    mean = fc.mean[["a", "b"]].to_numpy()
    assert out["mse"] == pytest.approx(np.nanmean((mean - y) ** 2))
    assert 0 <= out["coverage_80"] <= out["coverage_95"] <= 1 and out["crps"] > 0
    # With one target per stay its marginal predictive is its one-step-ahead predictive.
    assert marginal_nll(est, context, targets) == pytest.approx(joint_nll(est, context, targets), rel=1e-4)


def _result_file(tmp_path: Path, name: str, seeds: list[int], lr: float = 0.003) -> Path:
    metrics = {
        "mse": 0.3,
        "nll": 0.4,
        "joint_nll": 0.2,
        "crps": 0.25,
        "coverage_80": 0.8,
        "coverage_95": 0.95,
    }
    runs = [
        {
            **metrics,
            "mse": 0.29 + 0.001 * s,
            "seed": s,
            "fit_seconds": 10.0,
            "params": {"lr": lr, "random_state": s},
        }
        for s in seeds
    ]
    result = {
        "protocol": {"n_targets": 3, "time_limit": 60.0},
        "data": {"n_target_values": 100},
        "runs": runs,
    }
    path = tmp_path / name
    path.write_text(json.dumps(result))
    return path


def test_merge_results_pools_runs_and_refuses_mixed_configurations(tmp_path):
    a, b = _result_file(tmp_path, "a.json", [0, 1]), _result_file(tmp_path, "b.json", [2])
    merged = merge_results([a, b])
    assert [r["seed"] for r in merged["runs"]] == [0, 1, 2]
    assert merged["summary"]["mse"]["mean"] == pytest.approx(0.291)
    assert merged["summary"]["mse"]["std"] == pytest.approx(0.001)
    with pytest.raises(ValueError, match="other parameters"):
        merge_results([a, _result_file(tmp_path, "c.json", [3], lr=0.01)])
    with pytest.raises(ValueError, match="seeds repeat"):
        merge_results([a, _result_file(tmp_path, "d.json", [1])])

"""Irregular-series data layer: DataFrame <-> IrregularBatch, batching, truncation, built-in datasets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ctflow.data.datasets import (
    PBCSEQ_LABS,
    PBCSEQ_LOG_LABS,
    PBCSEQ_STATIC,
    data_path,
    load_double_ou,
    load_pbcseq,
)
from ctflow.data.irregular import (
    IrregularBatch,
    collate,
    from_dataframe,
    iterate_batches,
    split_series,
    to_dataframe,
    truncate,
)


def _expected(df: pd.DataFrame, value_cols: list[str], id_col="unique_id", time_col="ds") -> pd.DataFrame:
    """What ``to_dataframe(from_dataframe(df))`` must return: sorted, all-NaN rows dropped, floats."""
    out = df.dropna(how="all", subset=value_cols).sort_values([id_col, time_col], kind="stable")
    out = out.reset_index(drop=True)
    for col in out.columns:
        if col != id_col:
            out[col] = out[col].astype(np.float64)
    return out


def _assert_batches_equal(a: IrregularBatch, b: IrregularBatch) -> None:
    for name in ("times", "values", "mask", "lengths"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert list(a.ids) == list(b.ids)
    assert a.variables == b.variables
    assert (a.static is None) == (b.static is None)
    if a.static is not None:
        assert torch.equal(a.static, b.static)
        assert a.static_names == b.static_names


@pytest.fixture
def small_df() -> pd.DataFrame:
    # Mixed id order, a series of length 1 ("a"), a variable never observed in a series ("z" in "c"),
    # an all-NaN row (series "c" at t=4), unsorted times.
    return pd.DataFrame(
        {
            "unique_id": ["c", "b", "a", "c", "b", "c", "b"],
            "ds": [3.0, 1.5, 0.25, 0.5, 0.0, 4.0, 7.0],
            "x": [1.0, np.nan, 2.0, 3.0, 4.0, np.nan, 5.5],
            "z": [np.nan, 6.0, 7.0, np.nan, np.nan, np.nan, 8.0],
        }
    )


# ---------------------------------------------------------------------- DataFrame bridge
def test_from_dataframe_layout(small_df):
    b = from_dataframe(small_df)
    assert list(b.ids) == ["a", "b", "c"]
    assert b.variables == ["x", "z"]
    assert b.lengths.tolist() == [1, 3, 2]  # the all-NaN row of "c" is dropped
    assert b.times.dtype == torch.float32 and b.lengths.dtype == torch.long
    assert b.times.tolist() == [[0.25, 0.25, 0.25], [0.0, 1.5, 7.0], [0.5, 3.0, 3.0]]
    expected_values = [
        [[2.0, 7.0], [0, 0], [0, 0]],
        [[4.0, 0], [0, 6.0], [5.5, 8.0]],
        [[3.0, 0], [1.0, 0], [0, 0]],
    ]
    assert b.values.tolist() == expected_values
    assert b.mask[2, :, 1].sum() == 0  # z never observed in "c"
    assert b.pad_mask.tolist() == [[True, False, False], [True, True, True], [True, True, False]]
    assert b.n_observed == 8 and len(b) == 3


def test_mask_matches_nans_exactly(small_df):
    b = from_dataframe(small_df)
    out = to_dataframe(b)
    mask_rows = b.mask[b.pad_mask].numpy().astype(bool)
    np.testing.assert_array_equal(mask_rows, out[["x", "z"]].notna().to_numpy())
    assert int(out[["x", "z"]].notna().sum().sum()) == b.n_observed


def test_round_trip_exact(small_df):
    b = from_dataframe(small_df, dtype=torch.float64)
    out = to_dataframe(b)
    pd.testing.assert_frame_equal(out, _expected(small_df, ["x", "z"]))
    assert out["unique_id"].dtype == small_df["unique_id"].dtype
    _assert_batches_equal(from_dataframe(out, dtype=torch.float64), b)
    # float32 is exact for representable numbers too
    b32 = from_dataframe(small_df)
    pd.testing.assert_frame_equal(to_dataframe(b32), _expected(small_df, ["x", "z"]))


def test_round_trip_int_ids_custom_columns_and_static():
    df = pd.DataFrame(
        {
            "patient": np.array([30, 10, 30, 20, 10], dtype=np.int64),
            "age": [50.0, 61.0, 50.0, 44.0, 61.0],
            "t": [1, 5, 0, 2, 3],
            "v": [0.1, 0.2, 0.3, 0.4, 0.5],
        }
    )
    b = from_dataframe(df, id_col="patient", time_col="t", static_cols="age", dtype=torch.float64)
    assert list(b.ids) == [10, 20, 30] and b.ids.dtype == np.int64
    assert b.static.tolist() == [[61.0], [44.0], [50.0]]
    out = to_dataframe(b)
    assert list(out.columns) == ["patient", "t", "v", "age"]
    expected = _expected(df, ["v"], "patient", "t")[["patient", "t", "v", "age"]]
    pd.testing.assert_frame_equal(out, expected)
    _assert_batches_equal(from_dataframe(out, "patient", "t", static_cols=["age"], dtype=torch.float64), b)
    assert "age" not in to_dataframe(b, include_static=False).columns


def test_value_cols_default_excludes_id_time_static():
    df = pd.DataFrame({"unique_id": [1, 1], "ds": [0.0, 1.0], "s": [2.0, 2.0], "a": [1.0, 2.0], "b": [3, 4]})
    assert from_dataframe(df, static_cols=["s"]).variables == ["a", "b"]
    assert from_dataframe(df, value_cols=["b"]).variables == ["b"]


def test_nullable_and_categorical_columns():
    df = pd.DataFrame(
        {
            "unique_id": pd.Categorical(["q", "p", "q"]),
            "ds": [0.0, 0.0, 1.0],
            "y": pd.array([1, None, 3], dtype="Int64"),
            "w": [0.5, 2.0, np.nan],
        }
    )
    b = from_dataframe(df)
    assert list(b.ids) == ["p", "q"]
    assert b.mask[:, :, 0].tolist() == [[0.0, 0.0], [1.0, 1.0]]
    out = to_dataframe(b)
    assert isinstance(out["unique_id"].dtype, pd.CategoricalDtype)
    assert out["y"].tolist()[1:] == [1.0, 3.0] and np.isnan(out["y"][0])


def test_unsorted_input_is_sorted_and_all_nan_rows_dropped():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"unique_id": np.repeat([5, 2, 9], 4), "ds": np.tile([3.0, 1.0, 2.0, 0.0], 3)})
    df["y"] = rng.normal(size=len(df))
    df.loc[[0, 5], "y"] = np.nan
    df.loc[df["unique_id"] == 9, "y"] = np.nan  # series 9 has nothing observed: it disappears
    shuffled = df.sample(frac=1.0, random_state=1)
    b = from_dataframe(shuffled, dtype=torch.float64)
    assert list(b.ids) == [2, 5]
    assert b.lengths.tolist() == [3, 3]
    assert (b.times[:, 1:] >= b.times[:, :-1]).all()
    assert b.mask.all()
    pd.testing.assert_frame_equal(to_dataframe(b), _expected(df, ["y"]))


def test_padding_times_repeat_last_time(small_df):
    b = from_dataframe(small_df)
    pad = ~b.pad_mask
    last = b.times.gather(1, (b.lengths - 1)[:, None]).expand_as(b.times)
    assert torch.equal(b.times[pad], last[pad])
    assert (b.values[pad] == 0).all() and (b.mask[pad] == 0).all()


@st.composite
def long_frames(draw):
    n_series = draw(st.integers(1, 6))
    n_vars = draw(st.integers(1, 3))
    string_ids = draw(st.booleans())
    id_pool = draw(st.lists(st.integers(-50, 50), min_size=n_series, max_size=n_series, unique=True))
    rows = []
    for sid in id_pool:
        length = draw(st.integers(1, 7))
        gaps = draw(st.lists(st.integers(1, 40), min_size=length, max_size=length))
        start = draw(st.integers(-20, 20))
        times = (start + np.cumsum(gaps)) * 0.25
        for t in times:
            vals = draw(
                st.lists(
                    st.one_of(st.just(np.nan), st.floats(-1e3, 1e3, allow_nan=False, width=32)),
                    min_size=n_vars,
                    max_size=n_vars,
                )
            )
            rows.append((f"s{sid}" if string_ids else sid, float(t), *vals))
    df = pd.DataFrame(rows, columns=["unique_id", "ds", *[f"v{i}" for i in range(n_vars)]])
    perm = draw(st.permutations(range(len(df))))
    return df.iloc[list(perm)].reset_index(drop=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=long_frames(), use_float32=st.booleans())
def test_round_trip_property(df, use_float32):
    value_cols = [c for c in df.columns if c.startswith("v")]
    assume(df[value_cols].notna().any(axis=None))
    dtype = torch.float32 if use_float32 else torch.float64
    b = from_dataframe(df, dtype=dtype)
    expected = _expected(df, value_cols)
    out = to_dataframe(b)
    pd.testing.assert_frame_equal(out, expected)
    _assert_batches_equal(from_dataframe(out, dtype=dtype), b)
    # masks are the NaN pattern, padding is canonical, lengths count the kept rows
    np.testing.assert_array_equal(b.mask[b.pad_mask].numpy() == 1, expected[value_cols].notna().to_numpy())
    assert b.lengths.tolist() == expected.groupby("unique_id", sort=True).size().tolist()
    assert b.max_length == int(b.lengths.max())


def test_conversion_of_a_large_shuffled_frame():
    """10,000 series of 20 rows in random order (timed in experiments/benchmarks/data_conversion.py)."""
    rng = np.random.default_rng(0)
    n, length = 10_000, 20
    df = pd.DataFrame(
        {
            "unique_id": np.repeat(np.arange(n), length),
            "ds": np.tile(np.arange(length, dtype=np.float64), n) + rng.uniform(0, 0.5, n * length),
            "y1": rng.normal(size=n * length),
            "y2": np.where(rng.random(n * length) < 0.5, np.nan, 1.0),
        }
    ).sample(frac=1.0, random_state=0)
    b = from_dataframe(df, dtype=torch.float64)
    assert len(b) == n and b.max_length == length and b.lengths.eq(length).all()
    assert b.ids.tolist() == list(range(n)) and b.variables == ["y1", "y2"]
    assert b.n_observed == int(df[["y1", "y2"]].notna().sum().sum())
    assert (b.times[:, 1:] > b.times[:, :-1]).all()
    ordered = df.sort_values(["unique_id", "ds"])
    np.testing.assert_array_equal(b.times.numpy().ravel(), ordered["ds"].to_numpy())
    np.testing.assert_array_equal(b.values[..., 0].numpy().ravel(), ordered["y1"].to_numpy())
    np.testing.assert_array_equal(b.mask[..., 1].numpy().ravel() == 1, ordered["y2"].notna().to_numpy())


# ---------------------------------------------------------------------- errors
def test_duplicate_id_time_is_error():
    df = pd.DataFrame({"unique_id": ["a", "b", "b"], "ds": [1.0, 2.0, 2.0], "y": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match=r"duplicated \(id, time\).*'b'.*2\.0"):
        from_dataframe(df)


def test_non_numeric_value_column_is_type_error():
    df = pd.DataFrame({"unique_id": [1, 1], "ds": [0.0, 1.0], "y": [1.0, 2.0], "label": ["u", "v"]})
    with pytest.raises(TypeError, match="'label'"):
        from_dataframe(df)
    assert from_dataframe(df, value_cols=["y"]).variables == ["y"]


def test_missing_columns_are_named():
    df = pd.DataFrame({"unique_id": [1], "ds": [0.0], "y": [1.0]})
    with pytest.raises(ValueError, match=r"\['q', 'r'\]"):
        from_dataframe(df, value_cols=["y", "q"], static_cols=["r"])
    with pytest.raises(ValueError, match="'time'"):
        from_dataframe(df, time_col="time")


def test_datetime_times_are_type_error_with_hint():
    df = pd.DataFrame(
        {"unique_id": [1, 1], "ds": pd.to_datetime(["2020-01-01", "2020-01-02"]), "y": [1.0, 2]}
    )
    with pytest.raises(TypeError, match=r"'ds'.*Timedelta"):
        from_dataframe(df)
    df["ds"] = pd.to_timedelta([0, 1], unit="D")
    with pytest.raises(TypeError, match="'ds'"):
        from_dataframe(df)


def test_infinite_values_name_column_and_row():
    df = pd.DataFrame({"unique_id": [1, 1, 2], "ds": [0.0, 1.0, 0.0], "a": [1.0, 2.0, 3.0], "b": [0, 0, 0.0]})
    df.index = [10, 11, 12]
    df.loc[11, "b"] = -np.inf
    with pytest.raises(ValueError, match=r"'b'.*row 11"):
        from_dataframe(df)


def test_other_input_errors():
    base = pd.DataFrame({"unique_id": [1, 1], "ds": [0.0, 1.0], "y": [1.0, 2.0], "s": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"'s'.*not constant"):
        from_dataframe(base, static_cols=["s"])
    with pytest.raises(ValueError, match="no observed value"):
        from_dataframe(base.assign(y=np.nan), value_cols=["y"])
    with pytest.raises(ValueError, match="missing or infinite"):
        from_dataframe(base.assign(ds=[0.0, np.nan]))
    with pytest.raises(TypeError, match="'ds'"):
        from_dataframe(base.assign(ds=["0", "1"]))
    with pytest.raises(ValueError, match="one role"):
        from_dataframe(base, value_cols=["y", "s"], static_cols=["s"])
    big = pd.DataFrame({"unique_id": [1, 1], "ds": [1e9, 1e9 + 1], "y": [1.0, 2.0]})
    with pytest.raises(ValueError, match="float64"):
        from_dataframe(big)  # distinct in float64, equal in float32
    assert from_dataframe(big, dtype=torch.float64).times.tolist() == [[1e9, 1e9 + 1]]


def _tiny(**changes):
    fields = {
        "times": torch.tensor([[0.0, 1.0], [2.0, 2.0]]),
        "values": torch.tensor([[[1.0], [2.0]], [[3.0], [0.0]]]),
        "mask": torch.tensor([[[1.0], [1.0]], [[1.0], [0.0]]]),
        "lengths": torch.tensor([2, 1]),
    }
    fields.update(changes)
    return IrregularBatch(**fields)


def test_batch_validation():
    b = _tiny()
    assert list(b.ids) == [0, 1] and b.variables == ["y0"]
    with pytest.raises(ValueError, match=r"non-decreasing.*series 0 "):
        _tiny(times=torch.tensor([[1.0, 0.0], [2.0, 2.0]]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        _tiny(mask=torch.tensor([[[1.0], [0.5]], [[1.0], [0.0]]]))
    with pytest.raises(ValueError, match="NaN where mask is 1"):
        _tiny(values=torch.tensor([[[1.0], [float("nan")]], [[3.0], [0.0]]]))
    with pytest.raises(ValueError, match="unobserved"):
        _tiny(values=torch.tensor([[[1.0], [2.0]], [[3.0], [float("nan")]]]))
    with pytest.raises(ValueError, match="padding"):
        _tiny(mask=torch.ones(2, 2, 1))
    with pytest.raises(ValueError, match="repeat the series' last time"):
        _tiny(times=torch.tensor([[0.0, 1.0], [2.0, 0.0]]))
    with pytest.raises(ValueError, match="times has shape"):
        _tiny(times=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="lengths must lie"):
        _tiny(lengths=torch.tensor([3, 1]))
    with pytest.raises(ValueError, match="unique"):
        _tiny(ids=["a", "a"])
    with pytest.raises(ValueError, match="variables"):
        _tiny(variables=["a", "b"])
    with pytest.raises(ValueError, match="static"):
        _tiny(static=torch.zeros(3, 1))
    assert _tiny(mask=torch.tensor([[[True], [True]], [[True], [False]]])).mask.dtype == torch.float32


def test_select_and_to(small_df):
    b = from_dataframe(small_df)
    sub = b.select([2, 0])
    assert list(sub.ids) == ["c", "a"] and sub.lengths.tolist() == [2, 1]
    assert sub.max_length == b.max_length and sub.select([1], trim=True).max_length == 1
    assert torch.equal(sub.values[0], b.values[2])
    assert list(b.select(torch.tensor([True, False, True])).ids) == ["a", "c"]
    assert list(b.select(slice(1, None)).ids) == ["b", "c"]
    with pytest.raises(ValueError, match="repeat"):
        b.select([0, 0])
    moved = b.to("cpu", dtype=torch.float64)
    assert moved.values.dtype == torch.float64 and moved.lengths.dtype == torch.long
    assert torch.equal(moved.values.float(), b.values)


# ---------------------------------------------------------------------- batching and splitting
@pytest.fixture(scope="module")
def ou_df() -> pd.DataFrame:
    return load_double_ou(n_series=300, seed=5)


def test_iterate_batches_covers_every_series_once(ou_df):
    b = from_dataframe(ou_df, dtype=torch.float64)
    parts = list(iterate_batches(b, 64, shuffle=True, generator=7))
    assert [len(p) for p in parts] == [64, 64, 64, 64, 44]
    seen = np.concatenate([p.ids for p in parts])
    assert sorted(seen.tolist()) == list(range(300)) and seen.tolist() != list(range(300))
    for p in parts:
        assert p.max_length == int(p.lengths.max())  # trimmed
    again = [p.ids.tolist() for p in iterate_batches(b, 64, shuffle=True, generator=7)]
    assert again == [p.ids.tolist() for p in parts]
    merged = collate(parts)
    pd.testing.assert_frame_equal(
        to_dataframe(merged).sort_values(["unique_id", "ds"]).reset_index(drop=True), to_dataframe(b)
    )
    plain = list(iterate_batches(b, 100, drop_last=True))
    assert [p.ids[0] for p in plain] == [0, 100, 200]
    assert len(list(iterate_batches(b, 64, drop_last=True))) == 4


def test_collate_rejects_mismatch(small_df):
    b = from_dataframe(small_df)
    with pytest.raises(ValueError, match="variables"):
        collate([b, from_dataframe(small_df, value_cols=["x"])])
    with pytest.raises(ValueError, match="unique"):
        collate([b, b])


def test_split_series(ou_df):
    b = from_dataframe(ou_df)
    train, val = split_series(b, 0.2, seed=1)
    assert (len(train), len(val)) == (240, 60)
    assert set(train.ids) | set(val.ids) == set(b.ids) and not set(train.ids) & set(val.ids)
    assert list(train.ids) == sorted(train.ids)
    assert val.ids.tolist() == split_series(b, 0.2, seed=1)[1].ids.tolist()
    assert val.ids.tolist() != split_series(b, 0.2, seed=2)[1].ids.tolist()
    row = int(np.flatnonzero(b.ids == val.ids[0])[0])
    assert torch.equal(val.values[0, : val.lengths[0]], b.values[row, : b.lengths[row]])
    parts = split_series(b, (0.5, 0.3, 0.2), seed=0)
    assert [len(p) for p in parts] == [150, 90, 60]
    with pytest.raises(ValueError):
        split_series(b, (0.5, 0.6))
    with pytest.raises(ValueError, match="empty"):
        split_series(b.select([0, 1]), (0.4, 0.3, 0.3))


def test_truncate_matches_reference(ou_df):
    b = from_dataframe(ou_df, dtype=torch.float64)
    context, target = truncate(b, 4.0)
    after = ou_df[ou_df["ds"] > 4.0]
    has_target = np.sort(after["unique_id"].unique())
    assert list(target.ids) == list(has_target) == list(context.ids)
    assert target.lengths.eq(1).all() and target.max_length == 1
    ref_target = after.groupby("unique_id").head(1).reset_index(drop=True)
    pd.testing.assert_frame_equal(to_dataframe(target), _expected(ref_target, ["y1", "y2"]))
    ref_context = ou_df[(ou_df["ds"] <= 4.0) & ou_df["unique_id"].isin(has_target)]
    pd.testing.assert_frame_equal(to_dataframe(context), _expected(ref_context, ["y1", "y2"]))
    assert (context.times[context.pad_mask] <= 4.0).all() and (target.times[:, 0] > 4.0).all()
    # The context is itself a valid, canonically padded batch.
    IrregularBatch(
        context.times,
        context.values,
        context.mask,
        context.lengths,
        ids=context.ids,
        variables=context.variables,
    )


def test_truncate_edge_cases(small_df):
    b = from_dataframe(small_df)  # a: [0.25]; b: [0, 1.5, 7]; c: [0.5, 3]
    ctx, tgt = truncate(b, 1.0, drop_no_target=False, n_targets=2)
    assert ctx.lengths.tolist() == [1, 1, 1] and tgt.lengths.tolist() == [0, 2, 1]
    assert tgt.times.tolist() == [[0.0, 0.0], [1.5, 7.0], [3.0, 3.0]]
    assert tgt.mask[0].sum() == 0 and tgt.mask[2, 1].sum() == 0
    ctx, tgt = truncate(b, 1.0)
    assert list(ctx.ids) == ["b", "c"]
    ctx, tgt = truncate(b, -1.0)  # nothing observed yet: empty contexts
    assert ctx.lengths.tolist() == [0, 0, 0] and ctx.max_length == 0
    assert tgt.times[:, 0].tolist() == [0.25, 0.0, 0.5]
    merged = collate([ctx.select([0, 1]), b.select([2], trim=True)])  # an empty-length part pads fine
    assert merged.lengths.tolist() == [0, 0, 2] and merged.times[0].tolist() == [0.0, 0.0]
    ctx, tgt = truncate(b, torch.tensor([0.0, 1.5, 0.5]))  # one cut per series
    assert ctx.lengths.tolist() == [0, 2, 1] and list(tgt.ids) == ["a", "b", "c"]
    assert tgt.times[:, 0].tolist() == [0.25, 7.0, 3.0]
    ctx, tgt = truncate(b, torch.tensor([0.0, 7.0, 0.5]))
    assert list(ctx.ids) == ["a", "c"] and ctx.lengths.tolist() == [0, 1]
    with pytest.raises(ValueError, match="t_max"):
        truncate(b, torch.tensor([1.0, 2.0]))


# ---------------------------------------------------------------------- double OU
@pytest.fixture(scope="module")
def double_ou():
    """The default data set with its latent paths (generation is timed in
    experiments/benchmarks/data_conversion.py)."""
    return load_double_ou(return_latent=True)


def test_double_ou_shape(double_ou):
    df, latent = double_ou
    assert list(df.columns) == ["unique_id", "ds", "y1", "y2"]
    counts = df.groupby("unique_id").size()
    assert len(counts) == 10_000 and counts.min() == 16 and counts.max() == 23
    assert set(range(16, 24)) == set(counts.unique())
    assert abs(counts.mean() - 19.5) < 0.1
    grid_pos = df["ds"].to_numpy() / 0.05
    np.testing.assert_allclose(grid_pos, np.round(grid_pos), atol=1e-9)
    assert df["ds"].min() >= 0.05 - 1e-12 and df["ds"].max() <= 10.0 + 1e-12
    assert not df.duplicated(["unique_id", "ds"]).any()
    assert df[["y1", "y2"]].notna().any(axis=1).all()
    assert latent.paths.shape == (10_000, 201, 2) and (latent.paths[:, 0] == 0).all()


def test_double_ou_observation_pattern(double_ou):
    df, _ = double_ou
    m1, m2 = df["y1"].notna(), df["y2"].notna()
    n = len(df)  # about 195,000 rows: standard error of each frequency < 0.0012
    assert abs((m1 & m2).mean() - 0.2) < 0.006
    assert abs((m1 & ~m2).mean() - 0.4) < 0.006
    assert abs((~m1 & m2).mean() - 0.4) < 0.006
    assert n > 190_000


def test_double_ou_values_are_the_latent_path(double_ou):
    df, latent = double_ou
    ids = df["unique_id"].to_numpy()
    step = np.round(df["ds"].to_numpy() / 0.05).astype(int)
    truth = latent.paths[ids, step]
    for d, col in enumerate(["y1", "y2"]):
        seen = df[col].notna().to_numpy()
        np.testing.assert_array_equal(df[col].to_numpy()[seen], truth[seen, d])


def test_double_ou_correlation_and_means(double_ou):
    _, latent = double_ou
    # Brownian increments driving the two dimensions
    noise = latent.noise.reshape(-1, 2)
    assert abs(np.corrcoef(noise.T)[0, 1] - 0.99) < 0.002
    np.testing.assert_allclose(noise.var(0), 0.05, rtol=0.01)  # Var dW = dt in each dimension
    # increments of the latent process itself, once the transient from x0 = 0 has died out
    inc = np.diff(latent.paths[:, 100:], axis=1).reshape(-1, 2)
    assert abs(np.corrcoef(inc.T)[0, 1] - 0.99) < 0.003
    # Euler-Maruyama recursion with theta = 1, sigma = 0.1, dt = 0.05
    p = latent.paths
    np.testing.assert_allclose(
        p[:, 1:] - p[:, :-1], 0.05 * (latent.means[:, None] - p[:, :-1]) + 0.1 * latent.noise, atol=1e-12
    )
    # means: [1, -1] + independent U(-0.5, 0.5) per dimension
    offsets = latent.means - np.array([1.0, -1.0])
    assert np.abs(offsets).max() <= 0.5 and abs(offsets.std(0) - np.sqrt(1 / 12)).max() < 0.01
    assert abs(np.corrcoef(offsets.T)[0, 1]) < 0.05
    # long-run means: time average over t in [5, 10] (stationary sd 0.07, mean sd ~0.045)
    err = p[:, 100:].mean(1) - latent.means
    assert np.abs(err.mean(0)).max() < 0.003 and np.abs(err).mean() < 0.05
    slope = np.polyfit(latent.means[:, 0], p[:, 100:, 0].mean(1), 1)[0]
    assert abs(slope - 1.0) < 0.03


def test_double_ou_seed_reproducibility():
    a = load_double_ou(n_series=200, seed=11)
    pd.testing.assert_frame_equal(a, load_double_ou(n_series=200, seed=11))
    assert not a.equals(load_double_ou(n_series=200, seed=12))
    b = from_dataframe(a)
    assert len(b) == 200 and b.variables == ["y1", "y2"]


def test_double_ou_arguments():
    with pytest.raises(ValueError):
        load_double_ou(n_series=0)
    with pytest.raises(ValueError):
        load_double_ou(n_series=5, min_obs=30, max_obs=20)
    _, latent = load_double_ou(n_series=500, seed=0, rho=0.5, return_latent=True)
    assert abs(np.corrcoef(latent.noise.reshape(-1, 2).T)[0, 1] - 0.5) < 0.02
    noisy = load_double_ou(n_series=50, seed=0, obs_noise=0.5)
    assert not noisy.equals(load_double_ou(n_series=50, seed=0))


# ---------------------------------------------------------------------- pbcseq
def test_pbcseq_shape_and_missingness():
    df = load_pbcseq()
    assert list(df.columns) == ["unique_id", "ds", *PBCSEQ_LABS] and len(PBCSEQ_LABS) == 7
    assert df["unique_id"].nunique() == 312 and len(df) == 1945
    assert abs(df["chol"].isna().mean() - 0.42) < 0.01
    assert df["bili"].notna().all() and df["ds"].dtype == np.float64
    assert df["ds"].max() > 4000  # days
    b = from_dataframe(df)
    assert len(b) == 312 and b.max_length == 16 and b.lengths.sum() == 1945
    assert b.n_observed == int(df[list(PBCSEQ_LABS)].notna().sum().sum())


def test_pbcseq_options():
    raw = load_pbcseq()
    logged = load_pbcseq(log_transform=True)
    for lab in PBCSEQ_LABS:
        expected = np.log(raw[lab]) if lab in PBCSEQ_LOG_LABS else raw[lab]
        np.testing.assert_allclose(logged[lab], expected)
    assert abs(logged["bili"].skew()) < abs(raw["bili"].skew())
    years = load_pbcseq(time_unit="years")
    np.testing.assert_allclose(years["ds"] * 365.25, raw["ds"])
    with pytest.raises(ValueError, match="time_unit"):
        load_pbcseq(time_unit="weeks")
    full = load_pbcseq(static=True)
    assert list(full.columns[-3:]) == list(PBCSEQ_STATIC)
    assert (
        set(full["sex"].unique()) == {0.0, 1.0}
        and abs(full.groupby("unique_id")["sex"].first().mean() - 0.88) < 0.02
    )
    b = from_dataframe(full, static_cols=list(PBCSEQ_STATIC))
    assert b.static.shape == (312, 3) and b.static_names == list(PBCSEQ_STATIC)


def test_data_path():
    assert data_path("pbcseq.csv").is_file()
    with pytest.raises(FileNotFoundError, match=r"no_such\.csv.*_data.*data"):
        data_path("no_such.csv")


def test_ids_that_pandas_orders_only_with_a_warning_keep_their_first_appearance_order():
    import warnings

    df = pd.DataFrame(
        {"unique_id": [(1, 2), (1, 2), "a", "a"], "ds": [0.0, 1.0, 0.0, 1.0], "y": [1.0, 2, 3, 4]}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = from_dataframe(df)
    assert list(batch.ids) == [(1, 2), "a"] and batch.lengths.tolist() == [2, 2]

"""The PhysioNet/Computing in Cardiology Challenge 2012 ICU data as long and static frames.

Silva, Moody, Scott, Celi & Mark (2012), "Predicting in-hospital mortality of ICU patients: the
PhysioNet/Computing in Cardiology Challenge 2012", Computing in Cardiology 39:245-248.
"""

from __future__ import annotations

import datetime
import math
import numbers
import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["PHYSIONET2012_DESCRIPTORS", "PHYSIONET2012_VARIABLES", "load_physionet2012"]

PHYSIONET2012_VARIABLES = (
    "Albumin", "ALP", "ALT", "AST", "Bilirubin", "BUN", "Cholesterol", "Creatinine", "DiasABP",
    "FiO2", "GCS", "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "Mg", "MAP", "MechVent", "Na",
    "NIDiasABP", "NIMAP", "NISysABP", "PaCO2", "PaO2", "pH", "Platelets", "RespRate", "SaO2",
    "SysABP", "Temp", "TroponinI", "TroponinT", "Urine", "WBC", "Weight",
)  # fmt: skip
PHYSIONET2012_DESCRIPTORS = ("Age", "Gender", "Height", "ICUType", "Weight")

_HEADER = "Time,Parameter,Value"
_INDEX = {name: i for i, name in enumerate(PHYSIONET2012_VARIABLES)}
_DESCRIPTOR_NAMES = ("RecordID", *PHYSIONET2012_DESCRIPTORS)
# Parameter name -> variable index; -1 for names that are not time series (the admission
# descriptors, and the empty name of some lines of set C).
_CODES = {**{name: -1 for name in (*_DESCRIPTOR_NAMES, "")}, **_INDEX}
_MINUTES: dict[str, int] = {}  # "HH:MM" -> minutes, filled as times are met


class _Record:
    """One parsed stay: its RecordID, descriptors and time-series observations."""

    __slots__ = ("minutes", "record_id", "source", "static", "values", "variables")

    def __init__(self, source: str, text: str):
        self.source = source
        descriptors, self.minutes, self.variables, self.values = _parse(text, source)
        if "RecordID" not in descriptors:
            raise ValueError(f"{source}: no RecordID line at 00:00 (expected '00:00,RecordID,<id>')")
        record_id = descriptors["RecordID"]
        if record_id != int(record_id):
            raise ValueError(f"{source}: RecordID {record_id!r} is not an integer")
        self.record_id = int(record_id)
        self.static = [descriptors.get(name, -1.0) for name in PHYSIONET2012_DESCRIPTORS]


def _minutes(stamp: str, source: str, lineno: int) -> int:
    """Minutes since admission of an ``HH:MM`` time stamp."""
    minutes = _MINUTES.get(stamp)
    if minutes is not None:
        return minutes
    hours, sep, mins = stamp.partition(":")
    digits = sep and (hours + mins).isascii() and hours.isdigit() and mins.isdigit()
    if not (digits and len(mins) == 2 and int(mins) < 60):
        raise ValueError(f"{source}: line {lineno}: expected a time 'HH:MM', got {stamp!r}")
    minutes = 60 * int(hours) + int(mins)
    _MINUTES[stamp] = minutes
    return minutes


def _fields(lines: list[str], source: str) -> tuple[list[int], list[list[str]]]:
    """Line numbers and ``[time, parameter, value]`` fields of the lines after the header; blank
    lines are skipped."""
    rows = [line.split(",") for line in lines[1:]]
    linenos = list(range(2, len(lines) + 1))
    if set(map(len, rows)) <= {3}:
        return linenos, rows
    kept = []
    for lineno, line, row in zip(linenos, lines[1:], rows, strict=True):
        if len(row) == 3:
            kept.append(lineno)
        elif line.strip():
            raise ValueError(
                f"{source}: line {lineno}: expected 3 comma-separated fields Time,Parameter,Value, "
                f"got {len(row)}: {line[:80]!r}"
            )
    return kept, [rows[k - 2] for k in kept]


def _parse(text: str, source: str) -> tuple[dict[str, float], np.ndarray, np.ndarray, np.ndarray]:
    """Descriptors (the first line of each descriptor name at 00:00), and the minutes, variable
    indices and values of the observations of one file.

    The admission Weight is also an observation unless it is -1; other descriptor names, and the
    unnamed parameters found in some files of set C, are not time-series values and are skipped.
    """
    lines = text.splitlines()
    if not lines or lines[0].strip() != _HEADER:
        got = lines[0][:80] if lines else ""
        raise ValueError(f"{source}: line 1: expected the header {_HEADER!r}, got {got!r}")
    linenos, rows = _fields(lines, source)
    if not rows:
        return {}, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    stamps, names, raws = zip(*rows, strict=True)
    for stamp in set(stamps).difference(_MINUTES):
        _minutes(stamp, source, linenos[stamps.index(stamp)])
    minutes = np.array(list(map(_MINUTES.__getitem__, stamps)), dtype=np.int64)
    try:
        values = np.array(raws, dtype=np.float64)
    except ValueError:
        values = np.array([_number(raw) for raw in raws])
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        i = bad[0]
        raise ValueError(f"{source}: line {linenos[i]}: expected a finite number as value, got {raws[i]!r}")
    codes = list(map(_CODES.get, names))
    if None in codes:
        i = codes.index(None)
        raise ValueError(f"{source}: line {linenos[i]}: unknown parameter {names[i]!r}")
    variables = np.array(codes, dtype=np.int64)
    descriptors: dict[str, float] = {}
    for name in _DESCRIPTOR_NAMES:
        first = _first_at_zero(names, minutes, name)
        if first is not None:
            descriptors[name] = float(values[first])
            if name == "Weight" and values[first] == -1:
                variables[first] = -1
    keep = variables >= 0
    return descriptors, minutes[keep], variables[keep], values[keep]


def _first_at_zero(names: tuple[str, ...], minutes: np.ndarray, name: str) -> int | None:
    """Index of the first line of parameter ``name`` at time 00:00, if any."""
    try:
        i = names.index(name)
        while minutes[i] != 0:
            i = names.index(name, i + 1)
    except ValueError:
        return None
    return i


def _number(raw: str) -> float:
    """``float(raw)``, NaN where it is not a number."""
    try:
        return float(raw)
    except ValueError:
        return math.nan


def _check_sets(sets: Any) -> list[str]:
    if not isinstance(sets, str) or not sets or set(sets) - set("abc") or len(set(sets)) != len(sets):
        raise ValueError(f"sets must be a non-empty string of distinct letters from 'abc', got {sets!r}")
    return sorted(sets)


def _width_minutes(resolution: Any) -> float | None:
    """Bucket width in minutes of ``resolution`` (None, hours as a number, or a span like '30min')."""
    if resolution is None:
        return None
    hours = math.nan
    if isinstance(resolution, (str, datetime.timedelta, np.timedelta64)):
        text = resolution.strip() if isinstance(resolution, str) else None
        if text is not None and text.replace(".", "", 1).isdigit():
            raise ValueError(
                f"resolution {resolution!r} has no unit: give hours as a number or a span such as '1h'"
            )
        try:
            span = pd.Timedelta(text if text is not None else resolution)
        except (ValueError, TypeError):
            span = pd.NaT
        if span is not pd.NaT:
            hours = span.total_seconds() / 3600
    elif isinstance(resolution, numbers.Real) and not isinstance(resolution, bool):
        hours = float(resolution)
    if not (math.isfinite(hours) and hours > 0):
        raise ValueError(
            "resolution must be None, a positive number of hours or a positive span such as '1h', "
            f"'30min', got {resolution!r}"
        )
    width = hours * 60
    return float(round(width)) if abs(width - round(width)) < 1e-9 else width


def _records_in_tarball(path: Path) -> list[_Record]:
    texts: list[tuple[str, str]] = []
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if not (member.isfile() and member.name.endswith(".txt")):
                    continue
                source = f"{path}:{member.name}"
                try:
                    text = archive.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
                except UnicodeDecodeError as err:
                    raise ValueError(f"{source}: not a UTF-8 text file ({err})") from err
                texts.append((member.name, text))
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ValueError(f"{path}: cannot read the tarball ({err})") from err
    texts.sort(key=lambda item: (PurePosixPath(item[0]).name, item[0]))
    return [_Record(f"{path}:{name}", text) for name, text in texts]


def _records_in_folder(path: Path) -> list[_Record]:
    records = []
    for file in sorted(path.glob("*.txt"), key=lambda p: p.name):
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{file}: not a UTF-8 text file ({err})") from err
        records.append(_Record(str(file), text))
    return records


def _read_set(root: Path, letter: str) -> list[_Record]:
    tarball, folder = root / f"set-{letter}.tar.gz", root / f"set-{letter}"
    if tarball.is_file():
        records = _records_in_tarball(tarball)
    elif folder.is_dir():
        records = _records_in_folder(folder)
    else:
        raise ValueError(f"{root}: neither set-{letter}.tar.gz nor a folder set-{letter}/ is there")
    if not records:
        raise ValueError(f"{tarball if tarball.is_file() else folder}: holds no .txt record")
    return records


def _long_frame(records: list[_Record], width: float | None) -> pd.DataFrame:
    """One row per (stay, time or bucket) with an observation; values averaged within a row."""
    n_vars = len(PHYSIONET2012_VARIABLES)
    counts = np.array([len(r.values) for r in records], dtype=np.int64)
    stay = np.repeat(np.arange(len(records)), counts)
    minutes = np.concatenate([r.minutes for r in records]) if records else np.zeros(0, np.int64)
    variables = np.concatenate([r.variables for r in records]) if records else np.zeros(0, np.int64)
    values = np.concatenate([r.values for r in records]) if records else np.zeros(0)
    # Tolerance: a stamp on a bucket edge stays in that bucket despite rounding of the width.
    slot = minutes if width is None else np.floor(minutes / width + 1e-9).astype(np.int64)
    base = int(slot.max(initial=0)) + 1
    rows, row_of = np.unique(stay * base + slot, return_inverse=True)
    cell = row_of * n_vars + variables
    sums = np.bincount(cell, weights=values, minlength=len(rows) * n_vars).astype(np.float64, copy=False)
    hits = np.bincount(cell, minlength=len(rows) * n_vars)
    with np.errstate(invalid="ignore"):
        np.divide(sums, hits, out=sums)  # 0 / 0: NaN where not measured
    frame = pd.DataFrame(sums.reshape(len(rows), n_vars), columns=list(PHYSIONET2012_VARIABLES), copy=False)
    ids = np.array([r.record_id for r in records], dtype=np.int64)
    frame.insert(0, "unique_id", ids[rows // base])
    frame.insert(1, "ds", (rows % base) * (1.0 if width is None else width) / 60.0)
    return frame


def _static_frame(records: list[_Record]) -> pd.DataFrame:
    static = np.array([r.static for r in records], dtype=np.float64).reshape(
        -1, len(PHYSIONET2012_DESCRIPTORS)
    )
    static[static == -1] = np.nan
    columns: dict[str, np.ndarray] = {"unique_id": np.array([r.record_id for r in records], dtype=np.int64)}
    columns.update({name: static[:, j] for j, name in enumerate(PHYSIONET2012_DESCRIPTORS)})
    return pd.DataFrame(columns)


def load_physionet2012(
    path: str | os.PathLike, sets: str = "abc", resolution: Any = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The PhysioNet/CinC Challenge 2012 ICU stays: a long frame of the 37 time series and a
    static frame of the admission descriptors.

    Silva, Moody, Scott, Celi & Mark (2012), "Predicting in-hospital mortality of ICU patients:
    the PhysioNet/Computing in Cardiology Challenge 2012", Computing in Cardiology 39:245-248.

    Args:
        path: a folder holding the official tarballs ``set-{a,b,c}.tar.gz`` (read directly) or the
            extracted folders ``set-{a,b,c}/`` of ``RECORDID.txt`` files (used when the tarball
            of a set is absent).
        sets: which sets to read, a string of distinct letters from ``"abc"`` (4,000 stays each).
        resolution: None keeps the recorded minutes; a number of hours or a span such as
            ``"1h"``, ``"30min"`` averages each stay's values within buckets of that width,
            ``ds = floor(hours / width) * width`` (at ``"1h"``, 47:59 falls in 47 and 48:00 in 48).

    Returns:
        ``(long, static)``. ``long``: ``unique_id`` (the RecordID), ``ds`` (float hours since ICU
        admission, ``HH + MM / 60``, or the bucket start) and one column per variable of
        :data:`PHYSIONET2012_VARIABLES`, NaN where not measured; one row per stay and time with at
        least one measurement, several values of a variable at one time (or in one bucket)
        averaged. The admission Weight counts as a Weight measurement at time 0 unless it is -1;
        the other descriptors are not time series. Rows are sorted by stay (sets a, b, c in this
        order, files by name within a set), then time; a stay without any measurement has no row.
        ``static``: one row per stay in the same order, ``unique_id`` and the admission
        descriptors ``Age``, ``Gender``, ``Height``, ``ICUType``, ``Weight``, with the files'
        -1 (unknown) turned into NaN.

    Lines with an empty parameter name (a few thousand in set C) are skipped. A path that does not
    exist, a missing set, bad ``sets`` or ``resolution``, a malformed file (header, field count,
    time, value, missing RecordID, an unknown parameter name) or a RecordID used by two files
    is a ValueError naming the file and line.

    >>> import tempfile
    >>> from pathlib import Path
    >>> import pandas as pd
    >>> stay = pd.DataFrame({"Time": ["00:00", "00:00", "00:30", "01:15"],
    ...                      "Parameter": ["RecordID", "Age", "HR", "HR"], "Value": [132539, 54, 73, 77]})
    >>> with tempfile.TemporaryDirectory() as root:  # one stay in a folder set-a/
    ...     (Path(root) / "set-a").mkdir()
    ...     stay.to_csv(Path(root) / "set-a" / "132539.txt", index=False)
    ...     long, static = load_physionet2012(root, sets="a")
    >>> long[["unique_id", "ds", "HR"]]
       unique_id    ds    HR
    0     132539  0.50  73.0
    1     132539  1.25  77.0
    """
    letters = _check_sets(sets)
    width = _width_minutes(resolution)
    root = Path(path)
    if not root.exists():
        raise ValueError(f"PhysioNet 2012 data path {str(root)!r} does not exist")
    if not root.is_dir():
        raise ValueError(f"PhysioNet 2012 data path {str(root)!r} is not a folder")
    records = [record for letter in letters for record in _read_set(root, letter)]
    seen: dict[int, str] = {}
    for record in records:
        first = seen.setdefault(record.record_id, record.source)
        if first != record.source:
            raise ValueError(f"RecordID {record.record_id} is used by both {first} and {record.source}")
    return _long_frame(records, width), _static_frame(records)

"""The one way files are written: atomic, durable, with the umask's permissions."""

from __future__ import annotations

import os
import stat

import pytest

from ctflow.checkpoint import atomic_directory, atomic_write, load_checkpoint, save_checkpoint


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_file_replaces_the_old_one_whole_with_the_umask_permissions(tmp_path, umask_022):
    target = tmp_path / "sub" / "out.txt"
    with pytest.raises(ValueError, match=r"output folder '.*sub' does not exist: create it, or ask for it"):
        atomic_write(target, lambda tmp: tmp.write_text("old"))
    assert not (tmp_path / "sub").exists()
    atomic_write(target, lambda tmp: tmp.write_text("old"), parents=True)
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and _mode(target) == 0o644
    assert _mode(target.parent) == 0o755
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_missing_output_folders_stop_the_command_line_before_any_work(tmp_path, capsys):
    from ctflow.cli import main
    from ctflow.data import load_double_ou

    data = tmp_path / "train.csv"
    load_double_ou(6, seed=0).to_csv(data, index=False)
    fit = ["fit", str(data), "--max-steps", "2", "--val-fraction", "0"]
    assert main([*fit, "--out", str(tmp_path / "runs" / "m")]) == 2
    assert "output folder" in capsys.readouterr().err and not (tmp_path / "runs").exists()
    assert main([*fit, "--out", str(tmp_path / "runs" / "m"), "--parents"]) == 0
    out = tmp_path / "nested" / "fc.csv"
    forecast = ["forecast", str(tmp_path / "runs" / "m"), str(data), "--horizon", "1", "-o", str(out)]
    assert main(forecast) == 2 and not out.parent.exists()
    assert main([*forecast, "--parents"]) == 0 and out.is_file()
    with pytest.raises(ValueError, match="output folder"):
        from ctflow import Forecaster

        Forecaster.load(tmp_path / "runs" / "m").save(tmp_path / "elsewhere" / "m")


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_folder_is_swapped_in_whole(tmp_path, umask_022):
    target = tmp_path / "model"

    def write(version):
        def fill(folder):
            (folder / "a.json").write_text(version)
            (folder / "b.bin").write_bytes(version.encode())

        return fill

    atomic_directory(target, write("1"))
    atomic_directory(target, write("2"))
    assert (target / "a.json").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert _mode(target) == 0o755 and _mode(target / "a.json") == 0o644

    def fail(folder):
        (folder / "a.json").write_text("3")
        raise OSError("interrupted")

    with pytest.raises(OSError, match="interrupted"):
        atomic_directory(target, fail)
    assert (target / "a.json").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_checkpoints_round_trip(tmp_path, umask_022):
    path = save_checkpoint(tmp_path / "c.pt", {"step": 3, "name": "x"})
    assert load_checkpoint(path) == {"step": 3, "name": "x"} and _mode(path) == 0o644
    with pytest.raises(TypeError, match="state must be a dict, got list"):
        save_checkpoint(tmp_path / "d.pt", [1])

"""Atomic checkpoints and random-number-generator state, independent of any model type.

:func:`atomic_write` (and :func:`atomic_directory` for a folder of files) is the one way files
are written: to a temporary file in the target folder, flushed to disk, then renamed over the
target (``os.replace``), so a crash mid-write never leaves a truncated file behind.
:func:`save_checkpoint` writes a state dict that way.
:func:`load_checkpoint` reads with ``torch.load(..., weights_only=True)``: only tensors and plain
containers of numbers and strings come back, nothing is unpickled. The RNG helpers turn the
states of Python's ``random``, NumPy's global generator and torch (CPU and CUDA) into such plain
values and back.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "atomic_directory",
    "atomic_write",
    "capture_rng_state",
    "output_folder",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _readable_by_others(path: Path, folder: bool = False) -> None:
    """Give a temporary file or folder (created 0600/0700) the permissions of the umask."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if folder else 0o666) & ~umask)


def output_folder(path: str | os.PathLike, parents: bool = False) -> Path:
    """The folder ``path`` is written into: it must exist, or with ``parents`` it is created."""
    folder = Path(path).parent
    if parents:
        folder.mkdir(parents=True, exist_ok=True)
    elif not folder.is_dir():
        raise ValueError(
            f"output folder {str(folder)!r} does not exist: create it, or ask for it to be created "
            "(parents=True; --parents on the command line)"
        )
    return folder


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], parents: bool = False) -> Path:
    """Write ``path`` atomically and durably: ``write`` fills a temporary file in the same folder,
    which is flushed to disk and renamed over ``path``; the folder's entry is then flushed too.
    Readers see the old file or the whole new one, a failed write leaves nothing behind, and the
    file gets the permissions of the umask like any other new file. Every file ctflow writes
    goes through here (or :func:`atomic_directory`). The folder must exist unless ``parents``.

    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = atomic_write(Path(folder) / "note.txt", lambda tmp: tmp.write_text("done"))
    ...     print(path.name, path.read_text())
    note.txt done
    """
    path = Path(path)
    output_folder(path, parents)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        _fsync(tmp)
        _readable_by_others(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, parents: bool = False) -> Path:
    """Write ``obj`` as indented JSON with :func:`atomic_write` (numbers JSON lacks as floats)."""
    text = json.dumps(obj, indent=2, default=float)
    return atomic_write(path, lambda tmp: tmp.write_text(text), parents)


def atomic_directory(path: str | os.PathLike, write: Callable[[Path], None], parents: bool = False) -> Path:
    """Write the folder ``path`` atomically: ``write`` fills a temporary folder beside it whose
    files are flushed, then it replaces ``path`` (an existing folder is swapped out and removed).
    The folder holding ``path`` must exist unless ``parents``."""
    target = Path(path)
    output_folder(target, parents)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        for file in tmp.iterdir():
            _fsync(file)
            _readable_by_others(file)
        _readable_by_others(tmp, folder=True)
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            backup.rmdir()
            target.rename(backup)
            tmp.rename(target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            tmp.rename(target)
        _fsync(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` with :func:`atomic_write`."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a checkpoint dict (got {type(state).__name__})")
    return state


@contextlib.contextmanager
def rng_scope(
    seed: int | None, device: torch.device | str = "cpu", *, always_fork: bool = False
) -> Iterator[None]:
    """Run a block on its own torch RNG stream (CPU and ``device``), restored afterwards: seeded
    with ``seed``; with ``seed=None`` the block shares the caller's stream, unless ``always_fork``
    (then it runs on a copy, leaving the caller's stream untouched)."""
    if seed is None and not always_fork:
        yield
        return
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(int(seed))
        yield


def capture_rng_state() -> dict[str, Any]:
    """States of Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device).

    Everything is stored as tensors, ints and strings so that ``weights_only`` loading accepts it.
    """
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators from :func:`capture_rng_state`'s dict (missing parts are left alone)."""
    if "python" in state:
        py = state["python"]
        random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    if "numpy" in state:
        nps = state["numpy"]
        keys = nps["keys"].numpy().astype(np.uint32)
        np.random.set_state((nps["name"], keys, nps["pos"], nps["has_gauss"], nps["gauss"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)

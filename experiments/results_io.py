"""Where the experiments keep their results, and how they write them (whole files or nothing)."""

from __future__ import annotations

import os
from pathlib import Path

from ctflow.checkpoint import atomic_write

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, creating its folder."""
    return atomic_write(path, lambda tmp: tmp.write_text(text), parents=True)

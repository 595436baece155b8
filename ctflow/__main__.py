"""``python -m ctflow ...``: the ``ctflow`` command (see :mod:`ctflow.cli`)."""

from .cli import main

raise SystemExit(main())

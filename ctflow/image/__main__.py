"""``python -m ctflow.image train ...`` (see :mod:`ctflow.image.cli`)."""

from .cli import main

raise SystemExit(main())

"""``python -m perf``: see :mod:`perf.cli`."""

from .cli import main

raise SystemExit(main())

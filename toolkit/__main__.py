"""``python -m toolkit``: the same command line as ``toolkit``."""

from toolkit.commands import main

raise SystemExit(main())

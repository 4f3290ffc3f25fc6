"""``python -m autosurgeon`` is the ``autosurgeon`` command."""
from autosurgeon.cli import main

raise SystemExit(main())

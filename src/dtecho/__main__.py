"""``python -m dtecho`` is the ``dtecho`` command."""

from dtecho.cli import main

raise SystemExit(main())

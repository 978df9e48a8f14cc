"""``python -m mimic_utils.organism``: see :mod:`mimic_utils.organism.cli`."""

from mimic_utils.organism.cli import main

raise SystemExit(main())

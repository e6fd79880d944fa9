"""``python -m appzoo`` is the ``easynlp`` command."""

from appzoo.cli import main

raise SystemExit(main())

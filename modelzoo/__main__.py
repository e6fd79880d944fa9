"""``python -m modelzoo``: see :mod:`modelzoo.cli`."""

import sys

from .cli import main

sys.exit(main())

"""Shared test setup: the `helpers` package (independent reference implementations, tiny configs)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
# Tests run on CPU with few threads so the suite behaves the same on a 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")

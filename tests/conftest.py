"""Shared test setup: the `helpers` package (independent reference implementations, tiny configs)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
# Tests run on CPU with few threads so the suite behaves the same on a 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 server (moto in server mode) on loopback, shared by the whole session."""
    from helpers.servers import moto_s3_server

    with moto_s3_server() as endpoint:
        yield endpoint

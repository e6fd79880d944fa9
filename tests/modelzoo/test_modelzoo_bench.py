"""Smoke test of bench/downloads.py at a tiny size: it runs end to end and prints every result line.

No timing is asserted: the figures only mean something at the script's real size.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_modelzoo_benchmark_prints_its_results(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "downloads.py"), "--size-mib", "2", "--repeats", "1",
                           "--link-mib", "50", "--latency-calls", "5", "--workdir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for start in ("machine:", "object: 2 MiB", "unthrottled loopback:", "server capped at 50 MiB/s:",
                  "cached resolve, warm process:", "cached resolve, fresh process:"):
        assert any(line.startswith(start) for line in lines), (start, proc.stdout)
    assert sum(line.strip().startswith("modelzoo") for line in lines) == 2
    assert list(tmp_path.iterdir()) == [], "the benchmark must remove its scratch files"


def test_test_server_is_not_shipped_in_the_package():
    import importlib.util

    assert importlib.util.find_spec("modelzoo.testing") is None, "test-only code belongs under tests/helpers"
    assert (ROOT / "tests" / "helpers" / "range_server.py").is_file()

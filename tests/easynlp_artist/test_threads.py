"""Thread defaults: one thread for a small model, the free cores for a large one, the user's choice kept.

``os.getloadavg`` and the affinity mask are replaced where a test needs a fixed machine state (the
real load of a shared test machine changes from second to second); the predict command at the end
runs on the real machine.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from easynlp_artist import runtime


@pytest.mark.parametrize(("params", "cores", "load", "expected"), [
    (4_000_000, 8, 0.0, 1),  # the embedded default: never more than one
    (200_000_000, 2, 0.1, 2),  # ARTIST-base on a quiet 2-core machine
    (200_000_000, 2, 1.2, 1),  # ... with one core busy
    (200_000_000, 16, 5.4, 11),
    (200_000_000, 2, 9.0, 1),  # overloaded: still one
])
def test_default_num_threads(params, cores, load, expected):
    assert runtime.default_num_threads(params, cores, load) == expected


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_set_default_threads_follows_the_model_and_keeps_omp_num_threads(monkeypatch, restore_threads, caplog):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    cores = runtime.available_cores()
    large = torch.nn.Linear(6000, 5001, device="meta")  # 30 M parameters, no memory
    caplog.set_level("INFO", logger="easynlp_artist.runtime")
    assert runtime.set_default_threads(large) == cores == torch.get_num_threads()
    assert runtime.set_default_threads(torch.nn.Linear(128, 128)) == 1 == torch.get_num_threads()
    assert f"torch threads: 1 (0.0M parameters, {cores} core(s), load average 0.2" in caplog.text
    torch.set_num_threads(cores)
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores))
    assert runtime.set_default_threads(torch.nn.Linear(128, 128)) == cores  # the user's choice stays
    assert "from OMP_NUM_THREADS" in caplog.text


def test_predict_uses_one_thread_for_the_embedded_model(tmp_path):
    (tmp_path / "t.tsv").write_text("0\t一个番茄\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    result = subprocess.run(
        [sys.executable, "-m", "appzoo", "--app_name=text2image_artist", "--mode=predict", "--tables=t.tsv",
         "--outputs=out.tsv", "--user_defined_parameters=max_generated_num=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "torch threads: 1 (" in result.stderr and "M parameters" in result.stderr
    assert (tmp_path / "out.tsv").read_text(encoding="utf-8").count("\n") == 1

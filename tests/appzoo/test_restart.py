"""A rank killed mid-training is restarted by torchrun (``--max_restarts``) and the run continues from
its last checkpoint to the weights of an uninterrupted run; a process that is alive but stuck inside a
collective stops the run after ``--collective_timeout``. Real torchrun launches (gloo on CPU), real
SIGKILL, one node and two nodes on loopback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.server_process import children, environ_of, free_port

from appzoo.trainer import STATE_FILE

SCHEMA = "idx:str:1,x:float:4,y:float:1"
# 8 optimizer steps per epoch at 2 processes x 2 rows; a checkpoint every epoch; dropout, so the
# resumed run must also restore every rank's random state; 0.1 s per step leaves time to kill one
TRAIN = ["--app_name=toy_regression", "--mode=train", "--epoch_num=6", "--micro_batch_size=2", "--logging_steps=4",
         "--save_checkpoint_steps=8", "--random_seed=5", f"--input_schema={SCHEMA}", "--peer_timeout=5",
         "--user_defined_parameters=dropout=0.3 step_sleep=0.1"]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    assert torch.load(ckpt / "last" / STATE_FILE, weights_only=True)["step"] == 48
    return torch.load(ckpt / "last" / "pytorch_model.bin", weights_only=True)


@pytest.fixture(scope="module")
def reference(toy_env, tmp_path_factory, write_toy_table):
    """(table, final weights of an uninterrupted two-process run)."""
    root = tmp_path_factory.mktemp("reference")
    table = write_toy_table(root / "train.tsv", 32)
    ckpt = root / "uninterrupted"
    result = subprocess.run([sys.executable, "-m", "appzoo", "--worker_gpu=2", *TRAIN, f"--tables={table}",
                             f"--checkpoint_dir={ckpt}"], env=toy_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return table, _weights(ckpt)


def _kill_rank_1_after_checkpoint(procs: list[subprocess.Popen], log: Path) -> None:
    """SIGKILL the worker of global rank 1 once the step-16 checkpoint is written."""
    deadline = time.monotonic() + 120
    while "step 16: checkpoint written" not in log.read_text():
        assert all(p.poll() is None for p in procs), log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    for proc in procs:
        for worker in children(proc.pid):
            if environ_of(worker).get("RANK") == "1":
                os.kill(worker, signal.SIGKILL)
                return
    pytest.fail("no worker of rank 1 found")


def _finish(procs: list[subprocess.Popen]) -> list[int]:
    try:
        return [proc.wait(timeout=180) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _check_resumed(log: str, ckpt: Path, reference: dict[str, torch.Tensor]) -> None:
    assert "restart 1: continuing from" in log, log[-3000:]
    starts = [int(step) for step in re.findall(r"starting at step (\d+)", log)]
    assert starts[0] == 0 and starts[1] >= 16, log[-3000:]  # the second attempt resumed mid-run
    final = _weights(ckpt)
    assert final.keys() == reference.keys()
    for name in final:
        assert torch.equal(final[name], reference[name]), name


def test_a_killed_rank_is_restarted_and_training_ends_with_the_uninterrupted_weights(toy_env, tmp_path, reference):
    table, weights = reference
    ckpt, log = tmp_path / "restarted", tmp_path / "restarted.err"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "appzoo", "--worker_gpu=2", "--max_restarts=1", *TRAIN,
                                 f"--tables={table}", f"--checkpoint_dir={ckpt}"], env=toy_env,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    _kill_rank_1_after_checkpoint([proc], log)
    assert _finish([proc]) == [0], log.read_text()[-3000:]
    _check_resumed(log.read_text(), ckpt, weights)


def test_two_nodes_restart_together_after_a_rank_is_killed(toy_env, tmp_path, reference):
    """NODE_RANK 0 and 1 on loopback, one process each: the same global batch as the reference."""
    table, weights = reference
    ckpt, port = tmp_path / "restarted", free_port()
    launch = [sys.executable, "-m", "appzoo", "--worker_count=2", "--master_addr=127.0.0.1", f"--master_port={port}",
              "--max_restarts=1", *TRAIN, f"--tables={table}", f"--checkpoint_dir={ckpt}"]
    logs = [tmp_path / f"node{r}.err" for r in (0, 1)]
    procs = []
    for rank in (0, 1):
        with open(logs[rank], "w") as err:
            procs.append(subprocess.Popen(launch, env={**toy_env, "NODE_RANK": str(rank)},
                                          stdout=subprocess.DEVNULL, stderr=err, start_new_session=True))
    _kill_rank_1_after_checkpoint(procs, logs[0])
    assert _finish(procs) == [0, 0], logs[0].read_text()[-2000:] + logs[1].read_text()[-2000:]
    _check_resumed(logs[0].read_text(), ckpt, weights)


def test_a_process_stuck_inside_a_collective_stops_the_run_after_collective_timeout(toy_env, tmp_path,
                                                                                   write_toy_table):
    """Rank 1 stops working at its 10th step while its heartbeat goes on: no peer is lost, so only the
    collective's own timeout can end rank 0's wait (gloo's default would be 30 minutes)."""
    table = write_toy_table(tmp_path / "train.tsv", 32)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "appzoo", "--worker_gpu=2", "--app_name=toy_regression", "--mode=train",
         "--epoch_num=20", "--micro_batch_size=1", f"--tables={table}", f"--input_schema={SCHEMA}",
         f"--checkpoint_dir={tmp_path / 'ckpt'}", "--peer_timeout=5", "--collective_timeout=5",
         "--user_defined_parameters=stall_at_step=10"],
        env=toy_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    assert time.monotonic() - started < 90
    assert ("easynlp: error: a collective operation timed out (--collective_timeout=5): every process still "
            "beats, so one of them is alive but stuck; stopping rank 0") in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ckpt" / "last").exists()

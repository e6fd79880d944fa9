"""A process or a machine lost mid-run: real torchrun launches (gloo on CPU), real SIGKILL/SIGSTOP.

Two `easynlp` launches play two machines on loopback (NODE_RANK 0 and 1); the survivors must stop
within a bounded time with one line naming the lost rank, and no traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.server_process import children, environ_of, free_port

SCHEMA = "idx:str:1,x:float:4,y:float:1"
PEER_TIMEOUT = 5  # seconds (--peer_timeout); the default is 60


def _train_argv(table: Path, ckpt: Path) -> list[str]:
    return ["--app_name=toy_regression", "--mode=train", "--epoch_num=100000", "--micro_batch_size=1",
            "--logging_steps=1", f"--tables={table}", f"--input_schema={SCHEMA}", f"--checkpoint_dir={ckpt}",
            f"--peer_timeout={PEER_TIMEOUT}"]


@contextlib.contextmanager
def _taken_port():
    """A port on 127.0.0.1 another program listens on, for the duration."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_training(log: Path, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 120
    while "training:" not in log.read_text():
        assert all(p.poll() is None for p in procs), log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    time.sleep(1)  # a few steps in


def _kill_all(procs: list[subprocess.Popen], extra: list[int]) -> None:
    for pid in extra + [c for p in procs if p.poll() is None for c in children(p.pid)]:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def two_nodes(toy_env, tmp_path, write_toy_table):
    """Start two nodes training for ever; yields (nodes, logs, workers of node 1); all killed after."""
    table = write_toy_table(tmp_path / "train.tsv", 32)
    port = free_port()
    launch = [sys.executable, "-m", "appzoo", "--worker_count=2", "--master_addr=127.0.0.1",
              f"--master_port={port}", *_train_argv(table, tmp_path / "ckpt")]
    logs = [tmp_path / f"node{r}.err" for r in (0, 1)]
    nodes, workers = [], []
    try:
        for rank in (0, 1):
            with open(logs[rank], "w") as err:
                nodes.append(subprocess.Popen(launch, env={**toy_env, "NODE_RANK": str(rank)},
                                              stdout=subprocess.DEVNULL, stderr=err, start_new_session=True))
        _wait_for_training(logs[0], nodes)
        workers = children(nodes[1].pid)
        assert len(workers) == 1
        yield nodes, logs, workers
    finally:
        _kill_all(nodes, workers)


def _node0_outcome(nodes, logs, bound: float) -> tuple[int, str, float]:
    start = time.monotonic()
    try:
        code = nodes[0].wait(timeout=bound)
    except subprocess.TimeoutExpired:
        pytest.fail(f"node 0 still running {bound} s after node 1 was lost:\n{logs[0].read_text()[-2000:]}")
    return code, logs[0].read_text(), time.monotonic() - start


def test_node_whose_launcher_is_killed_stops_and_the_other_node_exits_naming_it(two_nodes):
    nodes, logs, workers = two_nodes
    # SIGKILL to node 1's process group: torchrun's agent; its worker runs in a session of its own
    os.killpg(nodes[1].pid, signal.SIGKILL)
    code, err, _ = _node0_outcome(nodes, logs, 60)
    assert code == 1, err[-3000:]
    assert "easynlp: error: lost contact with rank 1 (node 1)" in err
    assert "Traceback" not in err
    deadline = time.monotonic() + 10
    while _alive(workers[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(workers[0]), "node 1's worker outlived its launcher"
    assert "easynlp: error: the launcher of rank 1 (torchrun, pid " in logs[1].read_text()


def test_frozen_node_is_lost_after_peer_timeout(two_nodes):
    nodes, logs, workers = two_nodes
    for pid in [nodes[1].pid, *workers]:  # the machine stops answering: no reset, no FIN
        os.kill(pid, signal.SIGSTOP)
    code, err, waited = _node0_outcome(nodes, logs, 60)
    assert code == 1, err[-3000:]
    assert f"easynlp: error: lost contact with rank 1 (node 1): no heartbeat for {PEER_TIMEOUT} s" in err
    assert "Traceback" not in err
    assert PEER_TIMEOUT - 2 <= waited <= PEER_TIMEOUT + 20


def test_worker_killed_on_one_machine_gives_one_line_without_traceback(toy_env, tmp_path, write_toy_table):
    table = write_toy_table(tmp_path / "train.tsv", 32)
    log = tmp_path / "run.err"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "appzoo", "--worker_gpu=2",
                                 *_train_argv(table, tmp_path / "ckpt")],
                                env=toy_env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    workers: list[int] = []
    try:
        _wait_for_training(log, [proc])
        workers = children(proc.pid)
        rank1 = next(pid for pid in workers if environ_of(pid).get("RANK") == "1")
        os.kill(rank1, signal.SIGKILL)
        code = proc.wait(timeout=60)
    finally:
        _kill_all([proc], workers)
    text = log.read_text()
    assert code != 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("easynlp: error:")]
    assert errors[0].startswith("easynlp: error: lost contact with rank 1 (node 0)"), errors
    assert errors[-1].startswith("easynlp: error: 2 of 2 process(es) failed"), errors


def test_a_process_that_cannot_open_the_run_store_says_so_in_one_line(toy_env, tmp_path, write_toy_table):
    """A worker started by a scheduler (WORLD_SIZE, RANK, MASTER_ADDR/PORT in its environment, as PAI-DLC
    sets them) whose store port is taken by another program: one line naming the address, exit 1."""
    table = write_toy_table(tmp_path / "train.tsv", 8)
    with _taken_port() as port:
        env = {**toy_env, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        proc = subprocess.run([sys.executable, "-m", "appzoo", *_train_argv(table, tmp_path / "ckpt")], env=env,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"easynlp: error: rank 0 of 2 could not join the run's store at 127.0.0.1:{port} "
                                "(--master_addr/--master_port): "), lines
    assert "address already in use" in lines[-1], lines
    assert not (tmp_path / "ckpt").exists()


def test_a_launcher_whose_master_port_is_taken_says_so_in_one_line(toy_env, tmp_path, write_toy_table):
    """Node 0 of a two-machine run whose --master_port is taken: torchrun's agent cannot open the run's
    store; one line naming --master_addr/--master_port instead of torchrun's traceback."""
    table = write_toy_table(tmp_path / "train.tsv", 8)
    with _taken_port() as port:
        proc = subprocess.run([sys.executable, "-m", "appzoo", "--worker_gpu=1", "--worker_count=2",
                               "--master_addr=127.0.0.1", f"--master_port={port}",
                               *_train_argv(table, tmp_path / "ckpt")],
                              env={**toy_env, "NODE_RANK": "0"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"easynlp: error: the launcher could not set up the run at 127.0.0.1:{port} (--master_addr/--master_port): "
    ), proc.stderr[-3000:]

"""Real multi-process runs: `--worker_gpu=2` relaunches under torchrun (gloo on CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.server_process import free_port

from appzoo.args import CommonArgs, UsageError
from appzoo.cli import main
from appzoo.distributed import run_sharded_predict
from appzoo.launch import needs_relaunch, torchrun_command
from appzoo.tables import Schema, read_table

SCHEMA = "idx:str:1,x:float:4,y:float:1"
TOY_PLUGIN = Path(__file__).parent / "toy_plugin"


def _common(table, ckpt, *extra):
    return [f"--tables={table}", f"--input_schema={SCHEMA}", f"--checkpoint_dir={ckpt}", "--random_seed=3", *extra]


def _torchrun(env, argv):
    return subprocess.run([sys.executable, "-m", "appzoo", "--worker_gpu=2", *argv], env=env, capture_output=True,
                          text=True, timeout=300)


def test_two_process_training_equals_one_process_on_same_global_batches(toy_plugin, toy_env, tmp_path,
                                                                       write_toy_table):
    table = write_toy_table(tmp_path / "train.tsv", 16)
    train = ["--app_name=toy_regression", "--mode=train", "--epoch_num=2", "--learning_rate=0.02",
             "--warmup_proportion=0.25", "--max_grad_norm=0.5"]
    # one process: micro batch 4; two processes: micro batch 1 x 2 accumulation steps each
    assert main([*train, *_common(table, tmp_path / "one", "--micro_batch_size=4")]) == 0
    result = _torchrun(toy_env, [*train, *_common(table, tmp_path / "two", "--micro_batch_size=1",
                                                   "--gradient_accumulation_steps=2")])
    assert result.returncode == 0, result.stderr[-3000:]
    one = torch.load(tmp_path / "one" / "last" / "pytorch_model.bin", weights_only=True)
    two = torch.load(tmp_path / "two" / "last" / "pytorch_model.bin", weights_only=True)
    initial = toy_plugin.build_model(toy_plugin.ToyParams(), seed=3).state_dict()
    for name in one:
        assert not torch.allclose(one[name], initial[name]), name
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
    state = torch.load(tmp_path / "two" / "last" / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 8


@pytest.fixture
def toy_checkpoint(toy_plugin, tmp_path, write_toy_table):
    table = write_toy_table(tmp_path / "fit.tsv", 8, seed=5)
    ckpt = tmp_path / "ckpt"
    assert main(["--app_name=toy_regression", "--mode=train", "--epoch_num=1", "--micro_batch_size=4",
                 *_common(table, ckpt)]) == 0
    return ckpt


def test_two_process_sharded_predict_equals_one_process(toy_env, tmp_path, toy_checkpoint, write_toy_table):
    table = write_toy_table(tmp_path / "test.tsv", 7, seed=9)
    predict = ["--app_name=toy_regression", "--mode=predict", "--micro_batch_size=2", "--append_cols=y"]
    assert main([*predict, *_common(table, toy_checkpoint, f"--outputs={tmp_path / 'one.tsv'}")]) == 0
    # parts left by an earlier three-process run killed before its merge
    for r in range(3):
        (tmp_path / f".two.tsv.part-{r:05d}-of-00003").write_text("stale\n")
    result = _torchrun(toy_env, [*predict, *_common(table, toy_checkpoint, f"--outputs={tmp_path / 'two.tsv'}")])
    assert result.returncode == 0, result.stderr[-3000:]
    one = (tmp_path / "one.tsv").read_text()
    assert [line.split("\t")[0] for line in one.splitlines()] == [str(i) for i in range(7)]
    assert (tmp_path / "two.tsv").read_text() == one
    assert not [p for p in tmp_path.iterdir() if ".part-" in p.name]


def test_failure_on_one_rank_publishes_nothing(toy_env, tmp_path):
    table = tmp_path / "in.tsv"
    table.write_text("".join(f"{i}\tt{i}\n" for i in range(6)))
    out = tmp_path / "out.tsv"
    result = _torchrun(toy_env, [
        "--app_name=toy_echo", "--mode=predict", f"--tables={table}", f"--outputs={out}",
        "--input_schema=idx:str:1,text:str:1", "--first_sequence=text", "--micro_batch_size=1",
        "--user_defined_parameters=fail_on=t3",  # row index 3 belongs to rank 1
    ])
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"easynlp: error: {table}, line 4, column 2: refusing to echo 't3'" in result.stderr
    assert "easynlp: error: 2 of 2 process(es) failed (exit code " in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tsv"]


@pytest.mark.parametrize("fail_on", ["", "r3"])
def test_sharded_predict_probe_every_rank_agrees(toy_env, tmp_path, fail_on):
    """Rows 0..6 over 2 ranks, batch 2 (batches r0-r1, r4-r5 on rank 0; r2-r3, r6 on rank 1); with
    fail_on=r3 rank 1 fails and rank 0 must raise too, with no output published."""
    table = tmp_path / "in.tsv"
    table.write_text("".join(f"r{i}\n" for i in range(7)))
    out = tmp_path / "out.tsv"
    reports = tmp_path / "reports"
    reports.mkdir()
    probe = str(TOY_PLUGIN / "sharded_predict_probe.py")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             probe, str(table), str(out), fail_on, str(reports)],
                            env=toy_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = [(reports / f"rank{r}.txt").read_text() for r in range(2)]
    if not fail_on:
        assert outcomes == ["ok 7", "ok 7"]
        assert out.read_text() == "".join(f"R{i}\n" for i in range(7))
    else:
        assert outcomes[1] == "ValueError: cannot handle r3"
        assert outcomes[0] == "ShardedPredictError: sharded predict failed in another process; no output was written"
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.tsv", "reports"] + ([] if fail_on else ["out.tsv"]))


def test_sharded_predict_single_process_checks_row_counts(tmp_path):
    path = tmp_path / "in.tsv"
    path.write_text("a\nb\nc\n")
    rows = read_table(path, Schema.parse("t:str:1"))
    with pytest.raises(ValueError, match="returned 1 rows for a batch of 2"):
        run_sharded_predict(rows, lambda batch: [["x"]], str(tmp_path / "out.tsv"), batch_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tsv"]
    rows = read_table(path, Schema.parse("t:str:1"))
    count = run_sharded_predict(rows, lambda batch: [[r["t"] * 2] for r in batch], str(tmp_path / "o.tsv"),
                                batch_size=2, header=["doubled"])
    assert count == 3 and (tmp_path / "o.tsv").read_text() == "doubled\naa\nbb\ncc\n"


def test_torchrun_command_one_and_several_machines():
    argv = ["--app_name=x", "--worker_gpu=4"]
    one = torchrun_command(argv, CommonArgs(worker_gpu=4))
    assert one[1:] == ["-m", "torch.distributed.run", "--nproc_per_node=4", "--standalone", "-m", "appzoo", *argv]
    args = CommonArgs(worker_gpu=2, worker_count=3, master_addr="10.0.0.1", master_port=2345)
    several = torchrun_command(argv, args, environ={"RANK": "2"})
    assert several[3:8] == ["--nproc_per_node=2", "--nnodes=3", "--node_rank=2", "--master_addr=10.0.0.1",
                            "--master_port=2345"]
    assert torchrun_command(argv, args, environ={"NODE_RANK": "1", "RANK": "2"})[5] == "--node_rank=1"
    restarted = CommonArgs(max_restarts=2)
    assert needs_relaunch(restarted) and not needs_relaunch(CommonArgs())  # one process restarted too
    assert torchrun_command(argv, restarted)[3:6] == ["--nproc_per_node=1", "--standalone", "--max_restarts=2"]
    with pytest.raises(UsageError, match="NODE_RANK or RANK"):
        torchrun_command(argv, args, environ={})
    with pytest.raises(UsageError, match="node rank 3 is outside 0..2"):
        torchrun_command(argv, args, environ={"NODE_RANK": "3"})


def _two_nodes(env, argv):
    """Two `easynlp` launches as two machines (NODE_RANK 0 and 1, master on 127.0.0.1), one process each."""
    port = free_port()
    launch = [sys.executable, "-m", "appzoo", "--worker_count=2", "--master_addr=127.0.0.1",
              f"--master_port={port}", *argv]
    nodes = [subprocess.Popen(launch, env={**env, "NODE_RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    results = []
    for proc in nodes:
        try:
            _, err = proc.communicate(timeout=300)
        finally:
            proc.kill()
        results.append((proc.returncode, err))
    return results


def test_two_machines_on_loopback_train_and_predict_like_one(toy_plugin, toy_env, tmp_path, write_toy_table):
    table = write_toy_table(tmp_path / "train.tsv", 16)
    train = ["--app_name=toy_regression", "--mode=train", "--epoch_num=1", "--learning_rate=0.02",
             "--warmup_proportion=0.25"]
    assert main([*train, *_common(table, tmp_path / "one", "--micro_batch_size=4")]) == 0
    for code, err in _two_nodes(toy_env, [*train, *_common(table, tmp_path / "two", "--micro_batch_size=1",
                                                           "--gradient_accumulation_steps=2")]):
        assert code == 0, err[-3000:]
    one = torch.load(tmp_path / "one" / "last" / "pytorch_model.bin", weights_only=True)
    two = torch.load(tmp_path / "two" / "last" / "pytorch_model.bin", weights_only=True)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
    assert torch.load(tmp_path / "two" / "last" / "trainer_state.pt", weights_only=True)["world_size"] == 2

    test = write_toy_table(tmp_path / "test.tsv", 7, seed=9)
    predict = ["--app_name=toy_regression", "--mode=predict", "--micro_batch_size=2", "--append_cols=y"]
    assert main([*predict, *_common(test, tmp_path / "one", f"--outputs={tmp_path / 'one.tsv'}")]) == 0
    for code, err in _two_nodes(toy_env, [*predict, *_common(test, tmp_path / "one", f"--outputs={tmp_path / 'two.tsv'}")]):
        assert code == 0, err[-3000:]
    assert (tmp_path / "two.tsv").read_text() == (tmp_path / "one.tsv").read_text()


def test_sigterm_to_a_multi_process_run_stops_it_with_one_line(toy_env, tmp_path, write_toy_table):
    import signal
    import time

    table = write_toy_table(tmp_path / "train.tsv", 64)
    proc = subprocess.Popen(
        [sys.executable, "-m", "appzoo", "--worker_gpu=2", "--app_name=toy_regression", "--mode=train",
         "--epoch_num=100000", "--micro_batch_size=1", "--logging_steps=1", *_common(table, tmp_path / "ckpt")],
        env=toy_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    lines = []
    while not any("training:" in line for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
        lines.append(proc.stderr.readline())
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 143, rest[-3000:]
    assert rest.strip().splitlines()[-1].startswith("easynlp: error: stopped by signal 15")
    assert "Traceback" not in rest.split("easynlp: error: stopped by signal")[-1]

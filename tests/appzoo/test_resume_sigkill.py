"""A training process killed with SIGKILL in the middle of writing a checkpoint, then resumed, ends
with exactly the parameters of an uninterrupted run (dropout on, so RNG state matters)."""

from __future__ import annotations

import signal
import subprocess
import sys

import torch

from appzoo.trainer import STATE_FILE


def _train(env, table, ckpt, *extra, expect=0):
    command = [
        sys.executable, "-m", "appzoo", "--app_name=toy_regression", "--mode=train", f"--tables={table}",
        "--input_schema=idx:str:1,x:float:4,y:float:1", f"--checkpoint_dir={ckpt}", "--micro_batch_size=2",
        "--gradient_accumulation_steps=2", "--epoch_num=3", "--learning_rate=0.02", "--save_checkpoint_steps=2",
        "--random_seed=11", *extra,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == expect, result.stderr[-3000:]
    return result


def test_sigkill_during_checkpoint_then_resume_matches_uninterrupted(toy_env, tmp_path, write_toy_table):
    table = write_toy_table(tmp_path / "train.tsv", 12)
    udp = "--user_defined_parameters=dropout=0.3 hidden=6"
    _train(toy_env, table, tmp_path / "full", udp)

    killed = tmp_path / "killed"
    _train(toy_env, table, killed, "--user_defined_parameters=dropout=0.3 hidden=6 kill_at_save=2",
           expect=-signal.SIGKILL)
    # killed while writing the step-4 checkpoint: the step-2 checkpoint is intact, the half-written one
    # only exists as a temporary directory
    assert torch.load(killed / "last" / STATE_FILE, weights_only=True)["step"] == 2
    leftovers = [p.name for p in killed.iterdir() if p.name != "last"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.") and leftovers[0].endswith(".staging")

    _train(toy_env, table, killed, udp, f"--resume_from_checkpoint={killed / 'last'}")
    assert sorted(p.name for p in killed.iterdir()) == ["last"]
    final = torch.load(killed / "last" / "pytorch_model.bin", weights_only=True)
    reference = torch.load(tmp_path / "full" / "last" / "pytorch_model.bin", weights_only=True)
    assert final.keys() == reference.keys()
    for name in final:
        assert torch.equal(final[name], reference[name]), name
    assert torch.load(killed / "last" / STATE_FILE, weights_only=True)["step"] == 9

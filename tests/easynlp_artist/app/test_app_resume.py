"""The ARTIST app killed with SIGKILL mid-training, then resumed, ends with the weights of an
uninterrupted run — stage 2 with caption dropout on (so the restored RNG state matters), stage 1 with
the discriminator and dead-code restarts on (so their state matters)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.tables import write_world
from safetensors.torch import load_file

TINY = (
    "size=16 vqgan_ch=8 vqgan_ch_mult=1,2 vqgan_num_res_blocks=1 vqgan_attn_resolutions=8 vqgan_embed_dim=8 "
    "img_vocab_size=24 n_layer=2 n_head=2 n_embd=32 text_len=8 caption_dropout=0.3"
)


STAGE = {"gpt": "", "vqgan": "stage=vqgan disc_start=4 restart_dead_codes=5"}


def command(w, ckpt, stage, *extra):
    exe = Path(sys.executable).with_name("easynlp")
    return [
        str(exe), "--app_name=text2image_artist", "--mode=train", f"--tables={w['train']}",
        f"--checkpoint_dir={ckpt}", "--micro_batch_size=2", "--epoch_num=30", "--learning_rate=1e-3",
        "--save_checkpoint_steps=3", "--logging_steps=50", "--random_seed=3",
        f"--user_defined_parameters={TINY} {STAGE[stage]} vocab_path={w['vocab']} code_cache_dir={ckpt.parent / 'codes'}",
        *extra,
    ]


@pytest.mark.parametrize("stage", ["gpt", "vqgan"])
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, stage):
    w = write_world(tmp_path / "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = subprocess.run(command(w, tmp_path / "full", stage), env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(w, killed, stage), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "last" / "trainer_state.pt").exists():  # the first checkpoint is complete
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL

    resumed = subprocess.run(command(w, killed, stage, f"--resume_from_checkpoint={killed}"), env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (killed / "last" / "training_model.safetensors").exists()  # the model file is the exact copy
    files = ["model.safetensors"] + (["stage1_training.safetensors"] if stage == "vqgan" else [])
    for file in files:
        a = load_file(killed / "last" / file)
        b = load_file(tmp_path / "full" / "last" / file)
        assert a.keys() == b.keys() and a, file
        for name in a:
            assert (a[name] == b[name]).all(), f"{file}: {name}"

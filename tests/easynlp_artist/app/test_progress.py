"""Predict and evaluate show progress, seen as a user sees it: a real `easynlp` process on a copy of
the embedded model and a tiny table. Without a terminal: a start line (device, dtype, threads, the
effective sampling settings) and periodic log lines; on a terminal (a pseudo-terminal here): the
tqdm bar with rows, images, images/s and the ETA."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import torch
from helpers.tables import png_b64, write_table

import easynlp_artist
from easynlp_artist.loading import DEFAULT_MODEL

EXE = Path(sys.executable).with_name("easynlp")
EMBEDDED = Path(easynlp_artist.__file__).parent / "resources" / DEFAULT_MODEL
PROMPTS = ["一个红色的圆形", "一个番茄", "一个蓝色的方块"]


def _model(tmp_path) -> Path:
    """The embedded model with sampling defaults of its own in generation_config.json, so the start
    line can only show them by reading that file."""
    ckpt = tmp_path / "model"
    shutil.copytree(EMBEDDED, ckpt)
    config = json.loads((ckpt / "generation_config.json").read_text())
    config.update(top_p=0.73, temperature=0.85)
    (ckpt / "generation_config.json").write_text(json.dumps(config))
    return ckpt


def _predict_args(tmp_path) -> list[str]:
    table = tmp_path / "prompts.tsv"
    table.write_text("".join(f"{i}\t{p}\n" for i, p in enumerate(PROMPTS)), encoding="utf-8")
    return [str(EXE), "--app_name=text2image_artist", "--mode=predict", f"--tables={table}",
            f"--outputs={tmp_path / 'pred.tsv'}", f"--checkpoint_dir={_model(tmp_path)}", "--micro_batch_size=1",
            "--user_defined_parameters=max_generated_num=1 top_k=7 num_threads=1"]


ENV = {**os.environ, "EASYNLP_PROGRESS_SECONDS": "0"}  # a log line after every batch


def _start_line(err: str, marker: str) -> str:
    lines = [ln for ln in err.splitlines() if marker in ln]
    assert len(lines) == 1, err
    return lines[0]


def _check_settings(line: str) -> None:
    # top_k given on the command line; top_p and temperature from the copy's generation_config.json
    assert "device cpu, dtype float32, 1 thread(s); sampling: top_k=7, top_p=0.73, temperature=0.85, " in line, line
    assert "guidance_scale=1.0, method=sequential" in line, line


def test_predict_without_a_terminal_logs_settings_and_progress_lines(tmp_path):
    proc = subprocess.run(_predict_args(tmp_path), capture_output=True, text=True, timeout=300, env=ENV,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    _check_settings(_start_line(proc.stderr, "row(s) to generate"))
    progress = re.findall(r"predict: (\d)/3 rows, (\d) images, [\d.]+ images/s(, ETA \d+ s)?, [\d.]+ s$",
                          proc.stderr, re.M)
    assert [(r, i, bool(eta)) for r, i, eta in progress] == [
        ("1", "1", True), ("2", "2", True), ("3", "3", False)], proc.stderr
    assert "\r" not in proc.stderr and "row/s" not in proc.stderr  # no bar in a log


def test_predict_on_a_terminal_shows_the_bar(tmp_path):
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a terminal has a size
    # TQDM_MININTERVAL=0 (tqdm's own setting): every row is drawn, however fast a machine generates
    proc = subprocess.Popen(_predict_args(tmp_path), stdin=subprocess.DEVNULL, stdout=child, stderr=child,
                            env={**ENV, "TQDM_MININTERVAL": "0"})
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: every writer of the terminal has closed it
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert proc.wait(timeout=300) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    # tqdm redraws the line with \r; the last drawing of the bar has rows, images, images/s
    bars = [part for part in re.split(r"[\r\n]", screen) if part.startswith("predict:") and "|" in part]
    assert bars, screen
    assert re.fullmatch(r"predict: 100%\|.*\| 3/3 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+row/s, 3 images, [\d.]+ images/s\]\s*",
                        bars[-1]), bars[-1]
    assert all(any(re.search(rf"\| {n}/3 \[\d\d:\d\d<\d\d:\d\d", b) for b in bars) for n in (1, 2)), bars  # ETA
    _check_settings(_start_line(screen, "row(s) to generate"))
    assert not re.search(r"predict: [12]/3 rows", screen), screen  # the bar, not periodic lines


class MeanColour(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


def test_evaluate_without_a_terminal_logs_settings_and_progress_lines(tmp_path):
    ckpt = _model(tmp_path)
    res = json.loads((ckpt / "config.json").read_text())["vqgan"]["resolution"]
    table = write_table(tmp_path / "valid.tsv", [
        (str(i), p, png_b64((40 * i, 60, 220), res)) for i, p in enumerate(PROMPTS)])
    extractor = tmp_path / "mean.pt"
    torch.jit.save(torch.jit.script(MeanColour()), str(extractor))
    proc = subprocess.run(
        [str(EXE), "--app_name=text2image_artist", "--mode=evaluate", f"--tables={table}",
         f"--outputs={tmp_path / 'm.json'}", f"--checkpoint_dir={ckpt}", "--micro_batch_size=1",
         f"--user_defined_parameters=fid_feature_extractor={extractor} top_k=7 num_threads=1 "
         f"code_cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, timeout=300, env=ENV, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    _check_settings(_start_line(proc.stderr, "FID: generating 3 image(s) on"))
    for desc in ("reconstruction", "FID generation"):
        done = re.findall(rf"{desc}: (\d)/3 rows, \d images, [\d.]+ images/s", proc.stderr)
        assert done == ["1", "2", "3"], proc.stderr

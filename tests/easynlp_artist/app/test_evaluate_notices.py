"""What evaluate tells a user before and while it works, seen in a real `easynlp` process on the
embedded model: images of another size than the model's are counted in one notice; a missing FID
package stops the run before the model is loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers.tables import png_b64, write_table

from easynlp_artist.loading import DEFAULT_MODEL
from easynlp_artist.pipeline import ArtistPipeline

EXE = Path(sys.executable).with_name("easynlp")


def _evaluate(table, outputs, *extra, env=None):
    return subprocess.run(
        [str(EXE), "--app_name=text2image_artist", "--mode=evaluate", f"--tables={table}", f"--outputs={outputs}",
         "--micro_batch_size=2", *extra],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_images_of_another_size_are_reported_once_with_their_count(tmp_path):
    res = ArtistPipeline.from_pretrained(DEFAULT_MODEL).model.config.vqgan.resolution
    # line 1 at the model's size, lines 2 and 3 not (one smaller, one four times larger: decoded reduced)
    table = write_table(tmp_path / "valid.tsv", [
        ("0", "一个红色的圆形", png_b64((220, 30, 30), res)),
        ("1", "一个蓝色的方块", png_b64((40, 60, 220), res // 2)),
        ("2", "一个番茄", png_b64((220, 30, 30), 4 * res)),
    ])
    proc = _evaluate(table, tmp_path / "m.json", f"--user_defined_parameters=code_cache_dir={tmp_path / 'cache'}")
    assert proc.returncode == 0, proc.stderr
    # the run reads the images twice (codes for the loss, then reconstruction): still one notice
    notices = [ln for ln in proc.stderr.splitlines() if "were resized" in ln]
    assert len(notices) == 1, proc.stderr
    assert f"2 of 3 image(s) of {table} are not {res}x{res}" in notices[0]
    assert f"line 2: {res // 2}x{res // 2}, line 3: {4 * res}x{4 * res})" in notices[0]


def test_fid_without_torchmetrics_stops_before_the_model_is_loaded(tmp_path):
    """Uninstalling torchmetrics from the shared venv would break every other test run from it, so
    the real command runs in a process whose ``sys.modules`` blocks it (``None``: ``import`` then
    raises exactly the ImportError of a package that is not installed); the rest is the installed code."""
    res = ArtistPipeline.from_pretrained(DEFAULT_MODEL).model.config.vqgan.resolution
    table = write_table(tmp_path / "valid.tsv", [("0", "一个红色的圆形", png_b64((220, 30, 30), res))])
    extractor = tmp_path / "mean.pt"
    torch.jit.save(torch.jit.script(torch.nn.Flatten()), str(extractor))  # real: only the package is missing
    args = ["--app_name=text2image_artist", "--mode=evaluate", f"--tables={table}", f"--outputs={tmp_path / 'm.json'}",
            f"--user_defined_parameters=fid_feature_extractor={extractor}"]
    code = f"import sys; sys.modules['torchmetrics'] = None; from appzoo.cli import main; sys.exit(main({args!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert [ln for ln in lines if ln.startswith("easynlp: error:")] == [
        'easynlp: error: FID (fid_feature_extractor=) needs torchmetrics, which is not installed: '
        'pip install "easynlp-artist[fid]"'
    ] == lines[-1:], proc.stderr
    assert not any("loading model" in ln for ln in lines), proc.stderr
    assert not (tmp_path / "m.json").exists()

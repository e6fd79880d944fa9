"""Start-up: bad paths and ``--help`` answer before the app (and torch) is imported; the
``easynlp-artist`` alias is installed; OpenMP's wait policy is set before torch starts its pool.

Each check runs the real command in a fresh interpreter and reads ``sys.modules`` after it returned.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import json, os, sys
from appzoo.cli import main
status = main({argv!r})
print(json.dumps({{"status": status, "torch": "torch" in sys.modules, "diffusers": "diffusers" in sys.modules,
                  "wait_policy": os.environ.get("OMP_WAIT_POLICY")}}))
"""


def probe(argv: list[str], cwd: Path, **env: str) -> tuple[dict, str]:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    result = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], cwd=cwd, env=environ,
                            capture_output=True, text=True, timeout=300)
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


PREDICT = ["--app_name=text2image_artist", "--mode=predict"]


@pytest.mark.parametrize(("argv", "message"), [
    ([*PREDICT, "--tables=missing.tsv", "--outputs=out.tsv"], "--tables: missing.tsv: no such file"),
    (["--app_name=text2image_artist", "--mode=train", "--tables=train.tsv,gone.tsv"], "--tables: gone.tsv: no such file"),
    ([*PREDICT, "--tables=folder", "--outputs=out.tsv"], "--tables: folder is a folder, not a table file"),
    ([*PREDICT, "--tables=train.tsv", "--outputs=afile/sub/out.tsv"],
     "--outputs=afile/sub/out.tsv: {cwd}/afile is a file, not a folder"),
])
def test_bad_paths_fail_in_one_line_before_torch_is_imported(tmp_path, argv, message):
    (tmp_path / "train.tsv").write_text("0\t一个番茄\n", encoding="utf-8")
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("", encoding="utf-8")
    seen, err = probe(argv, tmp_path)
    assert seen["status"] == 2
    assert err == f"easynlp: error: {message.format(cwd=tmp_path)}\n"
    assert not seen["torch"] and not seen["diffusers"]


def test_help_does_not_import_torch(tmp_path):
    seen, err = probe(["--help"], tmp_path)
    assert seen == {"status": 0, "torch": False, "diffusers": False, "wait_policy": None}, err


def test_wait_policy_is_passive_unless_the_user_chose_one(tmp_path):
    """libgomp itself reports what it read when torch loaded it (OMP_DISPLAY_ENV=verbose): unset, its
    policy shows as PASSIVE too, but waiting threads spin 300000 rounds first; passive means 0."""
    (tmp_path / "t.tsv").write_text("0\t一个番茄\n", encoding="utf-8")
    argv = [*PREDICT, "--tables=t.tsv", "--outputs=out.tsv", "--user_defined_parameters=nonsense_key=1"]
    seen, err = probe(argv, tmp_path, OMP_DISPLAY_ENV="verbose")
    assert seen["status"] == 2 and "unknown key 'nonsense_key'" in err and seen["torch"]
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in err and "GOMP_SPINCOUNT = '0'" in err
    seen, err = probe(argv, tmp_path, OMP_DISPLAY_ENV="verbose", OMP_WAIT_POLICY="ACTIVE")
    assert seen["wait_policy"] == "ACTIVE" and "OMP_WAIT_POLICY = 'ACTIVE'" in err


def test_easynlp_artist_alias_is_installed_next_to_python():
    bin_dir = str(Path(sys.executable).parent)
    for name in ("easynlp", "easynlp-artist"):
        exe = shutil.which(name, path=bin_dir)
        assert exe is not None, f"{name} is not installed in {bin_dir}"
        result = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout.startswith("easynlp (easynlp-artist) "), result.stderr

"""Commands that need an extra name it in one line when its package is missing.

A fresh virtual environment per extra is too slow for a test, so each test runs the real command
in a subprocess whose ``sys.modules`` has the package blocked (``None``: ``import`` then fails
exactly as if it were not installed); everything else is the installed code.
"""

from __future__ import annotations

import subprocess
import sys

BLOCK = "import sys; sys.modules[{module!r}] = None; "


def run_blocked(module: str, code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK.format(module=module) + code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


def test_transe_without_pykeen_names_the_extra(tmp_path):
    (tmp_path / "triples.tsv").write_text("a\tr\tb\nb\tr\tc\n", encoding="utf-8")
    result = run_blocked("pykeen", "from easynlp_artist.knowledge.transe import main; "
                         "sys.exit(main(['--triples', 'triples.tsv', '--output_dir', 'out']))", tmp_path)
    assert result.returncode == 1
    assert result.stderr == ("error: TransE training (python -m easynlp_artist.knowledge.transe) needs pykeen, "
                             'which is not installed: pip install "easynlp-artist[transe]"\n')
    assert not (tmp_path / "out").exists()


def test_s3_table_without_boto3_names_the_extra(tmp_path):
    result = run_blocked("boto3", "from appzoo.cli import main; sys.exit(main(["
                         "'--app_name=text2image_artist', '--mode=predict', "
                         "'--tables=s3://KEY:SECRET@bucket/t.tsv', '--outputs=out.tsv']))", tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == ("easynlp: error: s3://bucket/t.tsv needs boto3, which is not "
                                               'installed: pip install "easynlp-artist[s3]"')
    assert "SECRET" not in result.stderr


def test_fid_without_torchmetrics_names_the_extra(tmp_path):
    result = run_blocked("torchmetrics", "from easynlp_artist import metrics; "
                         "metrics.fid(None, None, 'text', 'img', extractor=None, sampling=None, seed=0, "
                         "num_images=1, batch_size=1)", tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == ("modelzoo.extras.MissingExtraError: FID (fid_feature_extractor=) "
                                               'needs torchmetrics, which is not installed: '
                                               'pip install "easynlp-artist[fid]"')


def test_a_broken_install_keeps_its_own_error(tmp_path):
    """pykeen present but one of its own imports missing: that module's error is the useful one."""
    result = run_blocked("class_resolver", "from modelzoo.extras import require; "
                         "require('pykeen.pipeline', 'transe', 'TransE')", tmp_path)
    assert result.returncode == 1
    assert "No module named 'class_resolver'" in result.stderr or "class_resolver" in result.stderr
    assert "easynlp-artist[transe]" not in result.stderr


def test_test_extra_installs_every_other_extra():
    """[test] installs every extra (so CI covers all), as the installed metadata says."""
    from importlib import metadata

    by_extra: dict[str, set[str]] = {}
    for req in metadata.requires("easynlp-artist") or []:
        if "extra ==" in req:
            name = req.split(";")[0].split(">")[0].split("=")[0].strip()
            by_extra.setdefault(req.split("extra ==")[1].strip(' "\''), set()).add(name)
    assert {"transe", "s3", "fid", "serve", "notebook", "all", "test"} <= by_extra.keys()
    for extra, names in by_extra.items():
        assert names <= by_extra["all"] | by_extra["test"], extra
    assert by_extra["all"] == set().union(*(v for k, v in by_extra.items() if k not in ("all", "test")))
    assert by_extra["all"] <= by_extra["test"]

"""One front door: the `easynlp` command generates through the same pipeline, with the same
checkpoint settings, as the notebook API; where the model comes from is decided once."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from helpers.tiny import randomize_, tiny_artist_config
from PIL import Image

from appzoo.cli import main as easynlp
from easynlp_artist.knowledge import lattice as lattice_module
from easynlp_artist.knowledge.entities import EntityStore
from easynlp_artist.knowledge.lattice import LatticeConfig
from easynlp_artist.modeling import ArtistModel
from easynlp_artist.pipeline import ArtistPipeline
from easynlp_artist.tokenization import char_vocab, load_tokenizer, write_vocab

CHARS = "一个红色的圆形番茄柠檬黄在白背景上和大小"
NAMES = ["番茄", "柠檬", "红色", "圆形", "大番茄", "一个", "黄色", "背景"]
PROMPTS = ["一个大番茄和柠檬在白背景上", "红色的圆形番茄", "黄色柠檬和一个大番茄在背景上"]


def knowledge_checkpoint(tmp_path):
    """A knowledge checkpoint whose lattice settings are not the defaults (entity_num, min_chars,
    priority), so the entities found depend on reading its lattice_config.json."""
    vocab = char_vocab(CHARS)
    write_vocab(vocab, tmp_path / "vocab.txt")
    tok = load_tokenizer(tmp_path / "vocab.txt")
    model = randomize_(ArtistModel(tiny_artist_config(len(vocab), entity_dim=4, text_len=12)), seed=3, scale=0.5)
    vectors = torch.randn(len(NAMES), 4, generator=torch.Generator().manual_seed(0)) * 3
    store = EntityStore(NAMES, list(range(len(NAMES))), vectors)
    cfg = LatticeConfig(text_len=12, entity_num=2, min_chars=3, priority="position")
    return ArtistPipeline(model, tok, store, cfg).save_pretrained(tmp_path / "ckpt")


def _table(path, prompts):
    path.write_text("".join(f"{i}\t{p}\n" for i, p in enumerate(prompts)), encoding="utf-8")
    return path


def _predicted_pixels(path):
    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(line.split("\t")[2]))))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def test_cli_uses_the_checkpoints_lattice_settings_like_the_pipeline(tmp_path, monkeypatch):
    ckpt = knowledge_checkpoint(tmp_path)
    pipe = ArtistPipeline.from_pretrained(ckpt)
    assert pipe.lattice.config == LatticeConfig(text_len=12, entity_num=2, min_chars=3, priority="position")
    _, know = pipe.encode_prompts(PROMPTS)
    _, default = ArtistPipeline(pipe.model, pipe.tokenizer, pipe.entities).encode_prompts(PROMPTS)
    # the settings matter here: the defaults find other entities
    assert know.mask.sum(1).tolist() != default.mask.sum(1).tolist()

    built = []
    real = lattice_module.LatticeBuilder.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        real(self, *args, **kwargs)

    monkeypatch.setattr(lattice_module.LatticeBuilder, "__init__", counting)
    table = _table(tmp_path / "in.tsv", PROMPTS)
    out = tmp_path / "out.tsv"
    assert easynlp([
        "--app_name=text2image_artist", "--mode=predict", f"--tables={table}", f"--outputs={out}",
        f"--checkpoint_dir={ckpt}", "--micro_batch_size=2", "--user_defined_parameters=top_k=4 seed=7",
    ]) == 0
    assert len(built) == 1, "the command builds its pipeline (and lattice automaton) once"

    from appzoo.tables import Row
    from easynlp_artist.metrics import row_generators

    rows = [Row(values={}, file=str(table), line_no=i + 1) for i in range(len(PROMPTS))]
    expected = pipe(PROMPTS, top_k=4, generator=row_generators(7, rows), output_type="np").images
    got = _predicted_pixels(out)
    for a, b in zip(got, expected, strict=True):
        assert np.array_equal(a, np.rint(b * 255).astype(np.uint8))


def test_given_lattice_settings_overlay_the_checkpoints(tmp_path):
    ckpt = knowledge_checkpoint(tmp_path)
    pipe = ArtistPipeline.from_pretrained(ckpt, lattice={"entity_num": 5})
    assert pipe.lattice.config == LatticeConfig(text_len=12, entity_num=5, min_chars=3, priority="position")


def test_a_training_run_folder_loads_its_best_then_last(tmp_path):
    ckpt = knowledge_checkpoint(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    os.replace(ckpt, run / "last")
    assert ArtistPipeline.from_pretrained(run).model.config.gpt.text_len == 12


def test_a_checkpoint_dir_that_does_not_exist_is_an_error(tmp_path, capsys):
    table = _table(tmp_path / "in.tsv", PROMPTS[:1])
    code = easynlp(["--app_name=text2image_artist", "--mode=predict", f"--tables={table}",
                    f"--outputs={tmp_path / 'o.tsv'}", f"--checkpoint_dir={tmp_path / 'nope'}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"easynlp: error: --checkpoint_dir={tmp_path / 'nope'}: no such folder"
    assert not (tmp_path / "o.tsv").exists()


def test_outputs_over_the_input_are_refused_before_loading(tmp_path, capsys):
    table = _table(tmp_path / "in.tsv", PROMPTS[:1])
    before = table.read_bytes()
    for outputs, message in ((table, "is the input table"), (tmp_path, "is a folder"),
                             (table / "x.tsv", "is a file, not a folder")):
        code = easynlp(["--app_name=text2image_artist", "--mode=predict", f"--tables={table}",
                        f"--outputs={outputs}"])
        assert code == 2
        assert message in capsys.readouterr().err
    assert table.read_bytes() == before


def test_a_second_table_for_predict_is_an_error(tmp_path, capsys):
    table = _table(tmp_path / "in.tsv", PROMPTS[:1])
    assert easynlp(["--app_name=text2image_artist", "--mode=predict", f"--tables={table},{table}",
                    f"--outputs={tmp_path / 'o.tsv'}"]) == 2
    assert "reads one table" in capsys.readouterr().err


def test_per_mode_help_lists_every_key_from_the_params_config(capsys):
    from dataclasses import fields, is_dataclass

    from easynlp_artist.params import ArtistParams

    assert easynlp(["--app_name=text2image_artist", "--mode=predict", "--help"]) == 0
    text = capsys.readouterr().out
    predict_groups = ("model", "knowledge", "sampling", "output")
    for group in predict_groups:
        cls = next(f.default_factory for f in fields(ArtistParams) if f.name == group)
        assert is_dataclass(cls)
        for f in fields(cls):
            line = next((ln for ln in text.splitlines() if ln.strip().startswith(f"{f.name}=")), None)
            assert line is not None, f"{f.name} missing from the predict help"
            assert f.metadata["help"] in line
    assert "top_k=int  (default none)" in text and "max_generated_num=int  (default 1)" in text
    assert "disc_start=" not in text  # stage-1 training keys are not predict's


def test_version_flag_and_attribute(capsys):
    import easynlp_artist

    assert easynlp(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"easynlp (easynlp-artist) {easynlp_artist.__version__}" and easynlp_artist.__version__[0].isdigit()


def test_a_model_uri_with_secrets_fails_in_one_line_without_them(tmp_path):
    from helpers.range_server import closed_port

    table = _table(tmp_path / "in.tsv", PROMPTS[:1])
    uri = f"http://user:PASSWORD1@127.0.0.1:{closed_port()}/m.tgz?sig=SECRET2"
    # a real process, so the log lines (the app logs which model it loads) are seen as a user sees them
    exe = Path(sys.executable).with_name("easynlp")
    proc = subprocess.run(
        [str(exe), "--app_name=text2image_artist", "--mode=predict", f"--tables={table}",
         f"--outputs={tmp_path / 'o.tsv'}", f"--user_defined_parameters=pretrain_model_name_or_path={uri}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "EASYNLP_MODELZOO_RETRIES": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert "loading model http://127.0.0.1" in err
    assert "PASSWORD1" not in err and "SECRET2" not in err and "user" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("easynlp: error:")] == [err.strip().splitlines()[-1]]
    assert "127.0.0.1" in err.strip().splitlines()[-1]


def _predict_cmd(table, outputs, image_dir, *extra):
    exe = Path(sys.executable).with_name("easynlp")
    return [str(exe), "--app_name=text2image_artist", "--mode=predict", f"--tables={table}", f"--outputs={outputs}",
            "--micro_batch_size=1", f"--user_defined_parameters=image_dir={image_dir} num_threads=1", *extra]


def test_image_folder_is_published_whole_and_sigterm_leaves_the_old_one(tmp_path):
    """Images go to a staging folder renamed into place at the end: stale PNGs of an earlier run
    never mix in, and a run stopped by SIGTERM (a real signal) exits 143 leaving the old outputs."""
    import signal
    import time

    images, out = tmp_path / "images", tmp_path / "out.tsv"
    first = subprocess.run(_predict_cmd(_table(tmp_path / "a.tsv", ["一个红色的圆形"] * 3), out, images),
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in images.iterdir()) == ["000001_0.png", "000002_0.png", "000003_0.png", "index.html"]
    second = subprocess.run(_predict_cmd(_table(tmp_path / "b.tsv", ["一个番茄"]), out, images),
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in images.iterdir()) == ["000001_0.png", "index.html"]  # no stale PNGs
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    table_before = out.read_bytes()

    proc = subprocess.Popen(_predict_cmd(_table(tmp_path / "c.tsv", ["一个蓝色的星形"] * 200), out, images),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.suffix == ".png" for s in tmp_path.glob(".images.*.staging") for p in s.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "no image was generated"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "easynlp: error: terminated (SIGTERM); nothing was published"
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before
    assert out.read_bytes() == table_before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging, no temp table


def test_preprocessed_ids_outside_the_store_stop_before_generating_and_names_are_logged(tmp_path, caplog, capsys):
    ckpt = knowledge_checkpoint(tmp_path)
    schema = "--input_schema=idx:str:1,text:str:1,lex_id:str:1,pos_s:str:1,pos_e:str:1,token_len:str:1"
    good = tmp_path / "good.tsv"
    good.write_text("0\t番茄\t0\t0 1 0\t0 1 1\t2\n1\t柠檬\t1\t0 1 0\t0 1 1\t2\n", encoding="utf-8")
    args = ["--app_name=text2image_artist", "--mode=predict", f"--checkpoint_dir={ckpt}", schema,
            "--user_defined_parameters=top_k=1"]
    with caplog.at_level("INFO"):
        assert easynlp([*args, f"--tables={good}", f"--outputs={tmp_path / 'o.tsv'}"]) == 0
    assert "lex_id 0 = 番茄" in caplog.text and "lex_id 1 = 柠檬" in caplog.text
    bad = tmp_path / "bad.tsv"
    bad.write_text("0\t番茄\t0\t0 1 0\t0 1 1\t2\n1\t柠檬\t99\t0 1 0\t0 1 1\t2\n", encoding="utf-8")
    capsys.readouterr()
    assert easynlp([*args, f"--tables={bad}", f"--outputs={tmp_path / 'b.tsv'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("easynlp: error:") and f"{bad}:2:" in err and "entity id 99" in err, err
    assert not (tmp_path / "b.tsv").exists()

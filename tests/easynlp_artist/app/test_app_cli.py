"""The text2image_artist app through the real `easynlp` command, on small real tables."""

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.tables import ENTITIES, png_b64, write_table, write_world
from PIL import Image

from appzoo.cli import main as easynlp
from easynlp_artist.knowledge.entities import EntityStore
from easynlp_artist.knowledge.lattice import LatticeBuilder, LatticeConfig
from easynlp_artist.models.stage2.sampling import sample_image_tokens
from easynlp_artist.pipeline import ArtistPipeline
from easynlp_artist.tokenization import load_tokenizer

TINY_VQGAN = (
    "size=16 vqgan_ch=8 vqgan_ch_mult=1,2 vqgan_num_res_blocks=1 vqgan_attn_resolutions=8 "
    "vqgan_embed_dim=8 img_vocab_size=24"
)
TINY_GPT = "n_layer=1 n_head=2 n_embd=16 text_len=8"


def run_cli(*args, cwd):
    """The installed console script, in a fresh process (what users run)."""
    exe = Path(sys.executable).with_name("easynlp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """stage-1 tokenizer, then a knowledge GPT from scratch on it: the train → evaluate → predict chain."""
    root = tmp_path_factory.mktemp("app")
    w = write_world(root / "w")
    common = ["--app_name=text2image_artist", "--micro_batch_size=4", "--logging_steps=1", "--learning_rate=1e-3"]
    code = easynlp([
        *common, "--mode=train", f"--tables={w['train']},{w['valid']}", f"--checkpoint_dir={root / 'vq'}",
        "--epoch_num=1", f"--user_defined_parameters=stage=vqgan {TINY_VQGAN} {TINY_GPT} vocab_path={w['vocab']}",
    ])
    assert code == 0
    proc = run_cli(
        *common, "--mode=train", f"--tables={w['train']},{w['valid']}", f"--checkpoint_dir={root / 'gpt'}",
        "--epoch_num=2", f"--user_defined_parameters=vqgan_ckpt_path={root / 'vq' / 'last'} {TINY_GPT} "
        f"entity_emb_path={w['entity_emb']} entity_map={w['entity_map']} caption_dropout=0.2 mention_dropout=0.3",
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    return root, w


def test_train_writes_a_loadable_checkpoint_with_knowledge(trained):
    root, w = trained
    last = root / "gpt" / "last"
    names = {p.name for p in last.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.txt", "entities.safetensors", "trainer_state.pt"} <= names
    pipe = ArtistPipeline.from_pretrained(last)
    assert pipe.model.config.gpt.entity_dim == 6 and pipe.model.config.gpt.caption_dropout == 0.2
    assert pipe.model.config.gpt.mention_dropout == 0.3
    # the stage-1 weights were taken over unchanged (stage 2 keeps the VQGAN frozen)
    vq = ArtistPipeline.from_pretrained(root / "vq" / "last").model.vqgan.state_dict()
    assert all(torch.equal(v, pipe.model.vqgan.state_dict()[k]) for k, v in vq.items())
    # codes were cached once per table and reused by the validation pass
    assert len(list((root / "gpt" / "code_cache").glob("codes-*.safetensors"))) == 2


@pytest.mark.parametrize("given, expected", [("", (0.1, 0.5)), ("caption_dropout=0.2 mention_dropout=0.3", (0.2, 0.3))])
def test_fine_tuning_takes_the_dropouts_given(given, expected):
    from appzoo.args import CommonArgs
    from appzoo.params import parse_user_defined_parameters
    from easynlp_artist.loading import load_pipeline
    from easynlp_artist.params import ArtistParams

    udp = parse_user_defined_parameters(f"pretrain_model_name_or_path=artist-shapes-tiny-zh {given}", ArtistParams)
    pipe = load_pipeline(CommonArgs(mode="train"), udp, torch.device("cpu"))
    for cfg in (pipe.model.config.gpt, pipe.model.gpt.config):  # the embedded model's own: 0.1 and 0.5
        assert (cfg.caption_dropout, cfg.mention_dropout) == expected


def test_evaluate_reports_metrics_as_json(trained):
    root, w = trained
    out = root / "metrics.json"
    proc = run_cli("--app_name=text2image_artist", "--mode=evaluate", f"--tables={w['valid']}",
                   f"--checkpoint_dir={root / 'gpt'}", f"--outputs={out}", cwd=root)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.read_text())
    assert metrics["num_samples"] == 4
    assert metrics["image_token_perplexity"] == pytest.approx(np.exp(metrics["image_token_loss"]))
    assert 0 < metrics["codebook_usage"] <= 1 and metrics["reconstruction_psnr"] > 0


def test_predict_writes_every_row_in_order_with_images(trained):
    root, w = trained
    out = root / "pred.tsv"
    proc = run_cli(
        "--app_name=text2image_artist", "--mode=predict", f"--tables={w['test']}", f"--outputs={out}",
        f"--checkpoint_dir={root / 'gpt'}", "--micro_batch_size=2", "--append_cols=text",
        "--output_schema=idx,gen_imgbase64",
        f"--user_defined_parameters=max_generated_num=2 top_k=5 seed=3 image_dir={root / 'imgs'}", cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    inputs = w["test"].read_text(encoding="utf-8").splitlines()
    assert [ln.split("\t")[0] for ln in lines] == [ln.split("\t")[0] for ln in inputs]
    assert [ln.split("\t")[2] for ln in lines] == [ln.split("\t")[1] for ln in inputs]
    for ln in lines:
        pics = ln.split("\t")[1].split(",")
        assert len(pics) == 2
        assert Image.open(io.BytesIO(base64.b64decode(pics[0]))).size == (16, 16)
    assert len(list((root / "imgs").glob("*.png"))) == 2 * len(inputs)
    assert "一个" in (root / "imgs" / "index.html").read_text(encoding="utf-8")
    # same seeds, one row per batch: the same images (per-row generators); the decoder's float
    # arithmetic may differ in the last bit between batch sizes, so pixels may move by one level
    again = root / "pred_again.tsv"
    assert easynlp([
        "--app_name=text2image_artist", "--mode=predict", f"--tables={w['test']}", f"--outputs={again}",
        f"--checkpoint_dir={root / 'gpt'}", "--micro_batch_size=1", "--append_cols=text",
        "--output_schema=idx,gen_imgbase64", "--user_defined_parameters=max_generated_num=2 top_k=5 seed=3",
    ]) == 0
    def pixels(path):
        return [
            [np.asarray(Image.open(io.BytesIO(base64.b64decode(p))), dtype=int) for p in ln.split("\t")[1].split(",")]
            for ln in path.read_text(encoding="utf-8").splitlines()
        ]

    for row_a, row_b in zip(pixels(out), pixels(again), strict=True):
        for a, b in zip(row_a, row_b, strict=True):
            assert np.abs(a - b).max() <= 1


def test_preprocessed_knowledge_columns_give_the_same_inputs(trained, tmp_path):
    """A table carrying the original lex_id/pos_s/pos_e/token_len columns trains like a raw one."""
    root, w = trained
    pipe = ArtistPipeline.from_pretrained(root / "gpt" / "last")
    builder = LatticeBuilder(pipe.entities, pipe.tokenizer, LatticeConfig(text_len=8))
    rows = [ln.split("\t") for ln in w["valid"].read_text(encoding="utf-8").splitlines()]
    lats = builder.lattices([r[1] for r in rows])
    table = write_table(tmp_path / "k.tsv", [
        (r[0], r[1], *lat.to_columns().values(), r[2]) for r, lat in zip(rows, lats)
    ])
    schema = "idx:str:1,text:str:1,lex_id:str:1,pos_s:str:1,pos_e:str:1,token_len:str:1,imgbase64:str:1"
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for table_path, schema_arg, out in ((w["valid"], [], a), (table, [f"--input_schema={schema}"], b)):
        assert easynlp(["--app_name=text2image_artist", "--mode=evaluate", f"--tables={table_path}", *schema_arg,
                        f"--checkpoint_dir={root / 'gpt'}", f"--outputs={out}"]) == 0
    assert json.loads(a.read_text())["image_token_loss"] == pytest.approx(json.loads(b.read_text())["image_token_loss"])


def test_bad_rows_stop_predict_before_any_output(trained, tmp_path, capsys):
    root, w = trained
    bad = tmp_path / "bad.tsv"
    bad.write_text("0\t一个番茄\n1\t一个\t多余\n2\t一个柠檬\n", encoding="utf-8")
    out = tmp_path / "pred.tsv"
    args = ["--app_name=text2image_artist", "--mode=predict", f"--tables={bad}", f"--outputs={out}",
            f"--checkpoint_dir={root / 'gpt'}"]
    assert easynlp(args) == 2
    err = capsys.readouterr().err
    assert f"{bad}" in err and "line 2" in err and "expected 2 tab-separated columns" in err
    assert not out.exists() and not list(tmp_path.glob(".pred.tsv*"))
    # with skip_bad_rows the row goes to a rejects file with its reason; the rest are predicted
    assert easynlp([*args, "--user_defined_parameters=skip_bad_rows=true"]) == 0
    assert [ln.split("\t")[0] for ln in out.read_text(encoding="utf-8").splitlines()] == ["0", "2"]
    rejects = Path(str(out) + ".rejects.tsv").read_text(encoding="utf-8")
    assert rejects.startswith("2\t") and "expected 2 tab-separated columns" in rejects


def test_bad_training_image_names_file_line_and_column(tmp_path, capsys):
    w = write_world(tmp_path / "w")
    good = png_b64((200, 30, 30))
    table = write_table(tmp_path / "t.tsv", [("0", "一个红色的方块", good), ("1", "一个番茄", "bm90IGFuIGltYWdl")])
    code = easynlp([
        "--app_name=text2image_artist", "--mode=train", f"--tables={table}", f"--checkpoint_dir={tmp_path / 'ck'}",
        f"--user_defined_parameters={TINY_VQGAN} {TINY_GPT} vocab_path={w['vocab']}",
    ])
    assert code == 2
    err = capsys.readouterr().err
    assert str(table) in err and "line 2" in err and "column 3" in err and "unreadable image" in err
    assert not (tmp_path / "ck" / "last").exists()


def test_an_image_over_max_image_pixels_is_refused_naming_the_cell(trained, tmp_path, capsys):
    """The table's 16x16 images pass the default limit (the evaluate test above) but not 255 pixels."""
    root, w = trained
    code = easynlp(["--app_name=text2image_artist", "--mode=evaluate", f"--tables={w['valid']}",
                    f"--checkpoint_dir={root / 'gpt'}", f"--outputs={tmp_path / 'm.json'}",
                    "--user_defined_parameters=max_image_pixels=255"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{w['valid']}, line 1, column 3: " in err, err
    assert "image of 16x16 pixels exceeds the limit of 255 pixels" in err, err
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize(
    "udp, message",
    [
        ("max_generated_nums=2", "did you mean max_generated_num"),
        ("top_p=1.5", "top_p"),
        ("size=32", "size=32 (model: 16)"),
    ],
)
def test_bad_parameters_are_clear_errors(trained, udp, message, capsys):
    root, w = trained
    code = easynlp(["--app_name=text2image_artist", "--mode=predict", f"--tables={w['test']}",
                    f"--outputs={root / 'x.tsv'}", f"--checkpoint_dir={root / 'gpt'}",
                    f"--user_defined_parameters={udp}"])
    assert code == 2
    assert message in capsys.readouterr().err


def test_original_app_name_is_an_alias(trained, tmp_path):
    root, w = trained
    out = tmp_path / "p.tsv"
    assert easynlp(["--app_name=text2image_generation", "--mode=predict", f"--tables={w['test']}",
                    f"--outputs={out}", f"--checkpoint_dir={root / 'gpt'}"]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 5


def test_entities_found_on_the_fly_match_the_store(trained):
    root, _ = trained
    pipe = ArtistPipeline.from_pretrained(root / "gpt" / "last")
    store = EntityStore.load(root / "w" / "entity2vec.pt", entity_map=root / "w" / "entity2id.txt")
    assert pipe.entities.names == store.names and torch.equal(pipe.entities.vectors, store.vectors)
    assert sorted(store.names) == sorted(ENTITIES)
    tok = load_tokenizer(root / "gpt" / "last")
    ids, know = pipe.encode_prompts(["一个番茄和柠檬"])
    assert know.mask.sum().item() == 2 and ids.shape == (1, 8) and tok.pad_token_id == 0


def test_two_process_predict_equals_one_process(trained, tmp_path):
    """--worker_gpu=2 runs two real processes (torchrun, gloo on CPU); same seeds → the same table."""
    root, w = trained
    common = ["--app_name=text2image_artist", "--mode=predict", f"--tables={w['test']}",
              f"--checkpoint_dir={root / 'gpt'}", "--micro_batch_size=2",
              "--user_defined_parameters=max_generated_num=2 top_k=5 seed=9"]
    one, two = tmp_path / "one.tsv", tmp_path / "two.tsv"
    assert easynlp([*common, f"--outputs={one}"]) == 0
    proc = run_cli(*common, f"--outputs={two}", "--worker_gpu=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert two.read_text(encoding="utf-8") == one.read_text(encoding="utf-8")
    assert len(one.read_text(encoding="utf-8").splitlines()) == 5


class MeanColour(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1] → (B, 3)
        return x.mean(dim=(2, 3))


def mean_colour_extractor(directory: Path) -> Path:
    """A TorchScript FID feature extractor: the mean colour of each image."""
    path = directory / "extractor.pt"
    torch.jit.save(torch.jit.script(MeanColour()), str(path))
    return path


def test_fid_matches_an_independent_numpy_scipy_computation(trained, tmp_path):
    """evaluate's FID (torchmetrics + a TorchScript extractor) equals the Fréchet distance computed
    here with numpy/scipy from the same images: the table's, and the generated ones reproduced."""
    from scipy import linalg

    from easynlp_artist.metrics import row_generators as _row_generators
    from easynlp_artist.models.stage1.vqgan import images_to_uint8

    root, w = trained

    extractor = mean_colour_extractor(tmp_path)
    out = tmp_path / "m.json"
    assert easynlp(["--app_name=text2image_artist", "--mode=evaluate", f"--tables={w['valid']}",
                    f"--checkpoint_dir={root / 'gpt'}", f"--outputs={out}", "--micro_batch_size=4",
                    f"--user_defined_parameters=fid_feature_extractor={extractor} seed=5"]) == 0
    reported = json.loads(out.read_text())["fid"]

    lines = w["valid"].read_text(encoding="utf-8").splitlines()
    real = np.stack([
        np.asarray(Image.open(io.BytesIO(base64.b64decode(ln.split("\t")[2]))).convert("RGB"), float).mean((0, 1)) / 255
        for ln in lines
    ])
    pipe = ArtistPipeline.from_pretrained(root / "gpt" / "best")
    ids, know = pipe.encode_prompts([ln.split("\t")[1] for ln in lines])
    rows = [type("R", (), {"line_no": i + 1})() for i in range(len(lines))]
    images = pipe.model.vqgan.decode(sample_image_tokens(pipe.model.gpt, ids, know, generator=_row_generators(5, rows)))
    fake = images_to_uint8(images).numpy().astype(float).mean((1, 2)) / 255

    def frechet(a, b):
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        covmean = linalg.sqrtm(s1 @ s2).real
        return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))

    expected = frechet(real, fake)
    assert expected > 0
    assert reported == pytest.approx(expected, rel=1e-3, abs=1e-6)


def test_two_process_evaluate_equals_one_process(trained, tmp_path):
    """--worker_gpu=2: each process scores its share of the rows (loss, reconstruction, FID) and the
    sums are combined; the metrics equal a one-process run."""
    root, w = trained

    extractor = mean_colour_extractor(tmp_path)
    common = ["--app_name=text2image_artist", "--mode=evaluate", f"--tables={w['valid']}",
              f"--checkpoint_dir={root / 'gpt'}", "--micro_batch_size=1",
              f"--user_defined_parameters=fid_feature_extractor={extractor} seed=5"]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert easynlp([*common, f"--outputs={one}"]) == 0
    proc = run_cli(*common, f"--outputs={two}", "--worker_gpu=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m1, m2 = json.loads(one.read_text()), json.loads(two.read_text())
    assert m1.keys() == m2.keys() and m1["num_samples"] == m2["num_samples"] == 4
    for key in m1:
        assert m2[key] == pytest.approx(m1[key], rel=1e-6, abs=1e-9), key


def test_bfloat16_predict_gives_the_same_rows(trained, tmp_path):
    """dtype=bfloat16 runs the whole predict path in bf16; the table keeps its shape and order."""
    root, w = trained
    out = tmp_path / "bf16.tsv"
    assert easynlp(["--app_name=text2image_artist", "--mode=predict", f"--tables={w['test']}", f"--outputs={out}",
                    f"--checkpoint_dir={root / 'gpt'}",
                    "--user_defined_parameters=dtype=bfloat16 num_threads=1 max_generated_num=2"]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [ln.split("\t")[0] for ln in lines] == [str(i) for i in range(5)]
    for ln in lines:
        for pic in ln.split("\t")[2].split(","):
            assert Image.open(io.BytesIO(base64.b64decode(pic))).size == (16, 16)


def test_predict_takes_the_checkpoints_sampling_defaults_unless_given(trained, tmp_path):
    import shutil

    root, w = trained
    ckpt = tmp_path / "ckpt"
    shutil.copytree(root / "gpt" / "last", ckpt)
    (ckpt / "generation_config.json").write_text('{"top_k": 1}', encoding="utf-8")  # greedy

    def predict(udp):
        out = tmp_path / f"pred{len(udp)}.tsv"
        assert easynlp([
            "--app_name=text2image_artist", "--mode=predict", f"--tables={w['test']}", f"--outputs={out}",
            f"--checkpoint_dir={ckpt}", "--micro_batch_size=2", "--output_schema=idx,gen_imgbase64",
            f"--user_defined_parameters=max_generated_num=3 seed=3 {udp}",
        ]) == 0
        return [ln.split("\t")[1].split(",") for ln in out.read_text(encoding="utf-8").splitlines()]

    # greedy from the checkpoint's defaults: a row's three images are the same image
    assert all(len(set(row)) == 1 for row in predict(""))
    # top_k=0 given on the command line switches the default off: sampled images differ
    assert any(len(set(row)) > 1 for row in predict("top_k=0"))

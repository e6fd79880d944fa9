"""`user_defined_parameters` `extra_triples=new.tsv`: predict teaches the loaded model new entities
first, exactly as `pipe.add_entities` does; a bad triples file is one line naming file and line."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

from appzoo.cli import main as easynlp
from appzoo.tables import Row
from easynlp_artist.metrics import row_generators
from easynlp_artist.pipeline import ArtistPipeline

MODEL = "artist-shapes-tiny-zh"
TRIPLES = "火龙果\t颜色\t红色\n火龙果\t形状\t圆形\n火龙果\t类别\t水果\n"
PROMPTS = ["一个火龙果", "白色背景上的火龙果"]


def _predict(tmp_path, *params: str) -> list[np.ndarray]:
    table = tmp_path / "in.tsv"
    table.write_text("".join(f"{i}\t{p}\n" for i, p in enumerate(PROMPTS)), encoding="utf-8")
    out = tmp_path / "out.tsv"
    assert easynlp(["--app_name=text2image_artist", "--mode=predict", f"--tables={table}", f"--outputs={out}",
                    f"--user_defined_parameters=seed=3 num_threads=1 {' '.join(params)}"]) == 0
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(line.split("\t")[2]))))
            for line in out.read_text(encoding="utf-8").splitlines()]


def test_predict_with_extra_triples_draws_like_the_pipeline_with_the_additions(tmp_path):
    triples = tmp_path / "new.tsv"
    triples.write_text(TRIPLES, encoding="utf-8")
    threads = torch.get_num_threads()
    try:
        plain = _predict(tmp_path)
        taught = _predict(tmp_path, f"extra_triples={triples}")
        torch.set_num_threads(1)
        pipe = ArtistPipeline.from_pretrained(MODEL)
        assert pipe.add_entities(triples) == ["火龙果"]
        rows = [Row(values={}, file="in.tsv", line_no=i + 1) for i in range(len(PROMPTS))]
        expected = pipe(PROMPTS, generator=row_generators(3, rows), output_type="np").images
    finally:
        torch.set_num_threads(threads)
    for got, want in zip(taught, expected, strict=True):
        np.testing.assert_array_equal(got, np.rint(want * 255).astype(np.uint8))
    assert not all(np.array_equal(a, b) for a, b in zip(taught, plain))  # the additions changed the images


def test_a_bad_triples_file_is_one_line_naming_file_and_line(tmp_path, capsys):
    triples = tmp_path / "new.tsv"
    triples.write_text("火龙果\t颜色\t红色\n火龙果\t味道\t甜\n", encoding="utf-8")
    table = tmp_path / "in.tsv"
    table.write_text("0\t一个火龙果\n", encoding="utf-8")
    code = easynlp(["--app_name=text2image_artist", "--mode=predict", f"--tables={table}",
                    f"--outputs={tmp_path / 'out.tsv'}", f"--user_defined_parameters=extra_triples={triples}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("easynlp: error: ") and f"{triples}:2" in err[-1] and "味道" in err[-1], err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out.tsv").exists()

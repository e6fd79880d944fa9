"""`vqgan_dtype=bfloat16`: the image decoder runs in bfloat16 while the GPT keeps `dtype`; the
images are the pipeline's with the decoder cast, and close to a float32 decode of the same codes."""

from __future__ import annotations

import base64
import copy
import io

import numpy as np
import torch
from PIL import Image

from appzoo.cli import main as easynlp
from appzoo.tables import Row
from easynlp_artist.metrics import row_generators
from easynlp_artist.models.stage1.vqgan import images_to_uint8
from easynlp_artist.pipeline import ArtistPipeline

PROMPTS = ["一个红色的圆形", "白色背景上的番茄", "蓝色的星形在黑色背景上"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_predict_decodes_in_bfloat16_like_the_pipeline_and_close_to_float32(tmp_path):
    table = tmp_path / "in.tsv"
    table.write_text("".join(f"{i}\t{p}\n" for i, p in enumerate(PROMPTS)), encoding="utf-8")
    out = tmp_path / "out.tsv"
    threads = torch.get_num_threads()
    try:
        assert easynlp(["--app_name=text2image_artist", "--mode=predict", f"--tables={table}", f"--outputs={out}",
                        "--user_defined_parameters=seed=1 num_threads=1 vqgan_dtype=bfloat16"]) == 0
        got = [np.asarray(Image.open(io.BytesIO(base64.b64decode(line.split("\t")[2]))))
               for line in out.read_text(encoding="utf-8").splitlines()]
        torch.set_num_threads(1)
        pipe = ArtistPipeline.from_pretrained("artist-shapes-tiny-zh")
        fp32_vqgan = copy.deepcopy(pipe.model.vqgan)
        pipe.model.vqgan.to(torch.bfloat16)
        assert pipe.model.gpt.pos_emb.dtype == torch.float32  # only the decoder is cast
        rows = [Row(values={}, file=str(table), line_no=i + 1) for i in range(len(PROMPTS))]
        result = pipe(PROMPTS, generator=row_generators(1, rows))
        with torch.no_grad():
            reference = images_to_uint8(fp32_vqgan.decode(result.codes)).numpy()  # the same codes, float32
    finally:
        torch.set_num_threads(threads)
    for g, image, ref in zip(got, result.images, reference, strict=True):
        np.testing.assert_array_equal(g, np.asarray(image))
        assert not np.array_equal(g, ref)  # really decoded in bfloat16
        assert psnr(g, ref) > 30.0, psnr(g, ref)

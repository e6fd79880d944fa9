"""Evaluation metrics on a table: image-token loss, VQGAN reconstruction, FID of generated images.

With several processes each computes its shard (``appzoo.distributed.my_shard``) and the sums are
combined, so the figures equal a one-process run's.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
from torch import nn

from appzoo.distributed import all_reduce_sum, my_shard
from appzoo.tables import DEFAULT_MAX_IMAGE_PIXELS, Row, TableDataset
from appzoo.trainer import evaluate_loss
from easynlp_artist.data import CodesDataset, ImageDataset, Stage2Collate, row_image, row_lattices
from easynlp_artist.models.stage1.vqgan import images_to_uint8
from easynlp_artist.models.stage2.objective import Stage2Objective
from easynlp_artist.models.stage2.sampling import SamplingConfig
from easynlp_artist.progress import Progress, run_settings
from modelzoo.extras import require

logger = logging.getLogger(__name__)

FID_PURPOSE = "FID (fid_feature_extractor=)"


def row_generators(seed: int, rows: list[Row]) -> list[torch.Generator]:
    """One generator per row, from (seed, line number): results do not depend on batching or sharding."""
    return [
        torch.Generator().manual_seed(int(np.random.SeedSequence([seed, r.line_no]).generate_state(1, np.uint64)[0] >> 1))
        for r in rows
    ]


def image_token_loss(pipe, dataset: CodesDataset, text_column: str, batch_size: int, device) -> dict:
    stage2 = evaluate_loss(Stage2Objective(pipe.model.gpt), dataset, Stage2Collate(pipe, text_column),
                           batch_size=batch_size, device=device)
    return {
        "num_samples": stage2["num_samples"],
        "image_token_loss": stage2["loss"],
        "image_token_perplexity": math.exp(stage2["loss"]),
    }


@torch.no_grad()
def reconstruction(vqgan, dataset: ImageDataset, batch_size: int, device) -> dict:
    """Stage-1 quality on the table: PSNR of encode→decode (pixels in [0, 255]) and codebook usage."""
    squared, pixels, psnr_sum = 0.0, 0, 0.0
    used = torch.zeros(vqgan.config.n_embed)
    mine = my_shard(len(dataset))
    with Progress(len(mine), "reconstruction", logger) as progress:
        for start in range(0, len(mine), batch_size):
            images = torch.stack([dataset[i] for i in mine[start : start + batch_size]]).to(device)
            codes = vqgan.encode(images)
            used[codes.flatten().cpu()] = 1.0
            recon = images_to_uint8(vqgan.decode(codes)).float()
            truth = images_to_uint8(images).float()
            mse = (recon - truth).pow(2).flatten(1).mean(1)
            psnr_sum += float((10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))).sum())
            squared += float((recon - truth).pow(2).sum())
            pixels += truth.numel()
            progress.update(len(images), len(images))
    dataset.resized.report()  # this process's shard, when an epoch was not read whole
    squared, pixels, psnr_sum, *used_by_code = all_reduce_sum([squared, pixels, psnr_sum, *used.tolist()])
    return {
        "reconstruction_psnr": psnr_sum / len(dataset),
        "reconstruction_mse": squared / pixels,
        "codebook_usage": sum(u > 0 for u in used_by_code) / len(used_by_code),
    }


def check_fid(extractor_path: str) -> None:
    """Before any work: FID's package is installed and the feature extractor file exists."""
    require("torchmetrics", "fid", FID_PURPOSE)
    if not os.path.isfile(extractor_path):
        raise FileNotFoundError(f"fid_feature_extractor={extractor_path}: no such file")


def load_feature_extractor(path: str) -> nn.Module:
    """A TorchScript feature extractor (it runs code: only point this at files you trust)."""
    return torch.jit.load(path, map_location="cpu").eval()


@torch.no_grad()
def fid(pipe, table: TableDataset, text_column: str, image_column: str, *, extractor: nn.Module,
        sampling: SamplingConfig, seed: int, num_images: int, batch_size: int,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> float:
    """FID of images generated from the table's texts (through the pipeline) against its images."""
    require("torchmetrics", "fid", FID_PURPOSE)
    from torchmetrics.image.fid import FrechetInceptionDistance

    res = pipe.model.config.vqgan.resolution

    class Features(nn.Module):
        """torchmetrics hands uint8 (B, 3, H, W); the extractor takes floats in [0, 1]."""

        def __init__(self) -> None:
            super().__init__()
            self.net = extractor
            self.num_features = int(extractor(torch.zeros(1, 3, res, res)).shape[-1])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.float() / 255.0)

    # with several processes each rank adds its shard of rows; compute() sums the states of all
    metric = FrechetInceptionDistance(feature=Features(), normalize=False, reset_real_features=True)
    n = len(table) if num_images == 0 else min(num_images, len(table))
    mine = my_shard(n)
    logger.info("FID: generating %d image(s) on %s", n, run_settings(pipe, sampling))
    with Progress(len(mine), "FID generation", logger) as progress, pipe.progress_bar_disabled():
        for start in range(0, len(mine), batch_size):
            rows = [table.row(i) for i in mine[start : start + batch_size]]
            real = torch.stack([row_image(r, image_column, res, max_pixels=max_pixels) for r in rows])
            metric.update(images_to_uint8(real).permute(0, 3, 1, 2), real=True)
            out = pipe([str(r[text_column]) for r in rows], prompt_lattices=row_lattices(rows),
                       generator=row_generators(seed, rows), output_type="np", sampling=sampling)
            generated = torch.from_numpy(np.stack(_uint8(out.images))).permute(0, 3, 1, 2)
            metric.update(generated, real=False)
            progress.update(len(rows), len(rows))
    return float(metric.compute())


def _uint8(images: np.ndarray) -> list[np.ndarray]:
    return [np.rint(image * 255.0).astype(np.uint8) for image in images]

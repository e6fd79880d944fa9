"""Training data for ARTIST from EasyNLP tables: images → cached VQGAN codes, texts → token ids + knowledge.

Stage 2 never runs the VQGAN encoder inside the training loop: the codes of a table's images are
computed once and stored in a cache file keyed by the table's content and the tokenizer weights,
so later epochs and later runs on the same table read them back.

Images are resized to the VQGAN resolution with a bicubic filter (no crop; as the original), then
scaled to [-1, 1]; how many were of another size is logged once per table and run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from appzoo.tables import (
    DEFAULT_MAX_IMAGE_PIXELS,
    Row,
    Schema,
    TableDataset,
    decode_image_base64,
    open_binary,
    read_table,
)
from easynlp_artist.knowledge.lattice import COLUMNS as KNOWLEDGE_COLUMNS
from easynlp_artist.knowledge.lattice import Lattice
from easynlp_artist.models.stage1.vqgan import VQGAN
from modelzoo.files import atomic_path
from modelzoo.storage import is_remote, redact

logger = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20


def image_to_tensor(img: Image.Image, resolution: int) -> torch.Tensor:
    """RGB PIL image → (3, resolution, resolution) float in [-1, 1]."""
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.BICUBIC)
    pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())  # (H, W, 3)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1.0


class ResizedImages:
    """Images of another size than the model's, counted while a table is read; :meth:`report` logs
    one notice per table and resolution in a run (the count, the first few lines and sizes)."""

    noticed: set[tuple[str, int]] = set()  # (table, resolution) already reported by this process
    FIRST = 3

    def __init__(self, path: str | os.PathLike, resolution: int) -> None:
        self.path, self.resolution = str(path), resolution
        self.read = self.resized = 0
        self.first: list[tuple[int, tuple[int, int]]] = []

    def add(self, line: int, size: tuple[int, int]) -> None:
        self.read += 1
        if size != (self.resolution, self.resolution):
            self.resized += 1
            if len(self.first) < self.FIRST:
                self.first.append((line, size))

    def report(self) -> None:
        key = (self.path, self.resolution)
        if not self.resized or key in self.noticed:
            return
        self.noticed.add(key)
        first = ", ".join(f"line {n}: {w}x{h}" for n, (w, h) in self.first)
        more = ", ..." if self.resized > len(self.first) else ""
        logger.info("%d of %d image(s) of %s are not %dx%d, the model's size, and were resized to it "
                    "(bicubic, no crop; %s%s)", self.resized, self.read, redact(self.path), self.resolution,
                    self.resolution, first, more)


def row_image(row: Row, column: str, resolution: int, resized: ResizedImages | None = None, *,
              max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> torch.Tensor:
    """The image in ``row[column]`` as a model input; bad base64/images, and images of more than
    ``max_pixels`` pixels, name file, line and column. Its size (the file's) is counted in ``resized``."""
    names = list(row.values)
    position = names.index(column) + 1
    img = decode_image_base64(row[column], file=row.file, line=row.line_no, column=position, reduce_to=resolution,
                              max_pixels=max_pixels)
    if resized is not None:
        resized.add(row.line_no, img.info.get("source_size", img.size))
    return image_to_tensor(img, resolution)


def file_digest(path: str) -> str:
    """sha256 of a table's bytes (streamed; local files or object-storage URIs)."""
    h = hashlib.sha256()
    with open_binary(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def module_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def local_table(path: str, cache_dir: str | os.PathLike) -> str:
    """A local path for a table: itself, or for an object-storage URI a copy downloaded (streamed,
    atomically) into ``cache_dir``, reused while the object's bytes are unchanged."""
    if not is_remote(path):
        return path
    # the name keeps the object's file name, never its user info or query string
    name = hashlib.sha256(path.encode()).hexdigest()[:16] + "-" + os.path.basename(urlsplit(path).path.rstrip("/"))
    target = Path(cache_dir) / "tables" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s to %s", redact(path), target)
    with open_binary(path, "rb") as src, atomic_path(target) as tmp, open(tmp, "wb") as dst:
        for chunk in iter(lambda: src.read(HASH_CHUNK), b""):
            dst.write(chunk)
    return str(target)


@torch.no_grad()
def encode_table_images(
    table: TableDataset, column: str, vqgan: VQGAN, batch_size: int, device: torch.device | str = "cpu",
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> torch.Tensor:
    """Codes (N, num_tokens) of every row's image, in table order."""
    out = torch.empty(len(table), vqgan.config.num_tokens, dtype=torch.int32)
    vqgan = vqgan.eval()
    resized = ResizedImages(table.path, vqgan.config.resolution)
    for start in range(0, len(table), batch_size):
        stop = min(start + batch_size, len(table))
        images = torch.stack([row_image(table.row(i), column, vqgan.config.resolution, resized, max_pixels=max_pixels)
                              for i in range(start, stop)])
        out[start:stop] = vqgan.encode(images.to(device)).to("cpu", torch.int32)
    resized.report()
    return out


def cached_codes(
    table: TableDataset,
    column: str,
    vqgan: VQGAN,
    cache_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> torch.Tensor:
    """Codes of the table's images, from the cache when the same table and VQGAN were seen before."""
    key = hashlib.sha256(
        f"{file_digest(table.path)}|{module_digest(vqgan)}|{column}|{len(table)}".encode()
    ).hexdigest()[:32]
    path = Path(cache_dir) / f"codes-{key}.safetensors"
    if path.is_file():
        codes = load_file(path)["codes"]
        if codes.shape == (len(table), vqgan.config.num_tokens):
            logger.info("image codes of %s read from the cache %s", table.path, path)
            return codes
        logger.warning("ignoring cache file %s of the wrong shape %s", path, tuple(codes.shape))
    logger.info("encoding %d images of %s with the VQGAN (cached afterwards in %s)", len(table), table.path, path)
    codes = encode_table_images(table, column, vqgan, batch_size, device, max_pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"codes": codes}, tmp, metadata={"table": str(table.path)})
    return codes


def knowledge_columns(schema: Schema) -> bool:
    """Whether a table carries EasyNLP's preprocessed knowledge columns (lex_id, pos_s, pos_e, token_len)."""
    return all(c in schema.names for c in KNOWLEDGE_COLUMNS)


def row_lattice(row: Row) -> Lattice:
    """The entities of a preprocessed row; a bad cell names file, line and column."""
    return Lattice.from_columns(*(str(row[c]) for c in KNOWLEDGE_COLUMNS), path=row.file, line=row.line_no)


def row_lattices(rows: list[Row]) -> list[Lattice] | None:
    """The preprocessed entities of each row, or None when the table has no knowledge columns."""
    if not rows or not all(c in rows[0].values for c in KNOWLEDGE_COLUMNS):
        return None
    return [row_lattice(r) for r in rows]


def read_rows(path: str, schema: Schema, skip_first_line: bool, rejects: list[tuple[int, str]] | None):
    """Stream rows; a bad row raises (naming file, line, column) or, with ``rejects``, is recorded there."""

    def reject(exc: ValueError) -> None:
        if rejects is None:
            raise exc
        rejects.append((exc.line, str(exc)))

    check = knowledge_columns(schema)
    for row in read_table(path, schema, skip_first_line, on_error=None if rejects is None else reject):
        if check:
            try:
                row_lattice(row)
            except ValueError as exc:  # LatticeFormatError names file, line and column
                reject(exc)
                continue
        yield row


class CodesDataset:
    """Row i → (row, codes[i]); the table is read lazily, codes come from the cache."""

    def __init__(self, table: TableDataset, codes: torch.Tensor) -> None:
        if len(table) != codes.shape[0]:
            raise ValueError(f"{table.path}: {len(table)} rows but {codes.shape[0]} cached codes")
        self.table = table
        self.codes = codes

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[Row, torch.Tensor]:
        return self.table.row(i), self.codes[i]


@dataclass
class Stage2Collate:
    """A batch of (row, codes) → ``{"text_ids", "image_ids", "knowledge"}``, encoded by the pipeline."""

    pipe: object  # ArtistPipeline
    text_column: str

    def __call__(self, items: list[tuple[Row, torch.Tensor]]) -> dict:
        rows = [r for r, _ in items]
        text_ids, knowledge = self.pipe.encode_prompts([str(r[self.text_column]) for r in rows], row_lattices(rows))
        return {
            "text_ids": text_ids,
            "image_ids": torch.stack([c for _, c in items]).long(),
            "knowledge": knowledge,
        }


class ImageDataset:
    """Row i → image tensor (3, R, R), for stage-1 training and reconstruction metrics. Images of
    another size are counted over the first ``len(self)`` reads (an epoch), then reported once."""

    def __init__(self, table: TableDataset, column: str, resolution: int,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.table, self.column, self.resolution, self.max_pixels = table, column, resolution, max_pixels
        self.resized = ResizedImages(table.path, resolution)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> torch.Tensor:
        counting = self.resized.read < len(self)
        image = row_image(self.table.row(i), self.column, self.resolution, self.resized if counting else None,
                          max_pixels=self.max_pixels)
        if counting and self.resized.read == len(self):
            self.resized.report()
        return image


def stack_images(items: list[torch.Tensor]) -> dict:
    return {"images": torch.stack(items)}

"""Predict: a table of prompts → a table of base64 PNGs (and optionally PNG files), through the pipeline.

The whole input table is read and checked before anything is generated; the output table and the
image folder are each written under a temporary name and published whole at the end, so an
interrupted or failed run leaves the previous outputs as they were.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from html import escape
from pathlib import Path

import torch.distributed as dist

from appzoo.distributed import get_rank, get_world_size, is_distributed, is_main_process, run_sharded_predict
from appzoo.tables import Row, Schema, encode_image_base64
from easynlp_artist.data import knowledge_columns, read_rows, row_lattice, row_lattices
from easynlp_artist.knowledge.lattice import describe_entities
from easynlp_artist.metrics import row_generators
from easynlp_artist.models.stage2.sampling import SamplingConfig
from easynlp_artist.progress import Progress, run_settings
from easynlp_artist.tokenization import PromptStats
from modelzoo.files import atomic_path, publish_dir, recover_dir, temp_sibling, write_text_atomic
from modelzoo.storage import is_remote, local_path, redact

logger = logging.getLogger(__name__)

GENERATED_COLUMN = "gen_imgbase64"
DISPLAY_PX = 128  # the contact sheet shows images this wide (nearest neighbour: small images stay sharp)


@dataclass
class PredictJob:
    table: str
    outputs: str
    schema: Schema
    skip_first_line: bool
    text_column: str
    out_columns: list[str]
    batch_size: int
    images_per_row: int
    seed: int
    image_dir: Path | None = None
    skip_bad_rows: bool = False


def check_output_paths(table: str, outputs: str, image_dir: str | None) -> None:
    """Refuse, before any work, outputs that would overwrite the input or cannot be written."""

    def local(uri: str) -> Path | None:
        return None if is_remote(uri) else Path(os.path.abspath(local_path(uri)))

    src, out = local(table), local(outputs)
    if out is not None:
        if src is not None and out == src:
            raise ValueError(f"--outputs={outputs} is the input table; write the predictions elsewhere")
        if out.is_dir():
            raise ValueError(f"--outputs={outputs} is a folder; name the output table file")
        for parent in out.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ValueError(f"--outputs={outputs}: {parent} is a file, not a folder")
                break
    if image_dir is not None:
        folder = Path(os.path.abspath(image_dir))
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"image_dir={image_dir} is a file, not a folder")
        if src is not None and (src == folder or folder in src.parents):
            raise ValueError(f"image_dir={image_dir} holds the input table; it is replaced whole at the end")


def validate_table(job: PredictJob) -> tuple[int, list[tuple[int, str]] | None]:
    """Read every row once before generating: a bad row stops here (or is collected for the
    rejects file). Returns the number of good rows and the rejects."""
    rejects: list[tuple[int, str]] | None = [] if job.skip_bad_rows else None
    count = sum(1 for _ in read_rows(job.table, job.schema, job.skip_first_line, rejects))
    return count, rejects


def _staging(image_dir: Path) -> Path:
    """A staging folder beside ``image_dir`` that every process of the run writes into."""
    path = [None]
    if get_rank() == 0:
        recover_dir(image_dir)
        staging = temp_sibling(image_dir, "staging")
        staging.mkdir(parents=True)
        path = [str(staging)]
    if is_distributed():
        dist.broadcast_object_list(path, src=0)
    return Path(path[0])


def write_contact_sheet(image_dir: Path, entries: list[tuple[str, str, list[str]]]) -> None:
    cells = []
    for key, text, files in entries:
        imgs = "".join(f'<img src="{escape(f)}" alt="{escape(text)}">' for f in files)
        cells.append(f"<figure>{imgs}<figcaption>{escape(key)}: {escape(text)}</figcaption></figure>")
    html = (
        "<!doctype html><meta charset='utf-8'><title>ARTIST predictions</title>"
        f"<style>figure{{display:inline-block;margin:8px}}img{{width:{DISPLAY_PX}px;"
        "image-rendering:pixelated;margin:1px}</style>\n" + "\n".join(cells) + "\n"
    )
    write_text_atomic(image_dir / "index.html", html)


def _check_preprocessed_entities(pipe, job: PredictJob, rejects) -> None:
    """Every lex_id of a preprocessed table must be an entity of the loaded store (checked before
    generating); the first rows' entities are logged by name, so a table preprocessed with another
    dictionary than the model's is visible."""
    first = []
    for row in read_rows(job.table, job.schema, job.skip_first_line, [] if rejects is not None else None):
        lattice = row_lattice(row)
        lattice.check_ids(pipe.entities)
        if len(first) < 3:
            first.append(lattice)
    if first:
        logger.info("entities of the first rows: %s", describe_entities(first, pipe.entities))


def my_rows(count: int, batch_size: int) -> int:
    """How many of ``count`` rows this process generates (batch j goes to rank j % world)."""
    starts = range(get_rank() * batch_size, count, get_world_size() * batch_size)
    return sum(min(batch_size, count - s) for s in starts)


def run_predict(pipe, job: PredictJob, sampling: SamplingConfig,
                checked: tuple[int, list[tuple[int, str]] | None]) -> dict:
    """Generate every row of a table checked by :func:`validate_table` (its result: ``checked``)."""
    count, rejects = checked
    if pipe.lattice is not None and knowledge_columns(job.schema):
        _check_preprocessed_entities(pipe, job, rejects)
    k = job.images_per_row
    logger.info("%d row(s) to generate from %s, %d image(s) each, on %s", count, redact(job.table), k,
                run_settings(pipe, sampling))
    staging = _staging(job.image_dir) if job.image_dir is not None else None
    pipe.prompt_stats = PromptStats()  # this run's prompts only
    progress = Progress(my_rows(count, job.batch_size), "predict", logger,
                        terminal=None if is_main_process() else False)

    def predict_batch(rows: list[Row]) -> list[list[str]]:
        with pipe.progress_bar_disabled():  # one bar over the rows, not one per batch
            out = pipe([str(r[job.text_column]) for r in rows], num_images_per_prompt=k,
                       prompt_lattices=row_lattices(rows), generator=row_generators(job.seed, rows), sampling=sampling)
        table_rows = []
        for i, row in enumerate(rows):
            pics = out.images[i * k : (i + 1) * k]
            if staging is not None:
                for j, pic in enumerate(pics):
                    with atomic_path(staging / f"{row.line_no:06d}_{j}.png") as tmp:
                        pic.save(tmp, format="PNG")
            cells = {GENERATED_COLUMN: ",".join(encode_image_base64(p) for p in pics)}
            table_rows.append([cells[c] if c == GENERATED_COLUMN else str(row[c]) for c in job.out_columns])
        progress.update(len(rows), len(rows) * k)
        return table_rows

    try:
        rows = read_rows(job.table, job.schema, job.skip_first_line, [] if rejects is not None else None)
        with progress:
            written = run_sharded_predict(rows, predict_batch, job.outputs, job.batch_size)
        unread = pipe.prompt_stats.summary(pipe.model.config.gpt.text_len)
        if unread is not None:
            logger.warning("prompts the model cannot read whole: %s", unread)
        result = {"rows": written, "outputs": redact(job.outputs), "images_per_row": k}
        if rejects is not None and is_main_process():
            reject_path = job.outputs + ".rejects.tsv"
            write_text_atomic(reject_path, "".join(f"{n}\t{m.replace(chr(9), ' ')}\n" for n, m in rejects))
            result.update(rejected=len(rejects), rejects=reject_path)
            if rejects:
                logger.warning("%d bad row(s) skipped; see %s", len(rejects), reject_path)
        if staging is not None and is_main_process():
            entries = []
            for row in read_rows(job.table, job.schema, job.skip_first_line, [] if rejects is not None else None):
                files = [f"{row.line_no:06d}_{j}.png" for j in range(k)]
                entries.append((str(row.values.get("idx", row.line_no)), str(row[job.text_column]), files))
            write_contact_sheet(staging, entries)
            publish_dir(staging, job.image_dir)
            result["image_dir"] = str(job.image_dir)
        return result
    finally:
        if staging is not None and is_main_process() and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)

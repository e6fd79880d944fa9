"""Knowledge preprocessing: a text table → the original knowledge table, streaming.

Input: tab-separated UTF-8, no header, ``idx<TAB>text`` or ``idx<TAB>text<TAB>imgbase64`` per line.
Output, one line per good input row (the format of EasyNLP's ``preprocess_data_knowl.py``)::

    idx  text  lex_id  pos_s  pos_e  token_len  [imgbase64]

``token_len`` is the number of WordPiece tokens of the whole text (no truncation); ``pos_s`` and
``pos_e`` are ``range(token_len)`` followed by one start and one INCLUSIVE end token per entity;
``lex_id`` lists the entity ids; a row without entities has an empty ``lex_id`` field. Entities are
every lattice match (overlapping and nested) in (start, end, id) order; ``text_len`` and ``entity_num``
are applied later, when batches are built (:func:`~easynlp_artist.knowledge.lattice.knowledge_from_lattices`).
Lines end with ``\\n``. Only the line ending of input rows is stripped.

A row with another number of fields or invalid UTF-8 stops the run with an error naming the file, line
and column, as predict does; with ``skip_bad_rows`` (``--skip_bad_rows``, the app's parameter name) such
rows are logged and written to ``<output>.rejects.tsv`` instead, one ``line<TAB>reason`` per row. Memory
does not grow with the table: rows are read, matched and written in batches of ``batch_rows``; the
output (and the rejects file) appear atomically when the run completes. Only names and ids are needed:
``entity2id.txt`` alone will do (``--entity_emb_path`` is optional; given, its rows are checked against
the ids). Warnings are written through the progress bar, so the two do not tangle.

CLI (EasyNLP's flag names ``--input_file``, ``--output_file``, ``--entity_map_file`` work too)::

    python -m easynlp_artist.knowledge.preprocess --input train.tsv --output train_knowl.tsv \\
        --entity_map entity2id.txt --vocab vocab.txt
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from modelzoo.files import atomic_path

from ..tokenization import load_tokenizer
from .entities import EntityStore
from .errors import KnowledgeFileError, TableFormatError
from .lattice import ALIGNMENTS, COLUMNS, Lattice, LatticeBuilder, LatticeConfig, LatticeStats

logger = logging.getLogger(__name__)

INPUT_FIELDS = (2, 3)  # idx, text[, imgbase64]
KNOWLEDGE_FIELDS = (6, 7)  # idx, text, lex_id, pos_s, pos_e, token_len[, imgbase64]


@dataclass
class PreprocessStats:
    rows: int = 0  # lines read (written + bad)
    written: int = 0
    bad_rows: list[int] = field(default_factory=list)  # 1-based line numbers of skipped rows
    lattice: LatticeStats = field(default_factory=LatticeStats)


def _field_columns(line: str) -> list[int]:
    """1-based character column where each tab-separated field of ``line`` starts."""
    cols = [1]
    for k, c in enumerate(line):
        if c == "\t":
            cols.append(k + 2)
    return cols


def _skip_or_raise(error: KnowledgeFileError, lineno: int, strict: bool, bad_rows: list[int] | None,
                   rejects: TextIO | None = None) -> None:
    """``strict``: re-raise; otherwise log the bad row, record its line number and write it to ``rejects``."""
    if strict:
        raise error
    logger.warning("skipping bad row: %s", error)
    if bad_rows is not None:
        bad_rows.append(lineno)
    if rejects is not None:
        reason = str(error).replace("\t", " ").replace("\n", " ").replace("\r", " ")
        rejects.write(f"{lineno}\t{reason}\n")


def iter_table(path: str | os.PathLike, allowed: Sequence[int], *, strict: bool = True, progress: bool = False,
               bad_rows: list[int] | None = None, rejects: TextIO | None = None
               ) -> Iterator[tuple[int, str, list[str]]]:
    """Stream ``(line_number, line, fields)`` of a tab-separated UTF-8 file.

    Lines with a field count not in ``allowed`` or invalid UTF-8 raise :class:`TableFormatError`
    (``strict``, the default) or are logged and skipped, their line numbers appended to ``bad_rows``
    and ``line<TAB>reason`` written to ``rejects``. With ``progress``, a progress bar on stderr; log
    records are written through it meanwhile.
    """
    path = os.fspath(path)
    with open(path, "rb") as f, tqdm(
        total=os.path.getsize(path), unit="B", unit_scale=True, disable=not progress, desc=os.path.basename(path)
    ) as bar, (logging_redirect_tqdm() if progress else contextlib.nullcontext()):
        for lineno, raw in enumerate(f, 1):
            bar.update(len(raw))
            try:
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as e:
                    raise TableFormatError(f"invalid UTF-8 at byte {e.start + 1} ({e.reason})", path, lineno) from e
                fields = line.split("\t")
                if len(fields) not in allowed:
                    expected = " or ".join(map(str, allowed))
                    raise TableFormatError(f"expected {expected} tab-separated fields, found {len(fields)}", path, lineno, 1)
            except TableFormatError as e:
                _skip_or_raise(e, lineno, strict, bad_rows, rejects)
                continue
            yield lineno, line, fields


def _write_batch(out, builder: LatticeBuilder, batch: list[list[str]], stats: PreprocessStats) -> None:
    lattices = builder.lattices([fields[1] for fields in batch], stats.lattice)
    for fields, lat in zip(batch, lattices):
        cols = lat.to_columns()
        row = [fields[0], fields[1], *(cols[c] for c in COLUMNS), *fields[2:]]
        out.write("\t".join(row) + "\n")
    stats.written += len(batch)


def preprocess_table(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    builder: LatticeBuilder,
    *,
    batch_rows: int = 256,
    skip_bad_rows: bool = False,
    rejects_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> PreprocessStats:
    """Write the knowledge table of ``input_path`` to ``output_path`` (atomically); see the module docstring.

    A bad row raises :class:`TableFormatError`; with ``skip_bad_rows`` it goes to ``rejects_path``
    (default ``<output_path>.rejects.tsv``, written even when empty) instead.
    """
    if batch_rows <= 0:
        raise ValueError(f"batch_rows must be positive, got {batch_rows}")
    stats = PreprocessStats()
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(output_path))
        out = stack.enter_context(open(tmp, "w", encoding="utf-8", newline="\n"))
        rejects = None
        if skip_bad_rows:
            rejects_tmp = stack.enter_context(atomic_path(rejects_path or default_rejects_path(output_path)))
            rejects = stack.enter_context(open(rejects_tmp, "w", encoding="utf-8", newline="\n"))
        batch: list[list[str]] = []
        for _, _, fields in iter_table(input_path, INPUT_FIELDS, strict=not skip_bad_rows, progress=progress,
                                       bad_rows=stats.bad_rows, rejects=rejects):
            batch.append(fields)
            if len(batch) == batch_rows:
                _write_batch(out, builder, batch, stats)
                batch = []
        if batch:
            _write_batch(out, builder, batch, stats)
    stats.rows = stats.written + len(stats.bad_rows)
    return stats


def default_rejects_path(output_path: str | os.PathLike) -> str:
    """Where skipped rows go: ``<output>.rejects.tsv``, as the app writes them."""
    return f"{os.fspath(output_path)}.rejects.tsv"


@dataclass
class KnowledgeRow:
    line: int  # 1-based line number in the table
    idx: str
    text: str
    lattice: Lattice
    rest: tuple[str, ...]  # columns after token_len, e.g. (imgbase64,)


def read_knowledge_table(
    path: str | os.PathLike, *, strict: bool = True, bad_rows: list[int] | None = None,
    store: EntityStore | None = None,
) -> Iterator[KnowledgeRow]:
    """Stream a knowledge table (original format); bad knowledge columns raise :class:`LatticeFormatError`
    naming the file, line and column (or, unless ``strict``, are logged and skipped). With ``store``,
    a ``lex_id`` that is not an id of the store is such a bad row too."""
    for lineno, line, fields in iter_table(path, KNOWLEDGE_FIELDS, strict=strict, bad_rows=bad_rows):
        starts = _field_columns(line)
        columns = {name: starts[2 + k] for k, name in enumerate(COLUMNS)}
        try:
            lattice = Lattice.from_columns(*fields[2:6], path=path, line=lineno, columns=columns)
            if store is not None:
                lattice.check_ids(store)
        except KnowledgeFileError as e:
            _skip_or_raise(e, lineno, strict, bad_rows)
            continue
        yield KnowledgeRow(lineno, fields[0], fields[1], lattice, tuple(fields[6:]))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m easynlp_artist.knowledge.preprocess",
        description="Add the knowledge columns (lex_id, pos_s, pos_e, token_len) to an idx/text[/imgbase64] table.",
    )
    p.add_argument("--input", "--input_file", dest="input", required=True,
                   help="input table: idx<TAB>text[<TAB>imgbase64]")
    p.add_argument("--output", "--output_file", dest="output", required=True, help="output knowledge table")
    p.add_argument("--entity_map", "--entity_map_file", dest="entity_map",
                   help="entity2id.txt (header line, then name<TAB>id); all that preprocessing needs")
    p.add_argument("--entity_emb_path", help="optional entity2vec.pt (float tensor [N, D]): ids are checked against it")
    p.add_argument("--entity_dir", help="an entity directory in our format, instead of the two files above")
    p.add_argument("--vocab", required=True, help="tokenizer vocab.txt or a directory holding it")
    p.add_argument("--min_chars", type=int, default=LatticeConfig.min_chars, help="shortest entity name matched")
    p.add_argument("--alignment", choices=ALIGNMENTS, default=LatticeConfig.alignment)
    p.add_argument("--use_jieba_filter", action="store_true", help="drop matches that cut through jieba words")
    p.add_argument("--batch_rows", type=int, default=256, help="rows tokenized and matched together")
    bad = p.add_mutually_exclusive_group()
    bad.add_argument("--skip_bad_rows", action="store_true",
                     help="skip bad rows, writing them with the reason to <output>.rejects.tsv (default: stop at the first)")
    bad.add_argument("--strict", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.entity_dir is None and args.entity_map is None:
        parser.error("give --entity_map (entity2id.txt) or --entity_dir")
    if args.entity_dir is not None and (args.entity_map is not None or args.entity_emb_path is not None):
        parser.error("--entity_dir excludes --entity_map/--entity_emb_path")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.entity_dir is not None:
            store = EntityStore.from_dir(args.entity_dir)
        elif args.entity_emb_path is not None:
            store = EntityStore.from_easynlp(args.entity_map, args.entity_emb_path)
        else:
            store = EntityStore.from_entity2id(args.entity_map)
        config = LatticeConfig(min_chars=args.min_chars, alignment=args.alignment, use_jieba_filter=args.use_jieba_filter)
        builder = LatticeBuilder(store, load_tokenizer(args.vocab), config)
        stats = preprocess_table(
            args.input, args.output, builder, batch_rows=args.batch_rows, skip_bad_rows=args.skip_bad_rows,
            progress=not args.no_progress,
        )
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    ls = stats.lattice
    print(
        f"wrote {stats.written} rows to {args.output}; skipped {len(stats.bad_rows)} bad rows"
        f"{f' (see {default_rejects_path(args.output)})' if args.skip_bad_rows else ''}; "
        f"{ls.matches} matches, {ls.unaligned} off token boundaries, {ls.jieba_dropped} dropped by jieba",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

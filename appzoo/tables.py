"""Tab-separated tables: schemas, streaming reads with precise errors, base64 images, atomic writes.

A table is UTF-8 text, one row per line, columns separated by tabs, no header unless
``skip_first_line``. Blank lines are ignored. Columns are described by an EasyNLP schema
``name:type:length`` (type ``str``, ``int`` or ``float``; length > 1 means a comma-separated list
of that many values). Errors are :class:`TableError` and name the file, the 1-based line and the
1-based column.

Local paths and ``file://`` URIs are read directly; other URIs (``oss://``, ``s3://``, ...) go
through :func:`modelzoo.storage.open_uri`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import difflib
import io
import os
import shutil
import tempfile
import threading
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from modelzoo.files import publish_file, remove_stale, temp_sibling
from modelzoo.storage import is_remote, local_path

DEFAULT_MAX_IMAGE_PIXELS = 64 * 1024 * 1024
REDUCE_FACTOR = 4  # decode_image_base64(reduce_to=R) decodes images at least this many times R smaller


class TableError(ValueError):
    """Bad table content; ``str()`` names the file, 1-based line and column."""

    def __init__(self, file: str | os.PathLike | None, line: int | None, column: int | str | None, message: str):
        self.file = None if file is None else str(file)
        self.line = line
        self.column = column
        self.message = message
        where = [self.file or "<input>"]
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column}")
        super().__init__(f"{', '.join(where)}: {message}")


# ---------------------------------------------------------------------------------------------- paths


def open_binary(path: str | os.PathLike, mode: str = "rb") -> IO[bytes]:
    """Open a local path, ``file://`` URI or object-storage URI in binary mode (``rb``/``wb``)."""
    if is_remote(path):
        from modelzoo.storage import open_uri

        return open_uri(str(path), mode)
    return open(local_path(path), mode)


# --------------------------------------------------------------------------------------------- schema

_CONVERTERS = {"str": str, "int": int, "float": float}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    length: int = 1

    def convert(self, text: str) -> Any:
        """Text → value; raises ValueError with a short reason."""
        kind = _CONVERTERS[self.type]
        if self.length == 1:
            return _convert_one(kind, self.type, text)
        parts = text.split(",")
        if len(parts) != self.length:
            raise ValueError(f"expected {self.length} comma-separated {self.type} values, got {len(parts)}")
        return [_convert_one(kind, self.type, part) for part in parts]


def _convert_one(kind: type, type_name: str, text: str) -> Any:
    if kind is str:
        return text
    try:
        return kind(text.strip())
    except ValueError:
        raise ValueError(f"expected {type_name}, got {text[:40]!r}") from None


@dataclass(frozen=True)
class Schema:
    columns: tuple[Column, ...]

    @classmethod
    def parse(cls, text: str, *, flag: str = "input_schema") -> Schema:
        """``"idx:str:1,text:str:1"`` → Schema; errors name the 1-based entry.

        Empty (or blank) entries are ignored, so EasyNLP's ``idx:str:1,text:str:1,`` with its
        trailing comma reads as two columns; entries keep their position in the text for errors.
        """
        columns = []
        for position, item in enumerate((text or "").split(","), start=1):
            if not item.strip():
                continue
            parts = [p.strip() for p in item.split(":")]
            if len(parts) == 2:
                parts.append("1")
            if len(parts) != 3 or not parts[0]:
                raise ValueError(f"--{flag}: entry {position} {item.strip()!r} is not name:type:length")
            name, kind, length = parts
            if kind not in _CONVERTERS:
                raise ValueError(
                    f"--{flag}: entry {position} {item.strip()!r}: type must be one of "
                    f"{', '.join(_CONVERTERS)}, got {kind!r}"
                )
            if not length.isdigit() or int(length) < 1:
                raise ValueError(f"--{flag}: entry {position} {item.strip()!r}: length must be an integer >= 1")
            if any(c.name == name for c in columns):
                raise ValueError(f"--{flag}: column {name!r} appears twice")
            columns.append(Column(name, kind, int(length)))
        if not columns:
            raise ValueError(f"--{flag} is empty")
        return cls(tuple(columns))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def index(self, name: str, *, flag: str = "first_sequence") -> int:
        """0-based position of column ``name``; a clear error (with a hint) if there is none."""
        if name in self.names:
            return self.names.index(name)
        close = difflib.get_close_matches(name, self.names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ValueError(f"--{flag}={name}: no such column in the schema ({', '.join(self.names)}){hint}")

    def __len__(self) -> int:
        return len(self.columns)


def sequence_columns(schema: Schema, first_sequence: str | None, second_sequence: str | None = None
                     ) -> tuple[str, str | None]:
    """Validate ``--first_sequence``/``--second_sequence`` against the schema; return the names."""
    if not first_sequence:
        raise ValueError("--first_sequence is required (the name of the text column)")
    schema.index(first_sequence, flag="first_sequence")
    if second_sequence:
        schema.index(second_sequence, flag="second_sequence")
    return first_sequence, second_sequence or None


# ----------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    """One table row: its 1-based line number in ``file`` and its converted values by column name."""

    line_no: int
    values: dict[str, Any]
    file: str = "<input>"

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def error(self, column: str, message: str) -> TableError:
        """A TableError pointing at this row's ``column`` (by name)."""
        names = list(self.values)
        position = names.index(column) + 1 if column in names else column
        return TableError(self.file, self.line_no, position, message)


def parse_line(raw: bytes, schema: Schema, *, file: str, line_no: int) -> Row:
    """One raw line (without its newline) → Row, or TableError."""
    if b"\r" in raw:  # a lone CR inside a cell: no tsv writer can hold it, and readers split on it
        column = raw[: raw.index(b"\r")].count(b"\t") + 1
        raise TableError(file, line_no, column, "a carriage return inside a cell (only a CRLF line end is allowed)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        column = raw[: exc.start].count(b"\t") + 1
        raise TableError(file, line_no, column, f"invalid UTF-8 at byte {exc.start}") from None
    fields = text.split("\t")
    if len(fields) != len(schema):
        column = min(len(fields), len(schema)) + 1
        raise TableError(
            file, line_no, column,
            f"expected {len(schema)} tab-separated columns ({', '.join(schema.names)}), got {len(fields)}",
        )
    values = {}
    for position, (column_def, field_text) in enumerate(zip(schema.columns, fields), start=1):
        try:
            values[column_def.name] = column_def.convert(field_text)
        except ValueError as exc:
            raise TableError(file, line_no, position, f"{column_def.name}: {exc}") from None
    return Row(line_no, values, file)


def _strip_newline(raw: bytes) -> bytes:
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw


def read_table(path: str | os.PathLike, schema: Schema, skip_first_line: bool = False,
               on_error: Callable[[TableError], None] | None = None) -> Iterator[Row]:
    """Stream the rows of a table (memory does not grow with the number of rows).

    A malformed row raises :class:`TableError`; with ``on_error`` it is handed to that callback
    instead (to be recorded as a reject) and reading goes on.
    """
    name = str(path)
    with open_binary(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if line_no == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
                if skip_first_line:
                    continue
            raw = _strip_newline(raw)
            if not raw:  # an empty line; any other line (even only a tab) is a row or a reject
                continue
            try:
                row = parse_line(raw, schema, file=name, line_no=line_no)
            except TableError as exc:
                if on_error is None:
                    raise
                on_error(exc)
                continue
            yield row


class TableDataset:
    """Map-style random access to a table's rows: one pass records line offsets (8 bytes a row).

    ``dataset[i]`` parses row ``i`` (after ``transform`` if given). Works with
    ``torch.utils.data`` samplers and worker processes (each process opens its own handle).
    """

    def __init__(self, path: str | os.PathLike, schema: Schema, skip_first_line: bool = False,
                 transform=None):
        if is_remote(path):
            raise ValueError(f"{path}: TableDataset needs random access to a local file; copy the table "
                             "from object storage first (read_table streams from any URI)")
        self.path = str(path)
        self.schema = schema
        self.transform = transform
        self._offsets = array("q")
        self._lines = array("q")
        with open_binary(path, "rb") as handle:
            offset = 0
            for line_no, raw in enumerate(handle, start=1):
                start = offset
                offset += len(raw)
                if line_no == 1:
                    bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
                    start, raw = start + bom, raw[bom:]
                    if skip_first_line:
                        continue
                if not _strip_newline(raw):  # as read_table: only empty lines are not rows
                    continue
                self._offsets.append(start)
                self._lines.append(line_no)
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self._offsets)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_local")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _handle(self) -> IO[bytes]:
        handle = getattr(self._local, "handle", None)
        if handle is None or getattr(self._local, "pid", None) != os.getpid():
            handle = open_binary(self.path, "rb")
            self._local.handle = handle
            self._local.pid = os.getpid()
        return handle

    def row(self, index: int) -> Row:
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows of {self.path}")
        index %= len(self)
        handle = self._handle()
        handle.seek(self._offsets[index])
        raw = _strip_newline(handle.readline())
        return parse_line(raw, self.schema, file=self.path, line_no=self._lines[index])

    def __getitem__(self, index: int) -> Any:
        row = self.row(index)
        return row if self.transform is None else self.transform(row)


# --------------------------------------------------------------------------------------------- images


def decode_image_base64(text: str, *, file: str | os.PathLike | None = None, line: int | None = None,
                        column: int | str | None = None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                        reduce_to: int | None = None) -> Image.Image:
    """Base64 (standard or URL-safe, padding optional) of any PIL-readable image → RGB image.

    Transparent images are put on white; images with more than ``max_pixels`` pixels are refused
    before decoding. With ``reduce_to`` (the size the caller resizes to), an image at least
    ``REDUCE_FACTOR`` times larger on both sides is decoded smaller where the format allows it
    (JPEG's DCT scaling) and reduced by an integer factor before colour conversion otherwise, still
    at least ``reduce_to`` on each side; smaller images are decoded exactly as before; the file's
    own size stays in ``info["source_size"]``. Every failure is a TableError naming
    ``file``/``line``/``column``.
    """
    payload = "".join(text.split())
    if payload.startswith("data:") and "," in payload:
        payload = payload.split(",", 1)[1]
    payload = payload.replace("-", "+").replace("_", "/").rstrip("=")
    if not payload:
        raise TableError(file, line, column, "empty image")
    if len(payload) % 4 == 1:
        raise TableError(file, line, column, "invalid base64: truncated (length is 1 more than a multiple of 4)")
    try:
        data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except binascii.Error as exc:
        raise TableError(file, line, column, f"invalid base64: {exc}") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise TableError(
                    file, line, column, f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels"
                )
            huge = reduce_to is not None and min(width, height) >= REDUCE_FACTOR * reduce_to
            if huge and img.format == "JPEG":
                img.draft("RGB", (reduce_to, reduce_to))  # decodes at 1/2, 1/4 or 1/8 scale
            img.load()
            if huge:
                factor = min(img.width, img.height) // reduce_to
                if factor >= 2:
                    img = img.reduce(factor)
            rgb = to_rgb(img)
            rgb.info["source_size"] = (width, height)  # the file's size, before any reduction
            return rgb
    except TableError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise TableError(file, line, column, f"unreadable image: {exc}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → RGB; transparency is composited on white, 16-bit/float samples are rescaled."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        samples = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") else max(float(samples.max(initial=0.0)), 255.0)
        gray = np.clip(np.round(samples * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return img.convert("RGB")


def encode_image_base64(img: Image.Image) -> str:
    """Image → standard base64 of its PNG encoding."""
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------------------------- writes


def check_cell(value: Any, *, column: int | None = None) -> str:
    """A value as tsv cell text; tabs and newlines cannot be stored and are errors."""
    text = value if isinstance(value, str) else str(value)
    for bad, label in (("\t", "a tab"), ("\n", "a newline"), ("\r", "a carriage return")):
        if bad in text:
            where = f"column {column}: " if column is not None else ""
            raise ValueError(f"{where}value contains {label}, which a tab-separated table cannot hold: {text[:40]!r}")
    return text


class AtomicWriter:
    """Write a table (or any text) so that readers see either nothing or the complete file.

    Writes a temporary file beside the target and renames it over the target on success; on an
    exception the temporary file is removed and the target is untouched. For object-storage URIs
    the complete file is uploaded once at the end.

        with AtomicWriter(path) as out:
            out.write_row(["1", "text", b64])
    """

    def __init__(self, path: str | os.PathLike, *, encoding: str = "utf-8"):
        self.path = str(path)
        self.encoding = encoding
        self._file: IO[str] | None = None
        self._temp: Path | None = None
        self.rows_written = 0

    def __enter__(self) -> AtomicWriter:
        if is_remote(self.path):
            fd, name = tempfile.mkstemp(prefix="appzoo-upload-", suffix=".tsv")
        else:
            target = local_path(self.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(target)
            name = str(temp_sibling(target))
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._temp = Path(name)
        self._file = os.fdopen(fd, "w", encoding=self.encoding, newline="\n")
        return self

    def write_row(self, values: Sequence[Any]) -> None:
        line = "\t".join(check_cell(value, column=i) for i, value in enumerate(values, start=1))
        self.write_line(line)

    def write_line(self, line: str) -> None:
        """Write one already-formatted line (no newline inside)."""
        assert self._file is not None, "AtomicWriter used outside its with-block"
        self._file.write(line.rstrip("\n") + "\n")
        self.rows_written += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._file is not None and self._temp is not None
        try:
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            if exc_type is None:
                self._publish()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._temp.unlink()

    def _publish(self) -> None:
        assert self._temp is not None
        if is_remote(self.path):
            with open(self._temp, "rb") as src, open_binary(self.path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            return
        publish_file(self._temp, local_path(self.path))

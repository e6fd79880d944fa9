"""Resumable, verified downloads into a partial file.

:func:`fetch` streams an object into ``<partial>`` (appending, so an interrupted download resumes with a
ranged request), hashes as it writes, retries transient errors a bounded number of times with
exponential backoff, and checks size and sha256 at the end. A sidecar ``<partial>.json`` remembers
which URI and object version (ETag/Last-Modified) the partial bytes belong to, so a resume never
splices two versions of an object together.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import queue
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import ChecksumError, ModelZooError, StorageError
from .files import env_number, write_text_atomic
from .storage import RangeStream, open_range, redact

log = logging.getLogger(__name__)

CHUNK_SIZE = 256 * 1024  # small enough to stay in L2 cache between the write and the hash
HASH_BLOCK = 4 * 1024 * 1024
QUEUE_CHUNKS = 32  # chunks in flight between the network reader and the writer thread
WRITEBACK_BYTES = 8 * 1024 * 1024  # start the disk write of every this many bytes while downloading
_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of the range, do not wait for it


def _load_sync_file_range():  # noqa: ANN202 - a ctypes function or None
    """Linux's ``sync_file_range`` (not in the os module), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_sync_file_range = _load_sync_file_range()


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; the wait before try k+1 is ``backoff_s * 2**(k-1)`` (±25 %), capped."""

    attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        try:
            return cls(attempts=int(env_number("EASYNLP_MODELZOO_RETRIES", cls.attempts, int, minimum=1)),
                       backoff_s=env_number("EASYNLP_MODELZOO_BACKOFF", cls.backoff_s, minimum=0))
        except ValueError as e:
            raise ModelZooError(str(e)) from None

    def wait(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return base * random.uniform(0.75, 1.25)


@dataclass(frozen=True)
class FetchResult:
    path: Path
    size: int
    sha256: str
    resumed_from: int  # bytes already present when the first successful request started


def sha256_file(path: Path, upto: int | None = None) -> hashlib._Hash:
    """sha256 state of ``path`` (its first ``upto`` bytes when given)."""
    h = hashlib.sha256()
    remaining = upto
    with open(path, "rb") as f:
        while remaining is None or remaining > 0:
            block = f.read(HASH_BLOCK if remaining is None else min(HASH_BLOCK, remaining))
            if not block:
                break
            h.update(block)
            if remaining is not None:
                remaining -= len(block)
    return h


def _progress_bar(total: int | None, initial: int, label: str):  # noqa: ANN202 - tqdm or None
    setting = os.environ.get("EASYNLP_MODELZOO_PROGRESS", "auto").lower()
    if setting in ("0", "false", "no", "off"):
        return None
    if setting == "auto" and not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=label, file=sys.stderr, leave=False)


def _sidecar(partial: Path) -> Path:
    return partial.with_name(partial.name + ".json")


def _discard(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    _sidecar(partial).unlink(missing_ok=True)


def _resume_state(partial: Path, uri: str) -> tuple[int, str | None]:
    """Bytes already in ``partial`` for ``uri`` and the object version they came from."""
    side = _sidecar(partial)
    try:
        state = json.loads(side.read_text(encoding="utf-8"))
        size = partial.stat().st_size
    except (OSError, ValueError):
        _discard(partial)
        return 0, None
    if state.get("uri_sha256") != hashlib.sha256(uri.encode()).hexdigest():
        _discard(partial)
        return 0, None
    return size, state.get("validator")


def _write_state(partial: Path, uri: str, validator: str | None) -> None:
    write_text_atomic(_sidecar(partial), json.dumps({"uri_sha256": hashlib.sha256(uri.encode()).hexdigest(),
                                                   "validator": validator}))


def _reason(error: StorageError, uri: str) -> str:
    """``error``'s message without the leading URI that ``label`` already names."""
    text, prefix = str(error), f"{redact(uri)}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def fetch(uri: str, partial: Path, *, expected_size: int | None = None, expected_sha256: str | None = None,
          policy: RetryPolicy | None = None, label: str | None = None, hint: str = "") -> FetchResult:
    """Download ``uri`` into ``partial`` and verify it. The caller moves ``partial`` into place.

    On a checksum or size mismatch the partial file is deleted and :class:`ChecksumError` raised.
    On a permanent error (404, 403, ...) or after ``policy.attempts`` transient failures a
    :class:`ModelZooError` names the URI and the last reason, followed by ``hint`` (what else the user
    can do); the partial bytes stay for a resume.
    """
    policy = policy or RetryPolicy.from_env()
    label = label or redact(uri)
    partial.parent.mkdir(parents=True, exist_ok=True)
    offset, validator = _resume_state(partial, uri)
    if expected_size is not None and offset > expected_size:
        _discard(partial)
        offset, validator = 0, None
    hasher, hashed = None, -1
    resumed_from: int | None = None
    last_error: StorageError | None = None
    total: int | None = expected_size
    done = expected_size is not None and offset == expected_size and offset > 0
    attempt = 0
    while not done:
        attempt += 1
        if attempt > policy.attempts:
            reason = _reason(last_error, uri) if last_error else "?"
            raise ModelZooError(f"{label}: download failed after {policy.attempts} attempts; "
                                f"last error: {reason}{hint}") from last_error
        if attempt > 1:
            delay = policy.wait(attempt - 1)
            log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", label, _reason(last_error, uri), delay,
                        attempt, policy.attempts)
            time.sleep(delay)
        try:
            stream = open_range(uri, offset, validator)
        except StorageError as e:
            if not e.transient:
                raise ModelZooError(f"{label}: {_reason(e, uri)}{hint}") from e
            last_error = e
            continue
        with stream:
            if stream.total is not None:
                total = stream.total
                if expected_size is not None and stream.total != expected_size:
                    _discard(partial)
                    raise ChecksumError(f"{label}: the object has {stream.total} bytes, the index says "
                                        f"{expected_size}; nothing installed")
            if stream.start != offset:  # range ignored, or the object changed: start over
                log.info("%s: cannot resume at byte %d, downloading from the start", label, offset)
                offset, hasher = stream.start, None
            _write_state(partial, uri, stream.validator)
            validator = stream.validator
            if hasher is None or hashed != offset:
                hasher = sha256_file(partial, offset) if offset > 0 else hashlib.sha256()
            if resumed_from is None:
                resumed_from = offset
            try:
                offset = _copy(stream, partial, offset, hasher, total, label)
            except StorageError as e:
                offset = partial.stat().st_size
                hashed = offset
                if not e.transient:
                    raise ModelZooError(f"{label}: {_reason(e, uri)}{hint}") from e
                last_error = e
                continue
            hashed = offset
        if total is not None and offset < total:
            last_error = StorageError(f"connection closed after {offset} of {total} bytes", transient=True)
            continue
        done = True
    if hasher is None or hashed != offset:
        hasher = sha256_file(partial)
    digest = hasher.hexdigest()
    if expected_size is not None and offset != expected_size:
        _discard(partial)
        raise ChecksumError(f"{label}: got {offset} bytes, the index says {expected_size}; nothing installed")
    if expected_sha256 is not None and digest != expected_sha256:
        _discard(partial)
        raise ChecksumError(f"{label}: sha256 mismatch: expected {expected_sha256}, got {digest}; "
                            "the download was discarded and nothing installed")
    _sidecar(partial).unlink(missing_ok=True)
    return FetchResult(partial, offset, digest, resumed_from or 0)


class _HashingWriter(threading.Thread):
    """Writes and hashes chunks handed over by the network reader, so the two overlap.

    hashlib and file writes release the GIL, so on two cores the download runs at about the speed of
    the slower of network and hash+write rather than their sum. The final fsync is what makes the
    atomic install durable; so that it does not have to write the whole file at the end, the disk
    write of each finished ``WRITEBACK_BYTES`` is started on the way (Linux ``sync_file_range``,
    which does not wait; measured: fsync of 128 MiB 50 → 4 ms, and periodic fdatasync calls, which
    do wait, halved throughput).
    """

    def __init__(self, f: BinaryIO, hasher: hashlib._Hash):
        super().__init__(name="modelzoo-writer", daemon=True)
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self.f, self.hasher = f, hasher
        self.written, self.error = 0, None
        self.flushed_to = self.base = f.tell()  # file offset of the first byte this writer writes

    def run(self) -> None:
        while True:
            chunk = self.queue.get()
            if chunk is None:
                return
            if self.error is not None:
                continue  # keep draining so the reader never blocks on a full queue
            try:
                self.f.write(chunk)
                self.hasher.update(chunk)
                self.written += len(chunk)
                self._start_writeback()
            except OSError as e:
                self.error = e

    def _start_writeback(self) -> None:
        end = self.base + self.written
        if _sync_file_range is None or end - self.flushed_to < WRITEBACK_BYTES:
            return
        self.f.flush()
        # a failure here only means the final fsync has more to do
        _sync_file_range(self.f.fileno(), self.flushed_to, end - self.flushed_to, _SYNC_FILE_RANGE_WRITE)
        self.flushed_to = end


def _copy(stream: RangeStream, partial: Path, offset: int, hasher: hashlib._Hash, total: int | None,
          label: str) -> int:
    """Append ``stream`` to ``partial`` (truncated to ``offset``); returns the new size.

    On a read error the bytes received so far stay in ``partial`` (and in ``hasher``) for a resume.
    """
    bar = _progress_bar(total, offset, label)
    with open(partial, "r+b" if partial.exists() else "wb") as f:
        f.truncate(offset)
        f.seek(offset)
        writer = _HashingWriter(f, hasher)
        writer.start()
        try:
            while writer.error is None:
                chunk = stream.read(CHUNK_SIZE)
                if not chunk:
                    break
                writer.queue.put(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            writer.queue.put(None)
            writer.join()
            f.flush()
            os.fsync(f.fileno())
            if bar is not None:
                bar.close()
    if writer.error is not None:
        raise ModelZooError(f"{label}: cannot write {partial}: {writer.error}") from writer.error
    return offset + writer.written

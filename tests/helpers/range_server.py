"""A small loopback HTTP file server with Range support, for the ModelZoo tests and benchmark (test-only
code: it is not part of the installed packages; tests import it as ``helpers.range_server``).

It serves the files under a directory, honours ``Range: bytes=a-`` / ``a-b`` and ``If-Range``, sends
an ETag, logs every request, and can misbehave on purpose: drop the connection after N bytes of the
first response for a path, answer 503 a few times, or wait before answering.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    range: str | None
    status: int


@dataclass
class Faults:
    """Misbehaviour per URL path; each entry is consumed by the first request(s) for that path."""

    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before closing
    fail_with_503: dict[str, int] = field(default_factory=dict)  # path -> number of 503 answers
    delay_s: float = 0.0  # wait before every response (to make concurrent clients overlap)
    rate_bytes_s: float | None = None  # cap the sending rate of each response (emulate a network link)


class RangeFileServer:
    """``with RangeFileServer(root) as srv: srv.url("a/b.tgz")`` — serves ``root`` on 127.0.0.1."""

    def __init__(self, root: Path, faults: Faults | None = None):
        self.root = Path(root).resolve()
        self.faults = faults or Faults()
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the server first"
        return self._server.server_address[1]

    def url(self, rel: str) -> str:
        return f"http://127.0.0.1:{self.port}/{rel.lstrip('/')}"

    def gets(self, rel: str) -> list[RequestRecord]:
        """Logged GET requests for ``rel``."""
        path = "/" + rel.lstrip("/")
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and r.path == path]

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    def _take(self, table: dict[str, int], path: str) -> int | None:
        with self._lock:
            return table.pop(path, None)

    def _consume_503(self, path: str) -> bool:
        with self._lock:
            left = self.faults.fail_with_503.get(path, 0)
            if left > 0:
                self.faults.fail_with_503[path] = left - 1
            return left > 0

    def start(self) -> RangeFileServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _answer(self, status: int, headers: dict[str, str], path: str, rng: str | None) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                owner._record(RequestRecord(self.command, path, rng, status))

            def _serve(self, body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                rng = self.headers.get("Range")
                if owner.faults.delay_s:
                    time.sleep(owner.faults.delay_s)
                file = (owner.root / path.lstrip("/")).resolve()
                if owner.root not in file.parents or not file.is_file():
                    self._answer(404, {"Content-Length": "0"}, path, rng)
                    return
                if owner._consume_503(path):
                    self._answer(503, {"Content-Length": "0", "Retry-After": "0"}, path, rng)
                    return
                st = file.stat()
                size, etag = st.st_size, f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
                start, end = 0, size - 1
                status = 200
                if_range = self.headers.get("If-Range")
                m = _RANGE_RE.match(rng or "")
                if m and (if_range is None or if_range == etag):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                    if start >= size:
                        self._answer(416, {"Content-Range": f"bytes */{size}", "Content-Length": "0"},
                                     path, rng)
                        return
                    status = 206
                length = end - start + 1
                headers = {"Content-Length": str(length), "ETag": etag, "Accept-Ranges": "bytes",
                           "Content-Type": "application/octet-stream"}
                if status == 206:
                    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                self._answer(status, headers, path, rng)
                if not body:
                    return
                drop = owner._take(owner.faults.drop_after, path)
                count = length if drop is None else min(drop, length)
                with open(file, "rb") as f:
                    self.wfile.flush()
                    rate = owner.faults.rate_bytes_s
                    if rate is None:
                        self.connection.sendfile(f, offset=start, count=count)
                    else:
                        began, block = time.perf_counter(), 256 * 1024
                        for sent in range(0, count, block):
                            ahead = sent / rate - (time.perf_counter() - began)
                            if ahead > 0:
                                time.sleep(ahead)
                            self.connection.sendfile(f, offset=start + sent, count=min(block, count - sent))
                if drop is not None:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="RangeFileServer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> RangeFileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def closed_port() -> int:
    """A loopback port with nothing listening (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_random(path: Path, size: int, seed: int = 0) -> Path:
    """``size`` pseudo-random bytes (incompressible, reproducible) at ``path``."""
    import random

    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        block = 1 << 20
        for start in range(0, size, block):
            f.write(rng.randbytes(min(block, size - start)))
    os.utime(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python tests/helpers/range_server.py DIR [--rate-mib R]``: serve DIR on 127.0.0.1 (at most R MiB/s
    per response), print the port, run until stdin closes."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="range_server.py")
    parser.add_argument("root", type=Path)
    parser.add_argument("--rate-mib", type=float, default=None)
    args = parser.parse_args(argv)
    rate = args.rate_mib * 1024 * 1024 if args.rate_mib else None
    with RangeFileServer(args.root, Faults(rate_bytes_s=rate)) as server:
        print(server.port, flush=True)
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

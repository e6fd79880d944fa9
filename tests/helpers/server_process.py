"""``easynlp --mode=serve`` as a child process on loopback: start it on a free port, wait until it
is ready, read its metrics, stop it with SIGTERM (which drains). The tests and ``bench/serve.py``
drive the real server through this (``free_port``, ``children`` and ``environ_of`` also serve the
multi-process tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(predicate, timeout: float = 10.0, every: float = 0.02) -> bool:
    """Whether ``predicate()`` became true within ``timeout`` seconds (asked every ``every`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid`` (Linux)."""
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(p) for p in handle.read().split()]


def environ_of(pid: int) -> dict[str, str]:
    """The environment process ``pid`` was started with (Linux)."""
    with open(f"/proc/{pid}/environ", "rb") as handle:
        items = [item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item]
    return {k.decode(): v.decode() for k, v in items}


class ServerProcess:
    """``python -m appzoo --app_name=text2image_artist --mode=serve --port=<free> *flags``; its output
    goes to ``log_dir/server-<port>.log``; ``env`` goes over this process's environment."""

    def __init__(self, log_dir: Path, *flags: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log_dir) / f"server-{self.port}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "appzoo", "--app_name=text2image_artist", "--mode=serve",
                 f"--port={self.port}", *flags],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until ``GET /ready`` answers 200; AssertionError with the log if the process ended or the
        time ran out."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log.read_text()}")

    def metric(self, name: str) -> float:
        """The value of the Prometheus sample ``name`` (the first one, labels or not)."""
        import httpx

        for line in httpx.get(self.url + "/metrics").text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no metric {name}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the server drains), then SIGKILL after ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


__all__ = ["ServerProcess", "free_port"]

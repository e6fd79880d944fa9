"""Turning a finished request's codes into PNG files: in the calling thread, or in a child process.

The engine's decoder threads call a decoder with a request's codes ``(n, img_len)`` and get one PNG
file's bytes per image. :func:`decode_pngs` does it in the calling thread. :class:`ProcessDecoder`
does it in a child process of its own that holds the same VQGAN (its tensors are shared with the
child through shared memory, not copied; they move there when the child starts): the decoder
thread then only waits on a pipe, and the VQGAN's Python — for a small model most of a decode is the Python between its operators — no
longer takes turns for the interpreter lock with the scheduler thread, whose every operator waits
for it too (measured in bench/README.md, "decoders in child processes").

The child ignores SIGINT and SIGTERM (a terminal's Ctrl-C or a group-wide SIGTERM reaches the whole
process group, and the server drains before it stops its decoders); it ends when the server
closes the pipe or exits.
"""

from __future__ import annotations

import io
import logging
import multiprocessing as mp
import os
import signal
import threading

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from easynlp_artist.models.stage1.vqgan import images_to_uint8
from easynlp_artist.runtime import cpu_allocator_tuned, tune_cpu_allocator

logger = logging.getLogger(__name__)


def png_bytes(pixels) -> bytes:
    """(H, W, 3) uint8 array → PNG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def decode_pixels(vqgan: nn.Module, codes: torch.Tensor):  # noqa: ANN201 - a numpy array
    """Codes (n, img_len) → (n, H, W, 3) uint8 pixels (a writable numpy array), decoded in this thread."""
    with torch.no_grad():
        return images_to_uint8(vqgan.decode(codes).float()).cpu().numpy()


def decode_pngs(vqgan: nn.Module, codes: torch.Tensor) -> list[bytes]:
    """Codes (n, img_len) → n PNG files, decoded by ``vqgan`` in this thread."""
    return [png_bytes(p) for p in decode_pixels(vqgan, codes)]


def _context():  # noqa: ANN202 - a multiprocessing context
    # forkserver: children fork from a fresh single-threaded server that has imported torch and this
    # module once, so a decoder starts in a fraction of a second (spawn would import torch anew each
    # time) and never inherits the server's threads (fork would)
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return mp.get_context("spawn")


READY = "ready"


def _child(conn, threads: int, tune_allocator: bool) -> None:
    """The decoder process: takes the VQGAN, says it is ready, then takes codes (numpy arrays) and
    sends back PNGs, or an error's text, until the pipe closes or ``None`` comes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(threads)
    if tune_allocator:
        tune_cpu_allocator()
    vqgan = conn.recv().eval()
    conn.send(READY)
    while True:
        try:
            codes = conn.recv()
        except EOFError:  # the server closed the pipe or ended
            return
        if codes is None:
            return
        try:
            conn.send(("ok", decode_pngs(vqgan, torch.from_numpy(codes))))
        except Exception as exc:  # noqa: BLE001 - a request's failure goes back to the server, the decoder stays
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


SHARED_MEMORY = "/dev/shm"  # where torch's shared CPU tensors live on Linux


def shared_memory_shortfall(module: nn.Module, folder: str = SHARED_MEMORY) -> str | None:
    """Why ``module``'s tensors cannot move to shared memory, or None where they can: a container's
    default /dev/shm (64 MB in Docker) is smaller than an ARTIST-base VQGAN (304 MB), and writing
    past its end kills the process with SIGBUS. Where the folder cannot be read (no /dev/shm), None."""
    need = sum(t.numel() * t.element_size() for t in module.state_dict().values() if not t.is_shared())
    try:
        stat = os.statvfs(folder)
    except OSError:
        return None
    free = stat.f_bavail * stat.f_frsize
    if need * 1.1 + (16 << 20) <= free:
        return None
    return f"{folder} has {free / 2**20:.0f} MiB free, the VQGAN needs {need / 2**20:.0f} MiB there"


class DecoderProcessError(RuntimeError):
    """A decoder process failed a decode, or ended while decoding."""


class DecoderStartError(DecoderProcessError):
    """A decoder process ended before it was ready."""


class ProcessDecoder:
    """A child process that decodes codes with ``vqgan`` (a CPU module; its tensors move to shared
    memory, which this process's own decodes go on reading) on ``threads`` torch threads and this
    process's allocator setting. Calls come from one thread at a time (the engine gives each
    decoder thread its own). Making one starts the child and hands it the model; the first call
    waits until it is ready. A child that has ended is started again by the
    next call; the call that found it ending fails (:class:`DecoderProcessError`, or
    :class:`DecoderStartError` where it ended before it was ready)."""

    def __init__(self, vqgan: nn.Module, threads: int, name: str) -> None:
        self.vqgan = vqgan
        self.threads = threads
        self.name = name
        self._lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        ctx = _context()
        self._conn, child = ctx.Pipe()
        self._ready = False
        self._proc = ctx.Process(target=_child, args=(child, self.threads, cpu_allocator_tuned()), name=self.name,
                                 daemon=True)
        self._proc.start()
        child.close()
        # through the pipe, not the process's arguments: a process starts with at most 256 file
        # descriptors, one per shared tensor (an ARTIST-base VQGAN has 343), while the pipe hands them
        # over one by one
        try:
            self._conn.send(self.vqgan)
        except (OSError, RuntimeError) as exc:  # the child ended at its start, or sharing failed: the first call says so
            logger.warning("decoder process %s did not take the model: %s", self.name, exc)
            self._proc.kill()

    def _ended(self) -> str:
        self._proc.join(5)
        return f"decoder process {self.name} (pid {self._proc.pid}) ended with exit code {self._proc.exitcode}"

    def __call__(self, codes: torch.Tensor) -> list[bytes]:
        with self._lock:
            if self._ready and not self._proc.is_alive():
                logger.warning("%s; starting it again", self._ended())
                self._conn.close()
                self._start()
            try:
                if not self._ready:
                    self._conn.recv()  # READY
                    self._ready = True
            except (EOFError, OSError) as exc:
                raise DecoderStartError(f"{self._ended()} before it was ready") from exc
            try:
                self._conn.send(np.ascontiguousarray(codes.cpu().numpy()))
                kind, payload = self._conn.recv()
            except (EOFError, OSError) as exc:
                raise DecoderProcessError(f"{self._ended()} while decoding") from exc
        if kind == "error":
            raise DecoderProcessError(f"decoder process {self.name}: {payload}")
        return payload

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def close(self, timeout: float = 10.0) -> None:
        """Ask the child to end; kill it if it has not within ``timeout`` seconds."""
        with self._lock:
            if self._proc.is_alive():
                try:
                    self._conn.send(None)
                except OSError:  # it is ending by itself
                    logger.debug("decoder process %s: pipe closed", self.name)
                self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout)
            self._conn.close()


__all__ = ["DecoderProcessError", "DecoderStartError", "ProcessDecoder", "decode_pixels", "decode_pngs", "png_bytes",
           "shared_memory_shortfall"]

"""Process-group helpers and a sharded, all-or-nothing predict writer.

Inside a torchrun process (``WORLD_SIZE`` > 1) :func:`init_distributed` starts the process group:
NCCL when CUDA is available, gloo on CPU. Outside torchrun everything works as one process.

A lost process or machine is found by a heartbeat, not by the collectives: a machine that stops
answering (powered off, frozen, cut off) leaves the others blocked in a collective for the backend's
timeout (gloo: 30 minutes), and torchrun's agents only watch their own machine's processes. Every
process bumps a counter in the launcher's store (the TCPStore of the agent on node 0) and watches the
others'; one that has not moved for ``peer_timeout`` seconds stops the run with one line naming that
rank and node. A process whose own launcher died stops too, so its peers see it go at once. A process
that is alive and beating but stuck (a deadlock, a hung file system) leaves the others waiting in a
collective: the process group's timeout (``--collective_timeout``) ends that wait, and the line says
that nobody was lost.
"""

from __future__ import annotations

import contextlib
import faulthandler
import glob
import logging
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from appzoo.errors import RunError, first_line
from appzoo.tables import AtomicWriter, Row, check_cell
from modelzoo.files import env_bool
from modelzoo.storage import is_remote, local_path

logger = logging.getLogger("appzoo.distributed")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def device_for_rank() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(timeout: timedelta | None = None, peer_timeout: float | None = None) -> DistInfo:
    """Start the process group when launched with ``WORLD_SIZE`` > 1 (idempotent); with
    ``peer_timeout`` (seconds) also the heartbeat that stops the run when another process is lost."""
    global _heartbeat, _collective_timeout
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = device_for_rank()
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {} if timeout is None else {"timeout": timeout}
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        try:
            if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
                # torchrun's agent keeps one store across restarts of its processes, and the process
                # group's keys of an earlier attempt (a dead rank's address) would still be read from
                # it: each attempt gets keys of its own
                attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
                client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                       timeout=timeout or timedelta(minutes=5), wait_for_workers=False)
                kwargs.update(store=dist.PrefixStore(f"appzoo/attempt/{attempt}", client),
                              rank=int(os.environ["RANK"]), world_size=world)
            dist.init_process_group(backend=backend, **kwargs)
            _collective_timeout = timeout
            if peer_timeout is not None and "MASTER_ADDR" in os.environ:
                _heartbeat = _Heartbeat(dist.get_rank(), world, peer_timeout)
                _heartbeat.start()
        except RuntimeError as exc:  # torch's DistNetworkError/DistStoreError: the store cannot be reached
            rank = os.environ.get("RANK", "?")
            raise RunError(f"rank {rank} of {world} could not join the run's store at {where} "
                           f"(--master_addr/--master_port): {first_line(exc)}") from exc
    return DistInfo(get_rank(), get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), device)


def cleanup_distributed() -> None:
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.finish()
        _heartbeat = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def node_of(rank: int) -> int:
    """The machine (torchrun's node rank) of a global rank: ranks are numbered node by node."""
    return rank // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


_FINISHED = 1 << 40  # added to a rank's heartbeat counter when it leaves cleanly: no longer watched


class _Heartbeat(threading.Thread):
    """Bumps this rank's counter in the run's store every ``interval`` seconds and watches the
    others'; see the module docstring. On a loss it prints one line and ends the process (exit 1):
    the main thread may be blocked inside a collective that nothing can interrupt."""

    def __init__(self, rank: int, world: int, timeout: float):
        super().__init__(name="appzoo-heartbeat", daemon=True)
        self.rank, self.world, self.timeout = rank, world, timeout
        self.interval = min(1.0, timeout / 10)
        self.address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        run = f"{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.keys = [f"appzoo/heartbeat/{run}/{r}" for r in range(world)]
        self.parent = os.getppid()
        self.store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                   timeout=timedelta(seconds=timeout), wait_for_workers=False)
        self.counts: list[int] = [-1] * world
        self.seen = [time.monotonic()] * world
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.store.add(self.keys[self.rank], 1)
                counts = [self.store.add(key, 0) for key in self.keys]
            except RuntimeError as exc:  # torch's DistStoreError/DistNetworkError: the store host is gone
                if self.stopping.is_set():
                    return
                self._lose(f"lost contact with the run's store at {self.address} (node 0): {first_line(exc)}")
            now = time.monotonic()
            with self.lock:
                for r, count in enumerate(counts):
                    if count != self.counts[r]:
                        self.counts[r], self.seen[r] = count, now
            stale = self.silent(now - self.timeout)
            if stale and not self.stopping.is_set():
                self._lose(f"lost contact with {_ranks(stale)}: no heartbeat for {self.timeout:g} s (--peer_timeout)")
            if os.getppid() != self.parent and not self.stopping.is_set():
                self._lose(f"the launcher of rank {self.rank} (torchrun, pid {self.parent}) is gone")

    def silent(self, since: float) -> list[int]:
        """Ranks still running whose counter has not moved since the monotonic time ``since``."""
        with self.lock:
            return [r for r in range(self.world) if r != self.rank and self.counts[r] < _FINISHED
                    and self.seen[r] < since]

    def finish(self) -> None:
        """This rank leaves cleanly: stop beating and tell the others to stop watching it."""
        self.stopping.set()
        self.join(timeout=5 * self.interval)
        with contextlib.suppress(RuntimeError):
            self.store.add(self.keys[self.rank], _FINISHED)

    def _lose(self, reason: str) -> None:
        print(f"easynlp: error: {reason}; stopping rank {self.rank}", file=sys.stderr, flush=True)
        if env_bool("EASYNLP_DEBUG"):
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(1)


_heartbeat: _Heartbeat | None = None
_collective_timeout: timedelta | None = None


def _ranks(ranks: Sequence[int]) -> str:
    return ", ".join(f"rank {r} (node {node_of(r)})" for r in ranks)


_TIMEOUT_SIGNS = ("Timed out", "timed out", "Socket Timeout")


class LostPeerError(RunError):
    """A collective failed because another process (or machine) went away."""


def lost_peer_error(exc: BaseException) -> LostPeerError | None:
    """The error for a collective that failed because another process went away, naming the ranks
    whose heartbeat stopped (waits up to four heartbeats for them); ``None`` for other errors."""
    if not isinstance(exc, RuntimeError) or not is_distributed():
        return None
    text = str(exc)
    signs = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Connection refused",
             *_TIMEOUT_SIGNS)
    if not any(sign in text for sign in signs):
        return None
    reason = next((sign for sign in signs if sign in text), "")
    heartbeat = _heartbeat
    if heartbeat is None:
        return LostPeerError(f"lost contact with another process during a collective operation ({reason})")
    # the agent stops the other local processes with SIGTERM as soon as one died: ignore it for the
    # moment it takes to find the lost rank, so that the one line below is what this process says
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        # a counter is read once per heartbeat, so the lost rank's last beat may be seen up to one
        # heartbeat after the failure; the live ones beat again within the next
        start = time.monotonic()
        since = start + 1.5 * heartbeat.interval
        silent = heartbeat.silent(since)
        while silent and time.monotonic() < start + 4 * heartbeat.interval:
            time.sleep(heartbeat.interval / 4)
            silent = heartbeat.silent(since)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not silent and reason in _TIMEOUT_SIGNS:
        waited = f"={_collective_timeout.total_seconds():g}" if _collective_timeout else ""
        return LostPeerError(f"a collective operation timed out (--collective_timeout{waited}): every process "
                             f"still beats, so one of them is alive but stuck; stopping rank {heartbeat.rank}")
    who = _ranks(silent) if silent else "another process"
    return LostPeerError(f"lost contact with {who} during a collective operation ({reason}); "
                         f"stopping rank {heartbeat.rank}")


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def my_shard(n: int) -> list[int]:
    """Indices ``0 .. n-1`` this process handles: every ``world``-th, from its rank (all of them alone)."""
    return list(range(get_rank(), n, get_world_size()))


def all_reduce_max(value: float) -> float:
    """Maximum of ``value`` over all processes (the value itself in one process)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over all processes."""
    if not is_distributed():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def _collective_device() -> torch.device:
    return device_for_rank() if dist.get_backend() == "nccl" else torch.device("cpu")


class ShardedPredictError(RunError):
    """Another process failed during a sharded predict; no output was published."""


def _part_paths(output_path: str, world: int) -> list[Path]:
    """Where each rank writes its part: beside a local output (so several machines sharing that
    directory work), or in a local temporary directory for an object-storage output (one machine)."""
    if not is_remote(output_path):
        target = local_path(output_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        base = target.with_name(f".{target.name}")
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        if local_world != world:
            raise ValueError(
                f"--outputs={output_path}: a predict over several machines needs --outputs on a directory "
                "they share; write locally and upload afterwards"
            )
        token = [secrets.token_hex(8) if get_rank() == 0 else None]
        dist.broadcast_object_list(token, src=0)
        base = Path(tempfile.gettempdir()) / f"appzoo-predict-{token[0]}"
    parts = [base.with_name(f"{base.name}.part-{r:05d}-of-{world:05d}") for r in range(world)]
    if get_rank() == 0:
        # parts of an earlier run with this number of processes are rewritten; those of a run with
        # another number (killed before its merge) would stay forever: remove them
        for stale in base.parent.glob(f"{glob.escape(base.name)}.part-*-of-*"):
            if stale not in parts:
                stale.unlink(missing_ok=True)
    return parts


def _predict_rows(rows: Iterable[Row], predict_batch_fn: Callable[[list[Row]], list[list[str]]],
                  batch_size: int, rank: int, world: int, emit: Callable[[list[str]], None],
                  width: int | None) -> int:
    count = 0
    batch: list[Row] = []

    def flush() -> None:
        nonlocal count, width
        outputs = predict_batch_fn(batch)
        if len(outputs) != len(batch):
            first = batch[0]
            raise ValueError(
                f"predict_batch_fn returned {len(outputs)} rows for a batch of {len(batch)} "
                f"(starting at {first.file} line {first.line_no})"
            )
        for row, values in zip(batch, outputs):
            values = list(values)
            if width is None:
                width = len(values)
            if len(values) != width:
                raise ValueError(f"{row.file} line {row.line_no}: prediction has {len(values)} columns, "
                                 f"expected {width}")
            emit([check_cell(v, column=i) for i, v in enumerate(values, start=1)])
            count += 1
        batch.clear()

    # whole batches are dealt out (batch j to rank j % world), so every batch holds the same rows
    # as in a one-process run and batched models give the same numbers
    for index, row in enumerate(rows):
        if (index // batch_size) % world != rank:
            continue
        batch.append(row)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return count


def run_sharded_predict(rows: Iterable[Row], predict_batch_fn: Callable[[list[Row]], list[list[str]]],
                        output_path: str, batch_size: int, header: Sequence[str] | None = None) -> int:
    """Predict every row exactly once across all processes and write one output table in input order.

    Rows are cut into batches of ``batch_size`` in input order and batch ``j`` is handled by rank
    ``j % world`` — each batch has the same rows as in a one-process run, so the outputs match it
    exactly. Each rank writes its results to a part file beside the output, and after all ranks
    succeeded rank 0 interleaves the parts (a batch at a time) back into input order
    and publishes the output atomically. If any rank fails, every rank raises and nothing is
    published. Returns the number of data rows in the output (on every rank).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    width = len(header) if header is not None else None
    rank, world = get_rank(), get_world_size()
    if world == 1:
        with AtomicWriter(output_path) as out:
            if header is not None:
                out.write_row(list(header))
            return _predict_rows(rows, predict_batch_fn, batch_size, 0, 1, out.write_row, width)

    parts = _part_paths(output_path, world)
    part = parts[rank]
    error: BaseException | None = None
    try:
        with AtomicWriter(part) as out:
            _predict_rows(rows, predict_batch_fn, batch_size, rank, world, out.write_row, width)
    except Exception as exc:  # reported to every rank below, then re-raised
        error = exc
    failed = all_reduce_max(1.0 if error is not None else 0.0)
    total = 0
    merge_error: BaseException | None = None
    if not failed and rank == 0:
        try:
            total = _merge_parts(parts, output_path, header, batch_size)
        except Exception as exc:  # reported to every rank below, then re-raised
            merge_error = exc
    merge_failed, total = all_reduce_sum([1.0 if merge_error is not None else 0.0, float(total)])
    with contextlib.suppress(FileNotFoundError):
        part.unlink()
    if error is not None:
        raise error
    if merge_error is not None:
        raise merge_error
    if failed:
        raise ShardedPredictError("sharded predict failed in another process; no output was written")
    if merge_failed:
        raise ShardedPredictError("merging the predict outputs failed in process 0; no output was written")
    return int(total)


def _merge_parts(parts: list[Path], output_path: str, header: Sequence[str] | None, batch_size: int) -> int:
    handles = [open(p, "rb") for p in parts]
    try:
        with AtomicWriter(output_path) as out:
            if header is not None:
                out.write_row(list(header))
            written = 0
            while True:
                line = handles[(written // batch_size) % len(handles)].readline()
                if not line:
                    break
                out.write_line(line.decode("utf-8").rstrip("\n"))
                written += 1
            leftover = [p for h, p in zip(handles, parts) if h.readline()]
            if leftover:
                raise ShardedPredictError(f"part files out of step after {written} rows: {leftover}")
            return written
    finally:
        for handle in handles:
            handle.close()

"""Process-group helpers and a sharded, all-or-nothing predict writer.

Inside a torchrun process (``WORLD_SIZE`` > 1) :func:`init_distributed` starts the process group:
NCCL when CUDA is available, gloo on CPU. Outside torchrun everything works as one process.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import secrets
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from appzoo.errors import RunError
from appzoo.tables import AtomicWriter, Row, check_cell
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


def init_distributed(timeout: timedelta | None = None) -> DistInfo:
    """Start the process group when launched with ``WORLD_SIZE`` > 1 (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = device_for_rank()
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group(backend=backend, **kwargs)
    return DistInfo(get_rank(), get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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

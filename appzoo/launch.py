"""Multi-process launch: ``--worker_gpu=N`` (N > 1) re-executes the command under ``torchrun``.

One machine: ``easynlp ... --worker_gpu=4`` runs
``python -m torch.distributed.run --standalone --nproc_per_node=4 -m appzoo ...`` with the same flags;
each process sees ``LOCAL_RANK`` and does not relaunch. Without CUDA the processes run on CPU (gloo).

Several machines: start the same command on every machine with ``--worker_count=M`` and
``--master_addr/--master_port`` of machine 0; each machine's rank comes from the environment
variable ``NODE_RANK`` or, if unset, ``RANK`` (what PAI-DLC and most schedulers set per machine).

``--max_restarts=N``: when a process fails, torchrun stops the others and starts them all again, up
to N times; a training run then continues from the last checkpoint this launch wrote
(:func:`resume_after_restart`), so it ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from appzoo.args import CommonArgs, UsageError
from appzoo.errors import first_line
from modelzoo.files import env_bool

logger = logging.getLogger("appzoo.launch")

LAUNCHED_AT = "EASYNLP_LAUNCHED_AT"  # set by the launcher for its processes: when this launch began (epoch s)


def inside_launcher() -> bool:
    """True inside a process started by torchrun (it sets ``LOCAL_RANK``)."""
    return "LOCAL_RANK" in os.environ


def needs_relaunch(args: CommonArgs) -> bool:
    """Several processes, or one that torchrun restarts after a failure (``--max_restarts``)."""
    return (args.worker_gpu > 1 or args.worker_count > 1 or args.max_restarts > 0) and not inside_launcher()


def node_rank_from_env(environ: dict[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    for name in ("NODE_RANK", "RANK"):
        if name in env:
            try:
                rank = int(env[name])
            except ValueError:
                raise UsageError(f"environment variable {name}={env[name]!r} is not an integer") from None
            return rank
    raise UsageError("--worker_count > 1 needs this machine's rank in the environment (NODE_RANK or RANK)")


def torchrun_command(argv: Sequence[str], args: CommonArgs, environ: dict[str, str] | None = None) -> list[str]:
    """The command line that runs ``python -m appzoo <argv>`` in ``args.world_processes`` processes."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.worker_gpu}"]
    if args.worker_count == 1:
        command.append("--standalone")
    else:
        node_rank = node_rank_from_env(environ)
        if not 0 <= node_rank < args.worker_count:
            raise UsageError(f"node rank {node_rank} is outside 0..{args.worker_count - 1} (--worker_count)")
        command += [
            f"--nnodes={args.worker_count}",
            f"--node_rank={node_rank}",
            f"--master_addr={args.master_addr}",
            f"--master_port={args.master_port}",
        ]
    if args.max_restarts:
        command.append(f"--max_restarts={args.max_restarts}")
    return [*command, "-m", "appzoo", *argv]


def relaunch(argv: Sequence[str], args: CommonArgs) -> int:
    """Run the command under torchrun (in this process, as its launcher) and return an exit status:
    0 when every process succeeded, 2 when every failed process exited with 2 (bad input), else 1."""
    import torch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError
    from torch.distributed.run import get_args_parser, run

    if torch.cuda.is_available() and args.worker_gpu > torch.cuda.device_count():
        raise UsageError(
            f"--worker_gpu={args.worker_gpu} but only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ[LAUNCHED_AT] = repr(time.time())
    launcher_args = get_args_parser().parse_args(torchrun_command(argv, args)[3:])
    from torch.distributed.elastic.multiprocessing.api import SignalException

    try:
        run(launcher_args)
    except KeyboardInterrupt:
        print("easynlp: error: interrupted (Ctrl-C); the processes were stopped, nothing was published",
              file=sys.stderr)
        return 130
    except SignalException as exc:
        print(f"easynlp: error: stopped by signal {exc.sigval}; the processes were stopped, nothing was published",
              file=sys.stderr)
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        codes = sorted({failure.exitcode for failure in exc.failures.values()})
        print(
            f"easynlp: error: {len(exc.failures)} of {args.world_processes} process(es) failed "
            f"(exit code {', '.join(map(str, codes))}); their messages are above",
            file=sys.stderr,
        )
        return 2 if codes == [2] else 1
    except (RuntimeError, RendezvousError) as exc:  # the launcher's own store or rendezvous (DistNetworkError)
        if env_bool("EASYNLP_DEBUG"):
            raise
        print(f"easynlp: error: the launcher could not set up the run at {args.master_addr}:{args.master_port} "
              f"(--master_addr/--master_port): {first_line(exc)}", file=sys.stderr)
        return 1
    return 0


def restart_count() -> int:
    """How many times torchrun has restarted this process's group (0 in the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def resume_after_restart(args: CommonArgs) -> CommonArgs:
    """The flags of a training process torchrun restarted: resume from ``--checkpoint_dir``'s
    ``last/`` when this launch wrote it (an older run's checkpoint there is never picked up; with
    none yet, the attempt starts as the first did). Other modes and first attempts are unchanged."""
    if args.mode != "train" or restart_count() == 0:
        return args
    from appzoo.trainer import DEFAULT_CHECKPOINT_DIR, STATE_FILE

    root = Path(str(args.checkpoint_dir or DEFAULT_CHECKPOINT_DIR).removeprefix("file://"))
    state = root / "last" / STATE_FILE
    launched = float(os.environ.get(LAUNCHED_AT, "inf"))
    if not state.is_file() or state.stat().st_mtime < launched:
        logger.info("restart %d: no checkpoint of this launch in %s yet; starting as the first attempt did", restart_count(), root)
        return args
    logger.info("restart %d: continuing from %s", restart_count(), root / "last")
    return dataclasses.replace(args, resume_from_checkpoint=str(root), overwrite_output_dir=False)

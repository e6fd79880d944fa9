"""Multi-process launch: ``--worker_gpu=N`` (N > 1) re-executes the command under ``torchrun``.

One machine: ``easynlp ... --worker_gpu=4`` runs
``python -m torch.distributed.run --standalone --nproc_per_node=4 -m appzoo ...`` with the same flags;
each process sees ``LOCAL_RANK`` and does not relaunch. Without CUDA the processes run on CPU (gloo).

Several machines: start the same command on every machine with ``--worker_count=M`` and
``--master_addr/--master_port`` of machine 0; each machine's rank comes from the environment
variable ``NODE_RANK`` or, if unset, ``RANK`` (what PAI-DLC and most schedulers set per machine).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from appzoo.args import CommonArgs, UsageError
from appzoo.errors import first_line
from modelzoo.files import env_bool


def inside_launcher() -> bool:
    """True inside a process started by torchrun (it sets ``LOCAL_RANK``)."""
    return "LOCAL_RANK" in os.environ


def needs_relaunch(args: CommonArgs) -> bool:
    return (args.worker_gpu > 1 or args.worker_count > 1) and not inside_launcher()


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

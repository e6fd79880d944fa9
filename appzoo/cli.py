"""The ``easynlp`` command: flags → CommonArgs, app lookup, app parameters, launch, dispatch.

Exit status: 0 success; 2 bad input or a user-facing error of any layer (one
``easynlp: error: ...`` line naming the file, URI or flag, no traceback); 1 a failure while
running (for example a non-finite training loss); 130 after Ctrl-C and 143 after SIGTERM (each
with one line; outputs are not published, temporary files are removed). ``--debug`` (or
``EASYNLP_DEBUG=1``) shows the traceback instead. URIs in every message and log line are shown
without user info or query strings.

Start-up stays light: flags, local ``--tables`` files and the ``--outputs`` location are checked
before the app (and with it torch) is imported, and ``easynlp --help`` lists the apps from the
installed metadata without importing them. The command is installed as ``easynlp`` and, because
``pai-easynlp`` installs an ``easynlp`` command too, as ``easynlp-artist``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta

from appzoo.apps import AppNotFoundError, find_app, format_app_list, registered_apps
from appzoo.args import CommonArgs, UsageError, build_parser
from appzoo.errors import RunError
from appzoo.params import describe_params, parse_user_defined_parameters
from modelzoo.errors import ModelZooError
from modelzoo.extras import DISTRIBUTION, require
from modelzoo.files import env_bool
from modelzoo.storage import local_path, redact, redact_text, scheme_of

logger = logging.getLogger("appzoo")


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so cleanup runs as after Ctrl-C."""


def _fail(message: str, status: int) -> int:
    print(f"easynlp: error: {redact_text(message)}", file=sys.stderr)
    return status


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_text(record.getMessage())
        record.args = ()
        return True


def _configure_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RedactingFilter) for f in handler.filters):
            handler.addFilter(_RedactingFilter())


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def _help(argv: list[str]) -> str:
    """The generic help, or with --app_name the app's parameters for --mode (or every mode)."""
    app_name = next((a.split("=", 1)[1] for a in argv if a.startswith("--app_name=")), None)
    if app_name is None and "--app_name" in argv[:-1]:
        app_name = argv[argv.index("--app_name") + 1]
    mode = next((a.split("=", 1)[1] for a in argv if a.startswith("--mode=")), None)
    if app_name is None:
        return build_parser(epilog=format_app_list(registered_apps())).format_help()
    app_cls = find_app(app_name)
    where = f" --mode={mode}" if mode else ""
    head = f"easynlp --app_name={app_name}{where}: {app_cls.description}\n"
    keys = describe_params(app_cls.Params, mode)
    usage = ("\n--user_defined_parameters takes these keys, separated by spaces "
             "(e.g. \"max_generated_num=4 top_k=32\"):\n")
    return head + usage + keys + "\n\nThe common flags: easynlp --help"


def check_paths(args: CommonArgs) -> None:
    """Before anything heavy is imported: every local ``--tables`` file exists, the ``--outputs``
    location is not under a file, and the package that ``s3://`` locations need is installed."""
    for table in filter(None, args.tables):
        path = local_path(table)
        if path is None:
            continue
        if not path.exists():
            raise UsageError(f"--tables: {table}: no such file")
        if path.is_dir():
            raise UsageError(f"--tables: {table} is a folder, not a table file")
    if args.outputs and (out := local_path(args.outputs)) is not None:
        parent = next((p for p in out.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise UsageError(f"--outputs={args.outputs}: {parent} is a file, not a folder")
    for uri in (*args.tables, args.outputs or ""):
        if scheme_of(uri) == "s3":
            require("boto3", "s3", redact(uri))


def set_openmp_defaults(environ=os.environ) -> None:  # noqa: B006 - the process environment
    """Waiting OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``) unless the user
    chose a policy: on a shared machine a spinning thread takes the core its parked partner needs.
    Only effective before torch is imported (libgomp reads it once, when it is loaded)."""
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _debug(argv: list[str]) -> bool:
    return "--debug" in argv or env_bool("EASYNLP_DEBUG")


def _on_sigterm(signum, frame) -> None:  # noqa: ANN001 - signal handler signature
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug(argv)
    argv = [a for a in argv if a != "--debug"]
    if "--version" in argv:
        print(f"easynlp ({DISTRIBUTION}) {version()}")
        return 0
    try:
        if "-h" in argv or "--help" in argv:
            print(_help(argv))
            return 0
        args = CommonArgs.from_argv(argv)
        if not args.app_name:
            raise UsageError("--app_name is required (easynlp --help lists the installed apps)")
        check_paths(args)
        set_openmp_defaults()
        app_cls = find_app(args.app_name)
        params = parse_user_defined_parameters(args.user_defined_parameters, app_cls.Params)
        if args.mode not in app_cls.supported_modes():
            raise UsageError(
                f"app {args.app_name!r} does not support --mode={args.mode} "
                f"(supported: {', '.join(app_cls.supported_modes()) or 'none'})"
            )
        from appzoo.launch import needs_relaunch, relaunch

        if needs_relaunch(args):
            if debug:  # the processes torchrun starts show their tracebacks too
                os.environ["EASYNLP_DEBUG"] = "1"
            return relaunch(argv, args)
    except (UsageError, AppNotFoundError, ValueError, ModelZooError) as exc:
        if debug:
            raise
        return _fail(str(exc), 2)
    return _run(app_cls, args, params, debug)


def _run(app_cls, args: CommonArgs, params, debug: bool = False) -> int:
    from appzoo.distributed import cleanup_distributed, init_distributed, lost_peer_error
    from appzoo.launch import resume_after_restart

    _configure_logging()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        info = init_distributed(timedelta(seconds=args.collective_timeout), peer_timeout=args.peer_timeout)
        args = resume_after_restart(args)
        try:
            result = app_cls().run(args, params)
        except RuntimeError as exc:  # a collective failed because another process went away
            lost = None if debug or isinstance(exc, RunError) else lost_peer_error(exc)
            if lost is None:
                raise
            raise lost from None
        finally:
            cleanup_distributed()
    except KeyboardInterrupt:
        if debug:
            raise
        return _fail("interrupted (Ctrl-C); nothing was published", 130)
    except Terminated:
        if debug:
            raise
        return _fail("terminated (SIGTERM); nothing was published", 143)
    except (ValueError, FileNotFoundError, ModelZooError) as exc:
        if debug:
            raise
        return _fail(str(exc), 2)
    except RunError as exc:
        if debug:
            raise
        return _fail(str(exc), 1)
    except OSError as exc:  # a full disk, a read-only folder: say which file
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}", 2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if result and info.rank == 0:
        logger.info("result: %s", json.dumps(result, default=str, sort_keys=True))
    return 0

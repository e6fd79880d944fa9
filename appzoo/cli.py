"""The ``easynlp`` command: flags → CommonArgs, app lookup, app parameters, launch, dispatch.

Exit status: 0 success, 2 bad input (one ``easynlp: error: ...`` line, no traceback),
1 a failure while running (for example a non-finite training loss).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence

from appzoo.apps import AppNotFoundError, discover_apps, find_app, format_app_list
from appzoo.args import CommonArgs, UsageError, build_parser
from appzoo.errors import RunError
from appzoo.params import parse_user_defined_parameters

logger = logging.getLogger("appzoo")


def _fail(message: str, status: int) -> int:
    print(f"easynlp: error: {message}", file=sys.stderr)
    return status


def _configure_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(build_parser(epilog=format_app_list(discover_apps())).format_help())
        return 0
    try:
        args = CommonArgs.from_argv(argv)
        if not args.app_name:
            raise UsageError("--app_name is required (easynlp --help lists the installed apps)")
        app_cls = find_app(args.app_name)
        params = parse_user_defined_parameters(args.user_defined_parameters, app_cls.Params)
        if args.mode not in app_cls.supported_modes():
            raise UsageError(
                f"app {args.app_name!r} does not support --mode={args.mode} "
                f"(supported: {', '.join(app_cls.supported_modes()) or 'none'})"
            )
        from appzoo.launch import needs_relaunch, relaunch

        if needs_relaunch(args):
            return relaunch(argv, args)
    except (UsageError, AppNotFoundError, ValueError) as exc:
        return _fail(str(exc), 2)
    return _run(app_cls, args, params)


def _run(app_cls, args: CommonArgs, params) -> int:
    from appzoo.distributed import cleanup_distributed, init_distributed

    _configure_logging()
    info = init_distributed()
    try:
        result = app_cls().run(args, params)
    except (ValueError, FileNotFoundError) as exc:
        return _fail(str(exc), 2)
    except RunError as exc:
        return _fail(str(exc), 1)
    finally:
        cleanup_distributed()
    if result and info.rank == 0:
        logger.info("result: %s", json.dumps(result, default=str, sort_keys=True))
    return 0

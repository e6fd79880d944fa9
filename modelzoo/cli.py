"""Command line: ``python -m modelzoo list | info NAME | download NAME | verify NAME | import NAME PATH |
manifest NAME``.

Exit status 0 on success, 1 on a ModelZoo error or a failed verification, 2 on bad usage (a mistyped
command, option or model name). An error is one line, ``modelzoo: error: ...``; ``--debug`` (or
``EASYNLP_DEBUG=1``) adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from difflib import get_close_matches
from pathlib import Path
from typing import NoReturn

from .errors import ModelZooError, UnknownModelError
from .files import parse_bool
from .hub import (
    META_NAME,
    OFFLINE_BY,
    Cache,
    default_cache_dir,
    import_copy,
    install,
    is_offline,
    lookup,
    read_meta,
    resolve_in,
    verify,
)
from .index import SHIPPED_INDEX, ModelEntry, load_registry
from .storage import redact

PROG = "modelzoo"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``modelzoo: error: ...`` line (with a "did you mean" for a mistyped command)."""

    def error(self, message: str) -> NoReturn:
        choices = getattr(self, "_command_names", [])
        if "invalid choice:" in message and choices:
            typed = message.split("invalid choice:", 1)[1].split("'")[1:2]
            close = get_close_matches(typed[0], choices, n=1, cutoff=0.5) if typed else []
            message = f"unknown command {typed[0]!r}" if typed else message
            message += f"; did you mean {close[0]!r}?" if close else f" (commands: {', '.join(choices)})"
        _error(message)
        sys.exit(2)


def _error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _cached(entry: ModelEntry, cache: Cache) -> str:
    if entry.kind == "local":
        return "embedded"
    return "yes" if read_meta(cache.install_dir(entry)) is not None else "no"


def _cmd_list(args: argparse.Namespace, cache: Cache) -> int:
    registry = _registry(args, cache)
    rows = [("NAME", "SIZE", "VERIFIED", "CACHED", "DESCRIPTION")]
    for name in sorted(registry.entries):
        e = registry.entries[name]
        desc = e.description if len(e.description) <= 60 else e.description[:57] + "..."
        rows.append((name, _size(e.total_size), "yes" if e.verified else "NO", _cached(e, cache), desc))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


def _registry(args: argparse.Namespace, cache: Cache):  # noqa: ANN202 - a Registry
    return load_registry(cache.root, args.offline, OFFLINE_BY[args.offline_by][0])


def _cmd_info(args: argparse.Namespace, cache: Cache) -> int:
    registry = _registry(args, cache)
    entry = lookup(args.name, registry)
    info = {
        "name": redact(entry.name),
        "description": entry.description,
        "license": entry.license,
        "kind": entry.kind,
        "uri": redact(entry.uri) if entry.uri else None,
        "sha256": entry.sha256,
        "size": entry.total_size,
        "verified": entry.verified,
        "files": [{"path": f.path, "uri": redact(f.uri) if f.uri else None, "sha256": f.sha256, "size": f.size}
                  for f in entry.files],
        "index": entry.source,
    }
    if entry.kind != "local":
        dest = cache.install_dir(entry)
        meta = read_meta(dest)
        info["cache_path"] = str(dest)
        info["cached"] = meta is not None
        if meta is not None:
            info["installed_at"] = meta.get("installed_at")
            info["downloaded_sha256"] = meta.get("downloads_sha256")
            if meta.get("imported_from"):
                info["imported_from"] = meta["imported_from"]
    print(json.dumps(info, indent=2, ensure_ascii=False))
    return 0


def _cmd_download(args: argparse.Namespace, cache: Cache) -> int:
    if args.force:
        entry = lookup(args.name, _registry(args, cache))
        path = install(entry, cache, offline=args.offline, force=True, offline_by=args.offline_by)
    else:
        path = resolve_in(args.name, cache, args.offline, args.offline_by)
    print(path)
    return 0


def _cmd_import(args: argparse.Namespace, cache: Cache) -> int:
    entry = lookup(args.name, _registry(args, cache))
    print(import_copy(entry, args.path, cache))
    return 0


def _cmd_manifest(args: argparse.Namespace, cache: Cache) -> int:
    from .manifest import write_manifest

    folder, files = write_manifest(args.name, args.index)
    print(f"{args.index}: {args.name}: {len(files)} file(s), {_size(sum(f.size or 0 for f in files))}, "
          f"from {folder}")
    return 0


def _cmd_verify(args: argparse.Namespace, cache: Cache) -> int:
    entry = lookup(args.name, _registry(args, cache))
    report = verify(entry, cache)
    for note in report.notes:
        print(f"note: {note}")
    if report.ok:
        print(f"OK {redact(entry.name)}: {report.checked} file(s) checked in {report.path}")
        return 0
    print(f"FAILED {redact(entry.name)} ({report.path or 'not available'}):")
    for problem in report.problems:
        print(f"  {problem}")
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="EasyNLP-artist checkpoint registry.")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache directory (default: $EASYNLP_MODELZOO_CACHE or ~/.cache/easynlp_artist/modelzoo)")
    parser.add_argument("--offline", action="store_true", default=None,
                        help="use the cache only (default: $EASYNLP_MODELZOO_OFFLINE)")
    parser.add_argument("--debug", action="store_true", default=None,
                        help="show the traceback of an error (default: $EASYNLP_DEBUG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="registered models, their size, verification and cache state")
    p = sub.add_parser("info", help="index entry and cache state of one model (JSON)")
    p.add_argument("name")
    p = sub.add_parser("download", help="resolve NAME (a name, URI or path) into the cache; print its directory")
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="download and install again even if cached")
    p = sub.add_parser("verify", help=f"re-hash an installed model against its {META_NAME} and the index")
    p.add_argument("name")
    p = sub.add_parser("import", help="install a copy obtained elsewhere (a folder or a .tgz/.tar.gz/.tar/.zip "
                       "archive) as NAME, checked like a download; print its directory")
    p.add_argument("name")
    p.add_argument("path", type=Path)
    p = sub.add_parser("manifest", help="re-hash a local-directory entry's folder and write its file list "
                       "(sha256, size) into the index")
    p.add_argument("name")
    p.add_argument("--index", type=Path, default=SHIPPED_INDEX,
                   help=f"the index file holding the entry (default: the shipped {SHIPPED_INDEX.name})")
    parser._command_names = list(sub.choices)  # type: ignore[attr-defined]
    return parser


def _debug(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    try:
        return parse_bool(os.environ.get("EASYNLP_DEBUG") or "0")
    except ValueError:
        _error(f"EASYNLP_DEBUG={os.environ['EASYNLP_DEBUG']!r}: expected 1/0, true/false, yes/no or on/off")
        sys.exit(2)


COMMANDS = {"list": _cmd_list, "info": _cmd_info, "download": _cmd_download, "verify": _cmd_verify,
            "import": _cmd_import, "manifest": _cmd_manifest}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = _debug(args.debug)
    try:
        args.offline_by = "flag" if args.offline else "env"
        args.offline = is_offline(args.offline)
        cache = Cache(args.cache_dir.expanduser() if args.cache_dir is not None else default_cache_dir())
        return COMMANDS[args.command](args, cache)
    except (ModelZooError, OSError) as e:  # OSError: a cache or file that cannot be written/read
        if debug:
            traceback.print_exc()
        _error(str(e) if isinstance(e, ModelZooError) else f"{type(e).__name__}: {e}")
        return 2 if isinstance(e, UnknownModelError) else 1
    except Exception as e:  # a bug: one line (its text may hold anything), the traceback with --debug
        if debug:
            traceback.print_exc()
        _error(f"internal error {type(e).__name__} in `{args.command}`"
               + ("" if debug else "; rerun with --debug (or EASYNLP_DEBUG=1) for the traceback"))
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m modelzoo list | info NAME | download NAME | verify NAME``.

Exit status 0 on success, 1 on a ModelZoo error or a failed verification, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import ModelZooError
from .hub import META_NAME, Cache, default_cache_dir, install, is_offline, lookup, read_meta, resolve, verify
from .index import ModelEntry, load_registry
from .storage import redact


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
    registry = load_registry(cache.root, args.offline)
    rows = [("NAME", "SIZE", "VERIFIED", "CACHED", "DESCRIPTION")]
    for name in sorted(registry.entries):
        e = registry.entries[name]
        desc = e.description if len(e.description) <= 60 else e.description[:57] + "..."
        rows.append((name, _size(e.size), "yes" if e.verified else "NO", _cached(e, cache), desc))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


def _cmd_info(args: argparse.Namespace, cache: Cache) -> int:
    registry = load_registry(cache.root, args.offline)
    entry = lookup(args.name, registry)
    info = {
        "name": redact(entry.name),
        "description": entry.description,
        "license": entry.license,
        "kind": entry.kind,
        "uri": redact(entry.uri) if entry.uri else None,
        "sha256": entry.sha256,
        "size": entry.size,
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
    print(json.dumps(info, indent=2, ensure_ascii=False))
    return 0


def _cmd_download(args: argparse.Namespace, cache: Cache) -> int:
    if args.force:
        entry = lookup(args.name, load_registry(cache.root, args.offline))
        path = install(entry, cache, offline=args.offline, force=True)
    else:
        path = resolve(args.name, cache_dir=cache.root, offline=args.offline)
    print(path)
    return 0


def _cmd_verify(args: argparse.Namespace, cache: Cache) -> int:
    entry = lookup(args.name, load_registry(cache.root, args.offline))
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
    parser = argparse.ArgumentParser(prog="modelzoo", description="EasyNLP-artist checkpoint registry.")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache directory (default: $EASYNLP_MODELZOO_CACHE or ~/.cache/easynlp_artist/modelzoo)")
    parser.add_argument("--offline", action="store_true", default=None,
                        help="use the cache only (default: $EASYNLP_MODELZOO_OFFLINE)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered models, their size, verification and cache state")
    p = sub.add_parser("info", help="index entry and cache state of one model (JSON)")
    p.add_argument("name")
    p = sub.add_parser("download", help="resolve NAME (a name, URI or path) into the cache; print its directory")
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="download and install again even if cached")
    p = sub.add_parser("verify", help=f"re-hash an installed model against its {META_NAME} and the index")
    p.add_argument("name")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.offline = is_offline(args.offline)
    cache = Cache(args.cache_dir.expanduser() if args.cache_dir is not None else default_cache_dir())
    commands = {"list": _cmd_list, "info": _cmd_info, "download": _cmd_download, "verify": _cmd_verify}
    try:
        return commands[args.command](args, cache)
    except ModelZooError as e:
        print(f"modelzoo: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

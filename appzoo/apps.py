"""Discovery of installed applications through the ``easynlp.appzoo`` entry-point group.

AppZoo never imports an application by name: each one is a plugin. ``easynlp --help`` lists the
registered names from the installed metadata without importing any plugin (importing the app
pulls in torch); the selected app is imported, and one that fails to import is reported as broken
(with its error) instead of a traceback.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import metadata

from appzoo.app import BaseApp

ENTRY_POINT_GROUP = "easynlp.appzoo"


class AppNotFoundError(ValueError):
    """No installed application has the requested name, or its plugin is broken."""


@dataclass(frozen=True)
class AppEntry:
    """One registered application: loaded (``app_cls``), broken (``error``) or not imported (neither)."""

    name: str
    target: str
    distribution: str | None
    app_cls: type[BaseApp] | None = None
    error: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        extra = () if self.app_cls is None else (self.app_cls.name, *self.app_cls.aliases)
        return tuple(dict.fromkeys(n for n in (self.name, *extra) if n))


def _entry_points(group: str) -> list[metadata.EntryPoint]:
    unique: dict[tuple[str, str], metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=group):
        unique.setdefault((ep.name, ep.value), ep)
    return sorted(unique.values(), key=lambda ep: ep.name)


def _distribution(ep: metadata.EntryPoint) -> str | None:
    return ep.dist.name if getattr(ep, "dist", None) is not None else None


def _load(ep: metadata.EntryPoint) -> AppEntry:
    dist = _distribution(ep)
    try:
        obj = ep.load()
    except Exception as exc:  # a plugin's import failure must not break the CLI
        return AppEntry(ep.name, ep.value, dist, error=f"{type(exc).__name__}: {exc}")
    if not (isinstance(obj, type) and issubclass(obj, BaseApp)):
        return AppEntry(ep.name, ep.value, dist, error=f"{ep.value} is not a subclass of appzoo.app.BaseApp")
    try:
        obj.validate_class()
    except TypeError as exc:
        return AppEntry(ep.name, ep.value, dist, error=str(exc))
    return AppEntry(ep.name, ep.value, dist, app_cls=obj)


def discover_apps(group: str = ENTRY_POINT_GROUP) -> list[AppEntry]:
    """All registered applications, each loaded (or marked broken), sorted by name."""
    return [_load(ep) for ep in _entry_points(group)]


def registered_apps(group: str = ENTRY_POINT_GROUP) -> list[AppEntry]:
    """All registered applications as the installed metadata names them, none imported, sorted by name."""
    return [AppEntry(ep.name, ep.value, _distribution(ep)) for ep in _entry_points(group)]


def find_app(name: str, group: str = ENTRY_POINT_GROUP) -> type[BaseApp]:
    """The application registered as ``name`` or declaring it as its name or an alias."""
    direct = [ep for ep in _entry_points(group) if ep.name == name]
    entries = [_load(ep) for ep in direct] or discover_apps(group)
    matches = [e for e in entries if name in e.names]
    if not matches:
        known = sorted({n for e in entries for n in e.names})
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        listing = ", ".join(known) or "none installed"
        raise AppNotFoundError(f"unknown app {name!r}{hint} (installed apps: {listing})")
    entry = matches[0]
    if entry.app_cls is None:
        raise AppNotFoundError(f"app {name!r} ({entry.target}) is installed but broken: {entry.error}")
    return entry.app_cls


def format_app_list(entries: list[AppEntry]) -> str:
    """The ``--help`` section listing installed applications."""
    if not entries:
        return f"installed apps: none (register one under the {ENTRY_POINT_GROUP!r} entry-point group)"
    lines = ["installed apps:"]
    for entry in entries:
        if entry.error is not None:
            lines.append(f"  {entry.name:<28} BROKEN ({entry.target}): {entry.error}")
            continue
        if entry.app_cls is None:
            lines.append(f"  {entry.name:<28} {entry.target} (from {entry.distribution or 'an unnamed distribution'})")
            continue
        aliases = [n for n in entry.names if n != entry.name]
        suffix = f" (aliases: {', '.join(aliases)})" if aliases else ""
        modes = ", ".join(entry.app_cls.supported_modes())
        lines.append(f"  {entry.name:<28} {entry.app_cls.description}{suffix} [modes: {modes}]")
    if any(e.app_cls is None and e.error is None for e in entries):
        lines.append("easynlp --app_name=NAME --help describes one app (its modes and parameters)")
    return "\n".join(lines)

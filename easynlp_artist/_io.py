"""Atomic file output for the package: the one implementation is :func:`modelzoo.files.atomic_path`."""

from modelzoo.files import atomic_path

__all__ = ["atomic_path"]

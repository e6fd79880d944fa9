"""Errors for knowledge files: every message names the file and, where known, the 1-based line and column."""

from __future__ import annotations

import os


def location(path: str | os.PathLike | None, line: int | None = None, column: int | None = None) -> str:
    """``path:line:column`` with the parts that are known (``<input>`` when there is no path)."""
    parts = [os.fspath(path) if path is not None else "<input>"]
    if line is not None:
        parts.append(str(line))
        if column is not None:
            parts.append(str(column))
    return ":".join(parts)


class KnowledgeFileError(ValueError):
    """Bad content in a knowledge file; ``path``, ``line`` and ``column`` (1-based) say where."""

    def __init__(
        self,
        message: str,
        path: str | os.PathLike | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.line = line
        self.column = column
        self.reason = message
        super().__init__(f"{location(path, line, column)}: {message}")


class EntityFileError(KnowledgeFileError):
    """Bad entity dictionary (``entity2id.txt``, ``entity_names.txt``) or entity vector file."""


class LatticeFormatError(KnowledgeFileError):
    """Bad knowledge columns (``lex_id``, ``pos_s``, ``pos_e``, ``token_len``) in a table."""


class TableFormatError(KnowledgeFileError):
    """Bad row in an input table (wrong number of fields, undecodable bytes)."""

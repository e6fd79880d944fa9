"""Errors raised by the ModelZoo. Every message names what failed (name, URI, path) and why."""

from __future__ import annotations


class ModelZooError(RuntimeError):
    """A checkpoint could not be resolved, downloaded, verified or installed."""


class ChecksumError(ModelZooError):
    """Downloaded bytes do not match the sha256 or size recorded in the index."""


class UnsafeArchiveError(ModelZooError):
    """An archive member would escape the extraction directory or is not a plain file/directory."""


class StorageError(ModelZooError):
    """A storage operation failed. ``transient`` tells whether retrying may help."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient

"""Checking a state dict against what a model expects, with every problem listed.

Sizes are checked from the weights file's header before anything is allocated: safetensors
headers and the tensor table of a zip ``torch.save`` file are read without reading the tensors.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

LIMIT = 20  # names shown per kind of problem; the count says how many there are


def mismatches(given: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches of ``given`` — one line per kind."""
    return shape_mismatches({k: tuple(v.shape) for k, v in given.items()}, expected)


def shape_mismatches(given: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> list[str]:
    """:func:`mismatches` on shapes alone (from a file header)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(given[k])} vs model {tuple(expected[k])}"
        for k in set(given) & set(expected)
        if tuple(given[k]) != tuple(expected[k])
    )
    problems = []
    for label, items, sep in (("missing keys", missing, ", "), ("unexpected keys", unexpected, ", "),
                              ("wrong shapes", wrong, "; ")):
        if items:
            more = f" ... ({len(items) - LIMIT} more)" if len(items) > LIMIT else ""
            problems.append(f"{label} ({len(items)}): " + sep.join(items[:LIMIT]) + more)
    return problems


def safetensors_shapes(path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors file's header (the tensors are not read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None


def load_weights_only(path) -> dict[str, torch.Tensor]:
    """A ``torch.save`` file of tensors, refusing anything else: memory-mapped where the format
    allows (the tensors are read only when used), with ``weights_only=True`` always."""
    import pickle

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # a legacy (non-zip) file cannot be mapped: read it whole
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{path}: not a safe checkpoint (it holds Python objects besides tensors; only weights-only "
            "files are loaded)"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"{path}: not a readable PyTorch weights file ({str(exc).splitlines()[0]})") from None

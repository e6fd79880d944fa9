"""Checking a state dict against what a model expects, with every problem listed."""

from __future__ import annotations

from collections.abc import Mapping

import torch

LIMIT = 20  # names shown per kind of problem; the count says how many there are


def mismatches(given: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches of ``given`` — one line per kind."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k])}"
        for k in set(given) & set(expected)
        if tuple(given[k].shape) != tuple(expected[k])
    )
    problems = []
    for label, items, sep in (("missing keys", missing, ", "), ("unexpected keys", unexpected, ", "),
                              ("wrong shapes", wrong, "; ")):
        if items:
            more = f" ... ({len(items) - LIMIT} more)" if len(items) > LIMIT else ""
            problems.append(f"{label} ({len(items)}): " + sep.join(items[:LIMIT]) + more)
    return problems

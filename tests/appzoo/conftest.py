"""Fixtures of the appzoo tests: the toy plugin (a real entry point found by importlib.metadata)
and a subprocess environment that can see it."""

from __future__ import annotations

import importlib
import os
import random
from pathlib import Path

import pytest

TOY_PLUGIN_DIR = Path(__file__).parent / "toy_plugin"


@pytest.fixture
def toy_plugin(monkeypatch):
    """Put the toy plugin distribution on sys.path and return its module."""
    monkeypatch.syspath_prepend(str(TOY_PLUGIN_DIR))
    return importlib.import_module("appzoo_toy_app")


@pytest.fixture(scope="session")
def toy_env() -> dict[str, str]:
    """Environment for `python -m appzoo` / torchrun subprocesses that see the toy plugin."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TOY_PLUGIN_DIR), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="session")
def write_toy_table():
    """write_toy_table(path, n, seed=0) → path: rows `idx<TAB>x1,x2,x3,x4<TAB>y` with y linear in x."""

    def write(path: Path, n: int, seed: int = 0) -> Path:
        rng = random.Random(seed)
        with open(path, "w", encoding="utf-8") as handle:
            for i in range(n):
                x = [rng.uniform(-1, 1) for _ in range(4)]
                y = 0.5 * sum(x) - 0.3 * x[0] * x[1] + 0.1
                handle.write(f"{i}\t{','.join(f'{v:.4f}' for v in x)}\t{y:.4f}\n")
        return path

    return write

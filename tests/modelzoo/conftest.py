"""Fixtures for the ModelZoo tests: an isolated cache/env, a Range-capable HTTP server and a moto S3
server, all real servers on 127.0.0.1 started by the tests."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from helpers.range_server import RangeFileServer

ZOO_ENV = ("EASYNLP_MODELZOO_INDEX", "EASYNLP_MODELZOO_CACHE", "EASYNLP_MODELZOO_OFFLINE",
           "EASYNLP_S3_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_PROFILE", "OSS_ENDPOINT", "OSS_ACCESS_KEY_ID",
           "OSS_ACCESS_KEY_SECRET", "OSS_SECURITY_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
           "https_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture
def zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache directory as EASYNLP_MODELZOO_CACHE; fast bounded retries; no proxies."""
    for var in ZOO_ENV:
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("EASYNLP_MODELZOO_CACHE", str(cache))
    monkeypatch.setenv("EASYNLP_MODELZOO_RETRIES", "3")
    monkeypatch.setenv("EASYNLP_MODELZOO_BACKOFF", "0.01")
    monkeypatch.setenv("EASYNLP_MODELZOO_PROGRESS", "0")
    monkeypatch.setenv("EASYNLP_OSS_CONFIG", str(tmp_path / "no-ossutilconfig"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return cache


@pytest.fixture
def served(tmp_path: Path):
    """A RangeFileServer over tmp_path/'srv'."""
    root = tmp_path / "srv"
    root.mkdir()
    with RangeFileServer(root) as server:
        yield server


@pytest.fixture
def s3(zoo: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """boto3 client on the moto server, with the env that modelzoo.storage reads; a fresh bucket."""
    from helpers.servers import s3_bucket

    client, bucket = s3_bucket(s3_endpoint, monkeypatch, prefix="zoo")
    client.bucket = bucket  # type: ignore[attr-defined]
    return client


def checkpoint_files() -> dict[str, bytes]:
    """A tiny checkpoint directory's contents."""
    return {
        "config.json": json.dumps({"model_type": "artist", "n_layer": 1}).encode(),
        "vocab.txt": "[PAD]\n[UNK]\n猫\n".encode(),
        "model.safetensors": bytes(range(256)) * 64,
    }


def make_tgz(path: Path, files: dict[str, bytes], top: str | None = "ckpt") -> Path:
    """A .tgz of ``files`` (under directory ``top`` when given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sha256(data: bytes | Path) -> str:
    if isinstance(data, Path):
        data = data.read_bytes()
    return hashlib.sha256(data).hexdigest()


def write_index(path: Path, models: dict) -> Path:
    path.write_text(json.dumps({"format": "easynlp-modelzoo-index", "version": 1, "models": models}),
                    encoding="utf-8")
    return path


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to compare cache states)."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

"""modelzoo.storage against real files and real loopback servers (HTTP, moto S3)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from modelzoo import StorageError
from modelzoo.storage import open_range, open_uri, package_path, redact

from .conftest import sha256


def test_is_remote_and_redact():
    from modelzoo.storage import is_remote

    assert [is_remote(u) for u in ("s3://b/k", "oss://b/k", "http://h/x", "HTTPS://h/x")] == [True] * 4
    assert [is_remote(u) for u in ("/a/b", "file:///a", "rel/x.tsv", "package://p/x", "C:\\x")] == [False] * 5
    assert redact("https://user:pa55@host:8080/p/a.tgz?Signature=abc") == "https://host:8080/p/a.tgz?<redacted>"


def test_local_text_roundtrip_atomic(tmp_path: Path):
    target = tmp_path / "t.tsv"
    with open_uri(str(target), "w") as f:
        f.write("1\t猫\n2\t狗\n")
        assert not target.exists(), "the target appears only on close"
    with open_uri(target.as_uri(), "r") as f:
        assert [line.rstrip("\n").split("\t") for line in f] == [["1", "猫"], ["2", "狗"]]
    reference = tmp_path / "reference"
    reference.write_text("")
    assert target.stat().st_mode == reference.stat().st_mode, "permissions as open() would give"
    reference.unlink()
    with pytest.raises(ZeroDivisionError), open_uri(str(target), "w") as f:
        f.write("partial")
        raise ZeroDivisionError
    assert target.read_text(encoding="utf-8") == "1\t猫\n2\t狗\n", "a failed write leaves the old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.tsv"]
    with pytest.raises(ValueError, match="mode"):
        open_uri(str(target), "a")
    with pytest.raises(StorageError, match="no such file"):
        open_uri(str(tmp_path / "missing.tsv"))


def test_package_uri_locates_without_importing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pkg = tmp_path / "zoo_fake_pkg"
    (pkg / "resources").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert package_path("package://zoo_fake_pkg/resources") == pkg / "resources"
    assert "zoo_fake_pkg" not in sys.modules
    with pytest.raises(StorageError, match="not installed"):
        package_path("package://zoo_missing_pkg_xyz/a")
    with pytest.raises(StorageError, match=r"'\.\.'"):
        package_path("package://zoo_fake_pkg/../x")


def test_http_read_and_ranges(zoo, served):
    data = bytes(range(256)) * 1000
    (served.root / "d.bin").write_bytes(data)
    (served.root / "t.tsv").write_text("a\tb\n中\t文\n", encoding="utf-8")
    with open_uri(served.url("d.bin")) as f:
        assert f.read() == data
    with open_uri(served.url("t.tsv"), "r") as f:
        assert f.read().splitlines() == ["a\tb", "中\t文"]
    with open_range(served.url("d.bin"), 1000) as s:
        assert (s.start, s.total) == (1000, len(data)) and s.read(10**7) == data[1000:]
        etag = s.validator
    with open_range(served.url("d.bin"), len(data), etag) as s:  # already complete: 416 handled
        assert s.start == len(data) and s.read(10) == b""
    with open_range(served.url("d.bin"), 5, '"another-version"') as s:  # If-Range mismatch: whole object
        assert s.start == 0 and s.read(10**7) == data
    with pytest.raises(StorageError, match="HTTP 404") as err:
        open_range(served.url("nope"))
    assert not err.value.transient
    with pytest.raises(StorageError, match="not supported"):
        open_uri(served.url("x"), "w")


def test_s3_text_and_binary_streaming(s3):
    uri = f"s3://{s3.bucket}/tables/train.tsv"
    rows = [f"{i}\t文本{i}\t{'x' * 100}" for i in range(80_000)]  # ~9.5 MB: a multipart upload
    with open_uri(uri, "w") as f:
        for row in rows:
            f.write(row + "\n")
    head = s3.head_object(Bucket=s3.bucket, Key="tables/train.tsv")
    assert "-" in head["ETag"], "expected a multipart upload (ETag of the form <md5>-<parts>)"
    with open_uri(uri, "r") as f:
        assert isinstance(f, io.TextIOBase)
        got = [line.rstrip("\n") for line in f]
    assert got == rows
    with open_uri(f"s3://{s3.bucket}/small.bin", "wb") as f:
        f.write(b"\x00\x01")
    assert s3.get_object(Bucket=s3.bucket, Key="small.bin")["Body"].read() == b"\x00\x01"
    with pytest.raises(KeyError), open_uri(f"s3://{s3.bucket}/aborted.bin", "wb") as f:
        f.write(b"never")
        raise KeyError("boom")
    assert "Contents" not in s3.list_objects_v2(Bucket=s3.bucket, Prefix="aborted")
    with open_range(f"s3://{s3.bucket}/small.bin", 1) as s:
        assert (s.start, s.total, s.read(10)) == (1, 2, b"\x01")


def test_s3_errors_do_not_leak_secrets(s3):
    with pytest.raises(StorageError) as err:
        open_uri(f"s3://{s3.bucket}/missing.tsv", "r")
    assert "NoSuchKey" in str(err.value) and not err.value.transient
    assert "testing-secret-do-not-print" not in str(err.value)


def test_oss_client_against_local_s3_server(s3, s3_endpoint, monkeypatch):
    # No server speaking the OSS protocol can run here. OSS's plain GET/PUT/HEAD (and ranged GET) are
    # close enough to S3's that the real oss2 client works against the local moto S3 server for those;
    # multipart upload and listing use OSS-specific XML and are not exercised here.
    monkeypatch.setenv("OSS_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "testing-secret-do-not-print")
    data = "编号\t文本\n1\t一只猫\n".encode() * 500
    s3.put_object(Bucket=s3.bucket, Key="t.tsv", Body=data)
    with open_uri(f"oss://{s3.bucket}/t.tsv", "r") as f:
        assert f.read() == data.decode()
    with open_range(f"oss://{s3.bucket}/t.tsv", 7) as s:
        assert (s.start, s.total) == (7, len(data)) and s.read(len(data)) == data[7:]
    with open_uri(f"oss://{s3.bucket}/out.bin", "wb") as f:  # small object: a single PUT
        f.write(b"written by oss2")
    assert s3.get_object(Bucket=s3.bucket, Key="out.bin")["Body"].read() == b"written by oss2"
    with pytest.raises(StorageError, match="NoSuchKey") as err:
        open_uri(f"oss://{s3.bucket}/missing", "rb")
    assert "testing-secret-do-not-print" not in str(err.value) and not err.value.transient


def test_oss_config_file_and_missing_endpoint(zoo, tmp_path, monkeypatch):
    from modelzoo.storage import oss_config

    with pytest.raises(StorageError, match="no OSS endpoint"):
        open_uri("oss://bucket/key")
    cfg = tmp_path / "ossutilconfig"
    cfg.write_text("[Credentials]\nendpoint = oss-cn-shanghai.aliyuncs.com\naccessKeyID = id1\n"
                   "accessKeySecret = s3cr3t\n")
    monkeypatch.setenv("EASYNLP_OSS_CONFIG", str(cfg))
    conf = oss_config()
    assert (conf.endpoint, conf.key_id, conf.key_secret) == ("oss-cn-shanghai.aliyuncs.com", "id1", "s3cr3t")
    assert "s3cr3t" not in repr(conf)


def test_local_range_and_sha(tmp_path: Path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"abcdef")
    with open_range(str(p), 2) as s:
        assert s.read(100) == b"cdef" and s.total == 6
        version = s.validator
    with open_range(str(p), 2, version) as s:
        assert s.start == 2
    with open_range(str(p), 2, "some-other-version") as s:  # the file changed since: start over
        assert s.start == 0 and s.read(100) == b"abcdef"
    assert sha256(p) == sha256(b"abcdef")

"""Failures are one clear line: DNS failures are not retried, secrets never reach a message, a cause or a log."""

from __future__ import annotations

import logging
import socket
import time

import pytest

import modelzoo

from .conftest import write_index

pytestmark = pytest.mark.filterwarnings("ignore::modelzoo.UnverifiedDownloadWarning")


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and every exception reachable through ``__cause__`` and ``__context__``."""
    seen, todo = [], [err]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
    return seen


def test_invalid_host_does_not_resolve_here():
    t0 = time.perf_counter()
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("models.invalid", 80)
    assert time.perf_counter() - t0 < 2, "RFC 2606 .invalid fails locally, without the network"


@pytest.mark.parametrize("scheme", ["http", "s3"])
def test_dns_failure_fails_at_once_naming_the_host(zoo, tmp_path, monkeypatch, caplog, scheme):
    # With retries, 5 attempts from a 2 s backoff would wait at least 0.75 * (2 + 4 + 8 + 16) = 22.5 s.
    monkeypatch.setenv("EASYNLP_MODELZOO_RETRIES", "5")
    monkeypatch.setenv("EASYNLP_MODELZOO_BACKOFF", "2")
    if scheme == "s3":
        monkeypatch.setenv("EASYNLP_S3_ENDPOINT", "http://s3.models.invalid")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
        uri, host = "s3://bucket/release/m.tgz", "s3.models.invalid"
    else:
        uri, host = "http://models.invalid/release/m.tgz", "models.invalid"
    monkeypatch.setenv("EASYNLP_MODELZOO_INDEX", str(write_index(tmp_path / "i.json", {"org/m": {"uri": uri}})))
    caplog.set_level(logging.INFO, logger="modelzoo")
    t0 = time.perf_counter()
    with pytest.raises(modelzoo.ModelZooError) as err:
        modelzoo.resolve("org/m")
    assert time.perf_counter() - t0 < 5, "a name that does not resolve must not be retried"
    message = str(err.value)
    assert "\n" not in message and "'org/m'" in message and uri in message
    assert f"cannot resolve host {host!r}" in message
    assert "attempts" not in message and not [r for r in caplog.records if "retrying" in r.getMessage()]


def test_s3_credentials_in_the_uri_never_reach_messages_causes_or_logs(s3, zoo, caplog):
    caplog.set_level(logging.DEBUG, logger="modelzoo")
    caplog.set_level(logging.INFO)
    uri = f"s3://AKIAEXAMPLE:SECRETX@{s3.bucket}/missing.tgz"
    with pytest.raises(modelzoo.ModelZooError) as err:
        modelzoo.resolve(uri)
    message = str(err.value)
    assert f"s3://{s3.bucket}/missing.tgz" in message and "NoSuchKey" in message and "\n" not in message
    for e in _chain(err.value):
        assert "AKIAEXAMPLE" not in f"{e!s} {e!r}" and "SECRETX" not in f"{e!s} {e!r}", repr(e)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "AKIAEXAMPLE" not in logged and "SECRETX" not in logged


def test_s3_credentials_in_the_uri_are_used(s3, zoo, tmp_path):
    from .conftest import checkpoint_files, make_tgz

    archive = make_tgz(tmp_path / "a.tgz", checkpoint_files())
    s3.upload_file(str(archive), s3.bucket, "a.tgz")
    path = modelzoo.resolve(f"s3://AKIAEXAMPLE:SECRETX@{s3.bucket}/a.tgz")
    assert (path / "config.json").read_bytes() == checkpoint_files()["config.json"]


def test_http_query_secret_not_in_the_cause_chain(zoo):
    from helpers.range_server import closed_port

    with pytest.raises(modelzoo.ModelZooError) as err:
        modelzoo.resolve(f"http://127.0.0.1:{closed_port()}/m.tgz?Signature=TOPSECRET123")
    assert "refused" in str(err.value).lower()
    for e in _chain(err.value):
        assert "TOPSECRET123" not in f"{e!s} {e!r}", repr(e)

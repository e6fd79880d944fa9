"""One storage layer for the ModelZoo (checkpoints) and the AppZoo (tables).

Supported locations:

- local paths and ``file://`` URIs;
- ``package://<top-level package>/<relative path>``: data shipped inside an installed package, located
  with ``importlib.util.find_spec`` (the package's code is not executed);
- ``http://`` and ``https://`` (``requests``; ranged GETs for resuming);
- ``s3://bucket/key`` (``boto3``). Endpoint from ``EASYNLP_S3_ENDPOINT`` or ``AWS_ENDPOINT_URL`` so
  that any S3 server (MinIO, moto, OSS's S3-compatible endpoint) works; credentials through the
  standard AWS variables/config; unsigned requests when no credentials exist. Addressing style from
  ``EASYNLP_S3_ADDRESSING_STYLE`` (``auto``, ``path``, ``virtual``; OSS's S3 endpoint needs ``virtual``);
- ``oss://bucket/key`` (``oss2``). Endpoint and keys from ``OSS_ENDPOINT``, ``OSS_ACCESS_KEY_ID``,
  ``OSS_ACCESS_KEY_SECRET`` (and ``OSS_SECURITY_TOKEN`` for STS), else from an ossutil-style INI file
  (``EASYNLP_OSS_CONFIG``, default ``~/.ossutilconfig``, section ``[Credentials]`` with ``endpoint``,
  ``accessKeyID``, ``accessKeySecret``, optional ``stsToken``); anonymous reads when no keys are set.

Secrets are never printed: messages show URIs through :func:`redact`, which drops user info and query
strings (pre-signed URLs carry signatures there).

Reads stream: :func:`open_uri` returns a buffered file object over the network stream, never the whole
object in memory. Writes to object storage go through multipart uploads of ``WRITE_PART_SIZE`` parts;
local writes are atomic (temporary file in the same directory, renamed on a successful close).
"""

from __future__ import annotations

import configparser
import functools
import importlib.util
import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import StorageError
from .extras import require
from .files import env_number, publish_file, remove_stale, temp_sibling

REMOTE_SCHEMES = ("http", "https", "s3", "oss")
LOCAL_SCHEMES = ("file", "package")
READ_MODES = {"rb": "rb", "r": "r", "rt": "r"}
WRITE_MODES = {"wb": "wb", "w": "w", "wt": "w"}
WRITE_PART_SIZE = 8 * 1024 * 1024  # S3/OSS multipart parts must be >= 5 MiB except the last one
CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 60.0

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme_of(uri: str) -> str:
    """The lower-case URI scheme, or ``""`` for a plain local path (Windows drive letters included)."""
    m = _SCHEME_RE.match(uri)
    return m.group(1).lower() if m else ""


def is_remote(uri: str) -> bool:
    """True for locations that need the network: ``http(s)://``, ``s3://``, ``oss://``."""
    return scheme_of(str(uri)) in REMOTE_SCHEMES


def redact(uri: str) -> str:
    """``uri`` without user info and query string, safe to print."""
    uri = str(uri)
    if not scheme_of(uri):
        return uri
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


_URI_IN_TEXT_RE = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_text(text: str) -> str:
    """``text`` with every URI in it shown through :func:`redact` (for log lines and messages)."""
    return _URI_IN_TEXT_RE.sub(lambda m: redact(m.group(0)), str(text))


def split_bucket_key(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` (or ``s3://KEY:SECRET@bucket/a/b``) → ``("bucket", "a/b")``."""
    parts = urlsplit(uri)
    bucket, key = parts.netloc.rpartition("@")[2], parts.path.lstrip("/")
    if not bucket or not key:
        raise StorageError(f"{redact(uri)}: expected {parts.scheme}://bucket/key")
    return bucket, key


def uri_credentials(uri: str) -> tuple[str, str] | None:
    """``(key id, secret)`` from the user info of ``s3://KEY:SECRET@bucket/...``, else ``None``."""
    parts = urlsplit(uri)
    if parts.username is None or parts.password is None:
        return None
    return unquote(parts.username), unquote(parts.password)


def package_path(uri: str) -> Path:
    """Directory or file named by ``package://pkg/rel/path`` inside the installed top-level package ``pkg``.

    Only the package's location is looked up (``find_spec`` on a top-level name does not execute it).
    """
    parts = urlsplit(uri)
    package, rel = parts.netloc, unquote(parts.path).lstrip("/")
    if not package.isidentifier():
        raise StorageError(f"{uri}: {package!r} is not a top-level package name")
    if any(p == ".." for p in Path(rel).parts):
        raise StorageError(f"{uri}: '..' is not allowed in a package path")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise StorageError(f"{uri}: package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / rel


def local_path(uri: str) -> Path | None:
    """Local filesystem path for a plain path, ``file://`` or ``package://`` URI; ``None`` for remote URIs."""
    uri = str(uri)
    scheme = scheme_of(uri)
    if not scheme:
        return Path(uri).expanduser()
    if scheme == "file":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"{uri}: file:// URIs must name a local path (file:///abs/path)")
        return Path(unquote(parts.path))
    if scheme == "package":
        return package_path(uri)
    if scheme in REMOTE_SCHEMES:
        return None
    raise StorageError(f"{redact(uri)}: unsupported scheme {scheme!r} (supported: local paths, "
                       f"{', '.join(s + '://' for s in LOCAL_SCHEMES + REMOTE_SCHEMES)})")


def _read_timeout() -> float:
    try:
        return env_number("EASYNLP_MODELZOO_TIMEOUT", DEFAULT_READ_TIMEOUT_S, minimum=0)
    except ValueError as e:
        raise StorageError(f"{e} (seconds)") from None


# ---------------------------------------------------------------------------------------------------
# Ranged streams: the download primitive.


@dataclass
class RangeStream:
    """Bytes of an object from ``start`` to its end.

    ``start`` is where the stream really begins: 0 when the server ignored the range or the object
    changed since ``validator`` was recorded, so callers must restart from 0 in that case.
    ``total`` is the size of the whole object when known; ``validator`` an ETag or Last-Modified value
    that identifies this version of the object (sent back on resume).
    """

    uri: str
    start: int
    total: int | None
    validator: str | None
    _read: Callable[[int], bytes]
    _close: Callable[[], None]
    _read_errors: tuple[type[BaseException], ...] = ()

    def read(self, n: int) -> bytes:
        try:
            return self._read(n)
        except StorageError:
            raise
        except self._read_errors as e:
            reason = _short_reason(e, self.uri)
            error = StorageError(f"{redact(self.uri)}: connection lost while reading: {reason}", transient=True)
        raise _detached(error) from None

    def close(self) -> None:
        self._close()

    def __enter__(self) -> RangeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _empty_stream(uri: str, start: int, total: int | None, validator: str | None) -> RangeStream:
    return RangeStream(uri, start, total, validator, lambda n: b"", lambda: None)


def open_range(uri: str, start: int = 0, validator: str | None = None) -> RangeStream:
    """Open ``uri`` for reading from byte ``start``; with ``validator``, only resume the same version.

    Raises :class:`StorageError`; ``transient`` is set for errors worth retrying (connection
    refused/reset, timeouts, 5xx, throttling).
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    scheme = scheme_of(uri)
    try:
        if scheme in ("http", "https"):
            return _http_range(uri, start, validator)
        if scheme == "s3":
            return _s3_range(uri, start, validator)
        if scheme == "oss":
            return _oss_range(uri, start, validator)
    except StorageError as e:
        raise _detached(e) from None
    path = local_path(uri)
    assert path is not None
    return _local_range(uri, path, start, validator)


def _detached(error: StorageError) -> StorageError:
    """``error`` without the client-library exception it was made from.

    The texts of requests/urllib3/botocore/oss2 exceptions hold the full URL (query-string signatures,
    bucket endpoints) and sometimes request parameters; our message keeps their reason, redacted, so
    the original is dropped from ``__cause__`` and ``__context__`` (tracebacks, error reports).
    """
    error.__cause__ = error.__context__ = None
    error.__suppress_context__ = True
    return error


def _local_range(uri: str, path: Path, start: int, validator: str | None) -> RangeStream:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the RangeStream
    except FileNotFoundError as e:
        raise StorageError(f"{uri}: no such file") from e
    except OSError as e:
        raise StorageError(f"{uri}: {e.strerror or e}") from e
    st = os.fstat(f.fileno())
    version = f"{st.st_mtime_ns}-{st.st_size}"
    begin = start if start <= st.st_size and validator in (None, version) else 0
    f.seek(begin)
    return RangeStream(uri, begin, st.st_size, version, f.read, f.close)


_CONTENT_RANGE_RE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 5-9/10`` → ``(5, 10)``; ``bytes */10`` → ``(None, 10)``."""
    m = _CONTENT_RANGE_RE.match(value or "")
    if not m:
        return None, None
    first = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return first, total


def _http_transient_status(status: int) -> bool:
    return status in (408, 425, 429) or status >= 500


def _http_range(uri: str, start: int, validator: str | None) -> RangeStream:
    import requests
    import urllib3

    headers = {"Accept-Encoding": "identity"}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
        if validator:
            headers["If-Range"] = validator
    try:
        resp = requests.get(uri, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT_S, _read_timeout()))
    except (requests.ConnectionError, requests.Timeout) as e:
        dns = _dns_failure(e, uri, urlsplit(uri).hostname)
        raise dns or StorageError(f"{redact(uri)}: {_short_reason(e, uri)}", transient=True) from e
    except requests.RequestException as e:
        raise StorageError(f"{redact(uri)}: {_short_reason(e, uri)}") from e
    status = resp.status_code
    etag = resp.headers.get("ETag")
    new_validator = etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified")
    if status == 416:
        _, total = _parse_content_range(resp.headers.get("Content-Range"))
        resp.close()
        if total is not None and start == total:
            return _empty_stream(uri, start, total, validator)
        return _http_range(uri, 0, None)
    if status >= 400:
        resp.close()
        reason = f"HTTP {status} {resp.reason or ''}".strip()
        raise StorageError(f"{redact(uri)}: {reason}", transient=_http_transient_status(status))
    if status == 206:
        first, total = _parse_content_range(resp.headers.get("Content-Range"))
        begin = first if first is not None else start
    else:
        begin = 0
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
    raw = resp.raw
    return RangeStream(uri, begin, total, new_validator, raw.read, resp.close,
                       (urllib3.exceptions.HTTPError, requests.RequestException, OSError))


def _short_reason(e: BaseException, uri: str = "") -> str:
    """The most specific reason of a requests/urllib3/botocore exception, on one line, without the
    secrets of ``uri`` (user info, query string)."""
    text = " ".join(str(e).split())
    m = re.search(r"\[Errno -?\d+\] [^')\"]+", text)
    if m:
        return m.group(0)
    if uri and scheme_of(uri):
        parts = urlsplit(uri)
        for secret in (parts.query, parts.password, parts.username):
            for form in {secret, unquote(secret or "")} - {"", None}:
                text = text.replace(form, "<redacted>")
    return text if len(text) <= 300 else text[:300] + "..."


def _dns_failure(e: BaseException, uri: str, host: str | None) -> StorageError | None:
    """A permanent :class:`StorageError` when ``e`` (a client library's connection error) comes from a
    failed name resolution (``socket.gaierror`` somewhere inside it), else ``None``.

    A host name that does not resolve (a typo, a bucket or domain that is gone, no DNS at all) does
    not start resolving a few seconds later, so it is not retried like a refused connection.
    """
    import socket

    todo, walked = [e], []
    while todo and len(walked) < 32:  # the wrapped exceptions form a short tree; bound the walk anyway
        x = todo.pop()
        walked.append(x)
        kwargs = getattr(x, "kwargs", None)
        nested = [x.__cause__, x.__context__, getattr(x, "reason", None), getattr(x, "exception", None),
                  kwargs.get("error") if isinstance(kwargs, dict) else None, *getattr(x, "args", ())]
        todo += [n for n in nested if isinstance(n, BaseException) and not any(n is w for w in walked)]
    failure = next((x for x in walked if isinstance(x, socket.gaierror)), None)
    if failure is None:
        return None
    named = (re.search(r"Failed to resolve '([^']+)'", str(x)) for x in walked)
    shown = next((m.group(1) for m in named if m), None) or host or "?"
    reason = f"[Errno {failure.errno}] {failure.strerror}" if failure.errno is not None else str(failure)
    return StorageError(f"{redact(uri)}: cannot resolve host {shown!r} ({reason}); not retried: check the "
                        "name, DNS and network access")


# ------------------------------------------------------------------------------------------- S3


@functools.lru_cache(maxsize=8)
def _s3_client_cached(endpoint: str | None, region: str, addressing: str, key_id: str | None,
                      profile: str | None, uri_secret: str | None = None) -> Any:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    if uri_secret is not None:  # credentials from the URI's user info
        session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=uri_secret)
    elif profile:
        session = boto3.session.Session(profile_name=profile)
    else:
        session = boto3.session.Session()
    signed = session.get_credentials() is not None
    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=_read_timeout(),
        retries={"total_max_attempts": 1},  # the downloader retries with its own bounded backoff
        s3={"addressing_style": addressing},
        signature_version=None if signed else UNSIGNED,
    )
    return session.client("s3", endpoint_url=endpoint, region_name=region, config=config)


def s3_client(uri: str | None = None) -> Any:
    """A boto3 S3 client configured from the environment (cached per configuration); with the
    credentials of ``uri``'s user info (``s3://KEY:SECRET@bucket/key``) when it has them."""
    require("boto3", "s3", redact(uri) if uri else "s3:// storage")
    endpoint = os.environ.get("EASYNLP_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    addressing = os.environ.get("EASYNLP_S3_ADDRESSING_STYLE", "auto")
    if addressing not in ("auto", "path", "virtual"):
        raise StorageError(f"EASYNLP_S3_ADDRESSING_STYLE={addressing!r}: expected auto, path or virtual")
    creds = uri_credentials(uri) if uri else None
    if creds is not None:
        return _s3_client_cached(endpoint, region, addressing, creds[0], None, creds[1])
    # The key id (not the secret) is part of the cache key so that changed credentials take effect.
    return _s3_client_cached(endpoint, region, addressing, os.environ.get("AWS_ACCESS_KEY_ID"),
                             os.environ.get("AWS_PROFILE"))


def _s3_error(uri: str, e: BaseException) -> StorageError:
    from botocore.exceptions import ClientError, EndpointConnectionError, HTTPClientError, NoCredentialsError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        transient = status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout", "InternalError")
        return StorageError(f"{redact(uri)}: {code or 'error'} (HTTP {status})", transient=transient)
    if isinstance(e, NoCredentialsError):
        return StorageError(f"{redact(uri)}: no AWS credentials found")
    if isinstance(e, EndpointConnectionError):
        endpoint = (getattr(e, "kwargs", None) or {}).get("endpoint_url") or ""
        dns = _dns_failure(e, uri, urlsplit(endpoint).hostname)
        if dns is not None:
            return dns
    # connection refused/reset, timeouts: worth retrying; anything else (bad parameters, ...) is not
    transient = isinstance(e, (BotoConnectionError, HTTPClientError))
    return StorageError(f"{redact(uri)}: {type(e).__name__}: {_short_reason(e, uri)}", transient=transient)


def _s3_range(uri: str, start: int, validator: str | None) -> RangeStream:
    bucket, key = split_bucket_key(uri)
    client = s3_client(uri)
    from botocore.exceptions import BotoCoreError, ClientError
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if start > 0:
        kwargs["Range"] = f"bytes={start}-"
        if validator:
            kwargs["IfMatch"] = validator
    try:
        resp = client.get_object(**kwargs)
    except ClientError as e:
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if start > 0 and status == 412:  # the object changed since the partial download began
            return _s3_range(uri, 0, None)
        if start > 0 and status == 416:
            try:
                total = int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
            except (BotoCoreError, ClientError) as e2:
                raise _s3_error(uri, e2) from e2
            if total == start:
                return _empty_stream(uri, start, total, validator)
            return _s3_range(uri, 0, None)
        raise _s3_error(uri, e) from e
    except BotoCoreError as e:
        raise _s3_error(uri, e) from e
    first, total = _parse_content_range(resp.get("ContentRange"))
    begin = first if first is not None else 0
    if total is None:
        total = int(resp["ContentLength"]) if "ContentLength" in resp else None
    body = resp["Body"]
    return RangeStream(uri, begin, total, resp.get("ETag"), body.read, body.close, (BotoCoreError, OSError))


# ------------------------------------------------------------------------------------------ OSS


@dataclass(frozen=True)
class OssConfig:
    endpoint: str | None
    key_id: str | None
    key_secret: str | None
    sts_token: str | None = None

    def __repr__(self) -> str:  # never show secrets, even in a traceback's locals
        return f"OssConfig(endpoint={self.endpoint!r}, key_id={'set' if self.key_id else None})"


def oss_config() -> OssConfig:
    """OSS endpoint and keys: environment first, then the ossutil-style INI file."""
    env = os.environ
    endpoint, key_id = env.get("OSS_ENDPOINT"), env.get("OSS_ACCESS_KEY_ID")
    secret, token = env.get("OSS_ACCESS_KEY_SECRET"), env.get("OSS_SECURITY_TOKEN")
    if endpoint and key_id and secret:
        return OssConfig(endpoint, key_id, secret, token)
    path = Path(env.get("EASYNLP_OSS_CONFIG", "~/.ossutilconfig")).expanduser()
    if path.is_file():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path, encoding="utf-8")
        except configparser.Error as e:
            raise StorageError(f"{path}: not a valid OSS config file ({type(e).__name__})") from e
        if parser.has_section("Credentials"):
            sec = parser["Credentials"]
            endpoint = endpoint or sec.get("endpoint")
            key_id = key_id or sec.get("accessKeyID")
            secret = secret or sec.get("accessKeySecret")
            token = token or sec.get("stsToken")
    return OssConfig(endpoint, key_id, secret, token)


def oss_bucket(bucket: str, uri: str) -> Any:
    import oss2

    cfg = oss_config()
    if not cfg.endpoint:
        raise StorageError(f"{redact(uri)}: no OSS endpoint; set OSS_ENDPOINT or the [Credentials] endpoint "
                           "in the file named by EASYNLP_OSS_CONFIG (default ~/.ossutilconfig)")
    creds = uri_credentials(uri)
    if creds is not None:  # credentials from the URI's user info
        cfg = OssConfig(cfg.endpoint, creds[0], creds[1])
    if cfg.key_id and cfg.key_secret:
        auth = (oss2.StsAuth(cfg.key_id, cfg.key_secret, cfg.sts_token) if cfg.sts_token
                else oss2.Auth(cfg.key_id, cfg.key_secret))
    else:
        auth = oss2.AnonymousAuth()
    return oss2.Bucket(auth, cfg.endpoint, bucket, connect_timeout=CONNECT_TIMEOUT_S)


def _oss_error(uri: str, e: BaseException) -> StorageError:
    import oss2

    if isinstance(e, oss2.exceptions.OssError):
        status = int(getattr(e, "status", 0) or 0)
        code = getattr(e, "code", "") or type(e).__name__
        transient = status < 0 or status >= 500 or status in (408, 429)  # status -2: network error
        dns = _dns_failure(e, uri, None) if status < 0 else None
        return dns or StorageError(f"{redact(uri)}: {code} (HTTP {status})", transient=transient)
    return StorageError(f"{redact(uri)}: {type(e).__name__}: {_short_reason(e, uri)}", transient=True)


def _oss_range(uri: str, start: int, validator: str | None) -> RangeStream:
    import oss2
    import requests
    import urllib3

    bucket_name, key = split_bucket_key(uri)
    bucket = oss_bucket(bucket_name, uri)
    headers = {"If-Match": validator} if start > 0 and validator else None
    try:
        result = bucket.get_object(key, byte_range=(start, None) if start > 0 else None, headers=headers)
    except oss2.exceptions.OssError as e:
        status = int(getattr(e, "status", 0) or 0)
        if start > 0 and status == 412:
            return _oss_range(uri, 0, None)
        if start > 0 and status == 416:
            try:
                total = int(bucket.head_object(key).content_length)
            except oss2.exceptions.OssError as e2:
                raise _oss_error(uri, e2) from e2
            if total == start:
                return _empty_stream(uri, start, total, validator)
            return _oss_range(uri, 0, None)
        raise _oss_error(uri, e) from e
    first, total = _parse_content_range(result.headers.get("Content-Range"))
    begin = first if first is not None else 0
    if total is None and result.content_length is not None:
        total = int(result.content_length)
    return RangeStream(uri, begin, total, result.etag, result.read, result.resp.response.close,
                       (oss2.exceptions.OssError, urllib3.exceptions.HTTPError,
                        requests.RequestException, OSError))


# ---------------------------------------------------------------------------------------------------
# File objects: open_uri


class _StreamReader(io.RawIOBase):
    """A raw, read-only file object over a :class:`RangeStream`."""

    def __init__(self, stream: RangeStream):
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


@dataclass
class _MultipartOps:
    """Backend operations for a streaming upload: one ``put`` for small objects, else multipart."""

    put: Callable[[bytes], None]
    begin: Callable[[], str]
    part: Callable[[str, int, bytes], Any]
    complete: Callable[[str, list[tuple[int, Any]]], None]
    abort: Callable[[str], None]


class _MultipartWriter(io.RawIOBase):
    """A raw, write-only file object that uploads ``WRITE_PART_SIZE`` parts as they fill up.

    The object appears only when the file is closed without error; on error the upload is aborted.
    """

    def __init__(self, uri: str, ops: _MultipartOps, part_size: int = WRITE_PART_SIZE):
        self._uri, self._ops, self._part_size = uri, ops, part_size
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[tuple[int, Any]] = []
        self._failed = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to closed file")
        if self._failed:  # abandoned: swallow what the buffered layers still flush
            return len(data)
        self._buffer += data
        while len(self._buffer) >= self._part_size:
            chunk = bytes(self._buffer[: self._part_size])
            del self._buffer[: self._part_size]
            self._upload_part(chunk)
        return len(data)

    def _upload_part(self, chunk: bytes) -> None:
        try:
            if self._upload_id is None:
                self._upload_id = self._ops.begin()
            number = len(self._parts) + 1
            self._parts.append((number, self._ops.part(self._upload_id, number, chunk)))
        except Exception:
            self._failed = True
            raise

    def abandon(self) -> None:
        """Abandon the upload: nothing is written; the next ``close()`` aborts it."""
        self._failed = True

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._failed:
                if self._upload_id is not None:
                    self._ops.abort(self._upload_id)
            elif self._upload_id is None:
                self._ops.put(bytes(self._buffer))
            else:
                if self._buffer:
                    self._upload_part(bytes(self._buffer))
                self._ops.complete(self._upload_id, self._parts)
        except Exception:
            if self._upload_id is not None and not self._failed:
                self._ops.abort(self._upload_id)
            raise
        finally:
            self._buffer = bytearray()
            super().close()


def _s3_writer(uri: str) -> _MultipartWriter:
    bucket, key = split_bucket_key(uri)
    client = s3_client(uri)
    target = {"Bucket": bucket, "Key": key}

    def part(upload_id: str, number: int, data: bytes) -> Any:
        return client.upload_part(**target, UploadId=upload_id, PartNumber=number, Body=data)["ETag"]

    def complete(upload_id: str, parts: list[tuple[int, Any]]) -> None:
        client.complete_multipart_upload(**target, UploadId=upload_id, MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]})

    ops = _MultipartOps(
        put=lambda data: client.put_object(**target, Body=data),
        begin=lambda: client.create_multipart_upload(**target)["UploadId"],
        part=part,
        complete=complete,
        abort=lambda upload_id: client.abort_multipart_upload(**target, UploadId=upload_id),
    )
    return _MultipartWriter(uri, ops)


def _oss_writer(uri: str) -> _MultipartWriter:
    import oss2

    bucket_name, key = split_bucket_key(uri)
    bucket = oss_bucket(bucket_name, uri)
    ops = _MultipartOps(
        put=lambda data: bucket.put_object(key, data),
        begin=lambda: bucket.init_multipart_upload(key).upload_id,
        part=lambda upload_id, number, data: bucket.upload_part(key, upload_id, number, data).etag,
        complete=lambda upload_id, parts: bucket.complete_multipart_upload(
            key, upload_id, [oss2.models.PartInfo(n, etag) for n, etag in parts]),
        abort=lambda upload_id: bucket.abort_multipart_upload(key, upload_id),
    )
    return _MultipartWriter(uri, ops)


class _AtomicLocalFile:
    """A local file opened for writing through a temporary sibling, renamed over the target on close.

    Leaving a ``with`` block with an exception (or calling :meth:`discard`) removes the temporary file
    and leaves the target untouched.
    """

    def __init__(self, path: Path, mode: str):
        path = Path(os.path.abspath(path.expanduser()))
        remove_stale(path)
        tmp = temp_sibling(path)
        # os.open with 0o666 lets the process umask decide the final permissions, as open() would.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._path, self._tmp = path, tmp
        self._file = os.fdopen(fd, mode, encoding="utf-8" if "b" not in mode else None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def __iter__(self) -> Any:
        return iter(self._file)

    def write(self, data: Any) -> int:
        return self._file.write(data)

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
            self._tmp.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            self._file.flush()
        finally:
            self._file.close()
        try:
            publish_file(self._tmp, self._path)
        except OSError:
            self._tmp.unlink(missing_ok=True)
            raise

    def __enter__(self) -> _AtomicLocalFile:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.discard()
        else:
            self.close()


class _DiscardOnError:
    """Context-manager wrapper for remote writers: an exception in the ``with`` block aborts the upload."""

    def __init__(self, file: Any, raw: _MultipartWriter):
        self._file, self._raw = file, raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def write(self, data: Any) -> int:
        return self._file.write(data)

    def discard(self) -> None:
        self._raw.abandon()
        self._file.close()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> _DiscardOnError:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.discard()
        else:
            self._file.close()


def open_uri(uri: str, mode: str = "rb") -> Any:
    """Open a local path or URI as a file object (a context manager).

    ``mode`` is ``"rb"``/``"r"`` (any location) or ``"wb"``/``"w"`` (local, ``s3://``, ``oss://``).
    Text modes use UTF-8. Reads stream from the network; writes to object storage stream as multipart
    uploads and the object appears on ``close()``; local writes are atomic.
    """
    uri = str(uri)
    if mode not in READ_MODES and mode not in WRITE_MODES:
        raise ValueError(f"mode must be one of {sorted(READ_MODES) + sorted(WRITE_MODES)}, got {mode!r}")
    scheme = scheme_of(uri)
    text = "b" not in mode
    if mode in READ_MODES:
        if scheme in REMOTE_SCHEMES:
            raw = _StreamReader(open_range(uri))
            buffered = io.BufferedReader(raw, buffer_size=1024 * 1024)
            return io.TextIOWrapper(buffered, encoding="utf-8") if text else buffered
        path = local_path(uri)
        assert path is not None
        try:
            return open(path, READ_MODES[mode], encoding="utf-8" if text else None)  # noqa: SIM115
        except FileNotFoundError as e:
            raise StorageError(f"{uri}: no such file") from e
    if scheme in ("s3", "oss"):
        raw_writer = _s3_writer(uri) if scheme == "s3" else _oss_writer(uri)
        buffered_w = io.BufferedWriter(raw_writer, buffer_size=1024 * 1024)
        file = io.TextIOWrapper(buffered_w, encoding="utf-8") if text else buffered_w
        return _DiscardOnError(file, raw_writer)
    if scheme in ("http", "https", "package"):
        raise StorageError(f"{redact(uri)}: writing to {scheme}:// is not supported")
    path = local_path(uri)
    assert path is not None
    return _AtomicLocalFile(path, WRITE_MODES[mode])

"""Real servers on loopback for tests."""

import contextlib
import uuid

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy", "AWS_PROFILE")


@contextlib.contextmanager
def moto_s3_server():
    """A real S3 server (moto in server mode) on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_bucket(endpoint: str, monkeypatch, prefix: str = "test"):
    """Point modelzoo.storage (and boto3) at ``endpoint`` with dummy credentials, straight to
    loopback (no proxy); create a fresh bucket. Returns ``(client, bucket_name)``."""
    import boto3

    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("EASYNLP_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-do-not-print")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    return client, name

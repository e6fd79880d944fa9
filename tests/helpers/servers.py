"""Real servers on loopback for tests."""

import contextlib


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

"""AWS for the lab and the tests: moto in server mode on 127.0.0.1 (real HTTP, real boto3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from moto.server import ThreadedMotoServer

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
"""Dummy credentials boto3 needs to sign requests moto accepts."""


@contextmanager
def moto_server(*, port: int = 0) -> Iterator[str]:
    """A moto server on `port` (0: a free one); its endpoint URL. Stopped on exit, whatever happened.

    moto keeps its state per process, not per server: a caller that needs an empty account resets
    it (`POST /moto-api/reset`)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()

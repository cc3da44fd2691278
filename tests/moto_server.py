"""moto in server mode on 127.0.0.1, for every test that needs AWS (real HTTP, real boto3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from moto.server import ThreadedMotoServer

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
"""Dummy credentials boto3 needs to sign requests moto accepts."""


@contextmanager
def moto_server() -> Iterator[str]:
    """A fresh moto server on a free port; its endpoint URL. Stopped on exit, whatever happened."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()

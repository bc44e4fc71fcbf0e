"""Tarball contexts and Dockerfiles over HTTP(S), streamed.

The session is the registry transport's (``executor.registry.transport``), so a context server
is trusted exactly as a registry is: the system's CAs, ``SSL_CERT_FILE``, the certificate files in
``SSL_CERT_DIR`` (``/kaniko/ssl/certs`` in kaniko's image), and proxies from ``HTTPS_PROXY``.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

import requests

from executor.errors import ContextError

#: Seconds to wait for a connection and between two reads of the body.
TIMEOUT = (30, 300)


@contextlib.contextmanager
def open_url(url: str, *, what: str) -> Iterator[BinaryIO]:
    """The body of ``GET url`` as a stream; ``what`` starts every error message."""
    from executor.registry.transport import Transport, describe_connection_error

    with Transport() as transport:
        try:
            response = transport.session.get(url, stream=True, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise ContextError(f"{what}: {describe_connection_error(exc)}") from None
        with response:
            if response.status_code != 200:
                raise ContextError(f"{what}: HTTP {response.status_code} "
                                   f"{response.reason or ''}".rstrip())
            # A server that gzips a .tar.gz once more on the wire (Content-Encoding) is
            # undone here; the tarball's own compression is detected by its magic number.
            response.raw.decode_content = True
            yield cast(BinaryIO, ResponseBody(response.raw, what))


class ResponseBody:
    """``response.raw`` whose read errors (a connection cut mid-body) are ContextErrors."""

    def __init__(self, raw: object, what: str) -> None:
        self._raw = raw
        self._what = what

    def read(self, size: int = -1) -> bytes:
        from executor.registry.transport import describe_connection_error

        try:
            return cast(bytes, self._raw.read(size))  # type: ignore[attr-defined]
        except Exception as exc:  # urllib3 raises several unrelated types here
            raise ContextError(f"{self._what}: download failed: "
                               f"{describe_connection_error(exc)}") from None


def download(url: str, path: Path, *, what: str) -> Path:
    """Save the body of ``GET url`` at ``path`` (streamed); returns ``path``."""
    with open_url(url, what=what) as body, open(path, "wb") as out:
        shutil.copyfileobj(body, out, 1 << 20)
    return path
